"""Market side of the simulator: instruments, prices, bars, order books, funding and options.

Pure functions over numpy arrays; the frames are assembled by :mod:`pipelines.simulator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import ndtr

from pipelines._sim_paths import BASIS_BLOCK_MINUTES, IndexHistory, PathModel

__all__ = [
    "ASSETS",
    "MINUTES_PER_YEAR",
    "NS_PER_MINUTE",
    "VENUES",
    "Asset",
    "BookArrays",
    "ContractPath",
    "Instrument",
    "Venue",
    "basis_level_scale",
    "build_instruments",
    "contract_paths",
    "funding_rates",
    "make_bars",
    "make_books",
    "option_quotes",
]

FloatArray = NDArray[np.float64]
MINUTES_PER_YEAR = 365.0 * 1440.0
NS_PER_MINUTE = 60_000_000_000
_NS_PER_DAY = 1440 * NS_PER_MINUTE


@dataclass(frozen=True, slots=True)
class Asset:
    """An underlying: start price, long-run annualised vol, reference traded notional."""

    name: str
    price0: float
    vol_ann: float
    notional_per_min: float  # reference venue (size 1) swap, quote currency per minute
    loading: float  # on the common factor
    spread_factor: float
    strike_step: float
    tick: float


@dataclass(frozen=True, slots=True)
class Venue:
    """A venue: its size (volume and depth), book shape, margin policy style and tier count."""

    name: str
    size: float
    style: str  # "static", "vol_scaled", "lagging"
    spread_bps: float  # best half-spread at average volatility, BTC
    gap_bps: float  # distance between levels at average volatility, BTC
    n_tiers: int
    p_under: float  # share of planted tiers that are under-margined (venue tendency)


ASSETS: dict[str, Asset] = {
    "BTC": Asset("BTC", 90_000.0, 0.55, 5.0e6, 0.85, 1.0, 2000.0, 0.1),
    "ETH": Asset("ETH", 3_000.0, 0.70, 3.0e6, 0.80, 1.3, 100.0, 0.01),
    "SOL": Asset("SOL", 130.0, 0.90, 1.0e6, 0.70, 2.0, 5.0, 0.001),
}

VENUES: dict[str, Venue] = {
    "binanceusdm": Venue("binanceusdm", 1.0, "static", 0.5, 1.0, 8, 0.2),
    "bybit": Venue("bybit", 0.5, "vol_scaled", 1.0, 1.3, 6, 0.5),
    "okx": Venue("okx", 0.25, "lagging", 1.5, 1.6, 7, 0.8),
    "dydx": Venue("dydx", 0.03, "static", 4.0, 2.5, 1, 0.5),
}

# (venue, underlying, kind, expiry rule); kind: swap, inverse (swap), future
_LISTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("binanceusdm", "BTC", "swap", ""),
    ("binanceusdm", "ETH", "swap", ""),
    ("binanceusdm", "SOL", "swap", ""),
    ("binanceusdm", "BTC", "future", "quarter"),
    ("binanceusdm", "ETH", "future", "quarter"),
    ("bybit", "BTC", "swap", ""),
    ("bybit", "ETH", "swap", ""),
    ("bybit", "SOL", "swap", ""),
    ("bybit", "BTC", "inverse", ""),
    ("bybit", "SOL", "future", "near"),
    ("okx", "BTC", "swap", ""),
    ("okx", "ETH", "swap", ""),
    ("okx", "SOL", "swap", ""),
    ("okx", "BTC", "future", "near"),
    ("okx", "SOL", "future", "quarter"),
    ("dydx", "BTC", "swap", ""),
    ("dydx", "ETH", "swap", ""),
)
_OKX_CT_VAL = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0}
_INSTRUMENT_VOLUME_SCALE = {"swap": 1.0, "inverse": 0.25, "future": 0.1}
_SWAP_BASIS_SD = 3e-4  # stationary sd of the mean-reverting basis
_FUTURE_BASIS_SD = 5e-4
_BASIS_REVERSION_MINUTES = 60.0
_DEPTH_MINUTES = 2.0  # displayed depth per side, in minutes of design traded notional


@dataclass(frozen=True, slots=True)
class Instrument:
    """A swap or dated future of one venue, with the parameters its simulation needs."""

    venue: str
    symbol: str
    kind: str  # "swap" or "future"
    underlying: str
    quote: str
    settle: str
    linear: bool
    contract_size: float
    expiry_ns: int | None
    design_notional_per_min: float
    spread_bps: float
    gap_bps: float
    tick: float
    basis_mu: float
    carry: float  # annualised futures carry (level = carry * years to expiry)
    n_tiers: int
    style: str


def _friday_on_or_after(ts: pd.Timestamp) -> pd.Timestamp:
    day = ts.normalize()
    return day + pd.Timedelta(days=(4 - day.day_of_week) % 7) + pd.Timedelta(hours=8)


def _last_friday(year: int, month: int) -> pd.Timestamp:
    first_next = pd.Timestamp(year=year + month // 12, month=month % 12 + 1, day=1, tz="UTC")
    last = first_next - pd.Timedelta(days=1)
    return last - pd.Timedelta(days=(last.day_of_week - 4) % 7) + pd.Timedelta(hours=8)


def _future_expiry(rule: str, end: pd.Timestamp) -> pd.Timestamp:
    """Near: the first Friday 08:00 UTC at least 3 weeks after the end; quarter: the first
    quarterly (Mar/Jun/Sep/Dec) last Friday at least 6 weeks after the end."""
    if rule == "near":
        return _friday_on_or_after(end + pd.Timedelta(days=21))
    floor = end + pd.Timedelta(days=42)
    year, month = floor.year, floor.month
    while True:
        if month % 3 == 0:
            cand = _last_friday(year, month)
            if cand >= floor:
                return cand
        month += 1
        if month > 12:
            month, year = 1, year + 1


def build_instruments(
    *,
    venues: Sequence[str],
    underlyings: Sequence[str],
    end: pd.Timestamp,
    rng: np.random.Generator,
) -> list[Instrument]:
    """The swaps and futures of the chosen venues and underlyings, sorted by (venue, symbol)."""
    out: list[Instrument] = []
    for venue_name, u, kind, rule in _LISTINGS:
        if venue_name not in venues or u not in underlyings:
            continue
        v = VENUES[venue_name]
        a = ASSETS[u]
        expiry: pd.Timestamp | None = None
        if venue_name == "dydx":
            symbol, quote, settle, linear = f"{u}/USDC:USDC", "USDC", "USDC", True
        elif kind == "inverse":
            symbol, quote, settle, linear = f"{u}/USD:{u}", "USD", u, False
        else:
            symbol, quote, settle, linear = f"{u}/USDT:USDT", "USDT", "USDT", True
        if kind == "future":
            expiry = _future_expiry(rule, end)
            symbol = f"{symbol}-{expiry.strftime('%y%m%d')}"
        size = _OKX_CT_VAL[u] if venue_name == "okx" and kind != "inverse" else 1.0
        n_tiers = v.n_tiers if kind != "future" else max(3, v.n_tiers - 2)
        mu = float(rng.uniform(-1.0, 3.0)) * 1e-4
        carry = float(rng.uniform(0.05, 0.10)) if kind == "future" else 0.0
        out.append(
            Instrument(
                venue=venue_name,
                symbol=symbol,
                kind="future" if kind == "future" else "swap",
                underlying=u,
                quote=quote,
                settle=settle,
                linear=linear,
                contract_size=size,
                expiry_ns=None if expiry is None else int(expiry.value),
                design_notional_per_min=a.notional_per_min
                * v.size
                * _INSTRUMENT_VOLUME_SCALE[kind],
                spread_bps=v.spread_bps * a.spread_factor,
                gap_bps=v.gap_bps * a.spread_factor,
                tick=a.tick,
                basis_mu=mu,
                carry=carry,
                n_tiers=n_tiers,
                style=v.style,
            )
        )
    return sorted(out, key=lambda i: (i.venue, i.symbol))


def basis_level_scale(
    inst: Instrument, *, block_start_ns: NDArray[np.int64]
) -> tuple[FloatArray, FloatArray]:
    """Deterministic basis level and scale of an instrument for blocks starting at the given times.

    Swaps: level ``basis_mu``, scale 1. Futures: level ``carry * years to expiry`` and scale
    ``min(1, days to expiry / 7)``, so the basis converges to 0 at expiry.
    """
    n = block_start_ns.shape[0]
    if inst.expiry_ns is None:
        return np.full(n, inst.basis_mu), np.ones(n)
    tau_min = np.maximum((inst.expiry_ns - block_start_ns) / NS_PER_MINUTE, 0.0)
    level = inst.carry * tau_min / MINUTES_PER_YEAR
    scale = np.minimum(1.0, tau_min / (7.0 * 1440.0))
    return level, scale


def basis_ou_params(inst: Instrument) -> tuple[float, float, float]:
    """(phi, innovation sd, stationary sd) of the per-block mean-reverting basis."""
    phi = float(np.exp(-BASIS_BLOCK_MINUTES / _BASIS_REVERSION_MINUTES))
    sd = _FUTURE_BASIS_SD if inst.kind == "future" else _SWAP_BASIS_SD
    return phi, sd * float(np.sqrt(1.0 - phi * phi)), sd


@dataclass(frozen=True, slots=True)
class ContractPath:
    """One contract's one-minute log price (marks ``0 .. M``) and its basis state per block."""

    log_price: FloatArray  # (M + 1,)
    basis: FloatArray  # (M + 1,)
    ou: FloatArray  # (n_blocks,), block j covers marks 5j .. 5j + 4


