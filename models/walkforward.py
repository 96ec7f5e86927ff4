"""Expanding-window walk-forward backtests (METHOD.md, Labels and models; Backtests).

A split trains on everything known at its ``cutoff`` (rows with ``t <= cutoff`` and only the
labels whose window has closed, ``t + h <= cutoff``) and forecasts the decision times of its
test window ``[test_start, test_end)``. Windows follow each other (monthly by default), the
training window expands, ``cutoff = test_start - gap`` with ``gap`` at least the longest
horizon, so a snapshot always uses the latest model trained strictly before it. Nothing is ever
shuffled.

:func:`training_view` is the only way the engine hands data to ``fit``: it drops later rows and
blanks every label not yet known at the cutoff, so no model can see the test window whatever it
does inside ``fit``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns
from models.backtest import (
    BacktestReport,
    backtest,
    non_overlapping,
    pooled_christoffersen,
    pooled_kupiec_bootstrap,
)
from models.fair import QuantileGrid
from models.labels import SIDES

__all__ = [
    "Forecaster",
    "SetupResult",
    "Split",
    "evaluate",
    "training_view",
    "walk_forward",
    "walk_forward_splits",
]

log = logging.getLogger(__name__)
_NS_PER_MIN = 60_000_000_000


class Forecaster(Protocol):
    """What the engine needs of a model (FairMarginModel and the baselines)."""

    horizons_: tuple[int, ...]

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> Any: ...

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid: ...


@dataclass(frozen=True, slots=True)
class Split:
    """One walk-forward step: fit at ``cutoff``, forecast t in ``[test_start, test_end)``."""

    cutoff: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def walk_forward_splits(
    *,
    first_test: pd.Timestamp,
    end: pd.Timestamp,
    gap: pd.Timedelta,
    freq: str = "MS",
) -> list[Split]:
    """Consecutive test windows from ``first_test`` to ``end`` (exclusive), a new one at each
    ``freq`` boundary (``"MS"``: month starts, ``"7D"``: weekly), each trained at
    ``test_start - gap``.

    Parameters
    ----------
    first_test : start of the first test window (tz-aware).
    end : end of the last test window (exclusive).
    gap : time between the training cutoff and the test window, > 0 (at least the longest
        horizon: no training label overlaps the test window).
    freq : pandas offset alias of the retraining calendar; at most monthly.
    """
    who = "walk_forward_splits"
    first_test, end = pd.Timestamp(first_test), pd.Timestamp(end)
    if not isinstance(gap, pd.Timedelta) or gap <= pd.Timedelta(0):
        raise FairmarginInputError(f"{who}: gap must be a positive Timedelta, got {gap!r}")
    if end <= first_test:
        raise FairmarginInputError(
            f"{who}: end must be after first_test ({first_test}), got {end}"
        )
    starts = [first_test] + [
        s for s in pd.date_range(first_test, end, freq=freq, inclusive="neither") if s > first_test
    ]
    bounds = [*starts, end]
    splits = []
    for a, b in itertools.pairwise(bounds):
        if b - a > pd.Timedelta(days=31):
            raise FairmarginInputError(
                f"{who}: freq must retrain at least monthly, got a {b - a} window from {a}"
            )
        splits.append(Split(cutoff=a - gap, test_start=a, test_end=b))
    return splits


def training_view(
    labelled: pd.DataFrame, cutoff: pd.Timestamp, *, horizons_minutes: Sequence[int]
) -> pd.DataFrame:
    """The labelled panel as known at ``cutoff``: rows with ``t <= cutoff``, and each label
    ``y_{side}_{h}`` blanked (NaN) where ``t + h > cutoff``."""
    require_columns(labelled, ["t"], who="training_view")
    out = labelled[labelled["t"] <= cutoff].copy()
    t_ns = pd.DatetimeIndex(out["t"]).as_unit("ns").asi8
    for c in out.columns:
        if not c.startswith("y_"):
            continue
        h = int(c.rsplit("_", 1)[1])
        unknown = t_ns + h * _NS_PER_MIN > pd.Timestamp(cutoff).value
        out.loc[unknown, c] = np.nan
    del horizons_minutes
    return out


def _column(grid: QuantileGrid, side: str, h: int) -> NDArray[np.float64]:
    hit = np.flatnonzero(grid.horizons == float(h))
    if hit.size == 0:
        return np.full(grid.scale.shape[0], np.nan)
    v = grid.quantile[side][:, int(hit[0])]
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def walk_forward(
    factory: Callable[[], Forecaster],
    labelled: pd.DataFrame,
    *,
    splits: Sequence[Split],
    horizons_minutes: Sequence[int],
    needs_history: bool = False,
    on_split: Callable[[Split, Forecaster], None] | None = None,
) -> pd.DataFrame:
    """Forecasts of a model retrained at every split, one row per (contract, t, horizon).

    Parameters
    ----------
    factory : makes a fresh unfitted model (the same seed gives the same model).
    labelled : panel with labels (``add_labels``), sorted by venue, symbol, t.
    splits : from :func:`walk_forward_splits`.
    horizons_minutes : horizons to forecast (a model that dropped one gives NaN there).
    needs_history : pass each contract's earlier rows to ``quantile_grid`` (filter models);
        label columns are dropped either way.
    on_split : called with each split and its fitted model (logging, metrics).

    Returns
    -------
    DataFrame with venue, symbol, t, h, cutoff, forecast_long, forecast_short, realised_long,
    realised_short, sigma_ann, bar_minutes.
    """
    require_columns(
        labelled, ["venue", "symbol", "t", "sigma_ann", "bar_minutes"], who="walk_forward"
    )
    hs = [int(h) for h in horizons_minutes]
    if missing := [h for h in hs if f"y_long_{h}" not in labelled]:
        raise FairmarginInputError(f"walk_forward: labelled must have labels for {missing}")
    label_cols = [c for c in labelled.columns if c.startswith("y_")]
    features = labelled.drop(columns=label_cols)
    t = labelled["t"]
    parts = []
    for split in splits:
        model = factory()
        model.fit(training_view(labelled, split.cutoff, horizons_minutes=hs), cutoff=split.cutoff)
        if on_split is not None:
            on_split(split, model)
        in_test = (t >= split.test_start) & (t < split.test_end)
        if not in_test.any():
            continue
        if needs_history:
            context = features[t < split.test_end]
            grid = model.quantile_grid(context)
            pick = in_test[t < split.test_end].to_numpy()
        else:
            grid = model.quantile_grid(features[in_test])
            pick = np.ones(int(in_test.sum()), dtype=bool)
        test = labelled[in_test]
        for h in hs:
            parts.append(
                pd.DataFrame(
                    {
                        "venue": test["venue"].to_numpy(),
                        "symbol": test["symbol"].to_numpy(),
                        "t": test["t"].to_numpy(),
                        "h": h,
                        "cutoff": split.cutoff,
                        "forecast_long": _column(grid, "long", h)[pick],
                        "forecast_short": _column(grid, "short", h)[pick],
                        "realised_long": test[f"y_long_{h}"].to_numpy(dtype=np.float64),
                        "realised_short": test[f"y_short_{h}"].to_numpy(dtype=np.float64),
                        "sigma_ann": test["sigma_ann"].to_numpy(dtype=np.float64),
                        "bar_minutes": test["bar_minutes"].to_numpy(dtype=np.float64),
                    }
                )
            )
    if not parts:
        raise FairmarginInputError("walk_forward: no panel row falls in any test window")
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class SetupResult:
    """Backtest of one model at one horizon over all contracts and both sides.

    Attributes
    ----------
    reports : (symbol, side) -> BacktestReport.
    pooled_kupiec_p, pooled_cc_p : side -> pooled bootstrap Kupiec / pooled Christoffersen cc p.
    passes : pooled Kupiec p > 0.05 on both sides, no symbol red, and at least two thirds of
        (symbol, side) series pass Kupiec and Christoffersen cc (p > 0.05).
    """

    reports: Mapping[tuple[str, str], BacktestReport]
    pooled_kupiec_p: Mapping[str, float]
    pooled_cc_p: Mapping[str, float]
    passes: bool

    def summary(self) -> dict[str, Any]:
        """Scalars for a table row: worse side of the pooled p-values, worst traffic light,
        lowest tercile coverage, mean coverage, mean of the symbols' average margin, median
        peak-to-trough, and the number of exceptions / observations."""
        reps = list(self.reports.values())
        zones = {"green": 0, "yellow": 1, "red": 2}
        worst = max((r.traffic_light for r in reps), key=lambda z: zones[z])
        terc = [c for r in reps for c in r.tercile_coverage if not math.isnan(c)]
        return {
            "obs": sum(r.observations for r in reps),
            "exc": sum(r.exceptions for r in reps),
            "coverage": 1.0
            - sum(r.exceptions for r in reps) / max(sum(r.observations for r in reps), 1),
            "kupiec_p": min(self.pooled_kupiec_p.values()),
            "cc_p": min(self.pooled_cc_p.values()),
            "traffic_light": worst,
            "worst_tercile": min(terc) if terc else math.nan,
            "avg_margin": float(np.mean([r.average_margin for r in reps])),
            "peak_trough": float(np.median([r.peak_to_trough for r in reps])),
            "passes": self.passes,
        }


def evaluate(
    forecasts: pd.DataFrame,
    *,
    h: int,
    coverage: float,
    seed: int = 0,
    n_boot: int = 1000,
) -> SetupResult:
    """Backtest one horizon of :func:`walk_forward`'s output per (symbol, side) and pooled.

    Tests use non-overlapping observations (every ``h / bar``-th bar, METHOD.md); the pooled
    Kupiec test resamples blocks of dates (``block_length = ceil(T^(1/3))``; without a pooled
    exception the dependence is read on ``realised / forecast``, its ``proxy``) and the pooled
    Christoffersen test sums the symbols' transition counts. Margin-path figures use each
    side's full forecast series."""
    who = "evaluate"
    f = forecasts[forecasts["h"] == h]
    if f.empty:
        raise FairmarginInputError(f"{who}: forecasts must hold horizon {h}, got none")
    reports: dict[tuple[str, str], BacktestReport] = {}
    pooled_k: dict[str, float] = {}
    pooled_c: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    for side in SIDES:
        exc_cols: dict[str, pd.Series] = {}
        ratio_cols: dict[str, pd.Series] = {}
        seqs: dict[str, NDArray[np.bool_]] = {}
        for (venue, symbol), g in f.groupby(["venue", "symbol"], sort=True):
            g = g.set_index("t").sort_index()
            step = max(round(h / float(g["bar_minutes"].iloc[0])), 1)
            fc, real = g[f"forecast_{side}"], g[f"realised_{side}"]
            if fc.notna().sum() < 2 or (fc.notna() & real.notna()).sum() < 2 * step:
                continue
            key = f"{venue}:{symbol}"
            rep = backtest(fc, real, coverage=coverage, step=step, trailing_vol=g["sigma_ann"])
            reports[(key, side)] = rep
            both = fc.notna() & real.notna()
            last = int(np.flatnonzero(both.to_numpy())[-1])
            sample = non_overlapping(g.iloc[: last + 1], step=step)
            ok = sample[f"forecast_{side}"].notna() & sample[f"realised_{side}"].notna()
            e = (sample[f"realised_{side}"] > sample[f"forecast_{side}"]).where(ok)
            exc_cols[key] = e.astype("float64")
            ratio_cols[key] = (sample[f"realised_{side}"] / sample[f"forecast_{side}"]).where(ok)
            seqs[key] = e[ok].to_numpy(dtype=bool)
        if not exc_cols:
            raise FairmarginInputError(f"{who}: no symbol has forecasts at horizon {h}")
        table = pd.DataFrame(exc_cols).sort_index()
        n_dates = int(table.notna().any(axis=1).sum())
        block = max(1, min(math.ceil(n_dates ** (1 / 3)), n_dates))
        # realised / forecast measures the cross-sectional dependence when no exception does
        proxy = pd.DataFrame(ratio_cols).sort_index().reindex_like(table)
        pooled_k[side] = pooled_kupiec_bootstrap(
            table, coverage=coverage, block_length=block, n_boot=n_boot, rng=rng, proxy=proxy
        ).p_value
        pooled_c[side] = pooled_christoffersen(seqs, coverage=coverage).p_cc
    reps = list(reports.values())
    each = sum(r.kupiec_p > 0.05 and r.christoffersen_cc_p > 0.05 for r in reps)
    passes = (
        all(p > 0.05 for p in pooled_k.values())
        and all(r.traffic_light != "red" for r in reps)
        and each >= 2 * len(reps) / 3
    )
    return SetupResult(
        reports=reports, pooled_kupiec_p=pooled_k, pooled_cc_p=pooled_c, passes=passes
    )
