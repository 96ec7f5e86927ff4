"""ccxt's unified structures (as its ``fetch_*`` methods return them) to contract tables.

Kinds: ``ohlcv`` (``fetch_ohlcv``), ``order_book`` (``fetch_order_book``), ``leverage_tiers``
(``fetch_leverage_tiers`` / ``fetch_market_leverage_tiers``), ``funding_rate_history``,
``funding_rate`` / ``funding_rates`` (``fetch_funding_rate(s)``), ``option_chain``
(``fetch_option_chain``), ``greeks`` (``fetch_greeks`` / ``fetch_all_greeks``), ``markets``
(``fetch_markets``), or ``auto`` to sniff the kind from the object's shape.

Also here: :func:`read_ccxt_static`, for ccxt's static-response fixture files (a list of
entries with ``method``, ``input``, ``httpResponse`` and ``parsedResponse``), which reads each
entry's ``parsedResponse``, and :func:`read_ccxt_options` for a ccxt ``options`` block holding
``leverageBrackets``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from pipelines.importers._common import (
    ImportResult,
    finish,
    load_json,
    parse_time,
    quarantine_frame,
    resolve_as_of,
)
from pipelines.importers._symbols import SymbolInfo, contracts_frame, parse_unified

__all__ = [
    "CCXT_KINDS",
    "read_ccxt_json",
    "read_ccxt_options",
    "read_ccxt_static",
    "sniff_ccxt_kind",
]

logger = logging.getLogger(__name__)

CCXT_KINDS = (
    "ohlcv",
    "order_book",
    "leverage_tiers",
    "funding_rate_history",
    "funding_rate",
    "funding_rates",
    "option_chain",
    "greeks",
    "markets",
)
#: ccxt passes the exchange's own IV through: Deribit's is in percent, the others' fractions.
IV_PERCENT_VENUES = frozenset({"deribit"})
#: Static-fixture methods read as contract data, and the kind each one returns.
METHOD_KINDS = {
    "fetchOHLCV": "ohlcv",
    "fetchOrderBook": "order_book",
    "fetchLeverageTiers": "leverage_tiers",
    "fetchMarketLeverageTiers": "leverage_tiers",
    "fetchFundingRateHistory": "funding_rate_history",
    "fetchFundingRate": "funding_rate",
    "fetchFundingRates": "funding_rates",
    "fetchOptionChain": "option_chain",
    "fetchAllGreeks": "greeks",
    "fetchGreeks": "greeks",
    "fetchMarkets": "markets",
}

_TIER_COLS = [
    "venue",
    "symbol",
    "as_of",
    "tier",
    "min_notional",
    "max_notional",
    "maintenance_margin_rate",
    "max_leverage",
    "initial_margin_rate",
    "_row",
]


def sniff_ccxt_kind(obj: Any) -> str:
    """Guess the kind of a ccxt unified object from its shape (see module docstring)."""
    if isinstance(obj, Mapping):
        if "bids" in obj and "asks" in obj:
            return "order_book"
        if "fundingRate" in obj:
            return "funding_rate"
        vals = list(obj.values())
        if vals and all(isinstance(v, Mapping) for v in vals):
            first = vals[0]
            if "fundingRate" in first:
                return "funding_rates"
            if "markImpliedVolatility" in first or "delta" in first:
                return "greeks"
            if "impliedVolatility" in first or "underlyingPrice" in first:
                return "option_chain"
        if (
            vals
            and all(isinstance(v, list) for v in vals)
            and all(isinstance(t, Mapping) and "maxLeverage" in t for v in vals for t in v)
        ):
            return "leverage_tiers"
    if isinstance(obj, list) and obj:
        first = obj[0]
        if isinstance(first, list | tuple) and len(first) >= 6:
            return "ohlcv"
        if isinstance(first, Mapping):
            if "maxLeverage" in first:
                return "leverage_tiers"
            if "fundingRate" in first:
                return "funding_rate_history"
            if "contractSize" in first and "type" in first:
                return "markets"
            if "bids" in first:
                return "order_book"
    raise FairmarginInputError(
        f"sniff_ccxt_kind: object must be one of the ccxt structures {list(CCXT_KINDS)}, "
        f"got {type(obj).__name__} {str(obj)[:80]!r}"
    )


# --------------------------------------------------------------------------- contract info


def _info_from_market(m: Mapping[str, Any]) -> SymbolInfo:
    typ = str(m.get("type") or "")
    expiry = m.get("expiry")
    return SymbolInfo(
        symbol=str(m["symbol"]),
        type=typ,
        base=str(m.get("base")),
        quote=str(m.get("quote")),
        settle=str(m.get("settle") or m.get("quote")),
        linear=True if typ == "spot" else bool(m.get("linear")),
        expiry=None if expiry is None else pd.Timestamp(int(expiry), unit="ms", tz="UTC"),
        strike=None if m.get("strike") is None else float(m["strike"]),
        option_type=m.get("optionType"),
    )


class _Specs:
    """Resolves a symbol's contract fields and size from ccxt markets, options or the symbol."""

    def __init__(
        self, venue: str, markets: Mapping[str, Any] | None, contract_size: float | None
    ) -> None:
        self.venue = venue
        self.markets = markets or {}
        self.contract_size = contract_size
        self.seen: dict[str, tuple[SymbolInfo | None, float | None, int]] = {}
        self.warned: set[str] = set()

    def get(self, symbol: str, row: int) -> tuple[SymbolInfo | None, float | None]:
        if symbol in self.seen:
            known = self.seen[symbol]
            return known[0], known[1]
        info: SymbolInfo | None
        size: float | None
        market = self.markets.get(symbol)
        if market is not None:
            info = _info_from_market(market)
            cs = market.get("contractSize")
            size = float(cs) if cs is not None else None
        else:
            try:
                info = parse_unified(symbol)
            except FairmarginInputError:
                info = None
            size = None
        if size is None:
            size = self.contract_size
        if size is None and info is not None and info.type == "spot":
            size = 1.0
        self.seen[symbol] = (info, size, row)
        return info, size

    def venue_for(self, info: SymbolInfo | None) -> str:
        """Binance derivatives are filed under ccxt's ``binanceusdm`` / ``binancecoinm``."""
        if self.venue == "binance" and info is not None and info.type in ("swap", "future"):
            return "binanceusdm" if info.linear else "binancecoinm"
        return self.venue

    def contracts(self) -> pd.DataFrame:
        known = [(i, s, r) for i, s, r in self.seen.values() if i is not None and s is not None]
        unsized = sorted(k for k, (i, s, _) in self.seen.items() if i is not None and s is None)
        if unsized:
            logger.info(
                "ccxt: no contract size for %s (pass markets= or contract_size=): "
                "no contracts rows for them",
                unsized[:5],
            )
        return contracts_frame(
            [self.venue_for(i) for i, _, _ in known],
            [i for i, _, _ in known],
            contract_size=[s for _, s, _ in known],
            rows=[r for _, _, r in known],
        )


