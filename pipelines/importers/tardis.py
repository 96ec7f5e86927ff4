"""tardis.dev CSV datasets: ``book_snapshot_25`` (and ``_5``), ``incremental_book_L2``,
``options_chain`` and ``derivative_ticker``.

Tardis timestamps are microseconds since the epoch (detected like any epoch, see
:func:`~pipelines.importers._common.parse_epoch`). ``timestamp`` is the exchange's time and
``local_timestamp`` tardis's arrival time; rows are stamped with ``timestamp`` unless
``time_column="local_timestamp"`` (the stricter point-in-time choice).

Sizes: tardis passes the exchange's amounts through. Linear and spot books are in base units;
inverse contracts (Deribit and BitMEX BTC/ETH perpetuals and futures) are sized in USD, turned
into base units as ``amount / price``; Binance COIN-M is sized in contracts of 100 USD (BTC) or
10 USD (others), turned into base units as ``amount * size / price``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from pipelines.importers._common import (
    ImportResult,
    column,
    finish,
    parse_time,
    quarantine_frame,
    require_header,
)
from pipelines.importers._symbols import (
    SymbolInfo,
    contracts_frame,
    deribit_symbol,
    parse_unified,
    split_pair,
)

__all__ = [
    "TARDIS_VENUES",
    "read_tardis_book_snapshot",
    "read_tardis_derivative_ticker",
    "read_tardis_incremental_book",
    "read_tardis_options_chain",
    "tardis_symbol",
]

logger = logging.getLogger(__name__)

#: tardis exchange name -> ccxt exchange id.
TARDIS_VENUES = {
    "binance": "binance",
    "binance-futures": "binanceusdm",
    "binance-delivery": "binancecoinm",
    "binance-options": "binance",
    "binance-european-options": "binance",
    "bybit": "bybit",
    "bybit-spot": "bybit",
    "bybit-options": "bybit",
    "deribit": "deribit",
    "okex": "okx",
    "okex-swap": "okx",
    "okex-futures": "okx",
    "okex-options": "okx",
    "bitmex": "bitmex",
    "dydx": "dydx",
    "dydx-v4": "dydx",
    "hyperliquid": "hyperliquid",
}
_BASE_KEY = ["exchange", "symbol", "timestamp", "local_timestamp"]
_WIDE_RE = re.compile(r"^(asks|bids)\[(\d+)\]\.(price|amount)$")


def tardis_symbol(exchange: str, raw: str) -> SymbolInfo | None:
    """A tardis (exchange-native) symbol to its ccxt contract fields; None if not recognised.

    Deribit names go through :func:`~pipelines.importers._symbols.deribit_symbol`;
    ``binance-futures`` ``BTCUSDT`` -> ``BTC/USDT:USDT``; ``binance-delivery``
    ``BTCUSD_PERP`` -> ``BTC/USD:BTC``; ``bitmex`` ``XBTUSD`` -> ``BTC/USD:BTC``; ``bybit``
    ``BTCUSDT`` -> ``BTC/USDT:USDT`` (``BTCUSD`` inverse); spot exchanges -> ``BTC/USDT``.
    """
    raw = raw.upper()
    if exchange == "deribit":
        return deribit_symbol(raw)
    if exchange == "binance-delivery":
        pair, _, tail = raw.partition("_")
        sp = split_pair(pair)
        if sp is None:
            return None
        date = "" if tail in ("", "PERP") else f"-{tail}"
        return parse_unified(f"{sp[0]}/{sp[1]}:{sp[0]}{date}")
    if exchange == "bitmex" and raw.startswith("XBT"):
        raw = "BTC" + raw[3:]
    sp = split_pair(raw)
    if sp is None:
        return None
    base, quote = sp
    if exchange in ("binance", "bybit-spot", "okex"):
        return parse_unified(f"{base}/{quote}")
    settle = base if quote == "USD" else quote
    return parse_unified(f"{base}/{quote}:{settle}")


def _usd_per_contract(exchange: str, info: SymbolInfo) -> float:
    """USD per unit of an inverse contract's size as tardis writes it (module docstring)."""
    if exchange == "binance-delivery":
        return 100.0 if info.base == "BTC" else 10.0
    return 1.0


