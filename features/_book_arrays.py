"""Private helpers: the contract's long ``order_books`` table into per-snapshot level arrays.

Everything here is vectorised over rows with NumPy: snapshot boundaries come from comparing
consecutive key values of the sorted table (no pandas groupby), complete books are reshaped
as views, and ragged books are scattered into NaN-padded arrays.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError

__all__ = [
    "ORDER_BOOK_COLUMNS",
    "WideBook",
    "check_level_arrays",
    "long_to_wide",
    "timestamp_ints",
]

logger = logging.getLogger(__name__)

ORDER_BOOK_COLUMNS = ("venue", "symbol", "timestamp", "side", "level", "price", "amount")
KEY_COLUMNS = ["venue", "symbol", "timestamp"]


class WideBook(NamedTuple):
    """Per-snapshot arrays, left-packed (column j = the j-th displayed level of that side)."""

    keys: pd.DataFrame
    bid_px: NDArray[np.float64]
    bid_amt: NDArray[np.float64]
    ask_px: NDArray[np.float64]
    ask_amt: NDArray[np.float64]


def timestamp_ints(ts: pd.Series, *, who: str) -> NDArray[np.int64]:
    """Integer view of a timestamp column (datetime64 of any unit/zone, or integer epoch)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype):
        if ts.isna().any():
            row = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise FairmarginInputError(f"{who}: timestamp must not be null, got NaT at row {row}")
        return np.asarray(ts.array.asi8, dtype=np.int64)
    if pd.api.types.is_integer_dtype(ts.dtype) and not ts.isna().any():
        return ts.to_numpy(dtype=np.int64)
    raise FairmarginInputError(
        f"{who}: timestamp must be a datetime64 or integer (epoch) column, got dtype {ts.dtype}"
    )


def _changes(col: pd.Series, *, who: str, name: str) -> NDArray[np.bool_]:
    """``out[i]`` is True where row ``i + 1`` differs from row ``i`` (length n - 1)."""
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise FairmarginInputError(f"{who}: {name} must not be null, got null at row {row}")
    arr = col.array
    # ExtensionArray comparison: pyarrow compute for `str`, codes for `category`.
    return np.asarray(arr[1:] != arr[:-1], dtype=bool)


def _side_arrays(side: pd.Series, *, who: str) -> tuple[NDArray[np.bool_], bool]:
    """Return (is_bid per row, bid_sorts_first) where the sort order is the column's own."""
    arr = side.array
    is_bid = np.asarray(arr == "bid", dtype=bool)
    is_ask = np.asarray(arr == "ask", dtype=bool)
    ok = is_bid | is_ask
    if not ok.all():
        row = int(np.argmin(ok))
        raise FairmarginInputError(
            f"{who}: order_books row {row}: side must be 'bid' or 'ask', got {side.iloc[row]!r}"
        )
    if isinstance(side.dtype, pd.CategoricalDtype):
        cats = list(side.dtype.categories)
        bid_first = cats.index("bid") < cats.index("ask") if "ask" in cats else True
    else:
        bid_first = False  # lexicographic: "ask" < "bid"
    return is_bid, bid_first


def _describe_row(order_books: pd.DataFrame, row: int) -> str:
    r = order_books.iloc[row]
    return f"row {row} ({r['venue']}, {r['symbol']}, {r['timestamp']}, {r['side']}, {r['level']})"


def long_to_wide(order_books: pd.DataFrame, *, who: str) -> WideBook:
    """Convert the sorted long table into NaN-padded (n_snapshots, L) arrays.

    Checks: required columns, non-null keys, side values, integer levels, positive finite
    price and amount, and the sort order (venue, symbol, timestamp, side, level) strictly
    increasing (which also rejects duplicate keys). Cost: a handful of vectorised passes.
    """
    missing = sorted(set(ORDER_BOOK_COLUMNS) - set(order_books.columns))
    if missing:
        raise FairmarginInputError(
            f"{who}: missing columns {missing}; got {sorted(map(str, order_books.columns))}"
        )
    n = len(order_books)
    if n == 0:
        empty = np.empty((0, 0), dtype=np.float64)
        keys = order_books[KEY_COLUMNS].iloc[:0].reset_index(drop=True)
        return WideBook(keys, empty, empty, empty, empty)

    level_col = order_books["level"]
    if not pd.api.types.is_integer_dtype(level_col.dtype) or level_col.isna().any():
        raise FairmarginInputError(
            f"{who}: level must be a non-null integer column, got dtype {level_col.dtype}"
        )
    level = level_col.to_numpy()
    price = order_books["price"].to_numpy(dtype=np.float64)
    amount = order_books["amount"].to_numpy(dtype=np.float64)
    for name, values in (("price", price), ("amount", amount)):
        good = (values > 0) & (values < np.inf)
        if not good.all():
            row = int(np.argmin(good))
            raise FairmarginInputError(
                f"{who}: order_books {_describe_row(order_books, row)}: {name} must be finite "
                f"and > 0, got {float(values[row])!r}"
            )
    is_bid, bid_first = _side_arrays(order_books["side"], who=who)
    side_rank = is_bid != bid_first  # 0 for the side that sorts first

    ts = timestamp_ints(order_books["timestamp"], who=who)
    new_snap = np.empty(n, dtype=bool)
    new_snap[0] = True
    np.not_equal(ts[1:], ts[:-1], out=new_snap[1:])
    new_snap[1:] |= _changes(order_books["venue"], who=who, name="venue")
    new_snap[1:] |= _changes(order_books["symbol"], who=who, name="symbol")
    starts = np.flatnonzero(new_snap)

    # Within a snapshot: (side, level) strictly increasing.
    same = ~new_snap[1:]
    r0, r1 = side_rank[:-1], side_rank[1:]
    ordered = (r1 > r0) | ((r1 == r0) & (level[1:] > level[:-1]))
    bad = same & ~ordered
    del ordered, same, r0, r1
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise FairmarginInputError(
            f"{who}: order_books must be sorted by (venue, symbol, timestamp, side, level) with "
            f"unique keys, got {_describe_row(order_books, row)} after "
            f"{_describe_row(order_books, row - 1)}"
        )
    del bad
    # Across snapshots: (venue, symbol, timestamp) strictly increasing, on the starts only.
    head = order_books[["venue", "symbol"]].iloc[starts]
    vcode = pd.factorize(head["venue"], sort=True)[0]
    scode = pd.factorize(head["symbol"], sort=True)[0]
    tcode = ts[starts]
    dv, ds, dt = np.diff(vcode), np.diff(scode), np.diff(tcode)
    increasing = (dv > 0) | ((dv == 0) & ((ds > 0) | ((ds == 0) & (dt > 0))))
    if not increasing.all():
        j = int(np.argmin(increasing)) + 1
        raise FairmarginInputError(
            f"{who}: order_books must be sorted by (venue, symbol, timestamp, side, level), "
            f"got {_describe_row(order_books, int(starts[j]))} after "
            f"{_describe_row(order_books, int(starts[j]) - 1)}; sort with "
            "order_books.sort_values(['venue', 'symbol', 'timestamp', 'side', 'level'])"
        )
    keys = order_books[KEY_COLUMNS].iloc[starts].reset_index(drop=True)

    n_snap = len(starts)
    wide = _reshape_complete(price, amount, side_rank, starts, n, bid_first)
    if wide is None:
        wide = _scatter_ragged(price, amount, side_rank, new_snap, starts, bid_first)
    bid_px, bid_amt, ask_px, ask_amt = wide
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: %d rows -> %d snapshots x %d levels", who, n, n_snap, bid_px.shape[1])
    for a in (bid_px, bid_amt, ask_px, ask_amt):
        a.flags.writeable = False
    return WideBook(keys, bid_px, bid_amt, ask_px, ask_amt)


_Four = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def _reshape_complete(
    price: NDArray[np.float64],
    amount: NDArray[np.float64],
    side_rank: NDArray[np.bool_],
    starts: NDArray[np.intp],
    n: int,
    bid_first: bool,
) -> _Four | None:
    """Views (no copy) when every snapshot has the same number L of levels on each side."""
    n_snap = len(starts)
    if n % (2 * n_snap):
        return None
    width = n // n_snap
    half = width // 2
    if n_snap > 1 and not np.all(np.diff(starts) == width):
        return None
    ranks = side_rank.reshape(n_snap, width)
    if ranks[:, :half].any() or not ranks[:, half:].all():
        return None
    px = price.reshape(n_snap, width)
    amt = amount.reshape(n_snap, width)
    first, second = slice(0, half), slice(half, width)
    bid, ask = (first, second) if bid_first else (second, first)
    return px[:, bid], amt[:, bid], px[:, ask], amt[:, ask]


def _scatter_ragged(
    price: NDArray[np.float64],
    amount: NDArray[np.float64],
    side_rank: NDArray[np.bool_],
    new_snap: NDArray[np.bool_],
    starts: NDArray[np.intp],
    bid_first: bool,
) -> _Four:
    """Scatter rows into NaN-padded arrays by (snapshot, rank within its side)."""
    n = len(price)
    n_snap = len(starts)
    idx_dtype = np.int32 if n < 2**31 - 1 else np.int64
    new_group = new_snap.copy()
    new_group[1:] |= side_rank[1:] != side_rank[:-1]
    group = np.cumsum(new_group, dtype=idx_dtype) - 1
    rank = np.arange(n, dtype=idx_dtype) - np.flatnonzero(new_group).astype(idx_dtype)[group]
    del group, new_group
    snap = np.cumsum(new_snap, dtype=idx_dtype) - 1
    width = int(rank.max()) + 1
    out: list[NDArray[np.float64]] = []
    for rank_value in (not bid_first, bid_first):  # bid side first in the output tuple
        rows = np.flatnonzero(side_rank == rank_value)
        for values in (price, amount):
            arr = np.full((n_snap, width), np.nan)
            arr[snap[rows], rank[rows]] = values[rows]
            out.append(arr)
    return out[0], out[1], out[2], out[3]


