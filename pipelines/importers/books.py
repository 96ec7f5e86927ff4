"""Order books from exchange feeds: Binance USD-M depth CSV and Bybit v5 websocket JSONL.

Both are replayed into full books and written in long format (``order_books``: one row per
side and level, level 0 the best). Levels are in base units (Binance USD-M and Bybit linear
quantities are in the base coin).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from pipelines.importers._common import (
    ImportResult,
    finish,
    parse_time,
    quarantine_frame,
    require_header,
)
from pipelines.importers._symbols import contracts_frame, parse_unified, split_pair

__all__ = ["read_binance_depth", "read_bybit_orderbook_ws"]

logger = logging.getLogger(__name__)

_BOOK_COLS = ["venue", "symbol", "timestamp", "side", "level", "price", "amount", "_row"]
_DEPTH_COLS = [
    "symbol",
    "timestamp",
    "first_update_id",
    "last_update_id",
    "side",
    "update_type",
    "price",
    "qty",
    "pu",
]


def _levels(
    book: dict[str, dict[float, float]],
    venue: str,
    symbol: str,
    ts: Any,
    row: int,
    levels: int | None,
) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for side, rev in (("bid", True), ("ask", False)):
        prices = sorted(book[side], reverse=rev)
        for lvl, p in enumerate(prices[:levels] if levels is not None else prices):
            out.append((venue, symbol, ts, side, lvl, p, book[side][p], row))
    return out


def read_binance_depth(
    path: str | Path,
    *,
    snapshot: str | Path | None = None,
    venue: str = "binanceusdm",
    levels: int | None = None,
    strict: bool = False,
) -> ImportResult:
    """Read Binance depth CSV (``update_type`` ``snap`` or ``set``) into ``order_books``.

    ``snap`` rows of one ``last_update_id`` form a full book, written as one snapshot. ``set``
    rows are diff-depth events (one event per ``last_update_id``); they are applied to the
    latest snapshot (from the same file or from ``snapshot=``, a snapshot file) only when the
    chain holds, per Binance's USD-M rules: the first event must have ``U <= lastUpdateId <= u``
    (``first_update_id``, ``last_update_id`` and the snapshot's ``lastUpdateId``) and each later
    event's ``pu`` must equal the previous event's ``u``. The book after each applied event is
    written. Events that do not chain (or come with no snapshot) cannot make a full book: their
    rows go to the quarantine with that reason. Quantity 0 deletes a level.

    Parameters
    ----------
    path : str or Path
        Depth CSV (Binance's own format, as in its data archive).
    snapshot : str or Path, optional
        A snapshot CSV to start from when ``path`` holds updates only.
    venue : str
        ccxt exchange id (USD-M: ``binanceusdm``); symbols ``BTCUSDT`` -> ``BTC/USDT:USDT``.
    levels : int, optional
        Levels a side to write (all by default).
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_binance_depth"
    path = Path(path)
    frames = []
    if snapshot is not None:
        s = pd.read_csv(snapshot)
        require_header(s.columns, _DEPTH_COLS, path=snapshot, who=who)
        frames.append(s.assign(_row=-1 - np.arange(len(s)), _src="snapshot"))
    d = pd.read_csv(path)
    require_header(d.columns, _DEPTH_COLS, path=path, who=who)
    frames.append(d.assign(_row=np.arange(len(d)), _src="file"))
    df = pd.concat(frames, ignore_index=True)
    df["timestamp"] = parse_time(df["timestamp"])
    df = df.sort_values(["symbol", "last_update_id", "_src"], kind="stable")

    out: list[tuple[Any, ...]] = []
    q_rows: list[tuple[int, str]] = []
    symbols: dict[str, Any] = {}
    for raw_sym, g in df.groupby("symbol", sort=False):
        pair = split_pair(str(raw_sym))
        if pair is None:
            for r in g.loc[g["_src"] == "file", "_row"]:
                q_rows.append(
                    (int(r), f"binance depth symbol must be like BTCUSDT, got {raw_sym!r}")
                )
            continue
        info = parse_unified(f"{pair[0]}/{pair[1]}:{pair[1]}")
        symbols[info.symbol] = (info, int(g["_row"].max()))
        book: dict[str, dict[float, float]] | None = None
        last_u: int | None = None
        after_snap = False
        stale = 0
        for key, ev in g.groupby(["update_type", "last_update_id"], sort=False):
            kind, uid_raw = cast(tuple[Any, Any], key)
            uid = int(uid_raw)
            first_u = int(ev["first_update_id"].iloc[0])
            pu = int(ev["pu"].iloc[0])
            ts = ev["timestamp"].iloc[-1]
            row = int(ev["_row"].max())
            if kind == "snap":
                book = {"bid": {}, "ask": {}}
                _apply(book, ev)
                last_u, after_snap = uid, True
                emit = ev["_src"].iloc[0] == "file"
            elif kind == "set":
                if book is not None and last_u is not None and after_snap and uid < last_u:
                    stale += 1  # older than the snapshot: already in it (Binance: drop)
                    continue
                chained = (
                    book is not None
                    and last_u is not None
                    and ((first_u <= last_u <= uid) if after_snap else pu == last_u)
                )
                if not chained:
                    why = (
                        "no snapshot to apply it to"
                        if book is None
                        else f"its U={first_u}, u={uid}, pu={pu} do not follow "
                        f"{'the snapshot lastUpdateId' if after_snap else 'the previous u'}"
                        f"={last_u}"
                    )
                    for r in ev["_row"]:
                        q_rows.append(
                            (
                                int(r),
                                f"order_books ({venue}, {info.symbol}): depth "
                                f"update event cannot be replayed: {why}; not a full book",
                            )
                        )
                    book, last_u = None, None  # the chain is broken until the next snapshot
                    continue
                assert book is not None
                _apply(book, ev)
                last_u, after_snap = uid, False
                emit = True
            else:
                for r in ev["_row"]:
                    q_rows.append(
                        (int(r), f"binance depth update_type must be snap or set, got {kind!r}")
                    )
                continue
            if emit and book is not None:
                out += _levels(book, venue, info.symbol, ts, row, levels)
        if stale:
            logger.info(
                "%s: %s %s: %d event(s) older than the snapshot skipped", who, path, raw_sym, stale
            )
    books = pd.DataFrame.from_records(out, columns=_BOOK_COLS)
    q = quarantine_frame(str(path), [r for r, _ in q_rows], [t for _, t in q_rows])
    contracts = contracts_frame(
        venue, [v[0] for v in symbols.values()], rows=[max(v[1], -1) for v in symbols.values()]
    )
    return finish(
        {"order_books": books, "contracts": contracts},
        rows_read=len(d),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )


def _apply(book: dict[str, dict[float, float]], ev: pd.DataFrame) -> None:
    for side, p, a in zip(ev["side"], ev["price"], ev["qty"], strict=True):
        key = "bid" if str(side).lower() in ("b", "bid", "buy") else "ask"
        price, qty = float(p), float(a)
        if qty == 0:
            book[key].pop(price, None)
        else:
            book[key][price] = qty


def read_bybit_orderbook_ws(
    path: str | Path,
    *,
    category: str | None = None,
    levels: int | None = 25,
    emit: str = "final",
    venue: str = "bybit",
    strict: bool = False,
) -> ImportResult:
    """Replay a Bybit v5 ``orderbook.<depth>.<SYMBOL>`` websocket recording (JSON lines).

    A ``snapshot`` message resets the book; ``delta`` messages set levels (size 0 deletes). The
    update id ``u`` must rise by 1 from message to message: after a gap the book is unknown,
    and the messages up to the next snapshot go to the quarantine with that reason. Books are
    written at the message's ``ts`` (ms).

    Parameters
    ----------
    path : str or Path
        The ``.jsonl`` / ``.data`` recording, one JSON message per line.
    category : {"linear", "inverse", "spot"}, optional
        Bybit's market category, which the topic does not say; default from the file name
        (``linear``/``inverse``/``spot`` in it), else ``linear``. ``XRPUSDT`` linear ->
        ``XRP/USDT:USDT``; ``BTCUSD`` inverse -> ``BTC/USD:BTC`` (inverse sizes are USD,
        divided by price); spot -> ``XRP/USDT``.
    levels : int, optional
        Levels a side to write (25 by default; None for all).
    emit : {"final", "snapshots", "all"}
        ``final``: the book after the last message; ``snapshots``: also the book at each
        snapshot message; ``all``: the book after every message.
    venue : str
        ccxt exchange id.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_bybit_orderbook_ws"
    if emit not in ("final", "snapshots", "all"):
        raise ValueError(f"{who}: emit must be final, snapshots or all, got {emit!r}")
    path = Path(path)
    if category is None:
        name = path.name.lower()
        category = next((c for c in ("inverse", "spot", "linear") if c in name), "linear")
    if category not in ("linear", "inverse", "spot"):
        raise ValueError(f"{who}: category must be linear, inverse or spot, got {category!r}")
    msgs: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                msgs.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise FairmarginInputError(
                    f"{who}: {path} row {i}: each line must be a JSON message, got {err.msg} "
                    f"at column {err.colno} (truncated file?)"
                ) from err
    out: list[tuple[Any, ...]] = []
    q_rows: list[tuple[int, str]] = []
    books: dict[str, dict[str, dict[float, float]] | None] = {}
    last_u: dict[str, int] = {}
    last_emit: dict[str, tuple[Any, int]] = {}
    infos: dict[str, Any] = {}
    for i, m in enumerate(msgs):
        data = m.get("data") or {}
        topic = str(m.get("topic", ""))
        if not topic.startswith("orderbook.") or "s" not in data:
            q_rows.append(
                (i, f"bybit message must be an orderbook topic with data.s, got topic {topic!r}")
            )
            continue
        raw_sym = str(data["s"])
        if raw_sym not in infos:
            pair = split_pair(raw_sym)
            if pair is None:
                q_rows.append((i, f"bybit symbol must be like XRPUSDT, got {raw_sym!r}"))
                continue
            base, quote = pair
            uni = {
                "linear": f"{base}/{quote}:{quote}",
                "inverse": f"{base}/{quote}:{base}",
                "spot": f"{base}/{quote}",
            }[category]
            infos[raw_sym] = parse_unified(uni)
        info = infos[raw_sym]
        u = int(data.get("u", -1))
        kind = m.get("type")
        if kind == "snapshot":
            books[raw_sym] = {"bid": {}, "ask": {}}
        elif kind == "delta":
            if books.get(raw_sym) is None or last_u.get(raw_sym, u - 1) + 1 != u:
                if books.get(raw_sym) is not None:
                    why = f"update id gap: u {last_u[raw_sym]} -> {u}"
                elif raw_sym in last_u:
                    why = "book unknown since an earlier update id gap"
                else:
                    why = "no snapshot before it"
                q_rows.append(
                    (
                        i,
                        f"order_books ({venue}, {info.symbol}): delta cannot be "
                        f"replayed: {why}; book unknown until the next snapshot",
                    )
                )
                pre_gap = books.get(raw_sym)
                if pre_gap is not None and emit in ("final", "snapshots") and raw_sym in last_emit:
                    # the book was right up to the last good message: keep it
                    gts, gi = last_emit.pop(raw_sym)
                    out += _levels(pre_gap, venue, info.symbol, gts, gi, levels)
                books[raw_sym] = None
                continue
        else:
            q_rows.append((i, f"bybit message type must be snapshot or delta, got {kind!r}"))
            continue
        book = books[raw_sym]
        assert book is not None
        for side, key in (("bid", "b"), ("ask", "a")):
            for p, a in data.get(key, []):
                price, size = float(p), float(a)
                if size == 0:
                    book[side].pop(price, None)
                else:
                    book[side][price] = size
        last_u[raw_sym] = u
        ts = m.get("ts")
        last_emit[raw_sym] = (ts, i)
        if emit == "all" or (emit == "snapshots" and kind == "snapshot"):
            out += _levels(book, venue, info.symbol, ts, i, levels)
    if emit in ("final", "snapshots"):
        for raw_sym, (ts, i) in last_emit.items():
            book = books.get(raw_sym)
            if book is not None:
                out += _levels(book, venue, infos[raw_sym].symbol, ts, i, levels)
    df = pd.DataFrame.from_records(out, columns=_BOOK_COLS)
    df["timestamp"] = parse_time(df["timestamp"])
    df = df.drop_duplicates(["venue", "symbol", "timestamp", "side", "level"], keep="last")
    if category == "inverse" and len(df):
        df["amount"] = df["amount"] / df["price"]
    contracts = contracts_frame(venue, list(infos.values()), rows=[0] * len(infos))
    q = quarantine_frame(str(path), [r for r, _ in q_rows], [t for _, t in q_rows])
    return finish(
        {"order_books": df, "contracts": contracts},
        rows_read=len(msgs),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )
