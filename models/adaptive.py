"""Adaptive conformal update of any forecaster's quantiles (METHOD.md, Calibration).

:class:`AdaptiveConformal` wraps a :class:`models.walkforward.Forecaster` and multiplies its
quantile of each side and horizon by a factor ``exp(theta)`` that it learns online from its own
exceptions, in the manner of adaptive conformal inference (Gibbs & Candes, 2021) run on the
ratio score ``realised / forecast`` (the quantile-tracking form of Angelopoulos, Barber & Bates,
"Conformal PID control", 2023):

    theta <- clip(theta + gamma x (err_s - (1 - q)))    for each issued forecast s,
                                                        once its label is known

with ``err_s = 1`` when the realised adverse move over ``h`` from ``s`` exceeded the forecast
that was issued at ``s`` (the wrapped forecast times ``exp(theta_s)``), each forecast weighted
``min(1, bar / h)`` (overlapping windows count as one observation per window length, so one bad
day seen through many overlapping windows does not swing the factor). Coverage thus recovers
after a break: each exception raises the factor by about ``gamma``, each covered observation
lowers it by ``gamma (1 - q)``, so over any long stretch the exception rate is ``1 - q`` up to
``(theta range + gamma) / (gamma x observations)``.

Point in time: the factor used for a row at ``t`` sums only the errors of forecasts issued at
``s`` with ``s + h <= t``, whose labels read bars closing at or before ``t``; nothing later
than ``t`` moves it. The update is pooled over symbols (one theta per side, horizon and volatility
group): exceptions of several coins on one day all count.

Volatility groups (``n_groups > 1``, Mondrian conformal): each row is put in a group by the
percentile of its ``sigma_ann`` among the same contract's values over the trailing
``group_lookback_days`` (known at ``t``), and each group has its own theta, so a model that
under-covers in high volatility is corrected there and not everywhere.

The wrapper keeps the record of the forecasts it issued (``record_``) across ``fit`` calls:
``fit`` retrains the wrapped model, and the record of out-of-sample forecasts already issued is
what the online update learns from. In a walk-forward backtest give the engine a factory that
returns the same wrapper every time (:func:`adaptive_factory`). ``quantile_grid`` needs each
contract's earlier rows (``needs_history``): the labels of past forecasts are recomputed from
their bars.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns
from models.fair import QuantileGrid, add_labels
from models.horizon import running_max
from models.labels import SIDES

__all__ = [
    "AdaptiveConformal",
    "aci_path",
    "adapt_forecasts",
    "adaptive_factory",
    "volatility_group",
]

log = logging.getLogger(__name__)
_NS_PER_MIN = 60_000_000_000
_ROW_COLUMNS = ["venue", "symbol", "t", "high", "low", "close", "bar_minutes", "linear"]


def aci_path(
    issue_ns: NDArray[np.int64],
    known_ns: NDArray[np.int64],
    base: NDArray[np.float64],
    realised: NDArray[np.float64],
    query_ns: NDArray[np.int64],
    *,
    target: float,
    gamma: float,
    bounds: tuple[float, float],
    weight: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The ACI log-factor at each issued forecast and at each query time.

    Parameters
    ----------
    issue_ns : decision time of each issued forecast (ns since the epoch).
    known_ns : time its label becomes known (``issue + h``), > ``issue_ns``.
    base : the wrapped model's forecast issued then (> 0; NaN: not issued, ignored).
    realised : the realised move (NaN: never known, ignored).
    query_ns : times at which the factor is asked for.
    target : the exception rate aimed at, ``1 - q``.
    gamma : step per observation (> 0).
    bounds : (lowest, highest) log-factor.
    weight : each forecast's share of an independent observation (default 1): overlapping
        windows (``h`` longer than a bar) count ``bar / h`` each, so a day of bad news seen
        through many overlapping windows moves theta like one observation per window length.

    Returns
    -------
    (theta at each issued forecast, theta at each query time). theta at time ``t`` counts the
    forecasts with ``known_ns <= t`` only; each one's error is judged against the forecast that
    was issued (``base x exp(theta at its issue)``).
    """
    n = issue_ns.size
    usable = np.isfinite(base) & np.isfinite(realised) & (base > 0)
    step = np.full(n, gamma) if weight is None else gamma * np.asarray(weight, dtype=np.float64)
    times = np.unique(np.concatenate([issue_ns, query_ns]))
    theta_at = np.empty(times.size)
    by_issue = np.searchsorted(times, issue_ns)
    order = np.argsort(known_ns, kind="stable")
    known_sorted = known_ns[order]
    theta_issue = np.full(n, np.nan)
    lo, hi = bounds
    theta = 0.0
    j = 0
    # when each time's issued forecasts get their theta: before any label known later
    first_of_time = np.argsort(by_issue, kind="stable")
    issue_ptr = 0
    issue_sorted_pos = by_issue[first_of_time]
    for k in range(times.size):
        tau = times[k]
        while j < n and known_sorted[j] <= tau:
            e = order[j]
            j += 1
            if not usable[e]:
                continue
            err = 1.0 if realised[e] > base[e] * math.exp(theta_issue[e]) else 0.0
            theta = min(max(theta + step[e] * (err - target), lo), hi)
        theta_at[k] = theta
        while issue_ptr < n and issue_sorted_pos[issue_ptr] == k:
            theta_issue[first_of_time[issue_ptr]] = theta
            issue_ptr += 1
    return theta_issue, theta_at[np.searchsorted(times, query_ns)]