def _inverse_contract_size(exchange: str, info: SymbolInfo) -> float:
    """Quote value of one inverse contract (ccxt's contractSize): Deribit BTC 10 USD, ETH 1."""
    if exchange == "deribit":
        return 10.0 if info.base == "BTC" else 1.0
    return _usd_per_contract(exchange, info)


def _read_csv(path: Path, needed: list[str], who: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FairmarginInputError(f"{who}: {path} must be a tardis CSV, got: {err}") from err
    require_header(df.columns, needed, path=path, who=who)
    df = df.copy()  # read_csv leaves a wide file in many blocks; consolidate before adding
    df.insert(len(df.columns), "_row", np.arange(len(df)))
    return df


def _symbols(df: pd.DataFrame) -> tuple[dict[tuple[str, str], SymbolInfo | None], pd.Series]:
    pairs = {(str(e), str(s)) for e, s in zip(df["exchange"], df["symbol"], strict=True)}
    infos = {p: tardis_symbol(*p) for p in pairs}
    names = {p: (i.symbol if i is not None else None) for p, i in infos.items()}
    unified = pd.Series(
        [names[(str(e), str(s))] for e, s in zip(df["exchange"], df["symbol"], strict=True)],
        index=df.index,
        dtype=object,
    )
    return infos, unified


def _unknown_q(df: pd.DataFrame, unified: pd.Series, path: Path) -> tuple[pd.DataFrame, pd.Series]:
    venue_ok = df["exchange"].isin(list(TARDIS_VENUES))
    bad = unified.isna() | ~venue_ok
    q = quarantine_frame(
        str(path),
        df.loc[bad, "_row"],
        [
            f"tardis exchange/symbol must map to a ccxt venue and unified symbol, got "
            f"exchange={e!r}, symbol={s!r}"
            for e, s in zip(df.loc[bad, "exchange"], df.loc[bad, "symbol"], strict=True)
        ],
    )
    return q, ~bad


def _contracts(
    infos: dict[tuple[str, str], SymbolInfo | None], df: pd.DataFrame, contract_size: float
) -> pd.DataFrame:
    known = [(e, i) for (e, _), i in infos.items() if i is not None and e in TARDIS_VENUES]
    first = df.groupby(["exchange", "symbol"])["_row"].min()
    return contracts_frame(
        [TARDIS_VENUES[e] for e, _ in known],
        [i for _, i in known],
        contract_size=[
            _inverse_contract_size(e, i)
            if not i.linear and i.type not in ("spot", "option")
            else contract_size
            for e, i in known
        ],
        rows=[
            int(first.get((e, s), -1))
            for (e, s), i in infos.items()
            if i is not None and e in TARDIS_VENUES
        ],
    )


def _to_base(
    amount: pd.Series,
    price: pd.Series,
    exchanges: pd.Series,
    symbols: pd.Series,
    infos: dict[tuple[str, str], SymbolInfo | None],
) -> pd.Series:
    """Exchange sizes to base units (module docstring): inverse sizes are quote amounts."""
    factor = pd.Series(np.nan, index=amount.index)
    inverse = pd.Series(False, index=amount.index)
    for (e, s), info in infos.items():
        m = (exchanges == e) & (symbols == s)
        if info is None:
            continue
        inv = info.type != "spot" and not info.linear
        inverse[m] = inv
        factor[m] = _usd_per_contract(e, info) if inv else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.Series(
            np.where(inverse, amount * factor / price.where(price > 0), amount * factor),
            index=amount.index,
        )


def read_tardis_book_snapshot(
    path: str | Path,
    *,
    levels: int | None = None,
    time_column: str = "timestamp",
    strict: bool = False,
) -> ImportResult:
    """Read a tardis ``book_snapshot_25`` / ``book_snapshot_5`` CSV into ``order_books``.

    Each row is one book: the wide ``asks[i].price, asks[i].amount, bids[i].price,
    bids[i].amount`` columns become long rows with ``level = i`` (0 = best); empty levels (a
    thin book) are skipped.

    Parameters
    ----------
    path : str or Path
        The tardis CSV file (``.csv`` or the ``.csv.gz`` tardis serves).
    levels : int, optional
        Levels a side to keep (all by default).
    time_column : {"timestamp", "local_timestamp"}
        Which tardis time stamps the books.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_tardis_book_snapshot"
    path = Path(path)
    df = _read_csv(path, _BASE_KEY, who)
    wide = [(c, *_WIDE_RE.match(c).groups()) for c in df.columns if _WIDE_RE.match(c)]  # type: ignore[union-attr]
    if not wide:
        raise FairmarginInputError(
            f"{who}: {path}: header must have asks[i].price/amount and bids[i].price/amount "
            f"columns (row 0), got {list(df.columns)[:8]}"
        )
    infos, unified = _symbols(df)
    q, ok = _unknown_q(df, unified, path)
    ts = parse_time(df[time_column])
    parts = []
    max_level = max(int(i) for _, _, i, _ in wide) + 1
    use = min(max_level, levels) if levels is not None else max_level
    for side_key, side in (("asks", "ask"), ("bids", "bid")):
        for i in range(use):
            pc, ac = f"{side_key}[{i}].price", f"{side_key}[{i}].amount"
            if pc not in df.columns or ac not in df.columns:
                continue
            price = pd.to_numeric(df[pc], errors="coerce")
            amount = pd.to_numeric(df[ac], errors="coerce")
            present = ok & (price.notna() | amount.notna())
            parts.append(
                pd.DataFrame(
                    {
                        "venue": df["exchange"].map(TARDIS_VENUES),
                        "symbol": unified,
                        "timestamp": ts,
                        "side": side,
                        "level": i,
                        "price": price,
                        "amount": _to_base(amount, price, df["exchange"], df["symbol"], infos),
                        "_row": df["_row"],
                    }
                ).loc[present]
            )
    books = pd.concat(parts, ignore_index=True)
    return finish(
        {"order_books": books, "contracts": _contracts(infos, df, 1.0)},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )


def read_tardis_incremental_book(
    path: str | Path,
    *,
    levels: int = 25,
    emit: str = "snapshots",
    time_column: str = "timestamp",
    strict: bool = False,
) -> ImportResult:
    """Read a tardis ``incremental_book_L2`` CSV by replaying it into books.

    Rows with ``is_snapshot = true`` build the initial book (a new run of snapshot rows
    after updates resets the book, as tardis documents for reconnections); the others update it
    (amount 0 deletes a level). ``emit="snapshots"`` writes the book as it stands after each run
    of snapshot rows and after the last row; ``emit="final"`` only after the last row. Updates
    before any snapshot cannot make a full book and go to the quarantine with that reason.

    Parameters
    ----------
    path : str or Path
        The tardis CSV file (``.csv`` or the ``.csv.gz`` tardis serves).
    levels : int
        Levels a side to write.
    emit : {"snapshots", "final"}
        When to write the book (see above).
    time_column : {"timestamp", "local_timestamp"}
        Which tardis time stamps the books.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_tardis_incremental_book"
    if emit not in ("snapshots", "final"):
        raise ValueError(f"{who}: emit must be 'snapshots' or 'final', got {emit!r}")
    path = Path(path)
    df = _read_csv(path, [*_BASE_KEY, "is_snapshot", "side", "price", "amount"], who)
    infos, unified = _symbols(df)
    q, ok = _unknown_q(df, unified, path)
    snap = df["is_snapshot"].astype(str).str.lower().isin(["true", "1"])
    ts = parse_time(df[time_column])
    price = pd.to_numeric(df["price"], errors="coerce")
    amount = _to_base(
        pd.to_numeric(df["amount"], errors="coerce"), price, df["exchange"], df["symbol"], infos
    )
    out: list[dict[str, Any]] = []
    q_rows: list[tuple[int, str]] = []
    sel = df.loc[ok]
    exchs = sel["exchange"].astype(str).tolist()
    syms = sel["symbol"].astype(str).tolist()
    pos_of: dict[tuple[str, str], list[int]] = {}
    for pos, key in enumerate(zip(exchs, syms, strict=True)):
        pos_of.setdefault(key, []).append(pos)
    rows_l = sel["_row"].astype(int).tolist()
    snap_l = snap[ok].tolist()
    side_l = sel["side"].astype(str).str.lower().tolist()
    price_l = price[ok].astype(float).tolist()
    amount_l = amount[ok].astype(float).tolist()
    ts_l = ts[ok].tolist()
    uni_l = unified[ok].tolist()
    for (exch, sym), positions in pos_of.items():
        book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
        started = False
        prev_snap = False
        last: int | None = None
        for i in positions:
            is_snap = bool(snap_l[i])
            if is_snap and not prev_snap:
                if started and emit == "snapshots" and last is not None:
                    out += _emit(book, exch, uni_l[i], ts_l[last], rows_l[last], levels)
                book = {"bid": {}, "ask": {}}
                started = True
            if not is_snap and prev_snap and emit == "snapshots" and last is not None:
                out += _emit(book, exch, uni_l[i], ts_l[last], rows_l[last], levels)
            prev_snap = is_snap
            if not started:
                q_rows.append(
                    (
                        rows_l[i],
                        f"tardis incremental_book_L2 {exch} {sym}: "
                        "update before any snapshot row: not a full book",
                    )
                )
                continue
            side = "bid" if side_l[i] in ("bid", "buy") else "ask"
            if amount_l[i] == 0:
                book[side].pop(price_l[i], None)
            else:
                book[side][price_l[i]] = amount_l[i]
            last = i
        if started and last is not None:
            out += _emit(book, exch, uni_l[last], ts_l[last], rows_l[last], levels)
    books = pd.DataFrame.from_records(
        out, columns=["venue", "symbol", "timestamp", "side", "level", "price", "amount", "_row"]
    )
    books = books.drop_duplicates(
        ["venue", "symbol", "timestamp", "side", "level", "price", "amount"], keep="last"
    )
    q2 = quarantine_frame(str(path), [r for r, _ in q_rows], [t for _, t in q_rows])
    sides = books.groupby("side").size().to_dict() if len(books) else {}
    if len(books) and (sides.get("bid", 0) == 0 or sides.get("ask", 0) == 0):
        logger.warning("%s: %s: books have one side only (%s)", who, path, sides)
    return finish(
        {"order_books": books, "contracts": _contracts(infos, df, 1.0)},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q, q2],
    )


