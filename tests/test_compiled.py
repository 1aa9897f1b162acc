"""Compiled bundles: built as hashed .npy artifacts, served without the training stack, equal to the original.

Each model is built the way users build (``ferry.build``), then loaded twice: its compiled form and, with
``original=True``, its framework artifact. Hypothesis draws the rows, with NaN and zeros where the model
accepts them; tree scores must be identical, not close.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Perceptron
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

import ferry
from ferry.errors import BundleError, IntegrityError
from ferry.runtimes import Runtime
from ferry.runtimes.compiled import CompiledRuntime, load_array
from ferry.runtimes.load import load_bundle
from ferry.runtimes.trees import from_lightgbm

N = 4
_rng = np.random.default_rng(3)
_X = _rng.normal(size=(300, N)) * [1.0, 10.0, 0.1, 3.0]
_Y2 = (_X[:, 0] + _X[:, 1] / 10 > 0.3).astype(int)
_Y3 = _Y2 + (_X[:, 2] > 0.05)
_YR = _X @ [1.5, -0.2, 3.0, 0.5] + _rng.normal(size=300)
_XNAN = _X.copy()
_XNAN[_rng.random(_X.shape) < 0.1] = np.nan
_XNAN[_rng.random(_X.shape) < 0.1] = 0.0


def _lgbm(objective: str, y: np.ndarray, **params: Any) -> Any:
    model = lightgbm.LGBMRegressor if objective in ("regression", "poisson") else lightgbm.LGBMClassifier
    return model(n_estimators=25, num_leaves=7, min_child_samples=5, verbose=-1, objective=objective, **params).fit(
        _XNAN, y
    )


MODELS: dict[str, Any] = {
    "perceptron-pipeline": lambda: make_pipeline(StandardScaler(), Perceptron(random_state=0)).fit(_X, _Y3),
    "logistic-binary": lambda: LogisticRegression().fit(_X, np.where(_Y2 == 1, "yes", "no")),
    "linear-regression": lambda: LinearRegression().fit(_X, _YR),
    "decision-tree": lambda: DecisionTreeClassifier(max_depth=6, random_state=0).fit(_X, _Y3),
    "random-forest": lambda: RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(_X, _Y3),
    "extra-trees-regressor": lambda: ExtraTreesRegressor(n_estimators=10, random_state=0).fit(_X, _YR),
    "gb-binary-pipeline": lambda: make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=20, random_state=0)
    ).fit(_X, _Y2),
    "gb-3class": lambda: GradientBoostingClassifier(n_estimators=10, random_state=0).fit(_X, _Y3),
    "gb-regressor": lambda: GradientBoostingRegressor(n_estimators=20, random_state=0).fit(_X, _YR),
    "lightgbm-regression": lambda: _lgbm("regression", _YR),
    "lightgbm-binary": lambda: _lgbm("binary", _Y2),
    "lightgbm-multiclass": lambda: _lgbm("multiclass", _Y3),
    "lightgbm-poisson-zero-missing": lambda: _lgbm("poisson", np.exp(_YR / 10), zero_as_missing=True),
}
ACCEPTS_NAN = {name for name in MODELS if name.startswith("lightgbm")}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    repo = tmp_path_factory.mktemp("compiled")
    features = [f"f{i}" for i in range(N)]
    return {name: ferry.build(make(), name, repo, features=features) for name, make in MODELS.items()}


@pytest.fixture(scope="module")
def runtimes(bundles: dict[str, Path]) -> dict[str, tuple[Runtime, Runtime]]:
    """Each bundle loaded both ways, once."""
    return {
        name: (load_bundle(path).runtime, load_bundle(path, original=True).runtime) for name, path in bundles.items()
    }


def rows(allow_nan: bool) -> st.SearchStrategy[np.ndarray]:
    values = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)
    special = st.sampled_from([0.0, -0.0, 1e-36, np.nan] if allow_nan else [0.0, -0.0, 1e-36])
    return arrays(np.float64, st.tuples(st.integers(1, 30), st.just(N)), elements=st.one_of(values, special))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_build_stores_a_hashed_compiled_form_that_serves(bundles: dict[str, Path], name: str) -> None:
    manifest = yaml.safe_load((bundles[name] / "ferry.yaml").read_text())
    files = manifest["options"]["compiled"]
    arrays_listed = [f for f in manifest["artifacts"] if f.startswith("compiled-")]
    assert arrays_listed and all(f.endswith(".npy") for f in arrays_listed)
    assert json.dumps(files).count(".npy") == len(arrays_listed)  # every array the program names is listed
    assert manifest["metadata"]["compiled"].startswith("yes: ")
    assert isinstance(load_bundle(bundles[name]).runtime, CompiledRuntime)
    assert not isinstance(load_bundle(bundles[name], original=True).runtime, CompiledRuntime)


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_compiled_answers_equal_the_original(
    runtimes: dict[str, tuple[Runtime, Runtime]], name: str, data: st.DataObject
) -> None:
    x = data.draw(rows(name in ACCEPTS_NAN))
    compiled, original = (runtime.predict(x) for runtime in runtimes[name])
    if name != "linear-regression":  # labels and tree scores: identical
        assert compiled.values == original.values
    else:  # BLAS may round a dot product differently
        np.testing.assert_allclose(np.asarray(compiled.values), np.asarray(original.values), rtol=1e-9, atol=1e-9)
    assert getattr(runtimes[name][0], "has_proba", None) == (original.probabilities is not None)  # output lists
    if original.probabilities is None:
        assert compiled.probabilities is None
    else:
        assert compiled.probabilities is not None
        np.testing.assert_allclose(compiled.probabilities, original.probabilities, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), objective=st.sampled_from(["regression", "binary", "multiclass"]))
def test_tree_scores_are_lightgbms_own_bit_for_bit(seed: int, objective: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 5))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.15] = 0.0
    y = np.nan_to_num(x[:, 0]) + rng.normal(size=200)
    label = {"regression": y, "binary": (y > 0).astype(int), "multiclass": np.digitize(y, [-0.5, 0.5])}[objective]
    params = {"objective": objective, "num_leaves": int(rng.integers(2, 40)), "verbose": -1}
    if objective == "multiclass":
        params["num_class"] = 3
    booster = lightgbm.train(params, lightgbm.Dataset(x, label), num_boost_round=int(rng.integers(1, 30)))
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = rng.normal(size=(300, 5))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[rng.random(probe.shape) < 0.2] = rng.choice([0.0, -0.0, 1e-36, -1e-40])
    expected = np.asarray(booster.predict(probe, raw_score=True)).reshape(300, -1)
    np.testing.assert_array_equal(ensemble.predict_raw(probe), expected)  # level by level
    small = np.concatenate([ensemble.predict_raw(probe[i : i + 10]) for i in range(0, 300, 10)])
    np.testing.assert_array_equal(small, expected)  # bitvectors (QuickScorer)


def test_link_functions_use_the_c_librarys_exp_bit_for_bit() -> None:
    """LightGBM and scikit-learn's losses call C's exp; numpy's AVX-512 exp differs in the last bit on ~5%."""
    import math

    from ferry.runtimes.compiled import libm_exp

    values = np.random.default_rng(7).normal(scale=5, size=(4000, 3))
    expected = np.array([[math.exp(v) for v in row] for row in values])
    np.testing.assert_array_equal(libm_exp(values), expected)
    np.testing.assert_array_equal(libm_exp(np.array([800.0, -800.0, np.inf, -np.inf])), [np.inf, 0.0, np.inf, 0.0])
    assert np.isnan(libm_exp(np.array([np.nan]))).all()


