"""Model-load mode: fetch bundles from a URI into a model repository, then check every artifact's hash.

Sources: a local folder or ``.tar.gz``; ``http(s)://`` to a ``.tar.gz`` or to a folder holding a
``ferry-index.json`` (written by ``write_index``); anything fsspec knows (``s3://``, ``gs://``, ...) with the
``fetch`` extra. Bundles land in ``dest/<name>/<version>`` only after their hashes check out.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from ferry.bundle import MANIFEST_FILE, read_manifest, scan_repository
from ferry.bundle.hashing import sha256_file, verify_artifacts
from ferry.errors import FetchError

INDEX_FILE = "ferry-index.json"
INDEX_FORMAT = "ferry-index/1"
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
HTTP_TIMEOUT = 60.0


def render_index(repo: Path) -> dict[str, Any]:
    """Every file of every bundle in ``repo`` with its SHA-256, so a plain static HTTP server can host them."""
    files = {}
    for bundles in scan_repository(repo).values():
        for ref in bundles:
            for path in sorted(p for p in ref.path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                files[path.relative_to(repo).as_posix()] = sha256_file(path)
    return {"format": INDEX_FORMAT, "files": files}


def write_index(repo: Path) -> Path:
    path = repo / INDEX_FILE
    path.write_text(json.dumps(render_index(repo), indent=2) + "\n", encoding="utf-8")
    return path


def fetch_bundles(uri: str, dest: Path) -> list[Path]:
    """Fetch into a staging folder inside ``dest``, verify, then move each bundle into place; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ferry-fetch-", dir=dest))
    try:
        _fetch_into(uri, staging)
        found = _verified_bundles(staging, uri)
        installed = []
        for bundle_dir, name, version in found:
            target = dest / name / version
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(bundle_dir, target)
            installed.append(target)
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch_into(uri: str, staging: Path) -> None:
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        _fetch_local(Path(uri.removeprefix("file://")), staging)
    elif scheme in ("http", "https"):
        if uri.endswith(TARBALL_SUFFIXES):
            with _open_url(uri) as response:
                _extract(response, staging, uri)
        else:
            _fetch_http_folder(uri.rstrip("/"), staging)
    else:
        _fetch_fsspec(uri, staging)


def _fetch_local(source: Path, staging: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".ferry-fetch-*"))
    elif source.is_file():
        with source.open("rb") as fh:
            _extract(fh, staging, str(source))
    else:
        raise FetchError(f"{source}: no such file or folder")


def _open_url(url: str) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def _fetch_http_folder(base: str, staging: Path) -> None:
    index_url = f"{base}/{INDEX_FILE}"
    with _open_url(index_url) as response:
        try:
            index = json.loads(response.read())
        except ValueError:
            raise FetchError(f"{index_url}: not JSON; a folder URL needs a {INDEX_FILE} (see `ferry index`)") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("files"), dict):
        raise FetchError(f"{index_url}: expected {{'format': '{INDEX_FORMAT}', 'files': {{path: sha256}}}}")
    for rel, expected in index["files"].items():
        target = _inside(staging, rel, f"{index_url}: path '{rel}'")
        target.parent.mkdir(parents=True, exist_ok=True)
        with _open_url(f"{base}/{rel}") as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
        if sha256_file(target) != expected:
            raise FetchError(f"{base}/{rel}: SHA-256 differs from {INDEX_FILE}")


def _fetch_fsspec(uri: str, staging: Path) -> None:
    try:
        import fsspec  # type: ignore[import-untyped]
    except ImportError:
        raise FetchError(f"{uri}: fetching this scheme needs fsspec; pip install 'ferry[fetch]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if path.endswith(TARBALL_SUFFIXES):
            with fs.open(path, "rb") as fh:
                _extract(fh, staging, uri)
            return
        root = path.rstrip("/")
        for remote in fs.find(root):
            target = _inside(staging, remote[len(root) :].lstrip("/"), f"{uri}: key '{remote}'")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
    except ImportError as exc:  # e.g. s3fs or gcsfs missing for this scheme
        raise FetchError(f"{uri}: {exc}; pip install 'ferry[fetch]'") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"{uri}: {exc}") from None


def _inside(staging: Path, rel: str, what: str) -> Path:
    """Where ``rel`` lands under ``staging``, refused before anything is written if it would land elsewhere.

    A bucket key or an index entry is the source's to choose: ``..``, an absolute path, or a link already
    in the staging folder must not carry a write out of the destination.
    """
    parts = PurePosixPath(rel).parts
    target = staging.joinpath(*parts)
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel or "\0" in rel:
        raise FetchError(f"{what} leaves the destination; refusing to fetch")
    if not target.resolve().is_relative_to(staging.resolve()):
        raise FetchError(f"{what} leaves the destination; refusing to fetch")
    return target


def _extract(fileobj: IO[bytes], staging: Path, source: str) -> None:
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            tar.extractall(staging, filter="data")  # refuses absolute paths, '..' and device files
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"{source}: not a readable tar archive: {exc}") from None


def _verified_bundles(staging: Path, uri: str) -> list[tuple[Path, str, str]]:
    """Each bundle found at any depth, named by its own manifest, with every artifact hash checked."""
    found = []
    for manifest_path in sorted(staging.rglob(MANIFEST_FILE)):
        bundle_dir = manifest_path.parent
        manifest = read_manifest(bundle_dir)
        verify_artifacts(bundle_dir, manifest.artifacts)
        found.append((bundle_dir, manifest.name, manifest.version))
    if not found:
        raise FetchError(f"{uri}: no bundles found (no {MANIFEST_FILE} anywhere)")
    return found