def _emit(
    book: dict[str, dict[float, float]], exch: str, symbol: str, ts: Any, row: int, levels: int
) -> list[dict[str, Any]]:
    rows = []
    for side, rev in (("bid", True), ("ask", False)):
        for lvl, p in enumerate(sorted(book[side], reverse=rev)[:levels]):
            rows.append(
                {
                    "venue": TARDIS_VENUES[exch],
                    "symbol": symbol,
                    "timestamp": ts,
                    "side": side,
                    "level": lvl,
                    "price": p,
                    "amount": book[side][p],
                    "_row": row,
                }
            )
    return rows


def read_tardis_options_chain(
    path: str | Path,
    *,
    contract_size: float = 1.0,
    time_column: str = "timestamp",
    strict: bool = False,
) -> ImportResult:
    """Read a tardis ``options_chain`` CSV into ``option_quotes`` (and option ``contracts``).

    IVs are in percent in tardis (Deribit's convention) and become fractions; a bid or ask IV of
    0 or less means no quote and becomes null. ``expiration`` (µs) gives ``expiry``, the
    instrument name the ccxt symbol. ``contract_size`` (default 1 underlying unit, Deribit's and
    Bybit's option size) fills the contracts rows.

    Parameters
    ----------
    path : str or Path
        The tardis CSV file (``.csv`` or the ``.csv.gz`` tardis serves).
    contract_size : float
        Underlying units per option contract, for the contracts rows.
    time_column : {"timestamp", "local_timestamp"}
        Which tardis time stamps the quotes.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_tardis_options_chain"
    path = Path(path)
    need = [*_BASE_KEY, "type", "strike_price", "expiration", "mark_iv", "underlying_price"]
    df = _read_csv(path, need, who)
    infos, unified = _symbols(df)
    q, ok = _unknown_q(df, unified, path)

    def iv(col: str) -> pd.Series:
        if col not in df.columns:
            return pd.Series(np.nan, index=df.index)
        v = pd.to_numeric(df[col], errors="coerce") / 100.0
        return v.where(v > 0) if col != "mark_iv" else v

    quotes = pd.DataFrame(
        {
            "venue": df["exchange"].map(TARDIS_VENUES),
            "underlying": [
                i.base if i else None
                for i in (
                    infos[(str(e), str(s))]
                    for e, s in zip(df["exchange"], df["symbol"], strict=True)
                )
            ],
            "symbol": unified,
            "timestamp": parse_time(df[time_column]),
            "expiry": parse_time(df["expiration"]),
            "strike": pd.to_numeric(df["strike_price"], errors="coerce"),
            "option_type": df["type"].astype(str).str.lower(),
            "mark_iv": iv("mark_iv"),
            "underlying_price": pd.to_numeric(df["underlying_price"], errors="coerce"),
            "bid_iv": iv("bid_iv"),
            "ask_iv": iv("ask_iv"),
            "delta": column(df, "delta"),
            "open_interest": column(df, "open_interest"),
            "_row": df["_row"],
        }
    ).loc[ok]
    return finish(
        {"option_quotes": quotes, "contracts": _contracts(infos, df, contract_size)},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )


def read_tardis_derivative_ticker(
    path: str | Path,
    *,
    strict: bool = False,
) -> ImportResult:
    """Read a tardis ``derivative_ticker`` CSV into ``funding_rates``.

    The ticker repeats the current funding rate with the time of the funding it applies to
    (``funding_timestamp``). One ``funding_rates`` row per (symbol, funding_timestamp): the last
    rate seen at or before that funding time, stamped at the funding time. Ticker rows without a
    funding time or rate (spot-like tickers, gaps) or seen after their funding time carry no
    settled rate; they are counted in the log, not written.

    Parameters
    ----------
    path : str or Path
        The tardis CSV file (``.csv`` or the ``.csv.gz`` tardis serves).
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_tardis_derivative_ticker"
    path = Path(path)
    df = _read_csv(path, [*_BASE_KEY, "funding_timestamp", "funding_rate"], who)
    infos, unified = _symbols(df)
    q, ok = _unknown_q(df, unified, path)
    d = pd.DataFrame(
        {
            "venue": df["exchange"].map(TARDIS_VENUES),
            "symbol": unified,
            "seen": parse_time(df["timestamp"]),
            "timestamp": parse_time(df["funding_timestamp"]),
            "funding_rate": pd.to_numeric(df["funding_rate"], errors="coerce"),
            "_row": df["_row"],
        }
    ).loc[ok]
    usable = d["timestamp"].notna() & d["funding_rate"].notna() & (d["seen"] <= d["timestamp"])
    if (~usable).any():
        logger.info(
            "%s: %s: %d ticker row(s) carry no settled funding rate",
            who,
            path,
            int((~usable).sum()),
        )
    d = d.loc[usable].sort_values(["venue", "symbol", "timestamp", "seen", "_row"], kind="stable")
    rates = d.groupby(["venue", "symbol", "timestamp"], sort=False).tail(1).drop(columns="seen")
    return finish(
        {"funding_rates": rates, "contracts": _contracts(infos, df, 1.0)},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )
