"""Trust and containment: only the server's trust lets a pickle run, decided by what a file holds; every
file a runtime opens is listed, hashed and inside its bundle; manifests are read with bounds; load errors
show no server paths."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsRegressor
from tests.conftest import models_when_loaded
from tests.hostile_files import skops_calling

import ferry
from ferry.errors import BundleError, IntegrityError, ManifestError, UntrustedPickle
from ferry.runtimes.load import load_bundle


class WritesMarker:
    """Unpickling this runs code: it creates the marker file, as an attacker's payload would run theirs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _classifier() -> LogisticRegression:
    return LogisticRegression().fit(np.array([[0.0, 0.0], [0.1, 0.2], [1.0, 1.0], [0.9, 1.1]]), [0, 0, 1, 1])


def _edit_manifest(bundle: Path, **changes: Any) -> dict[str, Any]:
    path = bundle / "ferry.yaml"
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    raw["options"].pop("compiled", None)  # a hostile manifest leaves out the compiled form, so the original loads
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def _add_artifact(bundle: Path, name: str, data: bytes, **changes: Any) -> None:
    """Put ``data`` in the bundle as ``name``, listed with its true hash and named by ``options.artifact``."""
    (bundle / name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    options = {"artifact": name, **changes.pop("options", {})}
    _edit_manifest(bundle, artifacts={name: digest}, options=options, **changes)


# -- item 1: a pickle under any name, and a bundle that vouches for itself --------------------------
def _payload(marker: Path, form: str) -> bytes:
    if form == "joblib":
        buffer = io.BytesIO()
        joblib.dump(WritesMarker(marker), buffer)
        return buffer.getvalue()
    if form == "joblib-zlib":
        buffer = io.BytesIO()
        joblib.dump(WritesMarker(marker), buffer, compress=("zlib", 3))
        return buffer.getvalue()
    return pickle.dumps(WritesMarker(marker), protocol=0 if form == "protocol-0" else 5)


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("model.bin", "joblib"),
        ("model.PKL", "pickle"),
        ("model.skops.bak", "joblib"),
        ("model.skops", "pickle"),  # a pickle wearing the safe format's name
        ("model.joblib", "joblib-zlib"),
        ("weights", "protocol-0"),  # no magic bytes at all: still only a pickle could read it
    ],
)
def test_a_pickle_under_any_name_runs_only_with_the_servers_trust(tmp_path: Path, name: str, form: str) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    marker = tmp_path / "marker"
    _add_artifact(bundle, name, _payload(marker, form), trusted=True)  # the bundle vouches for itself
    with pytest.raises(UntrustedPickle, match=rf"artifact '{name}' is .*unpickling runs arbitrary code"):
        load_bundle(bundle)
    assert not marker.exists()
    # Only the server's --trust-pickle unpickles it, which shows the file really was a pickle that runs code.
    with pytest.raises(Exception):  # noqa: B017 - what the payload returns is no model
        load_bundle(bundle, trust_pickle=True)
    assert marker.exists()


def test_a_file_is_judged_by_its_content_in_every_runtime(tmp_path: Path, example_repo: Path) -> None:
    marker = tmp_path / "marker"
    shutil.copytree(example_repo / "reviews", tmp_path / "repo" / "reviews")
    bundle = tmp_path / "repo" / "reviews" / "1"
    _add_artifact(bundle, "model.txt", _payload(marker, "joblib"))
    with pytest.raises(BundleError, match=r"artifact 'model.txt' holds a pickle, not a LightGBM text model"):
        load_bundle(bundle, trust_pickle=True)
    assert not marker.exists()


def test_a_bundle_cannot_declare_its_own_skops_types_trusted(tmp_path: Path) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    marker = tmp_path / "marker"
    evil = skops_calling("posix.system", f"touch {marker}")
    _add_artifact(bundle, "model.skops", evil, options={"skops_trusted_types": ["posix.system"]})
    with pytest.raises(
        UntrustedPickle, match=r"names types that skops does not trust .*: posix.system; .*--trust-pickle"
    ):
        load_bundle(bundle)
    assert not marker.exists()


def test_scikit_learn_classes_that_skops_does_not_trust_by_default_still_load(tmp_path: Path) -> None:
    import skops.io as sio

    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(np.eye(4), [0, 1, 0, 1])
    bundle = ferry.build(forest, "forest", tmp_path / "repo", compile=False)
    assert sio.get_untrusted_types(file=bundle / "model.skops") == ["sklearn.tree._tree.Tree"]
    assert [str(v) for v in load_bundle(bundle).runtime.predict(np.eye(4)).values] == ["0", "1", "0", "1"]


