"""Deribit option data: book summaries, chain snapshots and option trades.

Instrument names (``BTC-28JUN24-70000-C``) give the ccxt symbol (``BTC/USD:BTC-240628-70000-C``),
the expiry (08:00 UTC, Deribit's delivery time), the strike and the option type. Deribit's IVs
are in percent and become fractions. Deribit options are 1 underlying unit per contract.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.importers._common import (
    ImportResult,
    column,
    finish,
    parse_time,
    quarantine_frame,
    require_header,
)
from pipelines.importers._symbols import SymbolInfo, contracts_frame, deribit_symbol

__all__ = ["read_deribit_book_summary", "read_deribit_option_chain", "read_deribit_trades"]

logger = logging.getLogger(__name__)

_VENUE = "deribit"


def _instruments(
    names: pd.Series, rows: pd.Series, path: Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Parsed option fields per row, the quarantine of unparsable names, and the ok mask."""
    cache: dict[str, SymbolInfo | None] = {n: deribit_symbol(str(n)) for n in names.unique()}
    infos = names.map(cache)
    ok = infos.map(lambda i: i is not None and i.type == "option").astype(bool)
    q = quarantine_frame(
        str(path),
        rows[~ok],
        [
            f"option_quotes: instrument_name must be a Deribit option like BTC-28JUN24-70000-C, "
            f"got {n!r}"
            for n in names[~ok]
        ],
    )
    fields = pd.DataFrame(
        {
            "symbol": infos.map(lambda i: i.symbol if i else None),
            "underlying": infos.map(lambda i: i.base if i else None),
            "expiry": pd.Series(
                [i.expiry if i else pd.NaT for i in infos],
                index=names.index,
                dtype="datetime64[ns, UTC]",
            ),
            "strike": infos.map(lambda i: i.strike if i else np.nan).astype("float64"),
            "option_type": infos.map(lambda i: i.option_type if i else None),
        }
    )
    return fields, q, ok


def _contracts(infos: list[SymbolInfo | None], rows: list[int], size: Any = 1.0) -> pd.DataFrame:
    keep = [(i, r) for i, r in zip(infos, rows, strict=True) if i is not None]
    sizes = size if not isinstance(size, int | float) else [float(size)] * len(infos)
    kept_sizes = [s for i, s in zip(infos, sizes, strict=True) if i is not None]
    return contracts_frame(
        _VENUE, [i for i, _ in keep], contract_size=kept_sizes, rows=[r for _, r in keep]
    )


def _pct(s: pd.Series, *, positive_only: bool) -> pd.Series:
    v = pd.to_numeric(s, errors="coerce") / 100.0
    return v.where(v > 0) if positive_only else v


def read_deribit_book_summary(
    path: str | Path,
    *,
    strict: bool = False,
) -> ImportResult:
    """Read Deribit ``public/get_book_summary_by_currency`` rows (CSV) into ``option_quotes``.

    ``timestamp`` is each row's ``creation_timestamp`` (ms), ``mark_iv`` is ``mark_iv / 100``,
    ``underlying_price`` the row's ``underlying_price`` (the future or synthetic index the option
    is priced off), ``open_interest`` kept. Non-option rows go to the quarantine.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_deribit_book_summary"
    path = Path(path)
    df = pd.read_csv(path)
    require_header(
        df.columns,
        ["instrument_name", "mark_iv", "underlying_price", "creation_timestamp"],
        path=path,
        who=who,
    )
    df["_row"] = np.arange(len(df))
    fields, q, ok = _instruments(df["instrument_name"].astype(str), df["_row"], path)
    quotes = pd.concat(
        [
            fields,
            pd.DataFrame(
                {
                    "venue": _VENUE,
                    "timestamp": parse_time(df["creation_timestamp"]),
                    "mark_iv": _pct(df["mark_iv"], positive_only=False),
                    "underlying_price": pd.to_numeric(df["underlying_price"], errors="coerce"),
                    "open_interest": column(df, "open_interest"),
                    "_row": df["_row"],
                }
            ),
        ],
        axis="columns",
    ).loc[ok]
    names = df["instrument_name"].astype(str)
    infos = [deribit_symbol(n) for n in names]
    return finish(
        {"option_quotes": quotes, "contracts": _contracts(infos, df["_row"].tolist())},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q],
    )


def read_deribit_option_chain(
    path: str | Path,
    *,
    as_of: Any = None,
    strict: bool = False,
) -> ImportResult:
    """Read a Deribit option chain with instrument specs and tickers (CSV) into ``option_quotes``.

    The file (instrument fields ``strike``, ``expiration_timestamp``, ``contract_size`` and
    ticker fields ``mark_iv``, ``bid_iv``, ``ask_iv``, ``underlying_price``, ``delta``,
    ``open_interest``) stores no capture time: ``timestamp`` is ``as_of`` when given, else the
    latest ``creation_timestamp`` in the file (the newest instrument listing, so the earliest
    time the snapshot can have been taken), logged. IVs are percent -> fraction; a bid/ask IV of
    0 (no quote below intrinsic value) becomes null. ``expiry`` comes from
    ``expiration_timestamp``; a strike or expiry disagreeing with the instrument name is
    quarantined.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    as_of : timestamp-like, optional
        Capture time of the snapshot (naive means UTC).
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_deribit_option_chain"
    path = Path(path)
    df = pd.read_csv(path)
    need = ["instrument_name", "strike", "expiration_timestamp", "mark_iv", "underlying_price"]
    require_header(df.columns, need, path=path, who=who)
    df["_row"] = np.arange(len(df))
    fields, q, ok = _instruments(df["instrument_name"].astype(str), df["_row"], path)
    if as_of is not None:
        ts = pd.Timestamp(as_of)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    else:
        ts = parse_time(df["creation_timestamp"]).max()
        logger.warning(
            "%s: %s stores no capture time; timestamp = latest creation_timestamp %s",
            who,
            path,
            ts,
        )
    expiry = parse_time(df["expiration_timestamp"])
    strike = pd.to_numeric(df["strike"], errors="coerce")
    clash = ok & ((expiry != fields["expiry"]) | ~np.isclose(strike, fields["strike"]))
    q2 = quarantine_frame(
        str(path),
        df.loc[clash, "_row"],
        [
            f"option_quotes ({n}): strike/expiration_timestamp must match the instrument name, "
            f"got strike={s!r}, expiry={e}"
            for n, s, e in zip(
                df.loc[clash, "instrument_name"], strike[clash], expiry[clash], strict=True
            )
        ],
    )
    quotes = pd.concat(
        [
            fields.drop(columns=["expiry", "strike"]),
            pd.DataFrame(
                {
                    "venue": _VENUE,
                    "timestamp": ts,
                    "expiry": expiry,
                    "strike": strike,
                    "mark_iv": _pct(df["mark_iv"], positive_only=False),
                    "underlying_price": pd.to_numeric(df["underlying_price"], errors="coerce"),
                    "bid_iv": _pct(column(df, "bid_iv"), positive_only=True),
                    "ask_iv": _pct(column(df, "ask_iv"), positive_only=True),
                    "delta": column(df, "delta"),
                    "open_interest": column(df, "open_interest"),
                    "_row": df["_row"],
                }
            ),
        ],
        axis="columns",
    ).loc[ok & ~clash]
    names = df["instrument_name"].astype(str)
    infos = [deribit_symbol(n) for n in names]
    sizes = list(column(df, "contract_size").fillna(1.0)) if "contract_size" in df else 1.0
    return finish(
        {"option_quotes": quotes, "contracts": _contracts(infos, df["_row"].tolist(), sizes)},
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q, q2],
    )


