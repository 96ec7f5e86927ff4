"""Importers: real-data files (and ccxt objects) into the tables of DATA_CONTRACT.md.

Each reader takes a path (some also an in-memory object) and keyword options and returns an
:class:`ImportResult`: contract tables with exact columns and dtypes, the number of source
records read, and the quarantine (rows that break a contract rule, with the reason). Rows are
never dropped in silence; ``strict=True`` makes any quarantined row an error instead.

:data:`READERS` maps a format name to its reader; :func:`detect_format` sniffs a file's format
from its name, header and content; :func:`read` does both.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from features._checks import FairmarginInputError
from pipelines.importers._common import ImportResult
from pipelines.importers.binance_brackets import read_binance_leverage_brackets
from pipelines.importers.bingx import read_bingx_risk_tiers
from pipelines.importers.bitmex import read_bitmex_instruments
from pipelines.importers.books import read_binance_depth, read_bybit_orderbook_ws
from pipelines.importers.candles import (
    FREQTRADE_NAME_RE,
    read_cryptodatadownload,
    read_freqtrade,
)
from pipelines.importers.ccxt_json import read_ccxt_json, read_ccxt_options, read_ccxt_static
from pipelines.importers.deribit import (
    read_deribit_book_summary,
    read_deribit_option_chain,
    read_deribit_trades,
)
from pipelines.importers.dydx import read_dydx_genesis, read_dydx_indexer_markets
from pipelines.importers.tardis import (
    read_tardis_book_snapshot,
    read_tardis_derivative_ticker,
    read_tardis_incremental_book,
    read_tardis_options_chain,
)

__all__ = [
    "READERS",
    "ImportResult",
    "detect_format",
    "read",
    "read_binance_depth",
    "read_binance_leverage_brackets",
    "read_bingx_risk_tiers",
    "read_bitmex_instruments",
    "read_bybit_orderbook_ws",
    "read_ccxt_json",
    "read_ccxt_options",
    "read_ccxt_static",
    "read_cryptodatadownload",
    "read_deribit_book_summary",
    "read_deribit_option_chain",
    "read_deribit_trades",
    "read_dydx_genesis",
    "read_dydx_indexer_markets",
    "read_freqtrade",
    "read_tardis_book_snapshot",
    "read_tardis_derivative_ticker",
    "read_tardis_incremental_book",
    "read_tardis_options_chain",
]

#: Format name -> reader. Every reader takes the path first and keyword options after it;
#: ``ccxt_json`` also needs ``kind=`` (or ``"auto"``) and ``venue=``.
READERS: dict[str, Callable[..., ImportResult]] = {
    "binance_leverage_brackets": read_binance_leverage_brackets,
    "bingx_risk_tiers": read_bingx_risk_tiers,
    "bitmex_instruments": read_bitmex_instruments,
    "dydx_indexer_markets": read_dydx_indexer_markets,
    "dydx_genesis": read_dydx_genesis,
    "ccxt_json": read_ccxt_json,
    "ccxt_static": read_ccxt_static,
    "ccxt_options": read_ccxt_options,
    "tardis_book_snapshot": read_tardis_book_snapshot,
    "tardis_incremental_book_l2": read_tardis_incremental_book,
    "tardis_options_chain": read_tardis_options_chain,
    "tardis_derivative_ticker": read_tardis_derivative_ticker,
    "deribit_book_summary": read_deribit_book_summary,
    "deribit_option_chain": read_deribit_option_chain,
    "deribit_trades": read_deribit_trades,
    "binance_depth": read_binance_depth,
    "bybit_orderbook_ws": read_bybit_orderbook_ws,
    "cryptodatadownload": read_cryptodatadownload,
    "freqtrade": read_freqtrade,
}

#: Header columns that identify each CSV format (all must be present), most specific first.
_CSV_SIGNATURES: list[tuple[str, frozenset[str]]] = [
    (
        "binance_leverage_brackets",
        frozenset({"snapshot_date", "bracket", "initialLeverage", "notionalFloor", "notionalCap"}),
    ),
    ("bingx_risk_tiers", frozenset({"snapshot_date", "tier_id", "limit", "max_leverage"})),
    (
        "tardis_book_snapshot",
        frozenset({"exchange", "symbol", "local_timestamp", "asks[0].price", "bids[0].price"}),
    ),
    (
        "tardis_incremental_book_l2",
        frozenset(
            {"exchange", "symbol", "local_timestamp", "is_snapshot", "side", "price", "amount"}
        ),
    ),
    (
        "tardis_options_chain",
        frozenset(
            {"exchange", "symbol", "local_timestamp", "strike_price", "expiration", "mark_iv"}
        ),
    ),
    (
        "tardis_derivative_ticker",
        frozenset({"exchange", "symbol", "local_timestamp", "funding_timestamp", "funding_rate"}),
    ),
    ("binance_depth", frozenset({"first_update_id", "last_update_id", "update_type", "qty"})),
    ("deribit_trades", frozenset({"instrument_name", "trade_seq", "iv", "index_price"})),
    (
        "deribit_option_chain",
        frozenset({"instrument_name", "strike", "expiration_timestamp", "mark_iv"}),
    ),
    (
        "deribit_book_summary",
        frozenset({"instrument_name", "mark_iv", "underlying_price", "creation_timestamp"}),
    ),
]


def _csv_header(path: Path) -> list[str]:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        if first.lower().startswith("http"):  # CryptoDataDownload's banner line
            first = fh.readline()
    return [c.strip().strip('"') for c in first.strip().split(",")]


def detect_format(path: str | Path) -> str:
    """The :data:`READERS` format of a file, sniffed from its name, header and content.

    Raises
    ------
    FairmarginInputError
        When no format matches, naming the file and what was seen.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FairmarginInputError(f"detect_format: path must be a file, got {path}")
    if FREQTRADE_NAME_RE.match(name) and name.endswith((".parquet", ".feather")):
        return "freqtrade"
    if name.endswith((".jsonl", ".data")):
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            msg = {}
        if isinstance(msg, dict) and str(msg.get("topic", "")).startswith("orderbook."):
            return "bybit_orderbook_ws"
        raise FairmarginInputError(
            f"detect_format: {path}: JSON lines must be Bybit orderbook messages, got "
            f"{line[:80]!r}"
        )
    if name.endswith(".json"):
        return _json_format(path)
    if name.endswith((".csv", ".csv.gz")):
        cols = set(_csv_header(path))
        for fmt, sig in _CSV_SIGNATURES:
            if sig <= cols:
                return fmt
        lower = {c.lower() for c in cols}
        if {"unix", "symbol", "open", "close"} <= lower and any(
            c.startswith("volume ") for c in lower
        ):
            return "cryptodatadownload"
        raise FairmarginInputError(
            f"detect_format: {path}: CSV header must match a known format "
            f"({sorted(READERS)}), got {sorted(cols)[:12]}"
        )
    raise FairmarginInputError(
        f"detect_format: {path}: file type must be .csv, .csv.gz, .json, .jsonl, .parquet or "
        f".feather (freqtrade names), got {name!r}"
    )