def _snapshot_name(keys: pd.DataFrame, i: int) -> str:
    if len(keys.columns) >= 3:
        r = keys.iloc[i]
        return f"snapshot {i} ({r.iloc[0]}, {r.iloc[1]}, {r.iloc[2]})"
    return f"snapshot {i}"


_CHECK_CHUNK = 8192


def check_level_arrays(
    keys: pd.DataFrame,
    bid_px: NDArray[np.float64],
    bid_amt: NDArray[np.float64],
    ask_px: NDArray[np.float64],
    ask_amt: NDArray[np.float64],
    *,
    who: str,
) -> None:
    """Validate shapes and the book rules on (n, L) level arrays.

    Rules: 2-D arrays of one shape per side with ``len(keys)`` rows; price and amount NaN
    together and left-packed (no displayed level after a missing one); price, amount > 0;
    bids strictly fall and asks strictly rise with level; best bid < best ask. Checked in
    blocks of snapshots (cache-friendly, little temporary memory).
    """
    n = len(keys)
    for side, px, amt in (("bid", bid_px, bid_amt), ("ask", ask_px, ask_amt)):
        if px.ndim != 2 or px.shape != amt.shape or px.shape[0] != n:
            raise FairmarginInputError(
                f"{who}: {side}_px and {side}_amt must be 2-D of shape (len(keys)={n}, L), "
                f"got {px.shape} and {amt.shape}"
            )
    for lo in range(0, n, _CHECK_CHUNK):
        sl = slice(lo, min(lo + _CHECK_CHUNK, n))
        _check_block(keys, lo, bid_px[sl], bid_amt[sl], ask_px[sl], ask_amt[sl], who=who)


def _check_block(
    keys: pd.DataFrame,
    offset: int,
    bid_px: NDArray[np.float64],
    bid_amt: NDArray[np.float64],
    ask_px: NDArray[np.float64],
    ask_amt: NDArray[np.float64],
    *,
    who: str,
) -> None:
    for side, px, amt in (("bid", bid_px, bid_amt), ("ask", ask_px, ask_amt)):
        valid = ~np.isnan(px)
        if not np.array_equal(valid, ~np.isnan(amt)):
            i = int(np.argmax((valid != ~np.isnan(amt)).any(axis=1)))
            raise FairmarginInputError(
                f"{who}: {_snapshot_name(keys, offset + i)}: {side}_px and {side}_amt must be "
                "NaN at the same levels"
            )
        if px.shape[1] > 1:
            hole = valid[:, 1:] & ~valid[:, :-1]
            if hole.any():
                i = int(np.argmax(hole.any(axis=1)))
                raise FairmarginInputError(
                    f"{who}: {_snapshot_name(keys, offset + i)}: {side} levels must be "
                    f"left-packed (no level after a missing one), got {px[i].tolist()}"
                )
        for name, arr in (("price", px), ("amount", amt)):
            bad = valid & ~((arr > 0) & (arr < np.inf))
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise FairmarginInputError(
                    f"{who}: {_snapshot_name(keys, offset + int(i))} {side} level {int(j)}: "
                    f"{name} must be finite and > 0, got {float(arr[i, j])!r}"
                )
        if px.shape[1] > 1:
            # NaN (a missing level) compares False: never flagged.
            wrong = px[:, 1:] >= px[:, :-1] if side == "bid" else px[:, 1:] <= px[:, :-1]
            if wrong.any():
                i, j = np.argwhere(wrong)[0]
                rule = "fall" if side == "bid" else "rise"
                raise FairmarginInputError(
                    f"{who}: {_snapshot_name(keys, offset + int(i))}: {side} prices must "
                    f"strictly {rule} with level, got level {int(j)} {float(px[i, j])!r} "
                    f"then level {int(j) + 1} {float(px[i, j + 1])!r}"
                )
    if bid_px.shape[1] and ask_px.shape[1]:
        crossed = bid_px[:, 0] >= ask_px[:, 0]  # NaN (one-sided book) is never crossed
        if crossed.any():
            i = int(np.argmax(crossed))
            raise FairmarginInputError(
                f"{who}: {_snapshot_name(keys, offset + i)}: best bid must be < best ask, "
                f"got {float(bid_px[i, 0])!r} >= {float(ask_px[i, 0])!r}"
            )
