"""Order-book features: mid, spread, depth, imbalance, slope and the cost of walking the book.

All functions are pure and vectorised across snapshots (no Python loop over snapshots). Prices
are in the quote currency, amounts in base units (DATA_CONTRACT ``order_books``), notionals in
the quote currency, distances from mid in basis points (1 bp = 1e-4) unless a name says
otherwise.

The METHOD.md "liquidation cost" is :func:`liquidation_cost`: a long is closed into the bids, a
short into the asks, the cost is ``|VWAP - mid| / mid`` and any notional beyond the displayed
depth fills at ``beyond_depth_multiplier`` times the deepest displayed level's distance from mid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, overload

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from features._book_arrays import (
    KEY_COLUMNS,
    check_level_arrays,
    long_to_wide,
    timestamp_ints,
)
from features._checks import FairmarginInputError, require_columns

__all__ = [
    "BookArrays",
    "book_arrays",
    "book_features",
    "depth_resilience",
    "depth_vs_volume",
    "liquidation_cost",
    "notional_label",
]

_BP = 1e4
# A level exactly d bp from mid must count as "within d bp" despite rounding of mid.
_BP_TOL = 1e-9
# Snapshots per block: keeps the (block, L) temporaries in cache and memory low.
_CHUNK = 4096


@dataclass(frozen=True)
class BookArrays:
    """Order-book snapshots as NaN-padded level arrays.

    Attributes
    ----------
    keys : pandas.DataFrame
        ``venue``, ``symbol``, ``timestamp``: one row per snapshot, in input order, with a
        ``RangeIndex``.
    bid_px, bid_amt, ask_px, ask_amt : numpy.ndarray of float64, shape (n_snapshots, L)
        Price (quote currency) and amount (base units) of the j-th displayed level of each side
        (column 0 = best). Columns are left-packed: a side with fewer than ``L`` levels is
        NaN-padded on the right. ``L`` is the largest number of levels of any side. Arrays
        returned by :func:`book_arrays` are read-only and may be views of the input columns.

    Notes
    -----
    Construction checks the shapes and the contract's book rules (positive prices and amounts,
    bids falling and asks rising with level, best bid < best ask).
    """

    keys: pd.DataFrame
    bid_px: NDArray[np.float64]
    bid_amt: NDArray[np.float64]
    ask_px: NDArray[np.float64]
    ask_amt: NDArray[np.float64]

    def __post_init__(self) -> None:
        check_level_arrays(
            self.keys,
            self.bid_px,
            self.bid_amt,
            self.ask_px,
            self.ask_amt,
            who="BookArrays",
        )

    @property
    def n_snapshots(self) -> int:
        """Number of snapshots (rows of every array)."""
        return len(self.keys)

    @property
    def mid(self) -> NDArray[np.float64]:
        """``(best bid + best ask) / 2`` in the quote currency; NaN for a one-sided book."""
        return _mid(self)


def book_arrays(order_books: pd.DataFrame) -> BookArrays:
    """Turn the contract's long ``order_books`` table into per-snapshot level arrays.

    Parameters
    ----------
    order_books : pandas.DataFrame
        Columns ``venue, symbol, timestamp, side, level, price, amount`` (DATA_CONTRACT),
        **sorted** by ``(venue, symbol, timestamp, side, level)`` with unique keys, the side
        order being the column's own sort order (``"ask" < "bid"`` for strings, category order
        for a categorical). ``timestamp`` is datetime64 (any unit, tz-aware or not) or integer
        epoch; ``level`` integer; ``price`` (quote) and ``amount`` (base units) finite and > 0.

    Returns
    -------
    BookArrays
        Column ``j`` of a side holds that side's j-th row of the snapshot, i.e. the rank of the
        level, so a gap in level numbers leaves no hole.

    Raises
    ------
    FairmarginInputError
        Missing columns, null keys, a side other than bid/ask, a non-positive price or amount,
        an unsorted or duplicated key, a book breaking the price ordering, or a crossed book.

    Notes
    -----
    Fully vectorised: snapshot boundaries are found by comparing consecutive key values (no
    groupby); the sort order is checked with a few passes over the rows. When every snapshot
    has the same number ``L`` of levels on both sides, the arrays are reshaped views of the
    ``price`` and ``amount`` columns (no copy); otherwise rows are scattered into NaN-padded
    arrays.
    """
    wide = long_to_wide(order_books, who="book_arrays")
    return BookArrays(wide.keys, wide.bid_px, wide.bid_amt, wide.ask_px, wide.ask_amt)


def _mid(books: BookArrays) -> NDArray[np.float64]:
    n = books.n_snapshots
    if books.bid_px.shape[1] == 0 or books.ask_px.shape[1] == 0:
        return np.full(n, np.nan)
    return np.asarray((books.bid_px[:, 0] + books.ask_px[:, 0]) / 2.0, dtype=np.float64)


def _check_multiplier(beyond_depth_multiplier: float, *, who: str) -> None:
    if not (beyond_depth_multiplier >= 1.0 and math.isfinite(beyond_depth_multiplier)):
        raise FairmarginInputError(
            f"{who}: beyond_depth_multiplier must be finite and >= 1, "
            f"got {beyond_depth_multiplier!r}"
        )


class _SidePrep(NamedTuple):
    """Cumulative sums of one side, each with a leading 0 column: shape (n, L + 1)."""

    n_levels: NDArray[np.intp]
    cum_notional: NDArray[np.float64]  # quote notional through level j - 1
    cum_base: NDArray[np.float64]  # base amount through level j - 1
    complete: bool  # every row has all L levels: no NaN handling needed


def _nan_to(x: NDArray[np.float64], value: float | NDArray[np.float64]) -> NDArray[np.float64]:
    """Replace NaN in ``x`` in place (``value`` broadcast), and return ``x``."""
    np.copyto(x, value, where=np.isnan(x))
    return x


def _side_prep(px: NDArray[np.float64], amt: NDArray[np.float64]) -> _SidePrep:
    n, width = px.shape
    missing = np.isnan(px)
    complete = not missing.any()
    n_levels = np.full(n, width) if complete else width - np.count_nonzero(missing, axis=1)
    cum_notional = np.zeros((n, width + 1))
    cum_base = np.zeros((n, width + 1))
    if complete:
        np.cumsum(px * amt, axis=1, out=cum_notional[:, 1:])
        np.cumsum(amt, axis=1, out=cum_base[:, 1:])
    else:
        np.cumsum(_nan_to(px * amt, 0.0), axis=1, out=cum_notional[:, 1:])
        np.cumsum(_nan_to(np.array(amt), 0.0), axis=1, out=cum_base[:, 1:])
    return _SidePrep(n_levels, cum_notional, cum_base, complete)


def _walk_side(
    px: NDArray[np.float64],
    prep: _SidePrep,
    mid: NDArray[np.float64],
    notional: NDArray[np.float64],
    *,
    side: Literal["long", "short"],
    multiplier: float,
) -> NDArray[np.float64]:
    """Cost fraction of filling ``notional`` (n, k) on one side (``px`` of shape (n, L))."""
    n, width = px.shape
    k = notional.shape[1]
    if width == 0:
        return np.full((n, k), np.nan)
    n_levels = prep.n_levels
    rows = np.arange(n)
    # Deepest displayed level and the price the rest of the notional fills at.
    deepest = px[rows, np.maximum(n_levels - 1, 0)]  # NaN for an empty side
    distance = np.abs(mid - deepest)
    if side == "long":  # selling into the bids: prices below mid, floored at 0
        beyond = np.maximum(mid - multiplier * distance, 0.0)
    else:
        beyond = mid + multiplier * distance
    fill_px = np.empty((n, width + 1))
    fill_px[:, :width] = px
    fill_px[:, width] = beyond
    # Cumulative notional per level, +inf past the displayed depth (never wholly consumed).
    cum_search = prep.cum_notional[:, 1:]
    if not prep.complete:
        _nan_to(fill_px, beyond[:, None])
        cum_search = np.array(cum_search)
        np.copyto(cum_search, np.inf, where=np.isnan(px))
    out = np.empty((n, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(k):
            target = notional[:, c]
            full = np.count_nonzero(cum_search <= target[:, None], axis=1)  # levels consumed
            rest = target - prep.cum_notional[rows, full]
            price_here = fill_px[rows, full]
            base = prep.cum_base[rows, full] + np.where(rest > 0, rest / price_here, 0.0)
            vwap = np.where(target > 0, target / base, price_here)
            out[:, c] = np.abs(vwap - mid) / mid
    return out


def liquidation_cost(
    books: BookArrays,
    notional: ArrayLike,
    *,
    side: Literal["long", "short"],
    beyond_depth_multiplier: float = 1.5,
) -> NDArray[np.float64]:
    """Cost of closing a position of quote notional N by walking the book, as a fraction of N.

    A long is closed into the bids, a short into the asks. Levels are consumed best first,
    each offering a quote notional of ``price x amount``; the last level used is filled
    partially. The volume-weighted average price is
    ``VWAP = N / sum_i(n_i / p_i)`` (``n_i`` quote notional taken at price ``p_i``), and the
    cost is ``|VWAP - mid| / mid`` with ``mid = (best bid + best ask) / 2``. Where N exceeds
    the displayed depth of the side, the remainder fills at the price
    ``mid -/+ beyond_depth_multiplier x |p_deepest - mid|`` (METHOD.md: 1.5 x the deepest
    level's distance from mid); for the bids that price is floored at 0, which caps the cost
    at 1 (everything lost). At ``N = 0`` the cost is its limit, the best level's distance from
    mid (half the spread).

    Parameters
    ----------
    books : BookArrays
        Snapshots from :func:`book_arrays`.
    notional : array_like of float, shape (n,) or (n, k), or a scalar
        Quote-currency notional per snapshot row (and per column); >= 0 or NaN.
    side : {"long", "short"}
        The position being closed.
    beyond_depth_multiplier : float, default 1.5
        Multiple (>= 1) of the deepest displayed level's distance from mid at which notional
        beyond the displayed depth fills.

    Returns
    -------
    numpy.ndarray of float64
        Cost as a fraction of notional (multiply by 1e4 for bp), shaped like ``notional``
        (``(n,)`` for a scalar); NaN for a NaN notional or where the book has no mid or no
        level on that side.
    """
    who = "liquidation_cost"
    if side not in ("long", "short"):
        raise FairmarginInputError(f"{who}: side must be 'long' or 'short', got {side!r}")
    _check_multiplier(beyond_depth_multiplier, who=who)
    n = books.n_snapshots
    arr = np.asarray(notional, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise FairmarginInputError(
            f"{who}: notional must have shape (n_snapshots={n},) or ({n}, k), got {arr.shape}"
        )
    if (arr < 0).any():
        raise FairmarginInputError(
            f"{who}: notional must be >= 0, got {float(arr[arr < 0].min())!r}"
        )
    two_d = arr if arr.ndim == 2 else arr[:, None]
    px, amt = (books.bid_px, books.bid_amt) if side == "long" else (books.ask_px, books.ask_amt)
    mid = _mid(books)
    cost = np.empty(two_d.shape)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        cost[sl] = _walk_side(
            px[sl],
            _side_prep(px[sl], amt[sl]),
            mid[sl],
            two_d[sl],
            side=side,
            multiplier=beyond_depth_multiplier,
        )
    cost[np.isnan(two_d)] = np.nan
    return cost if arr.ndim == 2 else cost[:, 0]


def notional_label(value: float) -> str:
    """Compact label of a notional for column names: 1e5 -> '100k', 1e6 -> '1m', 2.5e6 -> '2p5m'.

    Suffixes k (1e3), m (1e6), b (1e9) are used from those sizes up; a decimal point becomes
    ``p`` so names stay identifiers.
    """
    if not (value > 0 and math.isfinite(value)):
        raise FairmarginInputError(f"notional_label: value must be finite and > 0, got {value!r}")
    for scale, suffix in ((1e9, "b"), (1e6, "m"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.6g}".replace(".", "p") + suffix
    return f"{value:.6g}".replace(".", "p")


def _bp_label(d: float) -> str:
    return f"{d:.6g}".replace(".", "p")


def book_features(
    order_books: pd.DataFrame | BookArrays,
    *,
    depth_bps: Sequence[float] = (10, 25, 50, 100),
    slippage_notionals: Sequence[float] = (1e5, 1e6, 1e7),
    beyond_depth_multiplier: float = 1.5,
) -> pd.DataFrame:
    """One row of book features per snapshot.

    Parameters
    ----------
    order_books : pandas.DataFrame or BookArrays
        The sorted long ``order_books`` table (see :func:`book_arrays`) or its arrays.
    depth_bps : sequence of float, default (10, 25, 50, 100)
        Distances from mid, in bp (> 0), for the depth and imbalance columns.
    slippage_notionals : sequence of float, default (1e5, 1e6, 1e7)
        Quote notionals (> 0) for the slippage columns.
    beyond_depth_multiplier : float, default 1.5
        See :func:`liquidation_cost`.

    Returns
    -------
    pandas.DataFrame
        One row per snapshot, in input order, with columns:

        - ``venue``, ``symbol``, ``timestamp``: the snapshot key.
        - ``mid``: ``(b0 + a0) / 2``, quote currency (``b0``, ``a0``: best bid and ask).
        - ``microprice``: ``(b0 * A0 + a0 * B0) / (B0 + A0)`` with ``B0``, ``A0`` the best
          levels' amounts (the size-weighted mid), quote currency.
        - ``spread_bp``: ``(a0 - b0) / mid * 1e4``.
        - ``depth_bid_{d}bp``, ``depth_ask_{d}bp``: quote notional ``sum(price x amount)`` of
          the levels whose distance ``|price - mid| / mid * 1e4`` is at most ``d`` bp.
        - ``book_imb_{d}bp``: ``(bid - ask) / (bid + ask)`` of those depths, in [-1, 1]
          (NaN when both are 0).
        - ``book_slope_bid``, ``book_slope_ask``: least-squares slope through the origin of
          the cumulative quote depth ``D_j`` against the distance ``x_j`` (bp) of each
          displayed level, ``sum(x_j D_j) / sum(x_j^2)``: quote notional per bp (larger means
          a deeper book).
        - ``slip_long_{N}``, ``slip_short_{N}``: :func:`liquidation_cost` at each notional, in
          bp; ``{N}`` is :func:`notional_label` (``slip_long_1m`` for 1e6).
        - ``depth_total_bid``, ``depth_total_ask``: quote notional of all displayed levels.

        Every column but the key is NaN for a one-sided book (no mid).
    """
    who = "book_features"
    depth_list = [float(d) for d in depth_bps]
    notional_list = [float(x) for x in slippage_notionals]
    for name, given in (("depth_bps", depth_list), ("slippage_notionals", notional_list)):
        if not all(v > 0 and math.isfinite(v) for v in given):
            raise FairmarginInputError(f"{who}: {name} must be finite and > 0, got {given!r}")
    depth_labels = [_bp_label(d) for d in depth_list]
    slip_labels = [notional_label(x) for x in notional_list]
    for name, labels in (("depth_bps", depth_labels), ("slippage_notionals", slip_labels)):
        if len(set(labels)) != len(labels):
            raise FairmarginInputError(f"{who}: {name} must give distinct names, got {labels}")
    _check_multiplier(beyond_depth_multiplier, who=who)
    books = order_books if isinstance(order_books, BookArrays) else book_arrays(order_books)

    names = ["mid", "microprice", "spread_bp"]
    for lab in depth_labels:
        names += [f"depth_bid_{lab}bp", f"depth_ask_{lab}bp", f"book_imb_{lab}bp"]
    names += ["book_slope_bid", "book_slope_ask"]
    names += [f"slip_long_{lab}" for lab in slip_labels]
    names += [f"slip_short_{lab}" for lab in slip_labels]
    names += ["depth_total_bid", "depth_total_ask"]
    n = books.n_snapshots
    values = np.empty((len(names), n))  # one contiguous row per output column
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        values[:, sl] = _features_block(
            books.bid_px[sl],
            books.bid_amt[sl],
            books.ask_px[sl],
            books.ask_amt[sl],
            depth_bps=depth_list,
            notionals=np.asarray(notional_list),
            multiplier=beyond_depth_multiplier,
        )
    out = books.keys.copy()
    frame = pd.DataFrame(dict(zip(names, values, strict=True)), index=out.index)
    return pd.concat([out, frame], axis=1)


def _features_block(
    bid_px: NDArray[np.float64],
    bid_amt: NDArray[np.float64],
    ask_px: NDArray[np.float64],
    ask_amt: NDArray[np.float64],
    *,
    depth_bps: list[float],
    notionals: NDArray[np.float64],
    multiplier: float,
) -> NDArray[np.float64]:
    """The book_features columns (rows of the result, in book_features order) for a block."""
    n = bid_px.shape[0]
    rows = np.arange(n)
    if bid_px.shape[1] and ask_px.shape[1]:
        b0, a0, bq, aq = bid_px[:, 0], ask_px[:, 0], bid_amt[:, 0], ask_amt[:, 0]
        mid = (b0 + a0) / 2.0
        micro = (b0 * aq + a0 * bq) / (bq + aq)
        spread = (a0 - b0) / mid * _BP
    else:
        mid = micro = spread = np.full(n, np.nan)
    out: list[NDArray[np.float64]] = [mid, micro, spread]
    preps: list[_SidePrep] = []
    per_side: list[tuple[list[NDArray[np.float64]], NDArray[np.float64]]] = []
    for px, amt in ((bid_px, bid_amt), (ask_px, ask_amt)):
        prep = _side_prep(px, amt)
        preps.append(prep)
        # Distance from mid in bp; it rises with level (BookArrays checks the ordering), so
        # the depth within d bp is the cumulative notional through the last level within d.
        dist_bp = np.abs(px - mid[:, None]) * (_BP / mid)[:, None]  # NaN: no level or mid
        depth = [
            prep.cum_notional[rows, np.count_nonzero(dist_bp <= d * (1.0 + _BP_TOL), axis=1)]
            for d in depth_bps
        ]
        x = dist_bp if prep.complete and not np.isnan(mid).any() else _nan_to(dist_bp, 0.0)
        sxx = np.einsum("ij,ij->i", x, x)
        sxy = np.einsum("ij,ij->i", x, prep.cum_notional[:, 1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(sxx > 0, sxy / sxx, np.nan)
        per_side.append((depth, slope))
    for bid, ask in zip(per_side[0][0], per_side[1][0], strict=True):
        denom = bid + ask
        with np.errstate(divide="ignore", invalid="ignore"):
            imbalance = np.where(denom > 0, (bid - ask) / denom, np.nan)
        out += [bid, ask, imbalance]
    out += [per_side[0][1], per_side[1][1]]
    targets = np.broadcast_to(notionals, (n, notionals.size))
    for px, prep, side in ((bid_px, preps[0], "long"), (ask_px, preps[1], "short")):
        cost = _walk_side(
            px,
            prep,
            mid,
            targets,
            side="long" if side == "long" else "short",
            multiplier=multiplier,
        )
        out += list(cost.T * _BP)
    out += [preps[0].cum_notional[:, -1], preps[1].cum_notional[:, -1]]
    block = np.stack(out)
    block[1:, np.isnan(mid)] = np.nan  # a one-sided book: no feature but the (NaN) mid
    return block


def depth_resilience(
    features: pd.DataFrame,
    *,
    depth_col: str,
    window: int = 120,
    min_pairs: int = 30,
    max_gap_minutes: float = 15.0,
) -> pd.Series:
    """Half-life (minutes) of shocks to log depth, from a trailing AR(1) fit per (venue, symbol).

    For each (venue, symbol), with snapshots in time order, ``y_t = log(depth_t)`` and the
    pair ``(y_{t-1}, y_t)`` is used when both depths are > 0 and the snapshots are at most
    ``max_gap_minutes`` apart. On the pairs ending at the last ``window`` snapshots up to and
    including t (only past data), the AR(1) slope ``phi = cov(y_{t-1}, y_t) / var(y_{t-1})``
    is estimated by least squares, and with ``dt`` the mean gap (minutes) of those pairs the
    half-life of a depth shock is

        ``half_life = dt * ln(2) / -ln(phi)``  for ``0 < phi < 1``,

    0 for ``phi <= 0`` (depth recovers within one snapshot), and capped at the window's span
    ``n_pairs * dt`` (``phi >= 1``: no recovery seen within the window). Smaller is a more
    resilient book.

    Parameters
    ----------
    features : pandas.DataFrame
        Has ``venue``, ``symbol``, ``timestamp`` (unique per venue and symbol, any row order)
        and ``depth_col``, e.g. the output of :func:`book_features`.
    depth_col : str
        Column of quote depth (>= 0 or NaN), e.g. ``"depth_bid_25bp"``.
    window : int, default 120
        Trailing window, in snapshots (>= 3).
    min_pairs : int, default 30
        Fewer valid pairs in the window gives NaN ("too sparse"); >= 3.
    max_gap_minutes : float, default 15
        Consecutive snapshots further apart than this do not form a pair (> 0).

    Returns
    -------
    pandas.Series
        Half-life in minutes, aligned with ``features.index``, named
        ``f"{depth_col}_halflife_min"``; NaN where too sparse or the depth does not vary.
    """
    who = "depth_resilience"
    require_columns(features, [*KEY_COLUMNS, depth_col], who=who)
    if window < 3 or min_pairs < 3 or min_pairs > window:
        raise FairmarginInputError(
            f"{who}: window and min_pairs must satisfy 3 <= min_pairs <= window, "
            f"got window={window!r}, min_pairs={min_pairs!r}"
        )
    if not (max_gap_minutes > 0 and math.isfinite(max_gap_minutes)):
        raise FairmarginInputError(
            f"{who}: max_gap_minutes must be finite and > 0, got {max_gap_minutes!r}"
        )
    depth = features[depth_col].to_numpy(dtype=np.float64, na_value=np.nan)
    if (depth < 0).any():
        raise FairmarginInputError(
            f"{who}: {depth_col} must be >= 0, got {float(depth[depth < 0].min())!r}"
        )
    ts = features["timestamp"]
    if not (
        isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype)
    ):
        raise FairmarginInputError(f"{who}: timestamp must be datetime64, got dtype {ts.dtype}")
    ts_int = timestamp_ints(ts, who=who)
    ticks_per_minute = 60.0 * {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[str(ts.dt.unit)]
    venue = pd.factorize(features["venue"])[0]
    symbol = pd.factorize(features["symbol"])[0]
    order = np.lexsort((ts_int, symbol, venue))
    v, s, t = venue[order], symbol[order], ts_int[order]
    same_group = (v[1:] == v[:-1]) & (s[1:] == s[:-1])
    if (same_group & (t[1:] == t[:-1])).any():
        i = int(order[1:][same_group & (t[1:] == t[:-1])][0])
        raise FairmarginInputError(
            f"{who}: (venue, symbol, timestamp) must be unique, got a duplicate at row {i}"
        )
    result = np.full(len(features), np.nan)
    bounds = np.flatnonzero(np.concatenate(([True], ~same_group, [True])))
    y_all = np.full(len(features), np.nan)
    positive = depth > 0
    y_all[positive] = np.log(depth[positive])
    for g0, g1 in itertools.pairwise(bounds):
        rows = order[g0:g1]
        result[rows] = _ar1_halflife(
            y_all[rows],
            ts_int[rows],
            ticks_per_minute=ticks_per_minute,
            window=window,
            min_pairs=min_pairs,
            max_gap=max_gap_minutes,
        )
    return pd.Series(result, index=features.index, name=f"{depth_col}_halflife_min")


def _ar1_halflife(
    y: NDArray[np.float64],
    ticks: NDArray[np.int64],
    *,
    ticks_per_minute: float,
    window: int,
    min_pairs: int,
    max_gap: float,
) -> NDArray[np.float64]:
    """Trailing-window AR(1) half-life of one time-ordered series (see depth_resilience)."""
    m = len(y)
    out = np.full(m, np.nan)
    if m < 2:
        return out
    finite = ~np.isnan(y)
    if not finite.any():
        return out
    ref = y[np.argmax(finite)]  # centring constant known at the first valid row (PIT-safe)
    yc = np.where(finite, y - ref, 0.0)
    gap = np.zeros(m)
    gap[1:] = np.diff(ticks) / ticks_per_minute
    pair = np.zeros(m, dtype=bool)  # pair ending at row i: (i - 1, i)
    pair[1:] = finite[1:] & finite[:-1] & (gap[1:] > 0) & (gap[1:] <= max_gap)
    u = np.zeros(m)
    u[1:] = yc[:-1]
    u = np.where(pair, u, 0.0)
    w = np.where(pair, yc, 0.0)
    g = np.where(pair, gap, 0.0)
    ind = pair.astype(np.float64)

    def trailing(z: NDArray[np.float64]) -> NDArray[np.float64]:
        # Sum over rows max(0, i - window + 1)..i, i.e. pairs within the last `window` rows.
        c = np.concatenate(([0.0], np.cumsum(z)))
        hi = np.arange(1, m + 1)
        lo = np.maximum(hi - window, 0)
        return np.asarray(c[hi] - c[lo], dtype=np.float64)

    cnt = np.rint(trailing(ind))
    su, sw, sg = trailing(u), trailing(w), trailing(g)
    suu, suw = trailing(u * u), trailing(u * w)
    enough = cnt >= min_pairs
    with np.errstate(divide="ignore", invalid="ignore"):
        var_u = suu - su * su / cnt
        cov = suw - su * sw / cnt
        ok = enough & (var_u > 1e-12 * np.maximum(suu, 1e-300))
        phi = np.where(ok, cov / var_u, np.nan)
        dt = sg / cnt
        span = sg
        inner = (phi > 0) & (phi < 1)
        half = np.where(inner, dt * np.log(2.0) / -np.log(np.where(inner, phi, 0.5)), np.nan)
    half = np.where(phi <= 0, 0.0, half)
    half = np.where(phi >= 1, span, half)
    half = np.minimum(half, span)
    out[:] = np.where(ok, half, np.nan)
    return out


@overload
def depth_vs_volume(
    depth_quote: pd.Series, traded_notional_per_day: pd.Series | float
) -> pd.Series: ...
@overload
def depth_vs_volume(
    depth_quote: NDArray[np.float64] | float,
    traded_notional_per_day: NDArray[np.float64] | float,
) -> NDArray[np.float64]: ...
def depth_vs_volume(
    depth_quote: pd.Series | NDArray[np.float64] | float,
    traded_notional_per_day: pd.Series | NDArray[np.float64] | float,
) -> pd.Series | NDArray[np.float64]:
    """Displayed depth as a fraction of a day's traded notional: ``depth / traded_per_day``.

    Both in the quote currency; the result is in days of volume (e.g. 0.002 = the book holds
    0.2 % of a day's turnover). NaN where the traded notional is <= 0 or NaN. A Series input
    keeps its index (aligned with pandas rules when both are Series) and is named
    ``depth_to_daily_volume``.
    """
    who = "depth_vs_volume"
    d = np.asarray(depth_quote, dtype=np.float64)
    v = np.asarray(traded_notional_per_day, dtype=np.float64)
    if (d < 0).any():
        raise FairmarginInputError(f"{who}: depth_quote must be >= 0, got {float(d.min())!r}")
    if isinstance(depth_quote, pd.Series):
        vol = (
            traded_notional_per_day.reindex(depth_quote.index)
            if isinstance(traded_notional_per_day, pd.Series)
            else pd.Series(v, index=depth_quote.index)
        )
        vv = vol.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(vv > 0, d / vv, np.nan)
        return pd.Series(ratio, index=depth_quote.index, name="depth_to_daily_volume")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(v > 0, d / v, np.nan), dtype=np.float64)
