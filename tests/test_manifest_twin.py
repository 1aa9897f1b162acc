"""ferry.yaml's JSON twin: ``ferry serve`` reads manifests without PyYAML, and ferry.yaml stays the source of truth."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ferry.bundle.manifest import MANIFEST_FILE, MANIFEST_TWIN, read_manifest, write_manifest


def _bundle(example_repo: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "iris" / "1"
    shutil.copytree(example_repo / "iris" / "1", bundle)
    return bundle


def test_build_writes_a_twin_that_ferry_yaml_vouches_for(example_repo: Path) -> None:
    bundle = example_repo / "iris" / "1"
    first_line = (bundle / MANIFEST_FILE).read_text().splitlines()[0]
    assert first_line.startswith(f"# {MANIFEST_TWIN} sha256: ")
    twin = json.loads((bundle / MANIFEST_TWIN).read_bytes())
    assert twin["manifest"]["name"] == "iris"
    assert read_manifest(bundle) == msgspec.convert(twin["manifest"], type(read_manifest(bundle)))


def test_a_server_starts_without_pyyaml(serve: Any, example_repo: Path) -> None:
    """PyYAML's C parser is a shared library: mapped into the server only if PyYAML was imported."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("reads /proc/PID/maps (Linux)")
    server = serve(str(example_repo))
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "numpy" in maps  # (the check sees the server's libraries)
    assert "/yaml/_yaml" not in maps


def test_a_ferry_yaml_edited_by_hand_is_read_as_yaml(example_repo: Path, tmp_path: Path) -> None:
    bundle = _bundle(example_repo, tmp_path)
    path = bundle / MANIFEST_FILE
    path.write_text(path.read_text().replace("- virginica", "- edited by hand", 1))
    assert read_manifest(bundle).labels == ["setosa", "versicolor", "edited by hand"]


def test_a_twin_that_ferry_yaml_does_not_vouch_for_is_ignored(example_repo: Path, tmp_path: Path) -> None:
    bundle = _bundle(example_repo, tmp_path)
    twin = json.loads((bundle / MANIFEST_TWIN).read_bytes())
    twin["manifest"]["labels"] = ["x", "y", "z"]  # ferry.yaml unchanged: its first line names the old twin
    (bundle / MANIFEST_TWIN).write_text(json.dumps(twin))
    assert read_manifest(bundle).labels == read_manifest(example_repo / "iris" / "1").labels != ["x", "y", "z"]
    (bundle / MANIFEST_TWIN).write_text("{not json")
    assert read_manifest(bundle).name == "iris"
    (bundle / MANIFEST_TWIN).unlink()
    assert read_manifest(bundle).name == "iris"


def test_a_manifest_json_cannot_carry_gets_no_twin(example_repo: Path, tmp_path: Path) -> None:
    bundle = _bundle(example_repo, tmp_path)
    manifest = read_manifest(bundle)
    nan_clip = msgspec.structs.replace(manifest.output, min=float("nan"))  # JSON has no NaN
    write_manifest(bundle, msgspec.structs.replace(manifest, output=nan_clip))
    assert not (bundle / MANIFEST_TWIN).exists()
    assert not (bundle / MANIFEST_FILE).read_text().startswith("#")
    assert read_manifest(bundle).output.min != read_manifest(bundle).output.min  # NaN, read back from YAML
    write_manifest(bundle, manifest)
    assert (bundle / MANIFEST_TWIN).exists() and read_manifest(bundle) == manifest


def test_reading_a_twin_imports_no_yaml(example_repo: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from ferry.bundle.manifest import read_manifest; "
        f"read_manifest(Path({str(example_repo / 'iris' / '1')!r})); print('yaml' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