def _num(x: Any) -> float:
    try:
        return float(x) if x is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


# --------------------------------------------------------------------------- per kind


def _ohlcv(obj: Any, specs: _Specs, symbol: str | None, timeframe: str | None) -> pd.DataFrame:
    if symbol is None or timeframe is None:
        raise FairmarginInputError(
            f"read_ccxt_json: kind ohlcv needs symbol= and timeframe= (ccxt candles carry "
            f"neither), got symbol={symbol!r}, timeframe={timeframe!r}"
        )
    info, _ = specs.get(symbol, 0)
    rows = []
    for i, c in enumerate(obj):
        if not isinstance(c, list | tuple) or len(c) < 6:
            raise FairmarginInputError(
                f"read_ccxt_json: ohlcv row {i} must be [timestamp, open, high, low, close, "
                f"volume], got {c!r}"
            )
        rows.append([c[0], *(_num(v) for v in c[1:6]), i])
    df = pd.DataFrame(
        rows, columns=["timestamp", "open", "high", "low", "close", "volume", "_row"]
    )
    df["timestamp"] = parse_time(df["timestamp"])
    return df.assign(venue=specs.venue_for(info), symbol=symbol, timeframe=timeframe)


def _book(
    obj: Any, specs: _Specs, symbol: str | None, timestamp: Any, depth: int | None
) -> pd.DataFrame:
    books = obj if isinstance(obj, list) else [obj]
    parts = []
    row = 0
    for b in books:
        sym = b.get("symbol") or symbol
        if sym is None:
            raise FairmarginInputError(
                "read_ccxt_json: order_book needs a symbol (book or symbol=)"
            )
        info, size = specs.get(sym, row)
        if size is None and info is not None and info.type != "spot":
            if sym not in specs.warned:
                logger.warning(
                    "ccxt order book %s: contract size unknown, amounts taken as 1", sym
                )
                specs.warned.add(sym)
            size = 1.0
        ts = b.get("timestamp")
        ts = ts if ts is not None else timestamp
        for side, key in (("bid", "bids"), ("ask", "asks")):
            levels = list(b.get(key) or [])[: depth if depth is not None else None]
            for lvl, level in enumerate(levels):
                price, amount = _num(level[0]), _num(level[1])
                if info is not None and not info.linear and info.type != "spot":
                    base_amt = amount * (size or 1.0) / price if price > 0 else np.nan
                else:
                    base_amt = amount * (size or 1.0)
                parts.append((sym, ts, side, lvl, price, base_amt, row))
                row += 1
    df = pd.DataFrame(
        parts, columns=["symbol", "timestamp", "side", "level", "price", "amount", "_row"]
    )
    df["timestamp"] = parse_time(df["timestamp"])
    df["venue"] = [specs.venue_for(specs.get(s, 0)[0]) for s in df["symbol"]]
    return df


