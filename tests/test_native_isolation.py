"""A model file a native library misreads fails that model alone (issue 22 item 10).

The files are real LightGBM models, written by LightGBM and then mutated with a correct hash, as an
attacker with write access to one bundle would: arrays cut short, a child pointing at its parent, a
feature out of range. LightGBM aborts (SIGABRT), segfaults or loops for ever on them; Ferry checks the
file first and loads native formats in a trial process, so a real ``ferry serve`` keeps serving the good
model and shows the bad ones FAILED with the reason.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import msgspec
import numpy as np
import pytest

from ferry.builder import build
from ferry.bundle.manifest import read_manifest, write_manifest
from ferry.errors import BundleError
from ferry.runtimes.lightgbm_check import check_lightgbm_text

ROWS = np.random.default_rng(0).normal(size=(300, 4))


def _train(params: dict[str, Any], y: np.ndarray, x: np.ndarray = ROWS, **dataset: Any) -> str:
    booster = lightgbm.train({"verbose": -1, "num_leaves": 7, **params}, lightgbm.Dataset(x, y, **dataset), 3)
    text: str = booster.model_to_string()
    return text


@pytest.fixture(scope="module")
def binary_model() -> str:
    return _train({"objective": "binary"}, (ROWS[:, 0] + ROWS[:, 1] > 0).astype(int))


def real_models(binary: str) -> dict[str, str]:
    """Models as LightGBM writes them: binary, multiclass with a categorical split, linear trees, one leaf."""
    categorical = ROWS.copy()
    categorical[:, 2] = np.random.default_rng(1).integers(0, 12, size=len(ROWS))
    classes = (categorical[:, 2] % 3).astype(int)
    return {
        "binary": binary,
        "multiclass_categorical": _train(
            {"objective": "multiclass", "num_class": 3, "min_data_per_group": 5, "cat_smooth": 1},
            classes,
            categorical,
            categorical_feature=[2],
        ),
        "linear": _train({"objective": "regression", "linear_tree": True}, ROWS[:, 0] * 2 + ROWS[:, 1]),
        "one_leaf": _train({"objective": "regression", "min_data_in_leaf": 1000}, ROWS[:, 0]),
    }


def with_sizes(text: str) -> str:
    """``tree_sizes`` recomputed, as an attacker would, so the mutation itself reaches the tree parser."""
    head, _, rest = text.partition("\nTree=0")
    trees, _, tail = ("Tree=0" + rest).partition("end of trees")
    blocks = [b for b in re.split(r"(?=^Tree=\d+)", trees, flags=re.M) if b]
    sizes = " ".join(str(len(b.encode())) for b in blocks)
    return re.sub(r"tree_sizes=.*", f"tree_sizes={sizes}", head) + "\n" + trees + "end of trees" + tail


def mutate(text: str, key: str, change: Callable[[list[str]], list[str]]) -> str:
    """``key`` of the first tree changed, ``tree_sizes`` kept consistent."""
    start = text.index("\n" + key + "=", text.index("Tree=0")) + 1
    end = text.index("\n", start)
    values = text[start + len(key) + 1 : end].split(" ")
    return with_sizes(text[:start] + f"{key}=" + " ".join(change(values)) + text[end:])


# name -> (mutation, what the refusal names). What LightGBM 4.7 does with each is in the comment.
MUTATIONS: dict[str, tuple[Callable[[str], str], str]] = {
    # SIGABRT ("terminate called without an active exception") while loading
    "truncated_leaf_value": (lambda t: mutate(t, "leaf_value", lambda v: v[:2]), "leaf_value has 2 values, 7 expected"),
    # predict loops for ever
    "truncated_left_child": (lambda t: mutate(t, "left_child", lambda v: v[:2]), "left_child has 2 values, 6 expected"),
    # loads, then reads past the array: garbage predictions
    "truncated_split_feature": (
        lambda t: mutate(t, "split_feature", lambda v: v[:2]),
        "split_feature has 2 values, 6 expected",
    ),
    # predict loops for ever
    "child_points_at_parent": (
        lambda t: mutate(t, "left_child", lambda v: [v[0], "0", *v[2:]]),
        "left_child[1]=0 points at a node already in the tree",
    ),
    # reads past the array in predict: SIGSEGV on some rows
    "child_out_of_range": (
        lambda t: mutate(t, "right_child", lambda v: ["50", *v[1:]]),
        "right_child[0]=50 is out of range",
    ),
    "leaf_out_of_range": (lambda t: mutate(t, "right_child", lambda v: ["-50", *v[1:]]), "names leaf 49, out of range"),
    "feature_out_of_range": (
        lambda t: mutate(t, "split_feature", lambda v: ["999", *v[1:]]),
        "split_feature[0]=999 is out of range (max_feature_idx=3)",
    ),
    "negative_feature": (lambda t: mutate(t, "split_feature", lambda v: ["-5", *v[1:]]), "split_feature[0]=-5"),
    # SIGABRT while loading: num_leaves no longer matches the arrays
    "num_leaves_inflated": (lambda t: with_sizes(t.replace("num_leaves=7", "num_leaves=70", 1)), "70 expected"),
    # SIGABRT while loading: the offsets LightGBM parses trees at are wrong
    "tree_sizes_stale": (lambda t: t.replace("num_leaves=7", "num_leaves=70", 1), "does not match the trees' sizes"),
    "shared_leaf": (lambda t: mutate(t, "right_child", lambda v: [*v[:-1], v[-2]]), "a second time"),
}


def test_every_file_lightgbm_writes_passes(binary_model: str) -> None:
    for name, text in real_models(binary_model).items():
        check_lightgbm_text(text.encode(), name)  # raises on a false refusal
        lightgbm.Booster(model_str=text)  # and LightGBM reads it


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutated_files_are_refused_naming_the_field(binary_model: str, name: str) -> None:
    change, expected = MUTATIONS[name]
    with pytest.raises(BundleError) as caught:
        check_lightgbm_text(change(binary_model).encode(), "model.txt")
    assert caught.value.message.startswith("model.txt, Tree=0: ") or "tree_sizes" in caught.value.message
    assert expected in caught.value.message


def test_lightgbm_itself_crashes_or_hangs_on_them(binary_model: str, tmp_path: Path) -> None:
    """Why the checks and the trial exist: without them these files take the whole process down."""
    code = (
        "import lightgbm, numpy as np, sys; b = lightgbm.Booster(model_file=sys.argv[1]); b.predict(np.zeros((50, 4)))"
    )
    outcomes = {}
    for name in ("truncated_leaf_value", "child_points_at_parent"):
        path = tmp_path / f"{name}.txt"
        path.write_text(MUTATIONS[name][0](binary_model))
        try:
            outcomes[name] = subprocess.run(
                [sys.executable, "-c", code, str(path)], capture_output=True, timeout=5
            ).returncode
        except subprocess.TimeoutExpired:
            outcomes[name] = "hung"
    assert outcomes["truncated_leaf_value"] == -6  # SIGABRT
    assert outcomes["child_points_at_parent"] == "hung"


# -- a real server ----------------------------------------------------------------------------------


def lightgbm_bundle(repo: Path, name: str, good: str, text: str) -> Path:
    """A bundle of the ``good`` model, with no compiled form, whose model.txt is then ``text`` under a correct hash."""
    bundle = build(lightgbm.Booster(model_str=good), name, repo, sample_input=[0.1, 0.2, 0.3, 0.4], compile=False)
    _replace_artifact(bundle, "model.txt", text.encode())
    return bundle


def _replace_artifact(bundle: Path, artifact: str, data: bytes) -> None:
    (bundle / artifact).write_bytes(data)
    manifest = read_manifest(bundle)
    hashes = {**manifest.artifacts, artifact: hashlib.sha256(data).hexdigest()}
    write_manifest(bundle, msgspec.structs.replace(manifest, artifacts=hashes))


class _Abort:
    """Unpickling this calls abort(3): a native crash inside a (trusted) scikit-learn file's load."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.abort, ())


