"""The registered model: an MLflow pyfunc that answers fair-margin questions for feature rows.

Input: one row per position with the panel's state at the decision time (the model's features,
``sigma_bar``, ``sigma_ann``, ``bar_minutes``, ``traded_notional_per_minute``,
``minutes_to_expiry``), the position's ``notional`` and each side's liquidation cost
(``liquidation_cost_long``, ``liquidation_cost_short``: fractions of notional, from a book walk);
optionally ``published_initial_margin_rate``. Output: the fields of a flags row that depend on the
model.

A served request holds a few rows, so the per-call work is kept to numpy: the rows become one
float matrix, and each distinct market state (the feature and state columns: everything but the
position) has its quantile grid and its driver texts computed once and kept in a bounded LRU
cache, as :class:`pipelines.api.FairMargin` keeps its states. Positions on a state already seen
(another notional, book cost or published rate) cost a few array operations; the answer is the
same as :func:`pipelines.flag.judge` on the same rows either way.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel
from numpy.typing import NDArray

from features._checks import FairmarginError, FairmarginInputError, require_columns
from models.fair import FairMarginModel, QuantileGrid
from models.horizon import liquidation_horizon_minutes
from models.labels import SIDES
from pipelines.config import ExperimentConfig
from pipelines.explain import contributions, nearest_grid_index
from pipelines.flag import judge_on_grid, status_of, take_grid

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


@dataclass
class _State:
    """One market state's quantile grid (one row) and its driver texts by (grid index, side)."""

    grid: QuantileGrid
    texts: dict[tuple[int, str], str] = field(default_factory=dict)


def _stack(grids: list[QuantileGrid]) -> QuantileGrid:
    if len(grids) == 1:
        return grids[0]
    return QuantileGrid(
        horizons=grids[0].horizons,
        quantile={s: np.vstack([g.quantile[s] for g in grids]) for s in SIDES},
        lower={s: np.vstack([g.lower[s] for g in grids]) for s in SIDES},
        upper={s: np.vstack([g.upper[s] for g in grids]) for s in SIDES},
        scale=np.vstack([g.scale for g in grids]),
    )