def _json_format(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as err:
        raise FairmarginInputError(
            f"detect_format: {path} must be valid JSON, got {err.msg} at line {err.lineno} "
            f"column {err.colno} (truncated or corrupt file?)"
        ) from err
    if (
        isinstance(obj, list)
        and obj
        and all(isinstance(e, dict) and "httpResponse" in e and "parsedResponse" in e for e in obj)
    ):
        return "ccxt_static"
    if isinstance(obj, dict):
        if "leverageBrackets" in obj:
            return "ccxt_options"
        markets = obj.get("markets")
        if isinstance(markets, dict) and any(
            isinstance(v, dict) and "initialMarginFraction" in v for v in markets.values()
        ):
            return "dydx_indexer_markets"
        if "genesis_time" in obj and ("perpetuals_module" in obj or "app_state" in obj):
            return "dydx_genesis"
    recs = obj if isinstance(obj, list) else [obj]
    if recs and all(isinstance(r, dict) and "riskLimit" in r and "initMargin" in r for r in recs):
        return "bitmex_instruments"
    return "ccxt_json"


def read(path: str | Path, *, format: str | None = None, **options: Any) -> ImportResult:
    """Read ``path`` with the reader of ``format`` (sniffed by :func:`detect_format` if None)."""
    fmt = format or detect_format(path)
    reader = READERS.get(fmt)
    if reader is None:
        raise FairmarginInputError(f"read: format must be one of {sorted(READERS)}, got {fmt!r}")
    return reader(path, **options)
