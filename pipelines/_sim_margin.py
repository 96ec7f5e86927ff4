"""Margin side of the simulator: tier brackets, venue policies, the Monte-Carlo truth, planting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from features._checks import FairmarginError
from pipelines._sim_market import MINUTES_PER_YEAR, VENUES, Instrument

__all__ = [
    "BANDS",
    "Schedule",
    "book_liquidation_cost",
    "evaluated_notionals",
    "implied_horizon",
    "interp_power_law",
    "plant_deviations",
    "policy_rates",
    "tier_brackets",
]

logger = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]

_NICE = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 8.0, 10.0])
BANDS: dict[str, tuple[float, float]] = {
    "under": (-0.90, -0.40),
    "inline": (-0.10, 0.10),
    "over": (0.40, 1.00),
}
_EDGE = 1e-9  # keep sampled deviations strictly inside their band


@dataclass(frozen=True, slots=True)
class Schedule:
    """One published schedule of one instrument: its as_of (minute mark) and tier rates."""

    mark: int
    initial_rate: FloatArray


def _nice(x: float) -> float:
    e = np.floor(np.log10(x))
    m = x / 10.0**e
    best = _NICE[np.argmin(np.abs(np.log(_NICE / m)))]
    return float(best * 10.0**e)


def tier_brackets(inst: Instrument) -> tuple[FloatArray, FloatArray]:
    """(min_notional, max_notional) per tier: contiguous from 0, last tier open (+inf).

    The last tier starts at ``10 x design notional per minute / sqrt(venue size)`` (rounded to a
    1-1.5-2-2.5-3-4-5-6-7.5-8 number); lower tiers halve from there. Smaller venues thus carry
    relatively larger brackets than their volume, so their liquidation horizons are longer.
    """
    k = inst.n_tiers
    if k == 1:
        return np.array([0.0]), np.array([np.inf])
    size = VENUES[inst.venue].size
    last_min = 10.0 * inst.design_notional_per_min / np.sqrt(size)
    uppers = np.array([_nice(last_min / 2.0 ** (k - 2 - i)) for i in range(k - 1)])
    if np.any(np.diff(uppers) <= 0):
        raise RuntimeError(f"tier_brackets: brackets not increasing for {inst.symbol}")
    return np.concatenate([[0.0], uppers]), np.concatenate([uppers, [np.inf]])


def evaluated_notionals(
    mins: FloatArray,
    maxs: FloatArray,
    *,
    last_tier_cap_multiple: float,
    single_tier_notional: float,
) -> FloatArray:
    """METHOD's notional per tier: upper; last min(max, cap x min); a single tier a fixed N."""
    if mins.shape[0] == 1 and mins[0] == 0:
        return np.array([single_tier_notional])
    out = maxs.copy()
    out[-1] = min(maxs[-1], last_tier_cap_multiple * mins[-1])
    return out


def policy_rates(notional: FloatArray, *, sigma_ann: float, inst: Instrument) -> FloatArray:
    """A venue's own rule of thumb: 3 sigma over a liquidation time plus a cost allowance.

    ``H = 15 + N / (0.1 x design notional per minute)`` minutes; rate ``3 sigma sqrt(H) + 2 x
    half-spread + 0.6 % x N / (N + 20 x design volume)``, rounded up to 1 bp, non-decreasing,
    clipped to [1 bp, 1].
    """
    v = inst.design_notional_per_min
    h = 15.0 + notional / (0.1 * v)
    q = 3.0 * sigma_ann * np.sqrt(h / MINUTES_PER_YEAR)
    cost = 2.0 * inst.spread_bps * 1e-4 + 0.006 * notional / (notional + 20.0 * v)
    rate = np.ceil((q + cost) * 1e4) / 1e4
    return np.clip(np.maximum.accumulate(rate), 1e-4, 1.0)


def book_liquidation_cost(
    prices: FloatArray,
    amounts: FloatArray,
    *,
    mid: float,
    notional: float,
    beyond_depth_multiplier: float,
) -> float:
    """Cost of filling ``notional`` (quote currency) against one side of a book.

    The levels (best first, ``amounts`` in base units) are taken in turn; past the displayed
    depth the remainder fills at ``mid +- beyond_depth_multiplier x`` the deepest level's distance
    from mid. Returns ``|VWAP - mid| / mid`` with ``VWAP = notional / base quantity``.
    """
    if not notional > 0:
        raise ValueError(f"book_liquidation_cost: notional must be > 0, got {notional!r}")
    level_notional = prices * amounts
    cum = np.cumsum(level_notional)
    if notional <= cum[-1]:
        i = int(np.searchsorted(cum, notional))
        done = float(cum[i - 1]) if i > 0 else 0.0
        qty = float(amounts[:i].sum()) + (notional - done) / float(prices[i])
    else:
        far = mid + beyond_depth_multiplier * (float(prices[-1]) - mid)
        if not far > 0:
            raise FairmarginError(
                f"book_liquidation_cost: price beyond the book must be > 0, got {far!r}"
            )
        qty = float(amounts.sum()) + (notional - float(cum[-1])) / far
    vwap = notional / qty
    return abs(vwap - mid) / mid


def interp_power_law(h: FloatArray, grid: FloatArray, q: FloatArray) -> FloatArray:
    """Quantile at horizons ``h`` inside ``grid``: log Q linear in log H between grid points."""
    h = np.asarray(h, dtype=np.float64)
    if np.any(h < grid[0] * (1 - 1e-12)) or np.any(h > grid[-1] * (1 + 1e-12)):
        raise ValueError(
            f"interp_power_law: h must lie in [{grid[0]}, {grid[-1]}], got {h.min()}..{h.max()}"
        )
    return np.exp(np.interp(np.log(h), np.log(grid), np.log(np.maximum(q, 1e-300))))