class FairMarginPyfunc(PythonModel):
    """MLflow pyfunc around a fitted :class:`FairMarginModel` and its training config.

    ``max_states`` bounds the cache of market states (quantile grid and driver texts); 0 turns
    it off.
    """

    max_states = 4096

    def __init__(self, model: FairMarginModel, cfg: ExperimentConfig) -> None:
        self.model = model
        self.settings: dict[str, Any] = asdict(cfg)

    def __getstate__(self) -> dict[str, Any]:
        # the state cache and its lock are per process: never pickled
        state = dict(self.__dict__)
        for k in ("_states", "_lock", "_columns"):
            state.pop(k, None)
        return state

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
        """Predict on one thread (a served request holds a few rows, where OpenMP's thread
        start-up costs more than the trees); rebuild the config from ``settings`` once, so a
        config class that gained a field since the model was logged still reads it (the
        pickled config object stays the fallback)."""
        from pipelines.config import load_experiment_dict

        del context
        single_thread(self.model)
        with contextlib.suppress(FairmarginError, ValueError, TypeError):
            self._cfg = load_experiment_dict(self.settings)

    # ----------------------------------------------------------------- input
    @property
    def state_columns(self) -> list[str]:
        """The columns that make a market state (the model's features and ``STATE_COLUMNS``):
        the input matrix's first columns, then ``POSITION_COLUMNS``."""
        cols = getattr(self, "_columns", None)
        if cols is None:
            cols = list(dict.fromkeys([*self.model.features_, *STATE_COLUMNS]))
            cols = [c for c in cols if c not in POSITION_COLUMNS]
            self._columns = cols
        return cols

    def _matrix(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """The rows as one float matrix: ``state_columns`` then ``POSITION_COLUMNS`` (a feature
        the caller lacks is NaN, as in training)."""
        cols = [*self.state_columns, *POSITION_COLUMNS]
        try:
            return np.array(
                frame.reindex(columns=cols).to_numpy(dtype=np.float64, na_value=np.nan),
                dtype=np.float64,
            )
        except (TypeError, ValueError):
            pass
        for c in cols:  # name the first column and value that is not a number
            if c not in frame:
                continue
            values = frame[c]
            try:
                values.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                coerced = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
                bad = np.flatnonzero(np.isnan(coerced) & values.notna().to_numpy())
                shown = values.iloc[int(bad[0])] if bad.size else values.iloc[0]
                raise FairmarginInputError(
                    f"fair-margin input: {c} must be a number, got {shown!r}"
                ) from None
        raise FairmarginInputError("fair-margin input: columns must be numbers")

    def _frame(self, X: NDArray[np.float64]) -> pd.DataFrame:
        """State rows as the panel-like frame the model reads (one float block)."""
        return pd.DataFrame(X[:, : len(self.state_columns)], columns=self.state_columns)

    # ----------------------------------------------------------------- state cache
    def _cache(self) -> tuple[OrderedDict[bytes, _State], threading.Lock]:
        states = getattr(self, "_states", None)
        lock = getattr(self, "_lock", None)
        if states is None or lock is None:
            states, lock = OrderedDict(), threading.Lock()
            self._states, self._lock = states, lock
        return states, lock

    def _state_entries(self, keys: list[bytes], X: NDArray[np.float64]) -> list[_State]:
        """Each distinct state's entry (``X`` has one row per key), from the cache or computed
        in one batch."""
        states, lock = self._cache()
        with lock:
            found = [states.get(k) for k in keys]
            for k, e in zip(keys, found, strict=True):
                if e is not None:
                    states.move_to_end(k)
        miss = [i for i, e in enumerate(found) if e is None]
        if miss:
            grid = self.model.quantile_grid(self._frame(X[miss]))
            new = {
                keys[i]: _State(take_grid(grid, np.array([j], dtype=np.intp)))
                for j, i in enumerate(miss)
            }
            with lock:
                for k, e in new.items():
                    states[k] = e
                while len(states) > max(int(self.max_states), 0):
                    states.popitem(last=False)
            for i in miss:
                found[i] = new[keys[i]]
        return [e for e in found if e is not None]

    def _drivers(
        self,
        entries: list[_State],
        X: NDArray[np.float64],
        grid: QuantileGrid,
        code: NDArray[np.intp],
        gi: NDArray[np.intp],
        binding: NDArray[Any],
        wanted: NDArray[np.bool_],
    ) -> NDArray[np.object_]:
        """Driver texts of the wanted rows, at each row's grid horizon on its binding side;
        contributions are computed only for (state, horizon, side) not seen before."""
        drivers = np.full(len(code), "", dtype=object)
        need: dict[tuple[int, int, str], list[int]] = {}
        for k in np.flatnonzero(wanted):
            s, key = int(code[k]), (int(gi[k]), str(binding[k]))
            text = entries[s].texts.get(key)
            if text is None:
                need.setdefault((s, *key), []).append(int(k))
            else:
                drivers[k] = text
        if need:
            items = list(need)
            sidx = np.array([s for s, _, _ in items], dtype=np.intp)
            contrib = contributions(
                self.model,
                self._frame(X[sidx]),
                take_grid(grid, sidx),
                only=(
                    np.array([g for _, g, _ in items], dtype=np.intp),
                    np.array([side for _, _, side in items], dtype=object),
                    np.ones(len(items), dtype=bool),
                ),
            )
            for i, (s, g, side) in enumerate(items):
                text = contrib.text(i, g, side)
                entries[s].texts[(g, side)] = text
                drivers[need[s, g, side]] = text
        return drivers

    # ----------------------------------------------------------------- answer
    def _predict(self, model_input: Any) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if frame.empty:
            raise FairmarginInputError("fair-margin input: no rows")
        require_columns(frame, [*STATE_COLUMNS, *POSITION_COLUMNS], who="fair-margin input")
        X = self._matrix(frame)
        n_state = len(self.state_columns)
        notional, cost_long, cost_short = X[:, n_state], X[:, n_state + 1], X[:, n_state + 2]
        bad = ~np.isfinite(notional) | (notional <= 0)
        if bad.any():
            raise FairmarginInputError(
                "fair-margin input: notional must be a positive number, "
                f"got {float(notional[bad][0])!r}"
            )
        for c, v in (("liquidation_cost_long", cost_long), ("liquidation_cost_short", cost_short)):
            if (v < 0).any():
                raise FairmarginInputError(
                    f"fair-margin input: {c} must be a fraction >= 0, got {float(v[v < 0][0])!r}"
                )
        col = {c: j for j, c in enumerate(self.state_columns)}
        cfg = self.cfg
        horizon = liquidation_horizon_minutes(
            notional,
            X[:, col["traded_notional_per_minute"]],
            base_latency_minutes=cfg.base_latency_minutes,
            participation=cfg.participation,
            minutes_to_expiry=X[:, col["minutes_to_expiry"]],
        )
        published = (
            frame["published_initial_margin_rate"].to_numpy(dtype=np.float64, na_value=np.nan)
            if "published_initial_margin_rate" in frame
            else np.full(len(X), np.nan)
        )
        # one entry per distinct state; rows point at it
        state = np.ascontiguousarray(X[:, :n_state])
        index: dict[bytes, int] = {}
        code = np.array(
            [index.setdefault(state[k].tobytes(), len(index)) for k in range(len(X))],
            dtype=np.intp,
        )
        first = np.zeros(len(index), dtype=np.intp)
        first[code[::-1]] = np.arange(len(X) - 1, -1, -1)
        entries = self._state_entries(list(index), X[first])
        grid = _stack([e.grid for e in entries])
        j = judge_on_grid(grid, None, horizon, cost_long, cost_short, published, state_index=code)
        fair = j["fair_initial_margin_rate"]
        j["drivers"] = self._drivers(
            entries,
            X[first],
            grid,
            code,
            nearest_grid_index(grid.horizons, horizon),
            j["binding_side"],
            np.isfinite(horizon) & np.isfinite(fair),
        )
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
