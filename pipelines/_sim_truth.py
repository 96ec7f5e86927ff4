"""Monte-Carlo ground truth of the simulator: the true fair rate per tier at the last as_of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from features._checks import FairmarginError
from pipelines._sim_margin import book_liquidation_cost, interp_power_law
from pipelines._sim_market import (
    NS_PER_MINUTE,
    BookArrays,
    ContractPath,
    Instrument,
    basis_level_scale,
    basis_ou_params,
)
from pipelines._sim_paths import BASIS_BLOCK_MINUTES, BasisPaths, PathModel, simulate_extremes

__all__ = ["MAX_TOP_MINUTES", "MIN_TOP_MINUTES", "ContractTruth", "truth_for_underlying"]

FloatArray = NDArray[np.float64]
MIN_TOP_MINUTES = 2 * 1440
MAX_TOP_MINUTES = 14 * 1440
_GRID_POINTS = 72


@dataclass(frozen=True, slots=True)
class ContractTruth:
    """The truth of one contract's latest schedule, tier by tier (arrays of length K)."""

    notional: FloatArray
    horizon_minutes: FloatArray
    trailing_notional_per_minute: float
    cost_long: FloatArray
    cost_short: FloatArray
    q_long: FloatArray  # at each tier's horizon
    q_short: FloatArray
    grid: FloatArray  # MC horizon grid (minutes)
    grid_q_long: FloatArray  # quantile on the grid
    grid_q_short: FloatArray

    @property
    def fair_long(self) -> FloatArray:
        """Long side's fair rate per tier."""
        return self.q_long + self.cost_long

    @property
    def fair_short(self) -> FloatArray:
        """Short side's fair rate per tier."""
        return self.q_short + self.cost_short

    @property
    def fair(self) -> FloatArray:
        """Fair initial margin rate per tier (larger side)."""
        return np.maximum(self.fair_long, self.fair_short)


def horizon_minutes(
    notional: FloatArray,
    *,
    trailing_notional_per_minute: float,
    base_latency_minutes: float,
    participation: float,
    minutes_to_expiry: float | None,
) -> FloatArray:
    """METHOD's liquidation horizon, capped at the time to expiry for a dated future."""
    h = base_latency_minutes + notional / (participation * trailing_notional_per_minute)
    if minutes_to_expiry is not None:
        h = np.minimum(h, minutes_to_expiry)
    return np.asarray(h, dtype=np.float64)