def implied_horizon(
    rate: float,
    *,
    grid: FloatArray,
    q_long: FloatArray,
    q_short: FloatArray,
    cost_long: float,
    cost_short: float,
) -> float:
    """H* with max over sides of (Q_side(H*) + cost_side) = rate; NaN outside the grid."""

    def g(h: float) -> float:
        hh = np.array([h])
        return max(
            float(interp_power_law(hh, grid, q_long)[0]) + cost_long,
            float(interp_power_law(hh, grid, q_short)[0]) + cost_short,
        )

    lo, hi = float(grid[0]), float(grid[-1])
    if rate < g(lo) or rate > g(hi):
        return float("nan")
    a, b = np.log(lo), np.log(hi)
    for _ in range(80):
        c = 0.5 * (a + b)
        if g(float(np.exp(c))) < rate:
            a = c
        else:
            b = c
    return float(np.exp(0.5 * (a + b)))


def _sample_run(
    fair: FloatArray, classes: Sequence[str], rng: np.random.Generator
) -> FloatArray | None:
    """Deviations tier by tier, each uniform on the part of its band that keeps the published
    rates non-decreasing and <= 1; ``None`` when some tier has no room."""
    d = np.empty(fair.shape[0])
    prev = 0.0
    for k, cls in enumerate(classes):
        lo_b, hi_b = BANDS[cls]
        lo = max(lo_b + _EDGE, prev / fair[k] - 1.0 + 1e-12)
        hi = min(hi_b - _EDGE, 1.0 / fair[k] - 1.0)
        if lo > hi:
            return None
        d[k] = rng.uniform(lo, hi)
        prev = fair[k] * (1.0 + d[k])
    return d


def _layout(n_tiers: int, n_under: int, n_over: int, rng: np.random.Generator) -> list[str]:
    """A contiguous run of under-margined and one of over-margined tiers at random places."""
    cls = ["inline"] * n_tiers
    free = n_tiers - n_under - n_over
    gap_before = int(rng.integers(0, free + 1))
    gap_mid = int(rng.integers(0, free - gap_before + 1))
    first, second = ("under", "over") if rng.random() < 0.5 else ("over", "under")
    n_first = n_under if first == "under" else n_over
    n_second = n_over if first == "under" else n_under
    pos = gap_before
    for i in range(n_first):
        cls[pos + i] = first
    pos += n_first + gap_mid
    for i in range(n_second):
        cls[pos + i] = second
    return cls


def plant_schedule(
    fair: FloatArray,
    *,
    share: float,
    p_under: float,
    rng: np.random.Generator,
) -> tuple[list[str], FloatArray]:
    """Classes and deviations of one schedule (see :func:`plant_deviations`)."""
    k = fair.shape[0]
    m = min(k, int(np.floor(share * k + rng.random())))
    under = rng.random(m) < p_under
    n_u, n_o = int(under.sum()), int(m - under.sum())
    for _ in range(20):
        cls = _layout(k, n_u, n_o, rng)
        d = _sample_run(fair, cls, rng)
        if d is not None:
            return cls, d
    # always feasible while fair <= 1 / 1.4: unders first, overs last
    cls = ["under"] * n_u + ["inline"] * (k - m) + ["over"] * n_o
    d = _sample_run(fair, cls, rng)
    if d is None:
        cls = ["under"] * n_u + ["inline"] * (k - n_u)
        d = _sample_run(fair, cls, rng)
    if d is None:
        raise FairmarginError(
            f"plant_schedule: true fair must stay below 1 / 0.9, got max {fair.max():.3f}"
        )
    return cls, d


def plant_deviations(
    fairs: Sequence[FloatArray],
    *,
    venues: Sequence[str],
    underlyings: Sequence[str],
    share: float,
    rng: np.random.Generator,
    attempts: int = 200,
) -> list[tuple[list[str], FloatArray]]:
    """Plant deviations on every schedule; redraw until the whole bundle is well spread.

    Each schedule plants ``floor(share x K + U)`` tiers, each under-margined with the venue's
    tendency ``p_under`` (else over), as contiguous runs. The whole draw is redone (seeded) until
    the planted share is within 0.05 of ``share``, every venue has a planted tier (both
    directions when it has >= 4 tiers) and every underlying has both directions.
    """
    best: list[tuple[list[str], FloatArray]] = []
    best_faults = -1
    for _ in range(attempts):
        out = [
            plant_schedule(f, share=share, p_under=VENUES[v].p_under, rng=rng)
            for f, v in zip(fairs, venues, strict=True)
        ]
        if share <= 0:
            return out
        n_tot = sum(len(c) for c, _ in out)
        n_pl = sum(sum(x != "inline" for x in c) for c, _ in out)
        faults = int(n_tot >= 20 and abs(n_pl / n_tot - share) > 0.05)
        for group in (venues, underlyings):
            for key in sorted(set(group)):
                cls = [x for (c, _), g in zip(out, group, strict=True) if g == key for x in c]
                both_needed = group is underlyings or len(cls) >= 4
                has_u, has_o = "under" in cls, "over" in cls
                faults += int(not (has_u or has_o))
                faults += int(both_needed and not (has_u and has_o))
        if faults == 0:
            return out
        if best_faults < 0 or faults < best_faults:
            best, best_faults = out, faults
    logger.warning(
        "plant_deviations: %d spread rule(s) still broken after %d draws; keeping the best draw",
        best_faults,
        attempts,
    )
    return best
