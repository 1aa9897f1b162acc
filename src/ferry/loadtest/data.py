"""Request data: a JSON-lines, CSV or image-folder file, the model's sample input, or records generated from its schema.

Every record is encoded once, before the run, so the hot loop only cycles through ready bodies.
"""

from __future__ import annotations

import base64
import csv
import json
import random
from pathlib import Path
from typing import Any

from ferry.errors import LoadTestError, LoadTestUsage
from ferry.loadtest.generate import valid_record
from ferry.loadtest.protocols import Adapter
from ferry.loadtest.schema import ModelSchema, TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
GENERATED_RECORDS = 256


def load_records(source: str | None, schema: ModelSchema, seed: int = 0) -> list[Any]:
    """``source`` is a path, ``sample``, ``generated``, or None (the sample when there is one)."""
    if source in (None, "sample"):
        if schema.sample_input is not None:
            return [schema.sample_input]
        if source == "sample":
            raise LoadTestError(f"model {schema.name} publishes no sample input; use --data generated or a file")
        source = "generated"
    if source == "generated":
        rng = random.Random(seed)
        return [valid_record(schema, rng) for _ in range(GENERATED_RECORDS)]
    path = Path(source)
    if path.is_dir():
        return _images(path, schema)
    if not path.is_file():
        raise LoadTestUsage(f"--data {source}: no such file or folder (or use 'sample' or 'generated')")
    records = _csv(path, schema) if path.suffix.lower() == ".csv" else read_json_records(path)
    if not records:
        raise LoadTestError(f"--data {source}: no records in the file")
    return records


def read_json_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LoadTestError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return records


def _csv(path: Path, schema: ModelSchema) -> list[Any]:
    dtypes = {spec.name: _cell_dtype(spec) for spec in schema.inputs}
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: _cell(v, dtypes.get(k, "float64")) for k, v in row.items()} for row in csv.DictReader(handle)]


def _cell_dtype(spec: TensorSpec) -> str:
    """A categorical's cells are of its categories' type: text unless every category is a number."""
    if spec.dtype != "category":
        return spec.dtype
    kinds = {type(c) for c in spec.categories or []}
    return "int64" if kinds == {int} else "float64" if kinds and kinds <= {int, float} else "string"


def _cell(raw: str, dtype: str) -> Any:
    if dtype == "string":
        return raw
    if dtype == "bool":
        return raw.strip().lower() in ("1", "true", "yes")
    try:
        return int(raw) if dtype.startswith("int") else float(raw)
    except ValueError:
        return raw  # sent as-is: the service's answer to a bad cell is part of what is measured


def _images(folder: Path, schema: ModelSchema) -> list[Any]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LoadTestError(f"--data {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [{schema.field: base64.b64encode(p.read_bytes()).decode()} for p in files]


def encode_bodies(records: list[Any], adapter: Adapter) -> list[bytes]:
    return [adapter.encode(record) for record in records]
