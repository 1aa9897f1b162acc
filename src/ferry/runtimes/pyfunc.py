"""An MLflow ``python_function`` model, served through the Python class runtime (``ferry.runtimes.python``).

``ferry build`` of an MLflow folder whose model is Python code (``python_model`` or ``loader_module``) copies
the folder into the bundle as it is and writes a ``model.py`` subclassing ``MLflowPyfunc``; the bundle is then a
class bundle, which loads only with ``--trust-code``. A ``python_model`` (MLflow's cloudpickle of a
``PythonModel``) is unpickled here and called as MLflow calls it, ``predict(context, model_input)`` with a
pandas DataFrame of the signature's columns; a ``loader_module`` alone needs mlflow where it serves
(``mlflow.pyfunc.load_model``), as does a ``PythonModel`` subclass (its base class is mlflow's).
"""

from __future__ import annotations

import inspect
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ferry.errors import BundleError

MLFLOW_INSTALL = "pip install mlflow-skinny"


@dataclass
class PyfuncContext:
    """What MLflow hands ``load_context`` and ``predict``: the artifacts' local paths, and the model config."""

    artifacts: dict[str, str] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)


class MLflowPyfunc:
    """The Ferry class contract over an MLflow ``python_function`` folder: ``load()`` -> ``predict(frame)``.

    ``folder`` (the MLflow folder inside the bundle) and ``input_format`` are set by the bundle's model.py.
    """

    folder: ClassVar[Path]
    input_format: ClassVar[str] = "frame"

    def load(self) -> None:
        import yaml

        mlmodel = yaml.safe_load((self.folder / "MLmodel").read_text(encoding="utf-8"))
        conf = (mlmodel.get("flavors") or {}).get("python_function") or {}
        if conf.get("code"):  # MLflow's code_paths: importable by the model, as mlflow.pyfunc puts them
            sys.path.insert(0, str(_inside(self.folder, str(conf["code"]))))
        self.loaded: Any = None
        if conf.get("python_model"):
            self._load_python_model(conf)
        else:
            self._load_with_mlflow(str(conf.get("loader_module")))

    def _load_python_model(self, conf: dict[str, Any]) -> None:
        path = _inside(self.folder, str(conf["python_model"]))
        artifacts = {
            name: str(_inside(self.folder, str((entry or {}).get("path", ""))))
            for name, entry in (conf.get("artifacts") or {}).items()
        }
        self.context = PyfuncContext(artifacts, dict(conf.get("model_config") or {}))
        try:
            with path.open("rb") as file:
                self.python_model = pickle.load(file)  # cloudpickle's output; its helpers are cloudpickle's
        except ModuleNotFoundError as exc:
            raise BundleError(
                f"{self.folder.name}/{path.name} needs the module '{exc.name}' where it serves "
                f"({'install mlflow: ' + MLFLOW_INSTALL if (exc.name or '').startswith('mlflow') else exc})"
            ) from None
        load_context = getattr(self.python_model, "load_context", None)
        if load_context is not None:
            load_context(self.context)
        parameters = inspect.signature(self.python_model.predict).parameters
        self.takes_context = "context" in parameters or len(parameters) >= 2

    def _load_with_mlflow(self, loader: str) -> None:
        try:
            import mlflow.pyfunc
        except ImportError:
            raise BundleError(
                f"{self.folder.name}: its python_function flavor has no python_model, only loader_module "
                f"'{loader}', which only mlflow can load: install mlflow where it serves ({MLFLOW_INSTALL})"
            ) from None
        self.loaded = mlflow.pyfunc.load_model(str(self.folder))

    def predict(self, frame: Any) -> Any:
        if not hasattr(frame, "columns"):  # no signature: MLflow hands the client's columns as they are
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]

            frame = pd.DataFrame(frame)
        if self.loaded is not None:
            return self.loaded.predict(frame)
        if self.takes_context:
            return self.python_model.predict(self.context, frame)
        return self.python_model.predict(frame)


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.exists():
        raise BundleError(f"{folder.name}: MLmodel names '{name}', which is not in the folder")
    return path