def test_serving_refuses_a_disguised_pickle_and_serves_a_trusted_one(serve: Any, tmp_path: Path) -> None:
    """The README's flow with real processes: `ferry build --trusted`, then `ferry serve --trust-pickle`."""
    model_file = tmp_path / "lin.joblib"
    # k-nearest neighbours has no compiled form, so serving it means unpickling it.
    joblib.dump(KNeighborsRegressor(n_neighbors=1).fit(np.array([[0.0], [1.0]]), [0.0, 2.0]), model_file)
    build = [
        "build",
        str(model_file),
        "--name",
        "lin",
        "--repo",
        str(tmp_path / "mine"),
        "--features",
        "x",
        "--trusted",
    ]
    built = subprocess.run([sys.executable, "-m", "ferry", *build], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr

    # One server without the operator's trust refuses both: the disguised pickle and the builder-trusted one.
    marker = tmp_path / "marker"
    repo = tmp_path / "repo"
    bundle = ferry.build(_classifier(), "evil", repo)
    _add_artifact(bundle, "model.bin", _payload(marker, "joblib"), trusted=True)
    shutil.copytree(tmp_path / "mine" / "lin", repo / "lin")
    untrusting = {"FERRY_TRUST_CODE": "0"}  # the test servers trust Ferry's own classes; this one trusts nothing
    server = serve(str(repo), wait_ready=False, env=untrusting)
    models = models_when_loaded(server.url)
    assert models["evil"]["state"] == "FAILED" and "artifact 'model.bin' is a pickle" in models["evil"]["error"]
    assert not marker.exists()
    assert models["lin"]["state"] == "FAILED" and "pickle" in models["lin"]["error"], models["lin"]
    trusted = serve(str(tmp_path / "mine"), "--trust-pickle")
    assert httpx.post(trusted.url + "/models/lin/predict", json={"x": 1.0}).json() == {"prediction": pytest.approx(2.0)}


# -- item 11: every file a runtime opens is listed, hashed and inside the bundle ---------------------
def test_an_unlisted_artifact_is_never_opened(tmp_path: Path) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    ferry.build(LogisticRegression().fit(np.eye(2), [1, 0]), "other", tmp_path / "o")
    (bundle / "other.skops").write_bytes((tmp_path / "o" / "other" / "1" / "model.skops").read_bytes())
    _edit_manifest(bundle, options={"artifact": "other.skops"})
    with pytest.raises(
        IntegrityError, match=r"options.artifact 'other.skops' is not listed in the manifest's artifacts"
    ):
        load_bundle(bundle)


def test_a_python_entrypoint_must_be_listed(tmp_path: Path) -> None:
    source = tmp_path / "doubler.py"
    source.write_text("class Doubler:\n    def predict(self, batch):\n        return [2 * x for x in batch]\n")
    spec = importlib.util.spec_from_file_location("doubler", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    bundle = ferry.build(module.Doubler, "double", tmp_path / "repo", input_schema=schema)
    marker = tmp_path / "marker"
    (bundle / "extra.py").write_text(f"open({str(marker)!r}, 'w')\nclass Doubler:\n    pass\n")
    _edit_manifest(bundle, options={"entrypoint": "extra.py:Doubler"})
    with pytest.raises(IntegrityError, match=r"options.entrypoint 'extra.py' is not listed"):
        load_bundle(bundle, trust_code=True)  # even a server that trusts code imports only listed files
    assert not marker.exists()


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
def test_an_artifact_outside_the_bundle_is_refused_unread(tmp_path: Path, form: str) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours\n")
    secret_hash = hashlib.sha256(outside.read_bytes()).hexdigest()
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    name = {
        "absolute": str(outside),
        "dotdot": "../" * 6 + str(outside).lstrip("/"),
        "symlink": "link.txt",
    }[form]
    if form == "symlink":
        (bundle / "link.txt").symlink_to(outside)
    _edit_manifest(bundle, artifacts={name: "0" * 64})  # a wrong hash: hashing would show the file's own
    with pytest.raises(IntegrityError) as caught:
        load_bundle(bundle)
    message = caught.value.message
    assert ("leads out of the bundle" if form == "symlink" else "is not a relative path inside the bundle") in message
    assert f"artifact '{name}'" in message
    assert secret_hash[:12] not in message and "sha256" not in message


def test_a_symlink_within_the_bundle_is_fine(tmp_path: Path) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    (bundle / "weights").mkdir()
    (bundle / "model.skops").rename(bundle / "weights" / "model.skops")
    (bundle / "model.skops").symlink_to(Path("weights") / "model.skops")
    assert load_bundle(bundle).runtime.predict(np.array([[1.0, 1.0]])).values == [1]  # its own integer class


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])  # the alias check reads bytes: any encoding YAML reads
def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path, encoding: str) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "metadata:\n" + "".join(f"  {line}\n" for line in lines)  # 10**10 strings once expanded
    path = bundle / "ferry.yaml"
    text = path.read_text()
    path.write_bytes(text.replace("metadata:\n", bomb, 1).encode(encoding))  # utf-16: with a byte-order mark
    started = time.monotonic()
    with pytest.raises(ManifestError, match=r"clf/1/ferry.yaml: not valid YAML: expands to more than 1000000 values"):
        load_bundle(bundle)
    assert time.monotonic() - started < 5