def contract_paths(
    instruments: Sequence[Instrument],
    *,
    history: IndexHistory,
    underlyings: Sequence[str],
    start_ns: int,
    rng: np.random.Generator,
) -> list[ContractPath]:
    """Each contract's log price = index log price + basis (piecewise constant per block)."""
    n_marks = history.log_price.shape[0]
    n_blocks = (n_marks - 1) // BASIS_BLOCK_MINUTES + 1
    block_ns = start_ns + np.arange(n_blocks, dtype=np.int64) * BASIS_BLOCK_MINUTES * NS_PER_MINUTE
    block_of_mark = np.arange(n_marks) // BASIS_BLOCK_MINUTES
    out = []
    for inst in instruments:
        phi, innov, sd = basis_ou_params(inst)
        eps = rng.standard_normal(n_blocks)
        ou = np.empty(n_blocks)
        ou[0] = sd * eps[0]
        # AR(1) by a short python loop over blocks (n_blocks ~ 26k)
        prev = float(ou[0])
        eps_l = (innov * eps).tolist()
        vals = [prev] * n_blocks
        for j in range(1, n_blocks):
            prev = phi * prev + eps_l[j]
            vals[j] = prev
        ou[:] = vals
        level, scale = basis_level_scale(inst, block_start_ns=block_ns)
        b_block = level + scale * ou
        basis = b_block[block_of_mark]
        col = underlyings.index(inst.underlying)
        out.append(ContractPath(history.log_price[:, col] + basis, basis, ou))
    return out