class _Hang:
    def __reduce__(self) -> tuple[Any, ...]:
        return (time.sleep, (3600,))


def sklearn_bundle(repo: Path, name: str, payload: object) -> Path:
    """An uncompiled scikit-learn joblib bundle whose pickle is then ``payload``, under a correct hash."""
    import joblib
    from sklearn.linear_model import LinearRegression

    fitted = repo.parent / f"{name}.joblib"
    joblib.dump(LinearRegression().fit(ROWS, ROWS[:, 0]), fitted)
    bundle = build(str(fitted), name, repo, sample_input=[0.1, 0.2, 0.3, 0.4], trusted=True, compile=False)
    _replace_artifact(bundle, "model.joblib", pickle.dumps(payload))
    return bundle


def models_by_name(url: str, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """``/models`` once nothing is LOADING any more: name -> its one version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = httpx.get(url + "/models", timeout=5).json()["models"]
        versions = {m["name"]: m["versions"][0] for m in listing}
        if versions and all(v["state"] != "LOADING" for v in versions.values()):
            return versions
        time.sleep(0.1)
    raise AssertionError(f"models still loading after {timeout} s")


def test_server_keeps_serving_beside_models_that_crash_or_hang(
    binary_model: str, tmp_path: Path, serve: Callable[..., Any]
) -> None:
    repo = tmp_path / "repo"
    lightgbm_bundle(repo, "good", binary_model, binary_model)
    bad = ("truncated_leaf_value", "child_points_at_parent", "child_out_of_range", "feature_out_of_range")
    for name in bad:
        lightgbm_bundle(repo, name.replace("_", "-"), binary_model, MUTATIONS[name][0](binary_model))
    sklearn_bundle(repo, "aborts", _Abort())  # passes every check Ferry can make: only the trial contains it
    sklearn_bundle(repo, "hangs", _Hang())
    server = serve(
        str(repo), "--trust-pickle", "--trial-timeout", "20", env={"FERRY_TRUST_CODE": "0"}, wait_ready=False
    )
    models = models_by_name(server.url)
    assert models["good"]["state"] == "READY"
    expected = np.asarray(lightgbm.Booster(model_str=binary_model).predict(np.asarray([[0.1, 0.2, 0.3, 0.4]])))
    reply = httpx.post(server.url + "/models/good/predict", json=[0.1, 0.2, 0.3, 0.4], timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["prediction"] == pytest.approx(float(expected[0]))
    for name in bad:
        failed = models[name.replace("_", "-")]
        assert failed["state"] == "FAILED"
        assert MUTATIONS[name][1] in failed["error"]
    assert models["aborts"]["state"] == "FAILED"
    assert "crashed the trial load (killed by SIGABRT)" in models["aborts"]["error"]
    assert models["hangs"]["state"] == "FAILED"
    assert "did not finish within 20 s" in models["hangs"]["error"]
    ready = httpx.get(server.url + "/ready", timeout=5)
    assert ready.status_code == 503
    states = {m["name"]: m for m in ready.json()["models"]}
    assert states["aborts"]["state"] == "FAILED" and "SIGABRT" in states["aborts"]["error"]
    assert states["good"]["state"] == "READY"
    assert server.proc.poll() is None  # the server never died
    assert httpx.post(server.url + "/models/child-out-of-range/predict", json=[0.1, 0.2, 0.3, 0.4]).status_code == 503
    assert server.proc.poll() is None
    assert "FAILED to load" in server.output()


@pytest.mark.parametrize("name", ["truncated_leaf_value", "child_points_at_parent"])
def test_ferry_build_refuses_a_malformed_file_before_lightgbm_reads_it(
    binary_model: str, tmp_path: Path, name: str
) -> None:
    """The build reads the file in its own process: a crash there was SIGABRT, a cycle a hang."""
    change, message = MUTATIONS[name]
    (tmp_path / "model.txt").write_text(change(binary_model))
    done = subprocess.run(
        [sys.executable, "-m", "ferry", "build", "model.txt", "--name", "m", "--repo", "models"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode not in (0, -6, 134), done.returncode  # refused, not built and not aborted
    assert message in done.stderr + done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "models" / "m").exists()