def test_a_huge_manifest_is_refused_unread(tmp_path: Path) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    with (bundle / "ferry.yaml").open("a") as fh:
        fh.write("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ManifestError, match=r"clf/1/ferry.yaml: larger than the limit of 1048576 bytes"):
        load_bundle(bundle)


def test_a_manifest_name_cannot_leave_the_repository(tmp_path: Path) -> None:
    bundle = ferry.build(_classifier(), "clf", tmp_path / "repo")
    _edit_manifest(bundle, name="../../escape")
    with pytest.raises(ManifestError, match=r"name '../../escape' is not a plain folder name"):
        load_bundle(bundle)


# -- item 16: load errors in /ready and /models show no server paths --------------------------------
def test_load_errors_show_no_server_paths(serve: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    missing = ferry.build(_classifier(), "missing", repo)
    (missing / "model.skops").unlink()
    garbled = ferry.build(_classifier(), "garbled", repo)
    # An ONNX bundle whose model does not parse: onnxruntime's own error names the full path of the file.
    _edit_manifest(garbled, runtime="onnx", input={"kind": "tensor", "tensors": [{"name": "x"}]})
    _add_artifact(garbled, "model.onnx", b"\x08\x07garbage")
    server = serve(str(repo), wait_ready=False)
    models = models_when_loaded(server.url)
    assert models["missing"]["error"] == "missing/1: artifact 'model.skops' is listed in the manifest but missing"
    assert "garbled/1/model.onnx" in models["garbled"]["error"]
    listing = httpx.get(server.url + "/models").text + httpx.get(server.url + "/ready").text
    assert str(tmp_path) not in listing and str(tmp_path.resolve()) not in listing
    assert str(tmp_path) in server.output()  # the operator's log keeps the whole story


def test_fsspec_keys_cannot_write_outside_the_destination(example_repo: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    from ferry.deploy.fetch import fetch_bundles
    from ferry.errors import FetchError

    memory = fsspec.filesystem("memory")
    for path in example_repo.rglob("*"):
        if path.is_file():
            memory.pipe(f"/evil/models/{path.relative_to(example_repo).as_posix()}", path.read_bytes())
    memory.pipe("/evil/models/../../../../escaped/owned.txt", b"owned")
    dest = tmp_path / "a" / "b" / "dest"
    try:
        with pytest.raises(
            FetchError, match=r"key '/evil/models/../../../../escaped/owned.txt' leaves the destination"
        ):
            fetch_bundles("memory://evil/models", dest)
    finally:
        memory.rm("/evil", recursive=True)
    assert not list(tmp_path.rglob("owned.txt"))
    assert list(dest.iterdir()) == []


def _onnx_with_external_weights(path: Path, location: str) -> None:
    """y = x @ W, with W (ones, [2, 1]) stored outside the model file at ``location``."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((2, 1), dtype=np.float32), "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "8"}.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [weights],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_onnx_external_weights_must_be_listed_artifacts(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    bundle = ferry.build(_classifier(), "ext", tmp_path / "repo")  # its manifest and model are replaced below
    weights = np.ones((2, 1), dtype=np.float32).tobytes()
    (bundle / "weights.bin").write_bytes(weights)
    model = tmp_path / "model.onnx"
    _onnx_with_external_weights(model, "weights.bin")
    onnx_input = {"kind": "tensor", "tensors": [{"name": "x", "dtype": "float32"}]}
    _add_artifact(bundle, "model.onnx", model.read_bytes(), runtime="onnx", input=onnx_input, output={"kind": "tensor"})
    with pytest.raises(IntegrityError, match=r"external data of tensor 'W' 'weights.bin' is not listed"):
        load_bundle(bundle)
    _edit_manifest(bundle, artifacts={"weights.bin": hashlib.sha256(weights).hexdigest()})
    assert load_bundle(bundle).runtime.predict(np.array([[1.0, 2.0]])).values == [3.0]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(weights)
    _onnx_with_external_weights(model, str(outside))
    _add_artifact(bundle, "model.onnx", model.read_bytes())
    with pytest.raises(IntegrityError, match=r"is not listed"):
        load_bundle(bundle)


@pytest.mark.parametrize("compress", ["gzip", "zlib", "none"])
def test_reading_what_a_hostile_pickle_imports_is_bounded(tmp_path: Path, compress: str) -> None:
    """The refusal's message (and containerize's requirements) read a pickle's imports without loading it: a
    compressed file that inflates without end, or one opcode declaring hundreds of MiB, stops the read at 64 MiB."""
    import gzip
    import struct
    import tracemalloc
    import zlib

    from ferry.bundle.trust import pickle_imports

    head = b"\x80\x04" + b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94"  # STACK_GLOBAL os.system, then
    body = head + b"\x8e" + struct.pack("<Q", 190 << 20) + bytes(200 << 20)  # BINBYTES8 of 190 MiB, each read
    if compress == "gzip":
        body = gzip.compress(body, 1, mtime=0)
    elif compress == "zlib":
        body = zlib.compress(body, 1)
    path = tmp_path / "bomb.joblib"
    path.write_bytes(body)
    del body
    tracemalloc.start()
    started = time.monotonic()
    try:
        found = pickle_imports(path, limit=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == ["os.system"]
    assert peak < 100 * 1024 * 1024, peak
    assert time.monotonic() - started < 10


def test_a_pickle_repeating_its_imports_is_read_in_linear_time_and_bounded_memory(tmp_path: Path) -> None:
    """From an adversarial review: each opcode rebuilt the set of names (40,000 repeats took 10 s, a file of a
    million hours), and each repeat of a memoised 8 MiB name was kept (120 of them: 2 GB from an 8 KiB file)."""
    import gzip
    import struct
    import tracemalloc

    from ferry.bundle.trust import pickle_imports

    repeated = b"\x80\x04" + b"\x8c\x08builtins\x94\x8c\x03len\x94" + b"h\x00h\x01\x93" * 200_000 + b"."
    (tmp_path / "repeat.pkl").write_bytes(repeated)
    started = time.monotonic()
    assert pickle_imports(tmp_path / "repeat.pkl") == ["builtins.len"]
    assert time.monotonic() - started < 5
    name = b"a" * (8 << 20)
    memoised = b"\x80\x04X" + struct.pack("<I", len(name)) + name + b"q\x00" + b"h\x00h\x00\x93" * 120 + b"."
    (tmp_path / "memo.pkl.gz").write_bytes(gzip.compress(memoised, 9, mtime=0))
    tracemalloc.start()
    try:
        found = pickle_imports(tmp_path / "memo.pkl.gz", limit=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == [] and peak < 80 * 1024 * 1024, (found, peak)


def test_a_zlib_joblib_file_is_read_to_its_end_whatever_it_compresses_to(tmp_path: Path) -> None:
    """joblib's zlib (compress=3) inflates past 1 MiB at a time: what the decompressor could not take yet was
    dropped, and the imports after it missed (gzip, bz2 and xz found them)."""
    from collections import OrderedDict
    from decimal import Decimal

    from ferry.bundle.trust import model_imports

    joblib.dump([bytes(4 << 20), OrderedDict(), Decimal(1)], tmp_path / "m.joblib", compress=("zlib", 3))
    assert (tmp_path / "m.joblib").read_bytes()[:1] == b"x"
    assert {"collections.OrderedDict", "decimal.Decimal"} <= set(model_imports(tmp_path / "m.joblib"))