def minute_cond_var(model: PathModel, history: IndexHistory, col: int) -> FloatArray:
    """Variance of each minute's return (minute ending at mark t, t = 1..M; entry 0 unused)."""
    return model.conditional_variance(history.h[:, col], history.stressed)


def forward_cond_var(model: PathModel, history: IndexHistory, col: int) -> FloatArray:
    """Variance of the next minute's return seen at each mark (uses the regime of that mark)."""
    h_fwd = np.append(history.h[1:, col], history.h_next[col])
    return model.conditional_variance(h_fwd, history.stressed)


def make_bars(
    path: ContractPath,
    *,
    inst: Instrument,
    minute_var: FloatArray,
    mean_var: float,
    bar_minutes: int,
    rng: np.random.Generator,
) -> dict[str, FloatArray]:
    """OHLCV bars from the one-minute marks; volume in base units, rising with volatility."""
    price = np.exp(path.log_price)
    nb = (price.shape[0] - 1) // bar_minutes
    body = price[:-1].reshape(nb, bar_minutes)
    close = price[bar_minutes::bar_minutes]
    open_ = body[:, 0]
    high = np.maximum(body.max(axis=1), close)
    low = np.minimum(body.min(axis=1), close)
    var_bar = minute_var[1:].reshape(nb, bar_minutes).mean(axis=1)
    vol_ratio = np.sqrt(var_bar / mean_var)
    noise = np.exp(0.35 * rng.standard_normal(nb) - 0.5 * 0.35**2)
    notional = bar_minutes * inst.design_notional_per_min * vol_ratio * noise
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": notional / close,
    }