def truth_for_underlying(
    model: PathModel,
    *,
    h0: float,
    stressed0: bool,
    instruments: Sequence[Instrument],
    paths: Sequence[ContractPath],
    books: Sequence[BookArrays],
    notionals: Sequence[FloatArray],
    trailing: Sequence[float],
    end_mark: int,
    start_ns: int,
    coverage: float,
    base_latency_minutes: float,
    participation: float,
    beyond_depth_multiplier: float,
    n_paths: int,
    rng: np.random.Generator,
) -> list[ContractTruth]:
    """True fair rates for the latest schedules of every contract of one underlying.

    One set of Monte-Carlo paths of the index (with each contract's basis on top) serves all
    contracts; quantiles are kept on a geometric grid of whole minutes up to
    ``max(2 days, 1.25 x the longest evaluated horizon)`` and interpolated as a power law.
    """
    if end_mark % BASIS_BLOCK_MINUTES:
        raise ValueError(f"truth_for_underlying: end_mark must be a multiple of 5, got {end_mark}")
    end_ns = start_ns + end_mark * NS_PER_MINUTE
    horizons = []
    for inst, n, v in zip(instruments, notionals, trailing, strict=True):
        if not v > 0:
            raise FairmarginError(
                f"simulate_market: trailing traded notional of {inst.venue} {inst.symbol} "
                f"must be > 0, got {v!r}"
            )
        to_exp = None if inst.expiry_ns is None else (inst.expiry_ns - end_ns) / NS_PER_MINUTE
        horizons.append(
            horizon_minutes(
                n,
                trailing_notional_per_minute=v,
                base_latency_minutes=base_latency_minutes,
                participation=participation,
                minutes_to_expiry=to_exp,
            )
        )
    longest = max(float(h.max()) for h in horizons)
    top = max(MIN_TOP_MINUTES, int(np.ceil(1.25 * longest / 60.0)) * 60)
    if top > MAX_TOP_MINUTES:
        raise FairmarginError(
            f"simulate_market: evaluated horizons must stay <= {MAX_TOP_MINUTES / 1.25:.0f} "
            f"minutes, got {longest:.0f}; raise participation or lower single_tier_notional"
        )
    grid = np.unique(np.round(np.geomspace(1.0, top, _GRID_POINTS)).astype(np.int64))

    b0 = end_mark // BASIS_BLOCK_MINUTES
    n_blocks = top // BASIS_BLOCK_MINUTES + 2
    block_ns = (
        start_ns + (b0 + np.arange(n_blocks, dtype=np.int64)) * BASIS_BLOCK_MINUTES * NS_PER_MINUTE
    )
    levels, scales, phis, sds, ou0 = [], [], [], [], []
    for inst, path in zip(instruments, paths, strict=True):
        lv, sc = basis_level_scale(inst, block_start_ns=block_ns)
        phi, innov, _ = basis_ou_params(inst)
        levels.append(lv)
        scales.append(sc)
        phis.append(phi)
        sds.append(innov)
        ou0.append(path.ou[b0])
    basis = BasisPaths(
        ou0=np.array(ou0),
        phi=np.array(phis),
        innov_sd=np.array(sds),
        level=np.vstack(levels),
        scale=np.vstack(scales),
    )
    run_min, run_max = simulate_extremes(
        model,
        h0=h0,
        stressed0=stressed0,
        horizons=grid,
        n_paths=n_paths,
        rng=rng,
        basis=basis,
    )
    linear = np.array([inst.linear for inst in instruments])[:, None, None]
    adverse_long = np.where(linear, -np.expm1(run_min), np.expm1(-run_min))
    adverse_short = np.where(linear, np.expm1(run_max), -np.expm1(-run_max))
    del run_min, run_max
    gq_long = np.quantile(adverse_long, coverage, axis=-1)
    gq_short = np.quantile(adverse_short, coverage, axis=-1)
    gridf = grid.astype(np.float64)

    out = []
    for c, (book, n, v, h) in enumerate(zip(books, notionals, trailing, horizons, strict=True)):
        snap = int(np.searchsorted(book.mark, end_mark, side="right")) - 1
        if snap < 0:
            raise FairmarginError("simulate_market: no order book at or before the last as_of")
        bid_p, bid_a = book.bid_price[snap], book.bid_amount[snap]
        ask_p, ask_a = book.ask_price[snap], book.ask_amount[snap]
        mid = 0.5 * (float(bid_p[0]) + float(ask_p[0]))
        cost_l = np.array(
            [
                book_liquidation_cost(
                    bid_p,
                    bid_a,
                    mid=mid,
                    notional=float(x),
                    beyond_depth_multiplier=beyond_depth_multiplier,
                )
                for x in n
            ]
        )
        cost_s = np.array(
            [
                book_liquidation_cost(
                    ask_p,
                    ask_a,
                    mid=mid,
                    notional=float(x),
                    beyond_depth_multiplier=beyond_depth_multiplier,
                )
                for x in n
            ]
        )
        out.append(
            ContractTruth(
                notional=n,
                horizon_minutes=h,
                trailing_notional_per_minute=v,
                cost_long=cost_l,
                cost_short=cost_s,
                q_long=interp_power_law(h, gridf, gq_long[c]),
                q_short=interp_power_law(h, gridf, gq_short[c]),
                grid=gridf,
                grid_q_long=gq_long[c],
                grid_q_short=gq_short[c],
            )
        )
    return out