def _tiers(obj: Any, specs: _Specs, symbol: str | None, as_of: pd.Timestamp) -> pd.DataFrame:
    if isinstance(obj, Mapping):
        items = [(k, t) for k, v in obj.items() for t in v]
    else:
        items = [(t.get("symbol") or symbol, t) for t in obj]
    rows = []
    for i, (sym, t) in enumerate(items):
        if sym is None:
            raise FairmarginInputError(f"read_ccxt_json: leverage tier {i} needs a symbol")
        info, _ = specs.get(str(sym), i)
        lev = _num(t.get("maxLeverage"))
        mx = t.get("maxNotional")
        rows.append(
            [
                specs.venue_for(info),
                sym,
                as_of,
                t.get("tier"),
                _num(t.get("minNotional")),
                np.inf if mx is None else _num(mx),
                _num(t.get("maintenanceMarginRate")),
                lev,
                1.0 / lev if lev > 0 else np.nan,
                i,
            ]
        )
    return pd.DataFrame(rows, columns=_TIER_COLS)


def _funding(obj: Any, specs: _Specs, symbol: str | None, kind: str) -> pd.DataFrame:
    if kind == "funding_rate":
        items = [obj]
    elif kind == "funding_rates":
        items = list(obj.values()) if isinstance(obj, Mapping) else list(obj)
    else:
        items = list(obj)
    rows = []
    for i, f in enumerate(items):
        sym = f.get("symbol") or symbol
        info, _ = specs.get(str(sym), i)
        # a current rate is charged at its funding time: stamp it there (known by then)
        ts = f.get("fundingTimestamp") if kind != "funding_rate_history" else None
        ts = ts if ts is not None else f.get("timestamp")
        rows.append([specs.venue_for(info), sym, ts, _num(f.get("fundingRate")), i])
    df = pd.DataFrame(rows, columns=["venue", "symbol", "timestamp", "funding_rate", "_row"])
    df["timestamp"] = parse_time(df["timestamp"])
    return df


