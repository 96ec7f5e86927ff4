"""MLflow at the edge: the tracking store, runs that end FAILED on error, inputs, the registry.

The default store is a SQLite file ``mlflow.db`` in the working folder (``mlflow ui
--backend-store-uri sqlite:///mlflow.db`` shows it); ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from features._checks import FairmarginError
from models.fair import FairMarginModel
from pipelines.config import ExperimentConfig, flatten

__all__ = [
    "EXPERIMENT",
    "MODEL_NAME",
    "configure_tracking",
    "load_registered",
    "log_bundle_input",
    "log_model",
    "mlflow_run",
]

log = logging.getLogger(__name__)

EXPERIMENT = "fairmargin"
MODEL_NAME = "fair-margin"
CHAMPION = "champion"
_PIP_REQUIREMENTS = [
    "fairmargin",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "lightgbm",
    "mlflow",
]


def configure_tracking() -> str:
    """Point MLflow at ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``; return it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    # mlflow sets its loggers to INFO when imported: database set-up and registry chatter
    # stay quiet unless the caller logs at INFO itself (fairmargin -v)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def mlflow_run(
    run_name: str, cfg: ExperimentConfig, *, kind: str, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """An MLflow run with the whole resolved config as params; FAILED if the body raises."""
    import mlflow

    configure_tracking()
    mlflow.set_experiment(EXPERIMENT)
    run = mlflow.start_run(run_name=run_name, tags={"fairmargin.kind": kind, **(tags or {})})
    try:
        mlflow.log_params({k: str(v) for k, v in flatten(cfg).items()})
        yield str(run.info.run_id)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_bundle_input(path: Path, tables: Mapping[str, pd.DataFrame | None], digest: str) -> None:
    """Log the bundle as an MLflow dataset: a row per table (rows, columns, time span)."""
    import mlflow
    import mlflow.data

    summary = []
    for name, df in tables.items():
        if df is None:
            continue
        span = ""
        for col in ("timestamp", "as_of"):
            if col in df and len(df):
                span = f"{df[col].min()} .. {df[col].max()}"
                break
        summary.append({"table": name, "rows": len(df), "columns": len(df.columns), "span": span})
    frame = pd.DataFrame(summary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
        dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            frame, source=str(Path(path).resolve()), name=Path(path).name, digest=digest[:32]
        )
        mlflow.log_input(dataset, context="bundle")


def log_model(
    model: FairMarginModel,
    cfg: ExperimentConfig,
    example: pd.DataFrame,
    *,
    register: bool = True,
    promote: bool = False,
    challenge: Callable[[str], tuple[bool, Mapping[str, float]]] | None = None,
) -> tuple[str, str | None]:
    """Log the pyfunc (signature and input example from ``example``), register it as
    ``fair-margin`` and decide the ``champion`` alias: the first version takes it; ``promote``
    forces it; otherwise, with ``challenge``, it moves only when ``challenge(champion_uri)``
    says the new model beats the current champion on the same backtest (its comparison
    metrics are logged to the active run, with the decision as tag
    ``fairmargin.champion_decision``); without ``challenge`` the champion stays.

    Returns (model URI, registered version or None).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from pipelines.serving import FairMarginPyfunc, input_columns

    pyfunc = FairMarginPyfunc(model, cfg)
    example = example[[*input_columns(model), "published_initial_margin_rate"]].head(5)
    example = example.reset_index(drop=True)
    example = example.astype({c: "float64" for c in example.columns})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = infer_signature(example, pyfunc.predict(None, example))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc,
            signature=signature,
            input_example=example,
            pip_requirements=_PIP_REQUIREMENTS,
            registered_model_name=MODEL_NAME if register else None,
        )
    version = None if not register else str(info.registered_model_version)
    if version is not None:
        client = MlflowClient()
        try:
            current = str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
        except Exception:  # the registry raises when the alias does not exist
            current = None
        if current is None:
            decision = "first version"
        elif promote:
            decision = "forced (--promote)"
        elif challenge is None:
            decision = "kept: no comparison"
        else:
            wins, metrics = challenge(f"models:/{MODEL_NAME}/{current}")
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            decision = (
                f"challenger beats version {current}"
                if wins
                else f"kept version {current}: challenger does not beat it"
            )
            promote = wins
        if current is None or promote:
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
            log.info("%s version %s is now %s (%s)", MODEL_NAME, version, CHAMPION, decision)
        mlflow.set_tag("fairmargin.champion_decision", decision)
        return f"models:/{MODEL_NAME}/{version}", version
    return str(info.model_uri), None


def load_registered(uri: str) -> tuple[FairMarginModel, ExperimentConfig]:
    """Load a logged fair-margin model by URI (``models:/fair-margin@champion``, ``runs:/...``)."""
    import mlflow

    from pipelines.serving import FairMarginPyfunc

    configure_tracking()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairmarginError(f"--model {uri}: cannot load it: {first}") from None
    inner: Any = loaded.unwrap_python_model()
    if not isinstance(inner, FairMarginPyfunc):
        raise FairmarginError(f"--model {uri}: not a fair-margin model")
    return inner.model, inner.cfg
