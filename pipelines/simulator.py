"""fairmargin's embedded market simulator: a seeded bundle with planted margin discrepancies.

:func:`simulate_market` returns every table of the data contract (``contracts``,
``margin_tiers``, ``ohlcv``, ``order_books``, ``option_quotes``, ``funding_rates``) plus ``truth``:
the true fair initial margin rate of each tier of the latest schedule of each (venue, symbol),
computed by Monte Carlo from the simulator's state at that as_of, the true implied liquidation
horizon, and the planted deviation of the published rate.

The market (METHOD.md, "The simulator"):

* one-minute index paths per underlying: GARCH(1,1) with Student-t innovations, Poisson jumps
  with t-sized jumps (one market-wide source, one per underlying), a market-wide two-state
  calm/stressed Markov regime that scales volatility and jump rates, cross-asset correlation
  through a common factor (:mod:`pipelines._sim_paths`);
* contracts = index x exp(basis), the basis a few-bp mean-reverting process redrawn every five
  minutes (futures add a 5-10 %-a-year carry times the time to expiry, and the noise fades over
  the last week, so their basis converges to 0 at expiry); bars aggregate the one-minute marks;
  volume rises with volatility and venue size; books thin and widen with volatility; options
  (deribit, BTC and ETH) are quoted hourly on a surface driven by the conditional volatility;
* margin policies: ``static`` (fixed brackets and rates), ``vol_scaled`` (weekly, from 7-day
  realised vol) and ``lagging`` (daily checks on a 3-day-old 7-day vol, published only on a
  change > 25 %); every schedule is republished at the last bar close with rates planted from
  the truth: ``published = fair x (1 + d)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from pipelines._sim_margin import (
    Schedule,
    book_liquidation_cost,
    evaluated_notionals,
    implied_horizon,
    plant_deviations,
    policy_rates,
    tier_brackets,
)
from pipelines._sim_market import (
    ASSETS,
    MINUTES_PER_YEAR,
    NS_PER_MINUTE,
    VENUES,
    BookArrays,
    ContractPath,
    Instrument,
    build_instruments,
    contract_paths,
    forward_cond_var,
    funding_rates,
    make_bars,
    make_books,
    minute_cond_var,
    option_quotes,
)
from pipelines._sim_paths import (
    BasisPaths,
    IndexHistory,
    PathModel,
    simulate_extremes,
    simulate_index_history,
)
from pipelines._sim_truth import ContractTruth, truth_for_underlying

__all__ = [
    "TABLE_COLUMNS",
    "BasisPaths",
    "PathModel",
    "SimConfig",
    "SimResult",
    "book_liquidation_cost",
    "path_models",
    "run_simulation",
    "simulate_extremes",
    "simulate_market",
]

logger = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "contracts": (
        "venue", "symbol", "type", "base", "quote", "settle", "linear", "contract_size",
        "expiry", "strike", "option_type",
    ),
    "margin_tiers": (
        "venue", "symbol", "as_of", "tier", "min_notional", "max_notional",
        "maintenance_margin_rate", "max_leverage", "initial_margin_rate",
    ),
    "ohlcv": (
        "venue", "symbol", "timeframe", "timestamp", "open", "high", "low", "close", "volume",
    ),
    "order_books": ("venue", "symbol", "timestamp", "side", "level", "price", "amount"),
    "option_quotes": (
        "venue", "underlying", "symbol", "timestamp", "expiry", "strike", "option_type",
        "mark_iv", "underlying_price", "delta",
    ),
    "funding_rates": ("venue", "symbol", "timestamp", "funding_rate"),
    "truth": (
        "venue", "symbol", "as_of", "tier", "fair_initial_margin_rate", "planted",
        "planted_deviation", "implied_horizon_minutes",
    ),
}  # fmt: skip
"""Columns of each table, in order (``option_quotes`` includes the optional ``delta``)."""

_KEYS: dict[str, list[str]] = {
    "contracts": ["venue", "symbol"],
    "margin_tiers": ["venue", "symbol", "as_of", "tier"],
    "ohlcv": ["venue", "symbol", "timeframe", "timestamp"],
    "order_books": ["venue", "symbol", "timestamp", "side", "level"],
    "option_quotes": ["venue", "symbol", "timestamp"],
    "funding_rates": ["venue", "symbol", "timestamp"],
    "truth": ["venue", "symbol", "as_of", "tier"],
}
_OPTION_UNDERLYINGS = ("BTC", "ETH")
_OPTION_VENUE = "deribit"
_BURN_IN_MINUTES = 5 * 1440
_COMMON_JUMPS_PER_DAY = 2.0
_IDIO_JUMPS_PER_DAY = 1.0
_JUMP_STRESS_FACTOR = 3.0
_FUNDING_MINUTES = 480
_OPTION_MINUTES = 60


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Configuration of the simulated market.

    Parameters
    ----------
    seed
        Seed of every random draw; the same seed gives identical frames.
    days
        Length of the bundle in days (>= 7: the truth needs 7 days of traded volume).
    start
        First bar open, a UTC midnight (``"2026-01-01"``).
    bar_minutes
        OHLCV bar length in minutes (a divisor of 60).
    book_interval_minutes
        Spacing of order-book snapshots (a multiple of ``bar_minutes`` dividing a day).
    book_levels
        Levels per side of each book.
    mc_paths
        Monte-Carlo paths of the truth.
    coverage
        q, the quantile level of fair margin.
    base_latency_minutes, participation
        Liquidation horizon ``H = base_latency + N / (participation x traded notional per
        minute)`` (METHOD.md).
    single_tier_notional, last_tier_cap_multiple
        Which notional a single-tier schedule and a last tier are judged at (METHOD.md).
    beyond_depth_multiplier
        Past the displayed depth, fills at this multiple of the deepest level's distance.
    planted_share
        Target share of tiers planted off-fair (40-100 %); the rest lie within 10 %.
    venues, underlyings
        Which venues (of binanceusdm, bybit, okx, dydx) and underlyings (of BTC, ETH, SOL)
        to list. Options (deribit) are listed for BTC and ETH when chosen.
    mean_calm_days, mean_stress_days, stress_vol_multiplier
        Regime chain: mean holding times and the stressed volatility multiplier.
    t_df, garch_alpha, garch_beta
        Student-t degrees of freedom and GARCH(1,1) parameters (per minute).
    jump_share
        Share of each underlying's variance that comes from jumps.
    mc_threads
        Threads for the Monte Carlo (one underlying each); the numbers do not depend on it.
    """

    seed: int = 7
    days: int = 90
    start: str = "2026-01-01"
    bar_minutes: int = 5
    book_interval_minutes: int = 60
    book_levels: int = 25
    mc_paths: int = 10_000
    coverage: float = 0.99
    base_latency_minutes: float = 15.0
    participation: float = 0.10
    single_tier_notional: float = 1e6
    last_tier_cap_multiple: float = 10.0
    beyond_depth_multiplier: float = 1.5
    planted_share: float = 0.30
    venues: tuple[str, ...] = ("binanceusdm", "bybit", "dydx", "okx")
    underlyings: tuple[str, ...] = ("BTC", "ETH", "SOL")
    mean_calm_days: float = 8.0
    mean_stress_days: float = 2.0
    stress_vol_multiplier: float = 2.0
    t_df: float = 5.0
    garch_alpha: float = 0.004
    garch_beta: float = 0.9955
    jump_share: float = 0.15
    mc_threads: int = 2

    def __post_init__(self) -> None:
        who = "SimConfig"
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{who}: seed must be an int >= 0, got {self.seed!r}")
        if not isinstance(self.days, int) or self.days < 7:
            raise ValueError(f"{who}: days must be an int >= 7, got {self.days!r}")
        try:
            ts = pd.Timestamp(self.start)
        except ValueError as exc:
            raise ValueError(f"{who}: start must be a date, got {self.start!r}") from exc
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        if ts != ts.normalize():
            raise ValueError(f"{who}: start must be a UTC midnight, got {self.start!r}")
        if self.bar_minutes not in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60):
            raise ValueError(f"{who}: bar_minutes must divide 60, got {self.bar_minutes!r}")
        bi = self.book_interval_minutes
        if not isinstance(bi, int) or bi <= 0 or bi % self.bar_minutes or 1440 % bi:
            raise ValueError(
                f"{who}: book_interval_minutes must be a multiple of bar_minutes dividing 1440, "
                f"got {bi!r}"
            )
        if not isinstance(self.book_levels, int) or self.book_levels < 2:
            raise ValueError(f"{who}: book_levels must be an int >= 2, got {self.book_levels!r}")
        if not isinstance(self.mc_paths, int) or self.mc_paths < 100:
            raise ValueError(f"{who}: mc_paths must be an int >= 100, got {self.mc_paths!r}")
        if not 0.5 < self.coverage < 1:
            raise ValueError(f"{who}: coverage must be in (0.5, 1), got {self.coverage!r}")
        if not self.base_latency_minutes >= 1:
            raise ValueError(
                f"{who}: base_latency_minutes must be >= 1, got {self.base_latency_minutes!r}"
            )
        if not 0 < self.participation <= 1:
            raise ValueError(f"{who}: participation must be in (0, 1], got {self.participation!r}")
        if not self.single_tier_notional > 0:
            raise ValueError(
                f"{who}: single_tier_notional must be > 0, got {self.single_tier_notional!r}"
            )
        if not self.last_tier_cap_multiple > 1:
            raise ValueError(
                f"{who}: last_tier_cap_multiple must be > 1, got {self.last_tier_cap_multiple!r}"
            )
        if not self.beyond_depth_multiplier >= 1:
            raise ValueError(
                f"{who}: beyond_depth_multiplier must be >= 1, "
                f"got {self.beyond_depth_multiplier!r}"
            )
        if not 0 <= self.planted_share <= 0.5:
            raise ValueError(
                f"{who}: planted_share must be in [0, 0.5], got {self.planted_share!r}"
            )
        for name, known in (("venues", VENUES), ("underlyings", ASSETS)):
            val = getattr(self, name)
            if not val or len(set(val)) != len(val) or not set(val) <= set(known):
                raise ValueError(
                    f"{who}: {name} must be distinct names from {sorted(known)}, got {val!r}"
                )
        for name in ("mean_calm_days", "mean_stress_days"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{who}: {name} must be > 0, got {getattr(self, name)!r}")
        if not self.stress_vol_multiplier >= 1:
            raise ValueError(
                f"{who}: stress_vol_multiplier must be >= 1, got {self.stress_vol_multiplier!r}"
            )
        if not self.t_df > 4:
            raise ValueError(f"{who}: t_df must be > 4 (finite kurtosis), got {self.t_df!r}")
        a, b = self.garch_alpha, self.garch_beta
        if not (a >= 0 and b >= 0 and a + b < 1):
            raise ValueError(
                f"{who}: garch_alpha, garch_beta must be >= 0 with a sum < 1, got {a!r}, {b!r}"
            )
        if not 0 <= self.jump_share < 1:
            raise ValueError(f"{who}: jump_share must be in [0, 1), got {self.jump_share!r}")
        if not isinstance(self.mc_threads, int) or self.mc_threads < 1:
            raise ValueError(f"{who}: mc_threads must be an int >= 1, got {self.mc_threads!r}")

    @property
    def start_ts(self) -> pd.Timestamp:
        """``start`` as a UTC timestamp."""
        ts = pd.Timestamp(self.start)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    @property
    def end_ts(self) -> pd.Timestamp:
        """The last bar close, ``start + days``: the as_of of every latest schedule."""
        return self.start_ts + pd.Timedelta(days=self.days)


@dataclass(frozen=True, slots=True)
class SimResult:
    """A simulated bundle and the hidden state behind it.

    Attributes
    ----------
    tables
        The bundle (see :func:`simulate_market`).
    venue_styles
        Margin-policy style of each venue (``static``, ``vol_scaled``, ``lagging``).
    stressed
        Regime (True = stressed) of the minute ending at each minute mark, indexed by time.
    truth_detail
        One row per truth tier: evaluated_notional, horizon_minutes,
        trailing_notional_per_minute, q_long, q_short, cost_long, cost_short, fair,
        published, direction (``under``, ``inline``, ``over``).
    mc_horizons_minutes
        The Monte-Carlo horizon grid of each underlying.
    """

    tables: dict[str, pd.DataFrame]
    venue_styles: dict[str, str]
    stressed: pd.Series = field(repr=False)
    truth_detail: pd.DataFrame = field(repr=False)
    mc_horizons_minutes: dict[str, tuple[int, ...]] = field(repr=False)


def path_models(cfg: SimConfig) -> dict[str, PathModel]:
    """The one-minute dynamics of each underlying, calibrated to its long-run annualised vol.

    Per-minute variance ``v = vol^2 / 525600`` splits into jumps (``jump_share``) and diffusion:
    ``hbar E[m^2] = (1 - jump_share) v`` over the regime's stationary law, and
    ``rate E[J^2] = jump_share v`` with rates averaged over regimes.
    """
    p01 = 1.0 / (cfg.mean_calm_days * 1440.0)
    p10 = 1.0 / (cfg.mean_stress_days * 1440.0)
    pi_s = p01 / (p01 + p10)
    e_m2 = (1.0 - pi_s) + pi_s * cfg.stress_vol_multiplier**2
    rates = (_COMMON_JUMPS_PER_DAY / 1440.0, _IDIO_JUMPS_PER_DAY / 1440.0)
    mean_rate = sum(rates) * ((1.0 - pi_s) + pi_s * _JUMP_STRESS_FACTOR)
    jump_df = 3.0
    out = {}
    for u in cfg.underlyings:
        v = ASSETS[u].vol_ann ** 2 / MINUTES_PER_YEAR
        hbar = (1.0 - cfg.jump_share) * v / e_m2
        e_j2 = cfg.jump_share * v / mean_rate
        out[u] = PathModel(
            omega=hbar * (1.0 - cfg.garch_alpha - cfg.garch_beta),
            alpha=cfg.garch_alpha,
            beta=cfg.garch_beta,
            t_df=cfg.t_df,
            stress_vol_multiplier=cfg.stress_vol_multiplier,
            p_calm_to_stress=p01,
            p_stress_to_calm=p10,
            jump_rates=rates if cfg.jump_share > 0 else (),
            jump_stress_factor=_JUMP_STRESS_FACTOR,
            jump_scale=float(np.sqrt(e_j2 * (jump_df - 2.0) / jump_df)),
            jump_df=jump_df,
        )
    return out


def _ts(ns: NDArray[np.int64]) -> pd.Series:
    return pd.Series(np.asarray(ns, dtype="datetime64[ns]")).dt.tz_localize("UTC")


def _str(values: NDArray[np.object_] | Sequence[str | None]) -> pd.Series:
    """A pandas ``str`` column; through Arrow, which takes far less memory than from objects."""
    arrow = pa.array(np.asarray(values, dtype=object), type=pa.large_string(), from_pandas=True)
    return pd.Series(pd.array(arrow, dtype="str"))


def _const(n: int, value: str) -> NDArray[np.object_]:
    """``n`` references to one string (``np.full`` would make ``n`` string objects)."""
    out = np.empty(n, dtype=object)
    out[:] = value
    return out


def _finish(name: str, cols: dict[str, pd.Series | NDArray[np.generic]]) -> pd.DataFrame:
    df = pd.DataFrame({c: cols[c] for c in TABLE_COLUMNS[name]})
    return df.sort_values(_KEYS[name], kind="stable", ignore_index=True)


def _realised_vol(log_price: FloatArray, *, t0: int, t1: int, bar: int) -> float:
    """Annualised realised vol from bar closes in the minute window (t0, t1]."""
    marks = np.arange(t0, t1 + 1, bar)
    r = np.diff(log_price[marks])
    return float(np.sqrt(np.sum(r * r) * MINUTES_PER_YEAR / (t1 - t0)))


def _policy_history(
    inst: Instrument, path: ContractPath, notional: FloatArray, *, n_minutes: int, bar: int
) -> list[Schedule]:
    """Published schedules before the last as_of, from the venue's policy style."""
    day = 1440
    long_run = ASSETS[inst.underlying].vol_ann
    out = [Schedule(0, policy_rates(notional, sigma_ann=long_run, inst=inst))]
    if inst.style == "static":
        for t in range(30 * day, n_minutes, 30 * day):
            out.append(Schedule(t, out[0].initial_rate.copy()))
    elif inst.style == "vol_scaled":
        for t in range(7 * day, n_minutes, 7 * day):
            sig = _realised_vol(path.log_price, t0=t - 7 * day, t1=t, bar=bar)
            out.append(Schedule(t, policy_rates(notional, sigma_ann=sig, inst=inst)))
    elif inst.style == "lagging":
        published = long_run
        for t in range(10 * day, n_minutes, day):
            sig = _realised_vol(path.log_price, t0=t - 10 * day, t1=t - 3 * day, bar=bar)
            if abs(sig / published - 1.0) > 0.25:
                published = sig
                out.append(Schedule(t, policy_rates(notional, sigma_ann=sig, inst=inst)))
    else:
        raise ValueError(f"_policy_history: unknown style {inst.style!r}")
    return out


def run_simulation(cfg: SimConfig) -> SimResult:
    """Simulate the market of ``cfg`` and return the bundle with its hidden state."""
    start = cfg.start_ts
    start_ns = int(start.value)
    n_min = cfg.days * 1440
    bar = cfg.bar_minutes
    seeds = np.random.SeedSequence(cfg.seed).spawn(7 + len(cfg.underlyings))
    rng_inst, rng_index, rng_basis, rng_bars, rng_books, rng_plant, _ = (
        np.random.default_rng(s) for s in seeds[:7]
    )
    rng_mc = [np.random.default_rng(s) for s in seeds[7:]]
    unders = list(cfg.underlyings)

    instruments = build_instruments(
        venues=cfg.venues, underlyings=unders, end=cfg.end_ts, rng=rng_inst
    )
    if not instruments:
        raise ValueError("SimConfig: venues and underlyings must list at least one contract")
    models = path_models(cfg)
    history: IndexHistory = simulate_index_history(
        [models[u] for u in unders],
        log_price0=np.log([ASSETS[u].price0 for u in unders]),
        factor_loading=np.array([ASSETS[u].loading for u in unders]),
        common_jump_source=0,
        n_minutes=n_min,
        burn_in_minutes=_BURN_IN_MINUTES,
        rng=rng_index,
    )
    paths = contract_paths(
        instruments, history=history, underlyings=unders, start_ns=start_ns, rng=rng_basis
    )
    minute_var = {u: minute_cond_var(models[u], history, i) for i, u in enumerate(unders)}
    fwd_var = {u: forward_cond_var(models[u], history, i) for i, u in enumerate(unders)}
    mean_var = {u: ASSETS[u].vol_ann ** 2 / MINUTES_PER_YEAR for u in unders}

    # --- bars, books, funding -------------------------------------------------------------
    timeframe = "1h" if bar == 60 else f"{bar}m"
    n_bars = n_min // bar
    bar_ns = start_ns + np.arange(n_bars, dtype=np.int64) * bar * NS_PER_MINUTE
    book_marks = np.arange(0, n_min + 1, cfg.book_interval_minutes, dtype=np.int64)
    ohlcv_parts: dict[str, list[NDArray[np.generic]]] = {c: [] for c in TABLE_COLUMNS["ohlcv"]}
    book_parts: dict[str, list[NDArray[np.generic]]] = {
        c: [] for c in TABLE_COLUMNS["order_books"]
    }
    fund_parts: dict[str, list[NDArray[np.generic]]] = {
        c: [] for c in TABLE_COLUMNS["funding_rates"]
    }
    bars_by_inst: list[dict[str, FloatArray]] = []
    books: list[BookArrays] = []
    levels = cfg.book_levels
    lvl_idx = np.arange(levels, dtype=np.int64)
    for inst, path in zip(instruments, paths, strict=True):
        u = inst.underlying
        bars = make_bars(
            path, inst=inst, minute_var=minute_var[u], mean_var=mean_var[u],
            bar_minutes=bar, rng=rng_bars,
        )  # fmt: skip
        bars_by_inst.append(bars)
        ohlcv_parts["venue"].append(_const(n_bars, inst.venue))
        ohlcv_parts["symbol"].append(_const(n_bars, inst.symbol))
        ohlcv_parts["timeframe"].append(_const(n_bars, timeframe))
        ohlcv_parts["timestamp"].append(bar_ns)
        for c in ("open", "high", "low", "close", "volume"):
            ohlcv_parts[c].append(bars[c])
        book = make_books(
            path, inst=inst, fwd_var=fwd_var[u], mean_var=mean_var[u],
            marks=book_marks, levels=levels, rng=rng_books,
        )  # fmt: skip
        books.append(book)
        s = book_marks.shape[0]
        nrow = s * 2 * levels
        book_parts["venue"].append(_const(nrow, inst.venue))
        book_parts["symbol"].append(_const(nrow, inst.symbol))
        ts = np.repeat(start_ns + book_marks * NS_PER_MINUTE, 2 * levels)
        book_parts["timestamp"].append(ts)
        side = np.tile(np.repeat(np.array(["ask", "bid"], dtype=object), levels), s)
        book_parts["side"].append(side)
        book_parts["level"].append(np.tile(lvl_idx, 2 * s))
        book_parts["price"].append(np.hstack([book.ask_price, book.bid_price]).ravel())
        book_parts["amount"].append(np.hstack([book.ask_amount, book.bid_amount]).ravel())
        if inst.kind == "swap":
            fmarks, frate = funding_rates(path, interval_minutes=_FUNDING_MINUTES)
            fund_parts["venue"].append(_const(fmarks.shape[0], inst.venue))
            fund_parts["symbol"].append(_const(fmarks.shape[0], inst.symbol))
            fund_parts["timestamp"].append(start_ns + fmarks * NS_PER_MINUTE)
            fund_parts["funding_rate"].append(frate)

    def assemble(name: str, parts: dict[str, list[NDArray[np.generic]]]) -> pd.DataFrame:
        cols: dict[str, pd.Series | NDArray[np.generic]] = {}
        for c, chunks in parts.items():
            arr = np.concatenate(chunks)
            if arr.dtype == object:
                cols[c] = _str(arr)
            elif c in ("timestamp", "as_of", "expiry"):
                cols[c] = _ts(arr)
            else:
                cols[c] = arr
        return _finish(name, cols)

    tables: dict[str, pd.DataFrame] = {
        "ohlcv": assemble("ohlcv", ohlcv_parts),
        "order_books": assemble("order_books", book_parts),
        "funding_rates": assemble("funding_rates", fund_parts),
    }

    # --- options ----------------------------------------------------------------------------
    opt_marks = np.arange(0, n_min + 1, _OPTION_MINUTES, dtype=np.int64)
    opt_frames = []
    opt_contracts = []
    for i, u in enumerate(unders):
        if u not in _OPTION_UNDERLYINGS:
            continue
        q = option_quotes(
            underlying=u,
            index_log_price=history.log_price[:, i],
            fwd_var=fwd_var[u],
            stressed=history.stressed,
            marks=opt_marks,
            start_ns=start_ns,
        )
        key = np.stack(
            [q["expiry"], q["strike"].astype(np.int64), q["is_call"].astype(np.int64)], axis=1
        )
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        days = pd.to_datetime(uniq[:, 0], unit="ns", utc=True).strftime("%y%m%d")
        sym_u = np.array(
            [
                f"{u}/USD:{u}-{d}-{k}-{'C' if c else 'P'}"
                for d, k, c in zip(days, uniq[:, 1], uniq[:, 2], strict=True)
            ],
            dtype=object,
        )
        n = q["strike"].shape[0]
        opt_frames.append(
            {
                "venue": _const(n, _OPTION_VENUE),
                "underlying": _const(n, u),
                "symbol": sym_u[inv.ravel()],
                "timestamp": q["timestamp"],
                "expiry": q["expiry"],
                "strike": q["strike"],
                "option_type": np.array(["put", "call"], dtype=object)[
                    q["is_call"].astype(np.intp)
                ],
                "mark_iv": q["mark_iv"],
                "underlying_price": q["underlying_price"],
                "delta": q["delta"],
            }
        )
        for j in range(uniq.shape[0]):
            opt_contracts.append(
                {
                    "venue": _OPTION_VENUE, "symbol": str(sym_u[j]), "type": "option",
                    "base": u, "quote": "USD", "settle": u, "linear": False,
                    "contract_size": 1.0, "expiry": int(uniq[j, 0]), "strike": float(uniq[j, 1]),
                    "option_type": "call" if uniq[j, 2] else "put",
                }
            )  # fmt: skip
    if not opt_frames:  # no option underlying listed: an empty table of the right dtypes
        empty: dict[str, NDArray[np.generic]] = {}
        for c in TABLE_COLUMNS["option_quotes"]:
            if c in ("timestamp", "expiry"):
                empty[c] = np.zeros(0, dtype=np.int64)
            elif c in ("strike", "mark_iv", "underlying_price", "delta"):
                empty[c] = np.zeros(0)
            else:
                empty[c] = np.zeros(0, dtype=object)
        opt_frames.append(empty)
    tables["option_quotes"] = assemble(
        "option_quotes", {c: [f[c] for f in opt_frames] for c in opt_frames[0]}
    )

    # --- contracts ----------------------------------------------------------------------------
    rows = [
        {
            "venue": i.venue, "symbol": i.symbol, "type": i.kind, "base": i.underlying,
            "quote": i.quote, "settle": i.settle, "linear": i.linear,
            "contract_size": i.contract_size, "expiry": i.expiry_ns, "strike": None,
            "option_type": None,
        }
        for i in instruments
    ] + opt_contracts  # fmt: skip
    ct = pd.DataFrame(rows)
    tables["contracts"] = _finish(
        "contracts",
        {
            "venue": _str(ct["venue"].to_numpy(object)),
            "symbol": _str(ct["symbol"].to_numpy(object)),
            "type": _str(ct["type"].to_numpy(object)),
            "base": _str(ct["base"].to_numpy(object)),
            "quote": _str(ct["quote"].to_numpy(object)),
            "settle": _str(ct["settle"].to_numpy(object)),
            "linear": ct["linear"].to_numpy(bool),
            "contract_size": ct["contract_size"].to_numpy(np.float64),
            "expiry": pd.Series(
                pd.to_datetime(ct["expiry"].astype("Int64"), unit="ns", utc=True)
            ).astype("datetime64[ns, UTC]"),
            "strike": pd.to_numeric(ct["strike"]).to_numpy(np.float64),
            "option_type": _str(ct["option_type"].to_numpy(object)),
        },
    )

    # --- margin: brackets, policy history, truth, planting ----------------------------------
    brackets = [tier_brackets(i) for i in instruments]
    notionals = [
        evaluated_notionals(
            lo, hi, last_tier_cap_multiple=cfg.last_tier_cap_multiple,
            single_tier_notional=cfg.single_tier_notional,
        )
        for lo, hi in brackets
    ]  # fmt: skip
    n_trail = 7 * 1440 // bar
    trailing = [
        float(np.sum(b["volume"][-n_trail:] * b["close"][-n_trail:]) / (7.0 * 1440.0))
        for b in bars_by_inst
    ]
    truths: list[ContractTruth | None] = [None] * len(instruments)
    grids: dict[str, tuple[int, ...]] = {}

    def one_underlying(ui: int) -> tuple[list[int], list[ContractTruth]]:
        u = unders[ui]
        idx = [k for k, i in enumerate(instruments) if i.underlying == u]
        if not idx:
            return idx, []
        res = truth_for_underlying(
            models[u],
            h0=float(history.h_next[ui]),
            stressed0=bool(history.stressed[n_min]),
            instruments=[instruments[k] for k in idx],
            paths=[paths[k] for k in idx],
            books=[books[k] for k in idx],
            notionals=[notionals[k] for k in idx],
            trailing=[trailing[k] for k in idx],
            end_mark=n_min,
            start_ns=start_ns,
            coverage=cfg.coverage,
            base_latency_minutes=cfg.base_latency_minutes,
            participation=cfg.participation,
            beyond_depth_multiplier=cfg.beyond_depth_multiplier,
            n_paths=cfg.mc_paths,
            rng=rng_mc[ui],
        )
        return idx, res

    # each underlying has its own generator, so threads change the speed, never the numbers;
    # numpy releases the GIL in its random fills and ufuncs
    with ThreadPoolExecutor(max_workers=cfg.mc_threads) as pool:
        results = list(pool.map(one_underlying, range(len(unders))))
    for u, (idx, res) in zip(unders, results, strict=True):
        for k, r in zip(idx, res, strict=True):
            truths[k] = r
        if res:
            grids[u] = tuple(int(g) for g in res[0].grid)
    truth_list = [t for t in truths if t is not None]
    planted = plant_deviations(
        [t.fair for t in truth_list],
        venues=[i.venue for i in instruments],
        underlyings=[i.underlying for i in instruments],
        share=cfg.planted_share,
        rng=rng_plant,
    )

    tier_parts: dict[str, list[NDArray[np.generic]]] = {
        c: [] for c in TABLE_COLUMNS["margin_tiers"]
    }
    truth_parts: dict[str, list[NDArray[np.generic]]] = {c: [] for c in TABLE_COLUMNS["truth"]}
    detail_rows = []
    end_ns = start_ns + n_min * NS_PER_MINUTE
    for inst, path, (lo, hi), n, tr, (cls, dev) in zip(
        instruments, paths, brackets, notionals, truth_list, planted, strict=True
    ):
        k = lo.shape[0]
        fair = tr.fair
        published = fair * (1.0 + dev)
        schedules = _policy_history(inst, path, n, n_minutes=n_min, bar=bar)
        schedules.append(Schedule(n_min, published))
        for sch in schedules:
            rate = sch.initial_rate
            tier_parts["venue"].append(_const(k, inst.venue))
            tier_parts["symbol"].append(_const(k, inst.symbol))
            tier_parts["as_of"].append(np.full(k, start_ns + sch.mark * NS_PER_MINUTE))
            tier_parts["tier"].append(np.arange(1, k + 1, dtype=np.int64))
            tier_parts["min_notional"].append(lo)
            tier_parts["max_notional"].append(hi)
            tier_parts["maintenance_margin_rate"].append(0.5 * rate)
            tier_parts["max_leverage"].append(1.0 / rate)
            tier_parts["initial_margin_rate"].append(rate)
        implied = np.array(
            [
                implied_horizon(
                    float(p), grid=tr.grid, q_long=tr.grid_q_long, q_short=tr.grid_q_short,
                    cost_long=float(cl), cost_short=float(cs),
                )
                for p, cl, cs in zip(published, tr.cost_long, tr.cost_short, strict=True)
            ]
        )  # fmt: skip
        truth_parts["venue"].append(_const(k, inst.venue))
        truth_parts["symbol"].append(_const(k, inst.symbol))
        truth_parts["as_of"].append(np.full(k, end_ns))
        truth_parts["tier"].append(np.arange(1, k + 1, dtype=np.int64))
        truth_parts["fair_initial_margin_rate"].append(fair)
        truth_parts["planted"].append(np.array([c != "inline" for c in cls]))
        truth_parts["planted_deviation"].append(published / fair - 1.0)
        truth_parts["implied_horizon_minutes"].append(implied)
        for t in range(k):
            detail_rows.append(
                {
                    "venue": inst.venue, "symbol": inst.symbol, "tier": t + 1,
                    "evaluated_notional": float(n[t]),
                    "horizon_minutes": float(tr.horizon_minutes[t]),
                    "trailing_notional_per_minute": tr.trailing_notional_per_minute,
                    "q_long": float(tr.q_long[t]), "q_short": float(tr.q_short[t]),
                    "cost_long": float(tr.cost_long[t]), "cost_short": float(tr.cost_short[t]),
                    "fair": float(fair[t]), "published": float(published[t]),
                    "direction": cls[t],
                }
            )  # fmt: skip
    tables["margin_tiers"] = assemble("margin_tiers", tier_parts)
    tables["truth"] = assemble("truth", truth_parts)

    ordered = {name: tables[name] for name in TABLE_COLUMNS}
    detail = pd.DataFrame(detail_rows)
    for c in ("venue", "symbol", "direction"):
        detail[c] = detail[c].astype("str")
    stressed = pd.Series(
        history.stressed.copy(),
        index=pd.DatetimeIndex(_ts(start_ns + np.arange(n_min + 1) * NS_PER_MINUTE)),
        name="stressed",
    )
    logger.info(
        "simulated %d days: %d contracts, %d tiers (%d planted)",
        cfg.days,
        len(instruments),
        len(ordered["truth"]),
        int(ordered["truth"]["planted"].sum()),
    )
    return SimResult(
        tables=ordered,
        venue_styles={v: VENUES[v].style for v in cfg.venues},
        stressed=stressed,
        truth_detail=detail,
        mc_horizons_minutes=grids,
    )


def simulate_market(cfg: SimConfig) -> dict[str, pd.DataFrame]:
    """Simulate a whole bundle of the data contract.

    Returns
    -------
    dict
        Keys ``contracts``, ``margin_tiers``, ``ohlcv``, ``order_books``, ``option_quotes``,
        ``funding_rates``, ``truth``; each frame has the contract's columns
        (:data:`TABLE_COLUMNS`), is sorted by its key and has a fresh RangeIndex. The same
        ``cfg`` gives identical frames.
    """
    return run_simulation(cfg).tables