def read_deribit_trades(
    path: str | Path,
    *,
    strict: bool = False,
) -> ImportResult:
    """Read Deribit option trades (``get_last_trades_by_instrument``, CSV) into ``option_quotes``.

    Each trade is a quote at its ``timestamp``: ``mark_iv = iv / 100`` (the trade's IV),
    ``underlying_price = index_price``; strike, expiry and type come from ``instrument_name``
    (an author-added ``strike`` column, if any, is ignored). Several trades in one millisecond
    share the contract key: identical quotes are merged, and when they differ the last trade
    (highest ``trade_seq``) is kept and the earlier ones go to the quarantine with the reason.
    Files are sorted by time whatever their order (these are newest first).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_deribit_trades"
    path = Path(path)
    df = pd.read_csv(path)
    need = ["timestamp", "instrument_name", "iv", "index_price", "trade_seq"]
    require_header(df.columns, need, path=path, who=who)
    df["_row"] = np.arange(len(df))
    fields, q, ok = _instruments(df["instrument_name"].astype(str), df["_row"], path)
    quotes = pd.concat(
        [
            fields,
            pd.DataFrame(
                {
                    "venue": _VENUE,
                    "timestamp": parse_time(df["timestamp"]),
                    "mark_iv": _pct(df["iv"], positive_only=False),
                    "underlying_price": pd.to_numeric(df["index_price"], errors="coerce"),
                    "trade_seq": pd.to_numeric(df["trade_seq"], errors="coerce"),
                    "_row": df["_row"],
                }
            ),
        ],
        axis="columns",
    ).loc[ok]
    # the last trade of each (symbol, millisecond) is the quote; differing earlier ones are
    # quarantined, identical ones merged (by finish)
    quotes = quotes.sort_values(["symbol", "timestamp", "trade_seq"], kind="stable")
    last = quotes.groupby(["symbol", "timestamp"], sort=False).transform("last")
    same = (quotes["mark_iv"] == last["mark_iv"]) & (
        quotes["underlying_price"] == last["underlying_price"]
    )
    superseded = ~same
    q2 = quarantine_frame(
        str(path),
        quotes.loc[superseded, "_row"],
        [
            f"option_quotes ({_VENUE}, {s}, {t}): duplicate key with other values; trade_seq "
            f"{int(a)} (iv {iv!r}) superseded by trade_seq {int(b)} in the same millisecond"
            for s, t, a, iv, b in zip(
                quotes.loc[superseded, "symbol"],
                quotes.loc[superseded, "timestamp"],
                quotes.loc[superseded, "trade_seq"],
                quotes.loc[superseded, "mark_iv"] * 100,
                last.loc[superseded, "trade_seq"],
                strict=True,
            )
        ],
    )
    quotes = quotes.loc[~superseded]
    # merged identical trades keep the last trade's row number
    quotes = quotes.assign(_row=last.loc[~superseded, "_row"]).drop(columns="trade_seq")
    names = df["instrument_name"].astype(str)
    infos = [deribit_symbol(n) for n in names.unique()]
    first = df.groupby("instrument_name")["_row"].min()
    return finish(
        {
            "option_quotes": quotes,
            "contracts": _contracts(infos, [int(first[n]) for n in names.unique()]),
        },
        rows_read=len(df),
        source=str(path),
        who=who,
        strict=strict,
        quarantine=[q, q2],
    )
