"""The image-classifier reference: its route set per model, bad and oversized images, and a user's own ONNX."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from tests.inprocess import inprocess_fixture  # noqa: F401 (the fixture)

from ferry.bundle import read_manifest
from ferry.examples.images import build_general, build_plants, softmax_onnx


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def general(image_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import ServerProcess

    repo = tmp_path_factory.mktemp("general")
    shutil.copytree(image_repo / "general", repo / "general")
    server = ServerProcess([str(repo), "--grpc-port", "0"])
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
    server.stop()


def test_each_model_answers_the_reference_route_set(general: httpx.Client) -> None:
    assert general.get("/health").json() == {"health": "ok"}
    metadata = general.get("/metadata").json()
    assert metadata["data_type"] == "str" and metadata["data_structure"] == "(1,1)"
    assert metadata["prediction_type"] == "float32" and metadata["prediction_structure"] == "(1,4)"
    assert metadata["preprocessing"]["size"] == [24, 24] and metadata["preprocessing"]["layout"] == "NCHW"
    assert general.get("/label").json() == ["circle", "square", "triangle", "stripes"]
    assert general.get("/predict/test").json() == {"prediction": "circle"}
    sample = read_manifest_sample(general)
    assert general.post("/predict", json={"image_data": sample}).json() == {"prediction": "circle"}


def read_manifest_sample(client: httpx.Client) -> str:
    return str(client.get("/models/general/metadata").json()["sample_input"]["image_data"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"image_data": "not base64!"}, 400, "not valid base64 - at `$.image_data`"),
        ({"image_data": base64.b64encode(b"just some text").decode()}, 400, "not a decodable image"),
        ({"image_data": 42}, 400, "Expected `string`, got `integer` - at `$.image_data`"),
        ({"image": "x"}, 400, "missing field 'image_data'"),
        ({"image_data": png(2500, 2000)}, 413, "image of 2500x2000 pixels exceeds the limit of 4000000 pixels"),
        ({"image_data": "A" * 8_000_004}, 400, "string is longer than 8000000 characters"),
    ],
)
def test_bad_and_oversized_images_are_a_4xx_naming_the_problem(
    general: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    response = general.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_any_image_size_and_format_is_resized_by_the_declared_preprocessing(general: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 120), (10, 10, 10)).save(buffer, format="JPEG")
    answer = general.post("/predict", json={"image_data": base64.b64encode(buffer.getvalue()).decode()})
    assert answer.status_code == 200 and answer.json()["prediction"] in ["circle", "square", "triangle", "stripes"]


def test_image_examples_build_deterministically(image_repo: Path, tmp_path: Path) -> None:
    """A second build of the two image examples equals the session's first (tests/conftest.py) file for file."""
    build_general(tmp_path)
    build_plants(tmp_path)
    for name in ("general", "plants"):
        first, second = (read_manifest(repo / name / "1") for repo in (image_repo, tmp_path))
        assert first.artifacts == second.artifacts and first.sample_input == second.sample_input


def test_a_users_own_onnx_classifier_needs_only_labels_and_preprocessing(tmp_path: Path, inprocess: Any) -> None:
    """The worked example in the README (Routing): an NHWC, BGR model that finds the reddest image."""
    import ferry

    # Stands in for the user's export (MobileNetV2 from torch.onnx.export, say): input [N, 8, 8, 3] in BGR.
    weights = np.zeros((8 * 8 * 3, 2), dtype=np.float32)
    weights[2::3, 0] = 1.0  # channel 2 of BGR is red
    weights[0::3, 1] = 1.0  # channel 0 is blue
    onnx_path = softmax_onnx(weights, np.zeros(2, dtype=np.float32), [8, 8, 3], tmp_path / "mine.onnx")
    ferry.build(
        onnx_path,
        "colours",
        tmp_path / "repo",
        input_schema={"kind": "image", "field": "image_data"},
        output_schema={"kind": "label"},
        labels=["red", "blue"],
        options={"image": {"size": [8, 8], "channel_order": "BGR", "layout": "NHWC", "mean": [0.5], "std": [0.5]}},
        sample_input={"image_data": png(32, 32, (250, 0, 0))},
        routes=[{"method": "POST", "path": "/predict", "response_key": "prediction"}],
    )
    client = inprocess(tmp_path / "repo", "--grpc-port", "0").client
    red, blue = png(40, 30, (240, 10, 10)), png(40, 30, (10, 10, 240))
    assert client.post("/predict", json={"image_data": red}).json() == {"prediction": "red"}
    assert client.post("/predict", json={"image_data": blue}).json() == {"prediction": "blue"}


