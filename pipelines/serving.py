"""The registered model: an MLflow pyfunc that answers fair-margin questions for feature rows.

Input: one row per position with the panel's state at the decision time (the model's features,
``sigma_bar``, ``sigma_ann``, ``bar_minutes``, ``traded_notional_per_minute``,
``minutes_to_expiry``), the position's ``notional`` and each side's liquidation cost
(``liquidation_cost_long``, ``liquidation_cost_short``: fractions of notional, from a book walk);
optionally ``published_initial_margin_rate``. Output: the fields of a flags row that depend on the
model.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from features._checks import FairmarginError, FairmarginInputError, require_columns
from models.fair import FairMarginModel
from models.horizon import liquidation_horizon_minutes
from pipelines.config import ExperimentConfig

__all__ = ["OUTPUT_COLUMNS", "STATE_COLUMNS", "FairMarginPyfunc", "input_columns", "single_thread"]

STATE_COLUMNS = [
    "sigma_bar", "sigma_ann", "bar_minutes", "traded_notional_per_minute", "minutes_to_expiry",
]  # fmt: skip
POSITION_COLUMNS = ["notional", "liquidation_cost_long", "liquidation_cost_short"]
OUTPUT_COLUMNS = [
    "fair_initial_margin_rate", "fair_long_rate", "fair_short_rate", "fair_lower", "fair_upper",
    "binding_side", "horizon_minutes", "implied_horizon_minutes", "implied_horizon_censored",
    "deviation", "status", "score", "drivers", "coverage", "base_latency_minutes",
    "participation",
]  # fmt: skip


def single_thread(model: FairMarginModel) -> None:
    """Make the model's LightGBM predictions single-threaded (same numbers, less overhead on
    small inputs)."""
    for reg in model.regressors_.values():
        if getattr(reg, "booster_", None) is not None:
            reg.set_threads(1)


def input_columns(model: FairMarginModel) -> list[str]:
    """The columns the pyfunc reads, in order."""
    return list(dict.fromkeys([*model.features_, *STATE_COLUMNS, *POSITION_COLUMNS]))


class FairMarginPyfunc(PythonModel):
    """MLflow pyfunc around a fitted :class:`FairMarginModel` and its training config."""

    def __init__(self, model: FairMarginModel, cfg: ExperimentConfig) -> None:
        self.model = model
        self.settings: dict[str, Any] = asdict(cfg)

    @property
    def cfg(self) -> ExperimentConfig:
        from pipelines.config import load_experiment_dict

        cached = getattr(self, "_cfg", None)  # not pickled by older versions: built on demand
        if not isinstance(cached, ExperimentConfig):
            cached = load_experiment_dict(self.settings)
            self._cfg = cached
        return cached

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Answers for feature rows; bad input raises MLflow's INVALID_PARAMETER_VALUE, which
        the scoring server turns into a 400 with the message (never a 500)."""
        del context, params
        try:
            return self._predict(model_input)
        except (FairmarginError, ValueError, KeyError, TypeError) as exc:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(str(exc)) from None

    def load_context(self, context: Any) -> None:
        """Predict on one thread: a served request holds a few rows, where OpenMP's thread
        start-up costs more than the trees."""
        del context
        single_thread(self.model)

    def _predict(self, model_input: Any) -> pd.DataFrame:
        from pipelines.flag import judge, status_of

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if model_input.empty:
            raise FairmarginInputError("fair-margin input: no rows")
        require_columns(model_input, [*STATE_COLUMNS, *POSITION_COLUMNS], who="fair-margin input")
        rows = model_input.reset_index(drop=True)
        for c in self.model.features_:
            if c not in rows:
                rows[c] = np.nan  # a feature family the caller lacks is missing, as in training
        for c in (*STATE_COLUMNS, *POSITION_COLUMNS):
            if rows[c].dtype == np.float64:
                continue
            try:
                rows[c] = rows[c].astype(np.float64)
            except (TypeError, ValueError):
                raise FairmarginInputError(
                    f"fair-margin input: {c} must be a number, got {rows[c].iloc[0]!r}"
                ) from None
        notional = rows["notional"].to_numpy(dtype=np.float64)
        if (~np.isfinite(notional) | (notional <= 0)).any():
            bad = notional[~np.isfinite(notional) | (notional <= 0)][0]
            raise FairmarginInputError(
                f"fair-margin input: notional must be a positive number, got {float(bad)!r}"
            )
        for c in ("liquidation_cost_long", "liquidation_cost_short"):
            v = rows[c].to_numpy(dtype=np.float64)
            if (v < 0).any():
                raise FairmarginInputError(
                    f"fair-margin input: {c} must be a fraction >= 0, got {float(v[v < 0][0])!r}"
                )
        cfg = self.cfg
        horizon = liquidation_horizon_minutes(
            notional,
            rows["traded_notional_per_minute"].to_numpy(dtype=np.float64),
            base_latency_minutes=cfg.base_latency_minutes,
            participation=cfg.participation,
            minutes_to_expiry=rows["minutes_to_expiry"].to_numpy(dtype=np.float64),
        )
        published = (
            rows["published_initial_margin_rate"].to_numpy(dtype=np.float64)
            if "published_initial_margin_rate" in rows
            else np.full(len(rows), np.nan)
        )
        j = judge(
            self.model,
            rows,
            horizon,
            rows["liquidation_cost_long"].to_numpy(dtype=np.float64),
            rows["liquidation_cost_short"].to_numpy(dtype=np.float64),
            published,
        )
        fair = np.maximum(j["fair_long_rate"], j["fair_short_rate"])
        usable = np.isfinite(fair)
        status, deviation, score = status_of(
            published, fair, j["fair_lower"], j["fair_upper"], cfg.materiality, usable
        )
        no_rate = ~np.isfinite(published)
        status[no_rate & usable] = ""
        return pd.DataFrame(
            {
                "fair_initial_margin_rate": fair,
                "fair_long_rate": j["fair_long_rate"],
                "fair_short_rate": j["fair_short_rate"],
                "fair_lower": j["fair_lower"],
                "fair_upper": j["fair_upper"],
                "binding_side": j["binding_side"].astype(str),
                "horizon_minutes": horizon,
                "implied_horizon_minutes": j["implied_horizon_minutes"],
                "implied_horizon_censored": j["implied_horizon_censored"].astype(str),
                "deviation": deviation,
                "status": status.astype(str),
                "score": score,
                "drivers": j["drivers"].astype(str),
                "coverage": cfg.coverage,
                "base_latency_minutes": cfg.base_latency_minutes,
                "participation": cfg.participation,
            }
        )[OUTPUT_COLUMNS]