def _numpy_simd_features() -> list[str]:
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]


def test_the_property_tests_pass_with_numpys_simd_dispatch_off_too() -> None:
    """numpy picks its kernels by CPU: run the exactness tests again on the baseline kernels, so a CPU
    difference shows up here (whichever path this machine takes by default) and not on a user's machine."""
    features = _numpy_simd_features()
    if not features:
        pytest.skip("numpy dispatches no SIMD kernels on this CPU: the default run is the baseline run")
    import os

    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(features)}
    selected = "equal_the_original or bit_for_bit or c_librarys_exp"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", selected],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_a_model_without_a_compiled_form_serves_its_original(tmp_path: Path) -> None:
    path = ferry.build(KNeighborsClassifier(3).fit(_X, _Y2), "knn", tmp_path)
    manifest = yaml.safe_load((path / "ferry.yaml").read_text())
    assert "compiled" not in manifest.get("options", {})
    assert manifest["metadata"]["compiled"] == "no: KNeighborsClassifier has no compiled form"  # says why
    assert not [f for f in manifest["artifacts"] if f.startswith("compiled-")]
    # integer classes answer as integers, as the model's own predict does (issue 21)
    assert (
        load_bundle(path).runtime.predict(_X[:3]).values
        == KNeighborsClassifier(3).fit(_X, _Y2).predict(_X[:3]).tolist()
    )


