"""Liquidation horizon, tier notionals and quantiles between grid horizons (METHOD.md).

- ``H(c, t, N) = base latency + N / (participation x traded notional per minute)``, capped at the
  time to expiry for dated futures.
- A quantile between grid horizons is a power law in H: log Q is linear in log H between the
  neighbouring grid points. Below the grid it extrapolates the two shortest horizons' power law,
  above it the two longest'.
- The implied horizon of a published rate r at notional N is the H* where
  ``max over sides (Q_side(H*) + cost_side(N)) = r``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from features._checks import FairmarginInputError

__all__ = [
    "evaluated_notional",
    "implied_horizon",
    "interpolate_power_law",
    "liquidation_horizon_minutes",
    "running_max",
]

_TINY = 1e-12


def evaluated_notional(
    tiers: pd.DataFrame,
    *,
    single_tier_notional: float = 1e6,
    last_tier_cap_multiple: float = 10.0,
) -> pd.Series:
    """The notional each tier is judged at (METHOD.md, "Which notional a tier is judged at").

    A tier is judged at its upper notional; the last tier of a schedule at
    ``min(max_notional, last_tier_cap_multiple x min_notional)``; a schedule of one tier at
    ``single_tier_notional``. ``tiers`` has venue, symbol, as_of, tier, min_notional, max_notional.
    """
    keys = ["venue", "symbol", "as_of"]
    last_tier = tiers.groupby(keys, sort=False)["tier"].transform("max")
    n_tiers = tiers.groupby(keys, sort=False)["tier"].transform("size")
    upper = tiers["max_notional"].astype(float)
    capped = np.minimum(upper, last_tier_cap_multiple * tiers["min_notional"].astype(float))
    out = upper.where(tiers["tier"] != last_tier, capped)
    out = out.where(n_tiers > 1, single_tier_notional)
    return out.rename("evaluated_notional")


def liquidation_horizon_minutes(
    notional: ArrayLike,
    traded_notional_per_minute: ArrayLike,
    *,
    base_latency_minutes: float,
    participation: float,
    minutes_to_expiry: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """``base latency + N / (participation x traded notional per minute)``, capped at expiry.

    Units: notional and traded notional in the quote currency; the result in minutes. A zero or
    missing traded notional gives NaN (the horizon is unknown, not infinite).
    """
    if not 0 < participation <= 1:
        raise FairmarginInputError(f"participation must be in (0, 1], got {participation!r}")
    n = np.asarray(notional, dtype=np.float64)
    v = np.asarray(traded_notional_per_minute, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    h = np.full(np.broadcast(n, v).shape, np.nan)
    np.divide(n, participation * np.where(ok, v, 1.0), out=h, where=ok)
    h = base_latency_minutes + h
    if minutes_to_expiry is not None:
        cap = np.asarray(minutes_to_expiry, dtype=np.float64)
        h = np.where(np.isfinite(cap), np.minimum(h, np.maximum(cap, 0.0)), h)
    return h


def running_max(q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Running maximum along the last axis (the horizon grid): quantiles never fall with H."""
    return np.maximum.accumulate(np.nan_to_num(q, nan=-np.inf), axis=-1)