@dataclass(frozen=True, slots=True)
class BookArrays:
    """Order-book snapshots of one contract: ``(S, L)`` arrays, level 0 best."""

    mark: NDArray[np.int64]  # minute mark of each snapshot, (S,)
    bid_price: FloatArray
    bid_amount: FloatArray
    ask_price: FloatArray
    ask_amount: FloatArray


def _round_sig(x: FloatArray, digits: int) -> FloatArray:
    e = np.floor(np.log10(x))
    f = 10.0 ** (digits - 1 - e)
    return np.round(x * f) / f


def make_books(
    path: ContractPath,
    *,
    inst: Instrument,
    fwd_var: FloatArray,
    mean_var: float,
    marks: NDArray[np.int64],
    levels: int,
    rng: np.random.Generator,
) -> BookArrays:
    """Books whose spread widens and depth thins as the conditional volatility rises.

    Half-spread ``spread_bps * vr**0.8``, level gaps ``gap_bps * vr**0.5`` (with noise), level
    notional ``depth * vr**-0.8`` (with noise), ``vr`` = conditional vol / long-run vol. Prices
    are rounded away from the mid to the tick (bids down, asks up), amounts to 4 significant
    digits; gaps stay far above the tick, so prices are strictly monotone.
    """
    s = marks.shape[0]
    mid = np.exp(path.log_price[marks])
    vr = np.sqrt(fwd_var[marks] / mean_var)
    half = inst.spread_bps * 1e-4 * vr**0.8 * np.exp(0.15 * rng.standard_normal(s))
    lvl = np.arange(levels)
    depth_level = _DEPTH_MINUTES * inst.design_notional_per_min / levels
    decimals = max(0, round(-np.log10(inst.tick)))

    def side(sign: float) -> tuple[FloatArray, FloatArray]:
        gaps = (
            inst.gap_bps
            * 1e-4
            * vr[:, None] ** 0.5
            * (1.0 + 0.04 * lvl[None, 1:])
            * rng.uniform(0.6, 1.4, (s, levels - 1))
        )
        dist = half[:, None] + np.concatenate([np.zeros((s, 1)), np.cumsum(gaps, axis=1)], axis=1)
        raw = mid[:, None] * (1.0 + sign * dist)
        ticks = np.ceil(raw / inst.tick) if sign > 0 else np.floor(raw / inst.tick)
        price = np.round(ticks * inst.tick, decimals)
        notional = (
            depth_level
            * vr[:, None] ** -0.8
            * (0.6 + 0.04 * lvl[None, :])
            * np.exp(0.35 * rng.standard_normal((s, levels)) - 0.5 * 0.35**2)
        )
        amount = _round_sig(notional / price, 4)
        return price, amount

    ask_p, ask_a = side(1.0)
    bid_p, bid_a = side(-1.0)
    if (
        np.any(np.diff(ask_p, axis=1) <= 0)
        or np.any(np.diff(bid_p, axis=1) >= 0)
        or np.any(bid_p[:, 0] >= ask_p[:, 0])
        or np.any(bid_p <= 0)
    ):
        raise RuntimeError(f"make_books: non-monotone book for {inst.venue} {inst.symbol}")
    return BookArrays(marks, bid_p, bid_a, ask_p, ask_a)


def funding_rates(
    path: ContractPath, *, interval_minutes: int
) -> tuple[NDArray[np.int64], FloatArray]:
    """Funding at each interval end: 1 bp plus half the average basis over the interval."""
    n_marks = path.basis.shape[0]
    n = (n_marks - 1) // interval_minutes
    avg = path.basis[1 : n * interval_minutes + 1].reshape(n, interval_minutes).mean(axis=1)
    rate = np.clip(1e-4 + 0.5 * avg, -0.0075, 0.0075)
    marks = (np.arange(1, n + 1) * interval_minutes).astype(np.int64)
    return marks, rate