def volatility_group(
    rows: pd.DataFrame, *, n_groups: int, lookback_days: float, column: str = "sigma_ann"
) -> NDArray[np.int64]:
    """Each row's volatility group, 0 (calm) .. ``n_groups - 1`` (stressed): the percentile of
    its ``column`` (a trailing volatility) among the same contract's values over the trailing
    ``lookback_days`` up to and including it (point in time). Rows without a value (or fewer
    than 30 before them) fall in the middle group."""
    require_columns(rows, ["venue", "symbol", column, "bar_minutes"], who="volatility_group")
    out = np.full(len(rows), n_groups // 2, dtype=np.int64)
    if n_groups <= 1:
        return np.zeros(len(rows), dtype=np.int64)
    sig = rows[column].to_numpy(dtype=np.float64)
    for _, where in rows.groupby(["venue", "symbol"], sort=False).indices.items():
        idx = np.asarray(where, dtype=np.intp)
        bar = float(rows["bar_minutes"].iloc[idx[0]])
        window = max(int(lookback_days * 1440.0 / bar), 2)
        s = pd.Series(sig[idx])
        pct = s.rolling(window, min_periods=min(window, 30)).rank(pct=True).to_numpy()
        ok = np.isfinite(pct)
        # rank(pct=True) is in (0, 1]: group ceil(pct x n) - 1 is 0 .. n - 1
        g = np.ceil(pct[ok] * n_groups - 1e-9).astype(np.int64) - 1
        sub = np.full(idx.size, n_groups // 2, dtype=np.int64)
        sub[ok] = np.clip(g, 0, n_groups - 1)
        out[idx] = sub
    return out


@dataclass
class AdaptiveConformal:
    """A forecaster whose quantiles are rescaled online by adaptive conformal inference.

    Parameters
    ----------
    base_factory : makes a fresh unfitted wrapped model (any ``Forecaster``).
    coverage : q; the target exception rate is ``1 - q``.
    gamma : ACI step per observation (log-factor units); larger reacts faster and swings more.
    max_factor : the factor stays within ``[1 / max_factor, max_factor]``.
    n_groups : volatility groups with their own factor (1: one factor per side and horizon;
        3: Mondrian by trailing-volatility tercile).
    group_lookback_days : trailing window of the volatility percentile.
    group_column : the rows' trailing-volatility column that defines the groups.

    Attributes
    ----------
    base_ : the wrapped model, fitted at the last ``fit``.
    horizons_, cutoff_, metrics_ : those of ``base_``.
    record_ : the forecasts issued so far, out of sample (venue, symbol, t, group and the
        wrapped model's quantile per side and horizon), kept across ``fit`` calls.
    """

    needs_history: ClassVar[bool] = True

    base_factory: Callable[[], Any]
    coverage: float = 0.99
    gamma: float = 0.01
    max_factor: float = 3.0
    n_groups: int = 1
    group_lookback_days: float = 365.0
    group_column: str = "sigma_ann"
    base_: Any = None
    horizons_: tuple[int, ...] = ()
    cutoff_: pd.Timestamp | None = None
    metrics_: dict[str, float] = field(default_factory=dict)
    record_: pd.DataFrame | None = None

    def _check(self) -> None:
        who = "AdaptiveConformal"
        if not 0.5 < self.coverage < 1:
            raise FairmarginInputError(
                f"{who}: coverage must be in (0.5, 1), got {self.coverage!r}"
            )
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise FairmarginInputError(
                f"{who}: gamma must be a finite float >= 0, got {self.gamma!r}"
            )
        if not self.max_factor >= 1:
            raise FairmarginInputError(f"{who}: max_factor must be >= 1, got {self.max_factor!r}")
        if not (isinstance(self.n_groups, int) and self.n_groups >= 1):
            raise FairmarginInputError(
                f"{who}: n_groups must be an int >= 1, got {self.n_groups!r}"
            )

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> AdaptiveConformal:
        """Retrain the wrapped model at ``cutoff``; the record of issued forecasts is kept."""
        self._check()
        base = self.base_factory()
        base.fit(labelled, cutoff=cutoff)
        self.base_ = base
        self.horizons_ = tuple(int(h) for h in base.horizons_)
        self.cutoff_ = pd.Timestamp(cutoff)
        self.metrics_ = dict(getattr(base, "metrics_", {}))
        return self

    def _base_grid(self, rows: pd.DataFrame, need: NDArray[np.bool_]) -> QuantileGrid:
        """The wrapped model's grid on ``rows`` (only ``need`` rows when it reads no history)."""
        if getattr(self.base_, "needs_history", False):
            return self.base_.quantile_grid(rows)
        grid = self.base_.quantile_grid(rows[need])
        n, g = len(rows), len(grid.horizons)

        def spread(a: NDArray[np.float64]) -> NDArray[np.float64]:
            out = np.full((n, g), np.nan)
            out[need] = a
            return out

        return QuantileGrid(
            horizons=grid.horizons,
            quantile={s: spread(grid.quantile[s]) for s in SIDES},
            lower={s: spread(grid.lower[s]) for s in SIDES},
            upper={s: spread(grid.upper[s]) for s in SIDES},
            scale=spread(grid.scale),
        )

    def _realised(self, rows: pd.DataFrame) -> dict[tuple[str, int], NDArray[np.float64]]:
        """Each row's realised move per (side, horizon), from the bars in ``rows``."""
        cols = ["venue", "symbol", "t", "high", "low", "close", "bar_minutes", "linear"]
        lab = add_labels(rows[cols], horizons_minutes=self.horizons_)
        return {
            (s, h): lab[f"y_{s}_{h}"].to_numpy(dtype=np.float64)
            for s in SIDES
            for h in self.horizons_
        }

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        """The wrapped model's quantiles times the adaptive factor known at each row's t.

        ``rows`` must hold each contract's bars in time order from early enough for the
        labels of past forecasts (only bars at or before each row's t move its forecast).
        Rows after the wrapped model's cutoff are recorded as issued forecasts."""
        who = "AdaptiveConformal.quantile_grid"
        if self.base_ is None or self.cutoff_ is None:
            raise FairmarginInputError(f"{who}: not fitted")
        require_columns(rows, _ROW_COLUMNS, who=who)
        rows = rows.reset_index(drop=True)
        t_ns = pd.DatetimeIndex(rows["t"]).as_unit("ns").asi8
        key = pd.MultiIndex.from_arrays(
            [rows["venue"].astype(str), rows["symbol"].astype(str), t_ns],
            names=["venue", "symbol", "t_ns"],
        )
        if not key.is_unique:
            raise FairmarginInputError(f"{who}: rows must hold one row per (venue, symbol, t)")
        hs = list(self.horizons_)
        cols = [f"{s}_{h}" for s in SIDES for h in hs]
        rec = self.record_
        in_rec = key.isin(rec.index) if rec is not None else np.zeros(len(rows), dtype=bool)
        grid = self._base_grid(rows, ~in_rec)
        grid_h = [int(h) for h in grid.horizons]
        if grid_h != hs:
            raise FairmarginInputError(f"{who}: wrapped grid {grid_h} must match horizons_ {hs}")
        group = volatility_group(
            rows,
            n_groups=self.n_groups,
            lookback_days=self.group_lookback_days,
            column=self.group_column,
        )
        fresh = (t_ns > self.cutoff_.value) & ~in_rec
        if fresh.any():
            new = pd.DataFrame(
                {f"{s}_{h}": grid.quantile[s][fresh, j] for s in SIDES for j, h in enumerate(hs)},
                index=key[fresh],
            ).assign(group=group[fresh])
            rec = new if rec is None else pd.concat([rec, new[[*rec.columns]]])
            self.record_ = rec
        # the quantile each row's factor multiplies: the one issued (record) or the wrapped one
        base_q = {c: np.full(len(rows), np.nan) for c in cols}
        for s in SIDES:
            for j, h in enumerate(hs):
                base_q[f"{s}_{h}"] = grid.quantile[s][:, j].copy()
        if rec is not None and in_rec.any():
            old = rec.reindex(key[in_rec])
            for c in cols:
                base_q[c][in_rec] = old[c].to_numpy(dtype=np.float64)
            group[in_rec] = old["group"].to_numpy(dtype=np.int64)
        theta = self._theta(rows, key, t_ns, group, rec)
        bounds_q = {"quantile": grid.quantile, "lower": grid.lower, "upper": grid.upper}
        out: dict[str, dict[str, NDArray[np.float64]]] = {k: {} for k in bounds_q}
        for s in SIDES:
            fac = np.exp(np.column_stack([theta[(s, h)] for h in hs]))
            wrapped = np.column_stack([base_q[f"{s}_{h}"] for h in hs])
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio_lo = grid.lower[s] / grid.quantile[s]
                ratio_hi = grid.upper[s] / grid.quantile[s]
            q = running_max(wrapped * fac)
            q = np.where(np.isfinite(q), q, np.nan)
            out["quantile"][s] = q
            lo = np.fmin(running_max(wrapped * fac * ratio_lo), q)
            hi = np.fmax(running_max(wrapped * fac * ratio_hi), q)
            out["lower"][s] = np.where(np.isfinite(q), lo, np.nan)
            out["upper"][s] = np.where(np.isfinite(q), hi, np.nan)
        return QuantileGrid(
            horizons=np.asarray(hs, dtype=np.float64),
            quantile=out["quantile"],
            lower=out["lower"],
            upper=out["upper"],
            scale=grid.scale,
        )

    def _theta(
        self,
        rows: pd.DataFrame,
        key: pd.MultiIndex,
        t_ns: NDArray[np.int64],
        group: NDArray[np.int64],
        rec: pd.DataFrame | None,
    ) -> dict[tuple[str, int], NDArray[np.float64]]:
        """The log-factor of each row per (side, horizon), from the record's known labels."""
        theta: dict[tuple[str, int], NDArray[np.float64]] = {
            (s, h): np.zeros(len(rows)) for s in SIDES for h in self.horizons_
        }
        if rec is None or rec.empty or self.gamma == 0:
            return theta
        realised = self._realised(rows)
        pos = key.get_indexer(rec.index)  # the record's rows in ``rows`` (-1: not there)
        at = pos >= 0
        r_issue = rec.index.get_level_values("t_ns").to_numpy(dtype=np.int64)[at]
        r_group = rec["group"].to_numpy(dtype=np.int64)[at]
        r_bar = rows["bar_minutes"].to_numpy(dtype=np.float64)[pos[at]]
        bound = math.log(self.max_factor)
        for s in SIDES:
            for h in self.horizons_:
                r_base = rec[f"{s}_{h}"].to_numpy(dtype=np.float64)[at]
                r_real = realised[(s, h)][pos[at]]
                for g in range(self.n_groups):
                    mine, ask = r_group == g, group == g
                    if not ask.any():
                        continue
                    _, th = aci_path(
                        r_issue[mine],
                        r_issue[mine] + h * _NS_PER_MIN,
                        r_base[mine],
                        r_real[mine],
                        t_ns[ask],
                        target=1.0 - self.coverage,
                        gamma=self.gamma,
                        bounds=(-bound, bound),
                        weight=np.minimum(r_bar[mine] / h, 1.0),
                    )
                    theta[(s, h)][ask] = th
        return theta


def adaptive_factory(base_factory: Callable[[], Any], **params: Any) -> Callable[[], Any]:
    """A walk-forward factory that returns one :class:`AdaptiveConformal` every time (its
    record of issued forecasts carries over from one split to the next; ``fit`` retrains the
    wrapped model from ``base_factory``)."""
    model = AdaptiveConformal(base_factory=base_factory, **params)
    model._check()
    return lambda: model


def adapt_forecasts(
    forecasts: pd.DataFrame,
    *,
    coverage: float,
    gamma: float,
    max_factor: float = 3.0,
    groups: NDArray[np.int64] | None = None,
) -> pd.DataFrame:
    """The same adaptive update applied to stored out-of-sample forecasts.

    ``forecasts`` is :func:`models.walkforward.walk_forward`'s output (venue, symbol, t, h,
    bar_minutes, forecast_long/short, realised_long/short); each forecast is rescaled by the
    factor known at its t, learnt from the forecasts of the same horizon (and group) whose
    labels were known by then (``t_issue + h <= t``). It equals what :class:`AdaptiveConformal`
    issues when its record holds exactly these forecasts (test:
    ``test_adapt_forecasts_equals_wrapper``), and is cheap enough to compare several ``gamma``
    on one set of forecasts.

    Parameters
    ----------
    groups : a volatility group per row (:func:`volatility_group` on the panel), or None.
    """
    who = "adapt_forecasts"
    require_columns(
        forecasts,
        ["t", "h", "bar_minutes", *[f"{k}_{s}" for k in ("forecast", "realised") for s in SIDES]],
        who=who,
    )
    g_all = np.zeros(len(forecasts), dtype=np.int64) if groups is None else np.asarray(groups)
    if g_all.shape != (len(forecasts),):
        raise FairmarginInputError(
            f"{who}: groups must have one value per row ({len(forecasts)}), got {g_all.shape}"
        )
    out = forecasts.copy()
    t_ns = pd.DatetimeIndex(forecasts["t"]).as_unit("ns").asi8
    h_all = forecasts["h"].to_numpy(dtype=np.int64)
    bar = forecasts["bar_minutes"].to_numpy(dtype=np.float64)
    bound = math.log(max_factor)
    for h in np.unique(h_all):
        for g in np.unique(g_all):
            m = (h_all == h) & (g_all == g)
            for s in SIDES:
                base = forecasts[f"forecast_{s}"].to_numpy(dtype=np.float64)[m]
                real = forecasts[f"realised_{s}"].to_numpy(dtype=np.float64)[m]
                theta, _ = aci_path(
                    t_ns[m],
                    t_ns[m] + int(h) * _NS_PER_MIN,
                    base,
                    real,
                    t_ns[m][:0],
                    target=1.0 - coverage,
                    gamma=gamma,
                    bounds=(-bound, bound),
                    weight=np.minimum(bar[m] / h, 1.0),
                )
                col = out[f"forecast_{s}"].to_numpy(dtype=np.float64, copy=True)
                col[m] = base * np.exp(theta)
                out[f"forecast_{s}"] = col
    return out