def _slopes(h_grid: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    lq = np.log(np.maximum(q, _TINY))
    lh = np.log(h_grid)
    return np.diff(lq, axis=-1) / np.diff(lh)


def interpolate_power_law(
    h_grid: Sequence[float] | NDArray[np.float64], q: NDArray[np.float64], horizon: ArrayLike
) -> NDArray[np.float64]:
    """Quantile at horizon ``horizon`` from quantiles ``q`` on ``h_grid`` (log-log linear).

    Parameters
    ----------
    h_grid : increasing grid horizons (minutes), at least two.
    q : quantiles, shape (n, len(h_grid)); positive.
    horizon : shape (n,), minutes.
    """
    hg = np.asarray(h_grid, dtype=np.float64)
    if hg.ndim != 1 or len(hg) < 2 or not np.all(np.diff(hg) > 0):
        raise FairmarginInputError(f"h_grid must be increasing with >= 2 points, got {h_grid!r}")
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    h = np.asarray(horizon, dtype=np.float64).reshape(-1)
    if q.shape != (h.size, hg.size):
        raise FairmarginInputError(
            f"interpolate_power_law: q must have shape {(h.size, hg.size)}, got {q.shape}"
        )
    b = _slopes(hg, q)  # (n, g-1)
    seg = np.clip(np.searchsorted(hg, h, side="right") - 1, 0, hg.size - 2)
    rows = np.arange(h.size)
    q0 = np.maximum(q[rows, seg], _TINY)
    out = np.full(h.size, np.nan)
    ok = np.isfinite(h) & (h > 0)
    out[ok] = q0[ok] * np.exp(b[rows, seg][ok] * (np.log(h[ok]) - np.log(hg[seg][ok])))
    return out


def _implied_one_side(
    hg: NDArray[np.float64], q: NDArray[np.float64], target: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int8]]:
    """H where the side's quantile reaches ``target``; censor -1 below the grid, +1 above."""
    n, g = q.shape
    b = _slopes(hg, q)
    h = np.full(n, np.nan)
    cens = np.zeros(n, dtype=np.int8)
    qpos = np.maximum(q, _TINY)
    # a relative tolerance keeps a rate exactly at a grid end inside the grid
    below = target < qpos[:, 0] * (1 - 1e-9)
    above = target > qpos[:, -1] * (1 + 1e-9)
    nonpos = target <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        b0 = np.where(b[:, 0] > 0, b[:, 0], np.nan)
        ext = hg[0] * np.exp(np.log(np.maximum(target, _TINY) / qpos[:, 0]) / b0)
    h[below] = ext[below]
    cens[below] = -1
    h[nonpos] = 0.0
    h[above] = hg[-1]
    cens[above] = 1
    inside = ~below & ~above & ~nonpos & np.isfinite(target)
    # first grid segment whose upper quantile reaches the target
    seg = np.clip((qpos < target[:, None]).sum(axis=1) - 1, 0, g - 2)
    rows = np.arange(n)
    lo = qpos[rows, seg]
    slope = b[rows, seg]
    with np.errstate(divide="ignore", invalid="ignore"):
        hin = np.where(
            slope > 0,
            hg[seg] * np.exp(np.log(np.maximum(target, _TINY) / lo) / slope),
            hg[seg],
        )
    h[inside] = np.clip(hin[inside], hg[0], hg[-1])  # rounding must not leave the grid
    return h, cens


def implied_horizon(
    h_grid: Sequence[float] | NDArray[np.float64],
    q_long: NDArray[np.float64],
    q_short: NDArray[np.float64],
    cost_long: ArrayLike,
    cost_short: ArrayLike,
    rate: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.object_]]:
    """Implied liquidation horizon of published rates (METHOD.md).

    Returns
    -------
    (minutes, censored) where censored is ``"below"`` (extrapolated under the grid, or the rate
    does not even cover the liquidation cost: 0 minutes), ``"above"`` (the rate exceeds the
    grid's top quantile: the top is reported) or ``""``.
    """
    hg = np.asarray(h_grid, dtype=np.float64)
    r = np.asarray(rate, dtype=np.float64)
    ql = running_max(np.atleast_2d(q_long))
    qs = running_max(np.atleast_2d(q_short))
    hl, cl = _implied_one_side(hg, ql, r - np.asarray(cost_long, dtype=np.float64))
    hs, cs = _implied_one_side(hg, qs, r - np.asarray(cost_short, dtype=np.float64))
    # max over sides reaches r as soon as the first side does
    take_long = np.nan_to_num(hl, nan=np.inf) <= np.nan_to_num(hs, nan=np.inf)
    h = np.where(take_long, hl, hs)
    c = np.where(take_long, cl, cs)
    labels = np.array(["below", "", "above"], dtype=object)[c + 1]
    labels[~np.isfinite(h)] = ""
    return h, labels