def test_a_bad_preprocessing_block_fails_the_load_naming_the_field(
    tmp_path: Path, image_repo: Path, inprocess: Any
) -> None:
    shutil.copytree(image_repo / "general", tmp_path / "repo" / "general")
    path = tmp_path / "repo" / "general" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest["options"]["image"]["layout"] = "CHWN"
    path.write_text(yaml.safe_dump(manifest))
    server = inprocess(tmp_path / "repo", "--grpc-port", "0", wait_ready=False)
    server.wait(ready=False)
    deadline_text = ""
    for _ in range(100):
        deadline_text = server.client.get("/ready").text
        if "FAILED" in deadline_text:
            break
        import time

        time.sleep(0.05)
    assert "FAILED" in deadline_text and "options.image.layout" in deadline_text


# -- hostile images: the format allowlist, and the pixel bound from the header for every accepted format ------
def encoded(image: Image.Image, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def ico_holding(png_bytes: bytes) -> bytes:
    """An ICO whose one entry is a PNG: the directory says 256x256, the PNG inside says otherwise."""
    import struct

    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png_bytes), 22) + png_bytes


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A real 30000x30000 PNG (1 bit per pixel, so Pillow makes it in 112 MB): 900 million pixels."""
    return encoded(Image.new("1", (30_000, 30_000)), "PNG")


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (
            lambda: ico_holding(encoded(Image.new("1", (13_000, 13_000)), "PNG")),
            400,
            "image format ICO is not accepted",
        ),
        (lambda: encoded(Image.new("RGB", (16, 16)), "ICO"), 400, "image format ICO is not accepted"),
        (lambda: encoded(Image.new("RGB", (16, 16)), "TIFF"), 400, "image format TIFF is not accepted"),
        (lambda: encoded(Image.new("L", (2500, 2000)), "GIF"), 413, "2500x2000 pixels exceeds the limit"),
        (lambda: encoded(Image.new("1", (2500, 2000)), "BMP"), 413, "2500x2000 pixels exceeds the limit"),
        (lambda: encoded(Image.new("L", (2500, 2000)), "WEBP"), 413, "2500x2000 pixels exceeds the limit"),
        (lambda: encoded(Image.new("L", (2500, 2000)), "JPEG"), 413, "2500x2000 pixels exceeds the limit"),
    ],
    ids=["ico-13000-png", "ico", "tiff", "gif", "bmp", "webp", "jpeg"],
)
def test_only_listed_formats_decode_and_every_one_is_bounded_before_decoding(
    general: httpx.Client, make: Any, status: int, message: str
) -> None:
    response = general.post("/predict", json={"image_data": base64.b64encode(make()).decode()})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.headers["content-type"] == "application/json"


def test_a_30000_square_png_is_too_many_pixels_not_undecodable(general: httpx.Client, huge_png: bytes) -> None:
    response = general.post("/predict", json={"image_data": base64.b64encode(huge_png).decode()})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "image of 900000000 pixels exceeds the limit of 4000000 pixels"


def test_a_multi_picture_jpeg_decodes_as_a_jpeg(general: httpx.Client) -> None:
    mpo = encoded(
        Image.new("RGB", (40, 40), (200, 30, 30)), "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))]
    )
    response = general.post("/predict", json={"image_data": base64.b64encode(mpo).decode()})
    assert response.status_code == 200, response.text