def test_build_can_skip_the_compiled_form(tmp_path: Path) -> None:
    path = ferry.build(LinearRegression().fit(_X, _YR), "plain", tmp_path, compile=False)
    assert not isinstance(load_bundle(path).runtime, CompiledRuntime)


def test_a_changed_compiled_array_is_refused_by_its_hash(bundles: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundles["linear-regression"], copy)
    np.save(copy / "compiled-coef.npy", np.zeros(N))
    with pytest.raises(IntegrityError, match=r"compiled-coef\.npy"):
        load_bundle(copy)


def test_compiled_arrays_never_unpickle(tmp_path: Path) -> None:
    np.save(tmp_path / "compiled-x.npy", np.asarray([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="not a plain numpy array"):
        load_array(tmp_path, "compiled-x.npy", {"compiled-x.npy": "..."})
    with pytest.raises(BundleError, match="not a listed artifact"):
        load_array(tmp_path, "compiled-y.npy", {"compiled-x.npy": "..."})


SERVE_WITHOUT_FRAMEWORKS = """
import json, sys
from pathlib import Path
from ferry.http.app import create_app
from ferry.settings import Settings
import numpy as np

app = create_app(Settings(repo=Path(sys.argv[1]), console=False))
registry = app.state.registry
registry.load_all()
out = {}
for name in ("iris", "diabetes", "reviews"):
    handle = registry.get(name)
    batch = ["最高の映画でした！"] if name == "reviews" else np.array([[5.1, 2.4]] if name == "iris" else [[0.05]])
    out[name] = [type(handle.model.runtime).__name__, handle.model.runtime.predict(batch).values]
heavy = sorted(m for m in ("sklearn", "scipy", "skops", "lightgbm") if m in sys.modules)
print(json.dumps({"models": out, "heavy": heavy}))
"""


def test_serving_compiled_examples_imports_no_training_stack(example_repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_FRAMEWORKS, str(example_repo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert {name: kind for name, (kind, _) in report["models"].items()} == dict.fromkeys(
        ("iris", "diabetes", "reviews"), "CompiledRuntime"
    )
    assert report["models"]["iris"][1] == ["virginica"]
    reviews = load_bundle(example_repo / "reviews" / "1", original=True).runtime.predict(["最高の映画でした！"])
    assert report["models"]["reviews"][1] == reviews.values  # the original's number, bit for bit


def test_a_served_process_maps_no_framework_library(serve: Any, example_repo: Path) -> None:
    """The real ``ferry serve`` of the examples: no scikit-learn, scipy or LightGBM shared object is mapped."""
    server = serve(str(example_repo), "--grpc-port", "0")
    import httpx

    answer = httpx.post(server.url + "/models/reviews/predict", json={"text": "最高の映画でした！"}).json()
    assert isinstance(answer["prediction"], float)
    mapped = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert not [name for name in ("sklearn", "scipy", "lightgbm") if f"/{name}/" in mapped]
