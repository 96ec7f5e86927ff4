"""Symbols: exchange ids to ccxt unified symbols, unified symbols to contract rows.

ccxt unified symbols: ``BTC/USDT`` (spot), ``BTC/USDT:USDT`` (linear swap, settled in USDT),
``BTC/USD:BTC`` (inverse swap, settled in the base coin), ``BTC/USDT:USDT-240329`` (dated
future, YYMMDD) and ``BTC/USD:BTC-240329-70000-C`` (option).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError

__all__ = [
    "EXPIRY_HOUR_UTC",
    "SymbolInfo",
    "contracts_frame",
    "deribit_symbol",
    "fmt_number",
    "parse_unified",
    "split_pair",
    "unified_symbol",
]

#: Binance, Bybit, OKX and Deribit all settle dated futures and options at 08:00 UTC; a
#: YYMMDD date in a symbol is read as that day at this hour.
EXPIRY_HOUR_UTC = 8

#: Quote/settle currencies recognised at the end of a concatenated id such as ``BTCUSDT``
#: (longest first, so ``FDUSD`` wins over ``USD``).
QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDE", "USD", "BTC", "ETH", "BNB", "EUR")

#: Currency codes ccxt renames (its ``commonCurrencies``).
COMMON_CODES = {"XBT": "BTC", "XBt": "BTC", "USDt": "USDT"}

_UNIFIED_RE = re.compile(
    r"^(?P<base>[^/:]+)/(?P<quote>[^:/]+)"
    r"(?::(?P<settle>[^-]+)(?:-(?P<date>\d{6})(?:-(?P<strike>[0-9.]+)-(?P<ot>[CP]))?)?)?$"
)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DERIBIT_RE = re.compile(
    r"^(?P<base>[A-Z0-9]+)(?:_(?P<quote>[A-Z]+))?-(?P<d>\d{1,2})(?P<m>[A-Z]{3})(?P<y>\d{2})"
    r"(?:-(?P<strike>[0-9]+(?:[.dD][0-9]+)?)-(?P<ot>[CP]))?$"
)


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """What a ccxt unified symbol says about its contract."""

    symbol: str
    type: str  # swap, future, option, spot
    base: str
    quote: str
    settle: str
    linear: bool
    expiry: pd.Timestamp | None
    strike: float | None
    option_type: str | None


def fmt_number(x: float) -> str:
    """A strike or size as ccxt writes it in symbols: ``70000``, ``8.6``, never ``7e4``."""
    if float(x).is_integer():
        return str(int(x))
    return np.format_float_positional(float(x), trim="-")


def expiry_from_yymmdd(text: str) -> pd.Timestamp:
    """``240329`` -> 2024-03-29 08:00 UTC (see :data:`EXPIRY_HOUR_UTC`)."""
    day = pd.Timestamp(f"20{text[:2]}-{text[2:4]}-{text[4:6]}", tz="UTC")
    return day + pd.Timedelta(hours=EXPIRY_HOUR_UTC)


def parse_unified(symbol: str) -> SymbolInfo:
    """Split a ccxt unified symbol into its contract fields.

    Raises
    ------
    FairmarginInputError
        When ``symbol`` is not a ccxt unified symbol.
    """
    m = _UNIFIED_RE.match(symbol)
    if m is None:
        raise FairmarginInputError(
            f"parse_unified: symbol must be a ccxt unified symbol like BTC/USDT:USDT, "
            f"got {symbol!r}"
        )
    base, quote, settle, date, strike, ot = m.group(
        "base", "quote", "settle", "date", "strike", "ot"
    )
    if settle is None:
        return SymbolInfo(symbol, "spot", base, quote, quote, True, None, None, None)
    expiry = expiry_from_yymmdd(date) if date else None
    if ot:
        typ = "option"
    elif date:
        typ = "future"
    else:
        typ = "swap"
    return SymbolInfo(
        symbol=symbol,
        type=typ,
        base=base,
        quote=quote,
        settle=settle,
        linear=settle == quote,
        expiry=expiry,
        strike=float(strike) if strike else None,
        option_type={"C": "call", "P": "put"}.get(ot) if ot else None,
    )


def unified_symbol(
    base: str,
    quote: str,
    settle: str | None = None,
    *,
    expiry: pd.Timestamp | None = None,
    strike: float | None = None,
    option_type: str | None = None,
) -> str:
    """Build a ccxt unified symbol (spot when ``settle`` is None)."""
    out = f"{base}/{quote}"
    if settle is None:
        return out
    out += f":{settle}"
    if expiry is not None:
        out += "-" + pd.Timestamp(expiry).strftime("%y%m%d")
        if strike is not None and option_type is not None:
            out += f"-{fmt_number(strike)}-{option_type[0].upper()}"
    return out


def split_pair(raw: str) -> tuple[str, str] | None:
    """``BTCUSDT`` / ``BTC-USDT`` / ``BTC_USDT`` / ``BTC/USDT`` -> ``("BTC", "USDT")``."""
    for sep in ("/", "-", "_"):
        if sep in raw:
            base, _, quote = raw.partition(sep)
            return (base, quote) if base and quote else None
    for q in QUOTES:
        if raw.endswith(q) and len(raw) > len(q):
            return raw[: -len(q)], q
    return None


def deribit_symbol(name: str) -> SymbolInfo | None:
    """A Deribit instrument name to its ccxt contract fields, or None when not recognised.

    ``BTC-28JUN24-70000-C`` -> ``BTC/USD:BTC-240628-70000-C`` (inverse, settled in BTC),
    ``AVAX_USDC-29MAY26-8d6-P`` -> ``AVAX/USDC:USDC-260529-8.6-P`` (linear, ``d`` is the
    decimal point), ``BTC-PERPETUAL`` -> ``BTC/USD:BTC``, ``BTC-27DEC24`` ->
    ``BTC/USD:BTC-241227``. Expiry is at 08:00 UTC, Deribit's delivery time.
    """
    if name.endswith("-PERPETUAL"):
        head = name[: -len("-PERPETUAL")]
        base, _, q = head.partition("_")
        quote = q or "USD"
        settle = q or base
        sym = unified_symbol(base, quote, settle)
        return SymbolInfo(sym, "swap", base, quote, settle, settle == quote, None, None, None)
    m = _DERIBIT_RE.match(name)
    if m is None or m.group("m") not in _MONTHS:
        return None
    base = m.group("base")
    q = m.group("quote")
    quote = q or "USD"
    settle = q or base
    expiry = pd.Timestamp(
        year=2000 + int(m.group("y")),
        month=_MONTHS[m.group("m")],
        day=int(m.group("d")),
        hour=EXPIRY_HOUR_UTC,
        tz="UTC",
    )
    strike_txt = m.group("strike")
    ot = m.group("ot")
    strike = float(strike_txt.replace("d", ".").replace("D", ".")) if strike_txt else None
    option_type = {"C": "call", "P": "put"}.get(ot) if ot else None
    sym = unified_symbol(
        base, quote, settle, expiry=expiry, strike=strike, option_type=option_type
    )
    typ = "option" if ot else "future"
    return SymbolInfo(sym, typ, base, quote, settle, settle == quote, expiry, strike, option_type)


def contracts_frame(
    venue: str | Iterable[str],
    infos: Iterable[SymbolInfo],
    *,
    contract_size: float | Iterable[float] = 1.0,
    rows: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Contract rows (plus ``_row``) from :class:`SymbolInfo` records."""
    infos = list(infos)
    n = len(infos)
    venues = [venue] * n if isinstance(venue, str) else list(venue)
    sizes: list[Any] = (
        [float(contract_size)] * n
        if isinstance(contract_size, int | float)
        else [float(x) for x in contract_size]
    )
    out = pd.DataFrame(
        {
            "venue": venues,
            "symbol": [i.symbol for i in infos],
            "type": [i.type for i in infos],
            "base": [i.base for i in infos],
            "quote": [i.quote for i in infos],
            "settle": [i.settle for i in infos],
            "linear": [bool(i.linear) for i in infos],
            "contract_size": sizes,
            "expiry": pd.Series([i.expiry for i in infos], dtype="datetime64[ns, UTC]"),
            "strike": [np.nan if i.strike is None else i.strike for i in infos],
            "option_type": [i.option_type for i in infos],
            "_row": list(rows) if rows is not None else [-1] * n,
        }
    )
    # one row per (venue, symbol): several raw ids can map to one unified symbol
    return out.drop_duplicates(["venue", "symbol"], keep="first").reset_index(drop=True)