def _options(obj: Any, specs: _Specs, kind: str, timestamp: Any, iv_scale: float) -> pd.DataFrame:
    items = list(obj.values()) if isinstance(obj, Mapping) else list(obj)
    rows = []
    for i, o in enumerate(items):
        sym = str(o.get("symbol"))
        info, _ = specs.get(sym, i)
        raw = o.get("info") or {}
        if kind == "greeks":
            mark = _num(o.get("markImpliedVolatility"))
            bid = _num(o.get("bidImpliedVolatility"))
            ask = _num(o.get("askImpliedVolatility"))
            delta = _num(o.get("delta"))
            oi = np.nan
        else:
            mark = _num(o.get("impliedVolatility"))
            if not np.isfinite(mark):  # ccxt leaves it null for some venues: take the raw field
                mark = _num(raw.get("mark_iv", raw.get("markIv", raw.get("markVol"))))
            bid = _num(raw.get("bid_iv", raw.get("bid1Iv")))
            ask = _num(raw.get("ask_iv", raw.get("ask1Iv")))
            delta = _num(raw.get("delta", (raw.get("greeks") or {}).get("delta")))
            oi = _num(o.get("openInterest"))
        ts = o.get("timestamp")
        if ts is None:
            ts = raw.get("creation_timestamp", timestamp)
        und = _num(o.get("underlyingPrice"))
        rows.append(
            [
                specs.venue_for(info),
                None if info is None else info.base,
                sym,
                ts,
                None if info is None else info.expiry,
                np.nan if info is None else info.strike,
                None if info is None else info.option_type,
                mark * iv_scale,
                und if und > 0 else np.nan,
                # a zero or negative bid/ask IV is a venue's "no quote" placeholder
                bid * iv_scale if bid > 0 else np.nan,
                ask * iv_scale if ask > 0 else np.nan,
                delta,
                oi,
                i,
            ]
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "venue",
            "underlying",
            "symbol",
            "timestamp",
            "expiry",
            "strike",
            "option_type",
            "mark_iv",
            "underlying_price",
            "bid_iv",
            "ask_iv",
            "delta",
            "open_interest",
            "_row",
        ],
    )
    df["timestamp"] = parse_time(df["timestamp"])
    df["expiry"] = pd.to_datetime(df["expiry"], utc=True)
    return df


def _frames(
    obj: Any,
    *,
    kind: str,
    venue: str,
    symbol: str | None,
    timeframe: str | None,
    timestamp: Any,
    as_of: pd.Timestamp | None,
    contract_size: float | None,
    markets: Mapping[str, Any] | None,
    depth: int | None,
    iv_unit: str,
) -> tuple[dict[str, pd.DataFrame], int]:
    """Raw frames (with ``_row``) for one ccxt object, and the number of records read."""
    if kind == "auto":
        kind = sniff_ccxt_kind(obj)
    if kind not in CCXT_KINDS:
        raise FairmarginInputError(
            f"read_ccxt_json: kind must be one of {[*CCXT_KINDS, 'auto']}, got {kind!r}"
        )
    if kind == "markets":
        mk = {m["symbol"]: m for m in (obj.values() if isinstance(obj, Mapping) else obj)}
        specs = _Specs(venue, mk, contract_size)
        for i, s in enumerate(mk):
            specs.get(s, i)
        return {"contracts": specs.contracts()}, len(mk)
    specs = _Specs(venue, markets, contract_size)
    if iv_unit not in ("auto", "fraction", "percent"):
        raise FairmarginInputError(
            f"read_ccxt_json: iv_unit must be auto, fraction or percent, got {iv_unit!r}"
        )
    percent = iv_unit == "percent" or (iv_unit == "auto" and venue in IV_PERCENT_VENUES)
    out: dict[str, pd.DataFrame]
    if kind == "ohlcv":
        df = _ohlcv(obj, specs, symbol, timeframe)
        out = {"ohlcv": df}
    elif kind == "order_book":
        df = _book(obj, specs, symbol, timestamp, depth)
        out = {"order_books": df}
    elif kind == "leverage_tiers":
        if as_of is None:
            raise FairmarginInputError(
                "read_ccxt_json: leverage_tiers need as_of= (ccxt tiers carry no date), got None"
            )
        df = _tiers(obj, specs, symbol, as_of)
        out = {"margin_tiers": df}
    elif kind in ("funding_rate_history", "funding_rate", "funding_rates"):
        df = _funding(obj, specs, symbol, kind)
        out = {"funding_rates": df}
    else:
        df = _options(obj, specs, kind, timestamp, 0.01 if percent else 1.0)
        out = {"option_quotes": df}
    contracts = specs.contracts()
    if len(contracts):
        out["contracts"] = contracts
    n = (
        len(obj)
        if kind in ("ohlcv", "funding_rate_history")
        else int(df["_row"].max() + 1)
        if len(df)
        else 0
    )
    return out, n


