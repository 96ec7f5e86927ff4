"""Sources, steps, MLflow logging, the CLI and serving.

``from pipelines import FairMargin`` is the Python API (:mod:`pipelines.api`); it is imported on
first use so that the command line starts without loading MLflow.
"""

from typing import Any

__all__ = ["FairMargin"]


def __getattr__(name: str) -> Any:
    if name == "FairMargin":
        from pipelines.api import FairMargin

        return FairMargin
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
