"""Image decoding and preprocessing declared in a bundle (``options.image``), applied before the model.

Resize, colour mode, channel order, scaling, mean/std normalisation and layout are data in the
manifest, so a user's own exported classifier needs no code. Pillow decodes (``ferry[images]``).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from ferry.errors import InvalidInput, ManifestError, PayloadTooLarge
from ferry.runtimes.abandon import stop_if_abandoned

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_MAX_PIXELS = 25_000_000

# The formats Ferry decodes (Pillow's names; MPO, a JPEG with more pictures after it, opens as JPEG).
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
ACCEPTED_NAMES = "PNG, JPEG, GIF, BMP or WebP"
# What Pillow raises for a broken header or body (its plugins parse with struct and read to EOF).
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# Formats refused by name, so the client learns what it sent.
_REFUSED_SIGNATURES = (
    ("ICO", b"\x00\x00\x01\x00"),
    ("CUR", b"\x00\x00\x02\x00"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("PSD", b"8BPS"),
    ("JPEG 2000", b"\x00\x00\x00\x0cjP  "),
    ("JPEG 2000", b"\xffO\xffQ"),
    ("ICNS", b"icns"),
    ("QOI", b"qoif"),
    ("DDS", b"DDS "),
    ("PDF", b"%PDF"),
    ("PostScript", b"%!PS"),
    ("SVG", b"<svg"),
    ("SVG/XML", b"<?xml"),
)


class ImagePreprocessing(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``size`` is [width, height]; pixels are scaled, then ``(x - mean) / std`` per channel."""

    size: list[int]
    mode: Literal["RGB", "L"] = "RGB"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = msgspec.field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = msgspec.field(default_factory=lambda: [1.0, 1.0, 1.0])
    resample: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    max_pixels: int = DEFAULT_MAX_PIXELS


def parse_preprocessing(options: dict[str, Any], source: str) -> ImagePreprocessing | None:
    raw = options.get("image")
    if raw is None:
        return None
    try:
        spec = msgspec.convert(raw, ImagePreprocessing)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{source}: {str(exc).replace('`$', '`$.options.image')}") from None
    channels = 1 if spec.mode == "L" else 3
    if len(spec.size) != 2 or min(spec.size) <= 0:
        raise ManifestError(f"{source}: size must be [width, height] - at `$.options.image.size`")
    if len(spec.mean) not in (1, channels) or len(spec.std) not in (1, channels) or 0.0 in spec.std:
        raise ManifestError(f"{source}: mean and std need 1 or {channels} values, std non-zero - at `$.options.image`")
    return spec


def decode_batch(images: list[bytes], spec: ImagePreprocessing) -> np.ndarray:
    """Encoded images (PNG, JPEG, ...) to one float32 batch in the declared layout.

    Each image is decoded and resized on its own (Pillow); the arithmetic (channel order, scale, mean,
    std, layout) then runs once over the whole uint8 batch, which costs a quarter less per image.
    """
    pixels = []
    for i, data in enumerate(images):
        stop_if_abandoned()  # the callers have gone: decode no more of their images
        pixels.append(_resized(open_image(data, spec.max_pixels, f"$[{i}]"), spec))
    return normalize(np.stack(pixels), spec)


def check_request_pixels(images: list[bytes], limit: int, per_image: int | None = None) -> None:
    """Refuse images that hold more than ``limit`` pixels together, from their headers: nothing is decoded.

    Pillow's ``open`` reads a header only (about 20 us an image); an image it cannot read counts nothing
    here, and its decode then says what is wrong with it. One image past the model's own ``per_image``
    bound is refused as its decode would refuse it.
    """
    total = 0
    for i, data in enumerate(images):
        pixels = _header_pixels(data)
        if per_image is not None and pixels > per_image:
            open_image(data, per_image, f"$[{i}]")  # raises from the header, naming the model's bound
        total += pixels
        if total > limit:
            raise PayloadTooLarge(
                f"the request's images hold more than {limit} pixels (at `$[{i}]`): the limit of decoded pixels "
                "per request (--max-pixels)"
            )


def _header_pixels(data: bytes) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).size
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else 1 << 62
    except (UnidentifiedImageError, *_CORRUPT):
        return 0
    return int(width) * int(height)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "$") -> Image:
    """Decode one image of an accepted format; a size past ``max_pixels`` is refused from the header.

    Only the formats docs/routing.md lists are tried, so no other decoder (an ICO's embedded PNG, a TIFF's
    strips) ever sees the bytes. Each accepted format's header gives the size that decoding allocates:
    for a GIF, Pillow widens it to the first frame's extent when opening, and only that frame is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies, just below
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(_unaccepted(data), where) from None
    except Image.DecompressionBombError as exc:  # past Pillow's own bound, far past any max_pixels
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "its size"
        raise PayloadTooLarge(f"image of {size} exceeds the limit of {max_pixels} pixels") from None
    except _CORRUPT as exc:  # a known signature with a broken header
        raise InvalidInput(f"the image is truncated or corrupt: {exc}", where) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    try:
        image.load()
    except _CORRUPT as exc:
        raise InvalidInput(f"the image is truncated or corrupt: {exc}", where) from None
    return image


def _unaccepted(data: bytes) -> str:
    """Name the format of bytes no accepted decoder took, where its signature is known."""
    head = data[:16]
    name = next((n for n, magic in _REFUSED_SIGNATURES if head.startswith(magic)), None)
    if name is None and head[4:8] == b"ftyp":
        name = "HEIF/AVIF"
    if name is None:
        return f"not a decodable image (expected {ACCEPTED_NAMES} bytes)"
    return f"image format {name} is not accepted; send {ACCEPTED_NAMES}"


def to_tensor(image: Image, spec: ImagePreprocessing) -> np.ndarray:
    """One decoded image to a float32 array: [C, H, W] (NCHW) or [H, W, C] (NHWC)."""
    tensor: np.ndarray = normalize(_resized(image, spec)[None], spec)[0]
    return tensor


def _resized(image: Image, spec: ImagePreprocessing) -> np.ndarray:
    """The image in the declared mode and size, as uint8 [H, W, C]."""
    from PIL import Image as PILImage

    resample = {
        "nearest": PILImage.Resampling.NEAREST,
        "bilinear": PILImage.Resampling.BILINEAR,
        "bicubic": PILImage.Resampling.BICUBIC,
    }[spec.resample]
    pixels = np.asarray(image.convert(spec.mode).resize((spec.size[0], spec.size[1]), resample))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def normalize(batch: np.ndarray, spec: ImagePreprocessing) -> np.ndarray:
    """uint8 [N, H, W, C] to float32 ``(x * scale - mean) / std`` in the declared channel order and layout."""
    pixels = batch.astype(np.float32)
    if spec.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    pixels = (pixels * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        pixels = pixels.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(pixels, dtype=np.float32)