def _resolve(obj_or_path: Any, who: str) -> tuple[Any, Path | None]:
    if isinstance(obj_or_path, str | Path):
        path = Path(obj_or_path)
        return load_json(path, who=who), path
    return obj_or_path, None


def read_ccxt_json(
    obj_or_path: Any,
    *,
    kind: str,
    venue: str,
    symbol: str | None = None,
    timeframe: str | None = None,
    timestamp: Any = None,
    as_of: Any = None,
    contract_size: float | None = None,
    markets: Mapping[str, Any] | None = None,
    depth: int | None = None,
    iv_unit: str = "auto",
    strict: bool = False,
) -> ImportResult:
    """Read one ccxt unified object (or a JSON file holding it) into contract tables.

    Parameters
    ----------
    obj_or_path : object, str or Path
        What a ccxt ``fetch_*`` method returned, or a JSON file of it.
    kind : str
        One of :data:`CCXT_KINDS` or ``"auto"`` (sniffed from the shape).
    venue : str
        ccxt exchange id. ``binance`` derivatives are filed under ``binanceusdm`` (linear) or
        ``binancecoinm`` (inverse), the ids of ccxt's derivative classes.
    symbol : str, optional
        Unified symbol where the object has none (ccxt candles, a book without ``symbol``).
    timeframe : str, optional
        Candle size (``1m``, ``1h``...), required for ``ohlcv``.
    timestamp : timestamp-like, optional
        Time for books/options/greeks that carry none (ccxt leaves it null on some venues).
    as_of : timestamp-like, optional
        Publication time of leverage tiers; default the file's mtime (logged) for a path.
    contract_size : float, optional
        Contract size where ``markets`` does not give it. Book amounts in contracts become
        base units: ``amount * contract_size`` (linear) or ``amount * contract_size / price``
        (inverse, size in quote units). Contracts rows are only written for symbols whose size
        is known (spot: 1).
    markets : mapping, optional
        ccxt markets by symbol (``exchange.markets``): contract fields and sizes.
    depth : int, optional
        Keep at most this many book levels a side.
    iv_unit : {"auto", "fraction", "percent"}
        Unit of implied volatilities; ``auto`` takes percent for Deribit (ccxt passes Deribit's
        percent through) and fractions elsewhere.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_ccxt_json"
    obj, path = _resolve(obj_or_path, who)
    ts_as_of = None
    k = sniff_ccxt_kind(obj) if kind == "auto" else kind
    if k == "leverage_tiers":
        ts_as_of = resolve_as_of(as_of, path, who=who)
    frames, n = _frames(
        obj,
        kind=k,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        timestamp=timestamp,
        as_of=ts_as_of,
        contract_size=contract_size,
        markets=markets,
        depth=depth,
        iv_unit=iv_unit,
    )
    return finish(frames, rows_read=n, source=str(path or f"ccxt {k}"), who=who, strict=strict)


def read_ccxt_static(
    path: str | Path,
    *,
    venue: str | None = None,
    strict: bool = False,
    **options: Any,
) -> ImportResult:
    """Read a ccxt static-response fixture file (``<exchange>/<method>.json``).

    Each entry's ``parsedResponse`` (ccxt's expected unified output) is read with
    :func:`read_ccxt_json`, the kind taken from ``method`` (:data:`METHOD_KINDS`), symbol and
    timeframe from ``input``. Entries of other methods (tickers, open interest) hold no contract
    table and are skipped with a log line. ``row`` in the quarantine is the entry index;
    ``rows_read`` counts the records of every entry read.

    Parameters
    ----------
    path : str or Path
        The fixture file.
    venue : str, optional
        ccxt exchange id; default the name of the folder holding the file.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    **options
        Passed to :func:`read_ccxt_json` (``timestamp``, ``as_of``, ``contract_size``...).
    """
    who = "read_ccxt_static"
    path = Path(path)
    entries = load_json(path, who=who)
    if not isinstance(entries, list) or not all(
        isinstance(e, Mapping) and "method" in e and "parsedResponse" in e for e in entries
    ):
        raise FairmarginInputError(
            f"{who}: {path} must be a list of entries with method and parsedResponse"
        )
    venue = venue or path.parent.name
    collected: dict[str, list[pd.DataFrame]] = {}
    n = 0
    for i, e in enumerate(entries):
        kind = METHOD_KINDS.get(str(e["method"]))
        if kind is None:
            logger.info(
                "%s: %s entry %d: method %s holds no contract table, skipped",
                who,
                path,
                i,
                e["method"],
            )
            continue
        inp = list(e.get("input") or [])
        params = next((a for a in inp if isinstance(a, Mapping)), {})
        if kind == "ohlcv" and params.get("price"):
            logger.info(
                "%s: %s entry %d: %s-price candles are not trade prices, skipped",
                who,
                path,
                i,
                params["price"],
            )
            continue
        sym = inp[0] if inp and isinstance(inp[0], str) else None
        tf = inp[1] if kind == "ohlcv" and len(inp) > 1 else None
        as_of = options.get("as_of")
        if kind == "leverage_tiers":
            as_of = resolve_as_of(as_of, path, who=who)
        frames, k = _frames(
            e["parsedResponse"],
            kind=kind,
            venue=venue,
            symbol=sym,
            timeframe=tf,
            timestamp=options.get("timestamp"),
            as_of=as_of,
            contract_size=options.get("contract_size"),
            markets=options.get("markets"),
            depth=options.get("depth"),
            iv_unit=options.get("iv_unit", "auto"),
        )
        n += k
        for name, df in frames.items():
            collected.setdefault(name, []).append(df.assign(_row=i))
    tables = {name: pd.concat(dfs, ignore_index=True) for name, dfs in collected.items()}
    return finish(tables, rows_read=n, source=str(path), who=who, strict=strict)


def read_ccxt_options(
    source: str | Path | Mapping[str, Any],
    *,
    venue: str = "binance",
    strict: bool = False,
) -> ImportResult:
    """Read ccxt's ``options.leverageBrackets`` block (``[floor, maintenance rate]`` pairs).

    The block gives each bracket's notional floor and maintenance-margin rate but no initial
    margin or maximum leverage, which ``margin_tiers`` requires: every bracket goes to the
    quarantine with that reason, and the brackets are returned in
    ``extras["maintenance_brackets"]`` (venue, symbol, tier, min_notional, max_notional,
    maintenance_margin_rate; the last bracket open-ended).
    """
    who = "read_ccxt_options"
    path = None if isinstance(source, Mapping) else Path(source)
    obj = source if isinstance(source, Mapping) else load_json(Path(source), who=who)
    where = str(path or "object")
    brackets = obj.get("leverageBrackets") if isinstance(obj, Mapping) else None
    if not isinstance(brackets, Mapping):
        raise FairmarginInputError(f"{who}: {where} must hold a leverageBrackets mapping")
    rows = []
    i = 0
    for sym, pairs in brackets.items():
        try:
            info: SymbolInfo | None = parse_unified(str(sym))
        except FairmarginInputError:
            info = None
        v = _Specs(venue, None, None).venue_for(info)
        floors = [_num(p[0]) for p in pairs]
        for k, p in enumerate(pairs):
            cap = floors[k + 1] if k + 1 < len(floors) else np.inf
            rows.append([v, sym, k + 1, floors[k], cap, _num(p[1]), i])
            i += 1
    ext = pd.DataFrame(
        rows,
        columns=[
            "venue",
            "symbol",
            "tier",
            "min_notional",
            "max_notional",
            "maintenance_margin_rate",
            "_row",
        ],
    )
    q = quarantine_frame(
        where,
        ext["_row"],
        [
            f"margin_tiers ({v}, {s}, tier {t}): max_leverage must not be null; ccxt "
            f"leverageBrackets give [floor, maintenance rate] only (kept in extras)"
            for v, s, t in zip(ext["venue"], ext["symbol"], ext["tier"], strict=True)
        ],
    )
    return finish(
        {},
        rows_read=len(ext),
        source=where,
        who=who,
        strict=strict,
        quarantine=[q],
        extras={"maintenance_brackets": ext.drop(columns="_row")},
    )