def _option_expiries(
    first: pd.Timestamp, last: pd.Timestamp
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Every Friday 08:00 UTC from ``first`` to ``last`` (ns) and whether it is a month's last."""
    fri = _friday_on_or_after(first)
    out = []
    while fri <= last:
        out.append(fri)
        fri = fri + pd.Timedelta(days=7)
    ns = np.array([f.value for f in out], dtype=np.int64)
    monthly = np.array([(f + pd.Timedelta(days=7)).month != f.month for f in out], dtype=bool)
    return ns, monthly


def option_quotes(
    *,
    underlying: str,
    index_log_price: FloatArray,
    fwd_var: FloatArray,
    stressed: NDArray[np.bool_],
    marks: NDArray[np.int64],
    start_ns: int,
) -> dict[str, NDArray[np.generic]]:
    """Option marks of one underlying: weeklies (next 3 Fridays) and monthlies up to 92 days.

    ``mark_iv = atm(tau) * (1 + skew * m + 0.03 m^2)`` with ``m = ln(K/S) / (atm sqrt(tau))``,
    ``atm(tau)^2 = (long^2 + (now^2 - long^2) g(tau)) (1 + vrp)^2``, ``g`` the average of an
    exponentially mean-reverting variance (half-life 3 days): the level follows the conditional
    vol, the term slope inverts when vol is high, and the skew steepens in stress.
    """
    asset = ASSETS[underlying]
    first = pd.Timestamp(start_ns, tz="UTC")
    last = pd.Timestamp(start_ns + int(marks[-1]) * NS_PER_MINUTE, tz="UTC") + pd.Timedelta(
        days=100
    )
    fri_ns, monthly = _option_expiries(first, last)
    kappa = np.log(2.0) / (3.0 / 365.0)
    long2 = asset.vol_ann**2
    vrp = 0.08
    cols: dict[str, list[NDArray[np.generic]]] = {
        k: []
        for k in (
            "timestamp",
            "expiry",
            "strike",
            "is_call",
            "mark_iv",
            "underlying_price",
            "delta",
        )
    }
    for mark in marks.tolist():
        t_ns = start_ns + mark * NS_PER_MINUTE
        spot = float(np.exp(index_log_price[mark]))
        now2 = float(fwd_var[mark]) * MINUTES_PER_YEAR
        st = bool(stressed[mark])
        alive = fri_ns > t_ns + _NS_PER_DAY
        weekly = fri_ns[alive][:3]
        mon = fri_ns[alive & monthly & (fri_ns <= t_ns + 92 * _NS_PER_DAY)]
        for exp_ns in np.union1d(weekly, mon).tolist():
            tau = (exp_ns - t_ns) / (365.0 * _NS_PER_DAY)
            g = (1.0 - np.exp(-kappa * tau)) / (kappa * tau)
            atm = np.sqrt(long2 + (now2 - long2) * g) * (1.0 + vrp)
            days = tau * 365.0
            step = asset.strike_step * (1 if days <= 14 else 2 if days <= 45 else 4)
            centre = np.round(spot / step) * step
            strikes = centre + step * np.arange(-4, 5)
            strikes = strikes[strikes > 0]
            sd = atm * np.sqrt(tau)
            mny = np.clip(np.log(strikes / spot) / sd, -4.0, 4.0)
            ratio = np.sqrt(now2 / long2)
            skew = -(0.06 + (0.08 if st else 0.0) + 0.04 * max(0.0, ratio - 1.0))
            iv = np.clip(atm * (1.0 + skew * mny + 0.03 * mny**2), 0.05, 4.0)
            d1 = (np.log(spot / strikes) + 0.5 * iv**2 * tau) / (iv * np.sqrt(tau))
            n_k = strikes.shape[0]
            for is_call in (True, False):
                cols["timestamp"].append(np.full(n_k, t_ns, dtype=np.int64))
                cols["expiry"].append(np.full(n_k, exp_ns, dtype=np.int64))
                cols["strike"].append(strikes)
                cols["is_call"].append(np.full(n_k, is_call))
                cols["mark_iv"].append(iv)
                cols["underlying_price"].append(np.full(n_k, spot))
                cols["delta"].append(ndtr(d1) if is_call else ndtr(d1) - 1.0)
    return {k: np.concatenate(v) for k, v in cols.items()}
