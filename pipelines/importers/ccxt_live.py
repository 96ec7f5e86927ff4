"""Exchanges through ccxt: live fetches and the offline replay of recorded raw replies.

Offline replay (``parse_*``): a raw exchange reply (``httpResponse`` in ccxt's static fixtures)
is fed to ccxt's own unified method with the HTTP transport replaced by a function that returns
the recorded reply (``exchange.fetch``), the way ccxt's own static-response tests do it. So the
reply goes through exactly the exchange's parsing code (``parse_ohlcvs``, ``parse_order_book``,
``parse_funding_rate_history``, ``parse_leverage_tiers``, ``parse_option_chain``...) and its
per-exchange unwrapping, and the unified result then goes through
:func:`~pipelines.importers.ccxt_json.read_ccxt_json`. Exchanges need markets to map ids to
symbols: pass ccxt markets (e.g. a ``fetchMarkets`` fixture's ``parsedResponse``) or minimal
ones built by :func:`minimal_market` from the fixture (id, unified symbol, contract size).

Live use (``fetch_*``): :func:`connect` builds an exchange with ccxt's rate limiter on
(``enableRateLimit``); each fetch retries ``ccxt.NetworkError`` with exponential backoff, but an
unreachable host (no DNS, refused connection, bad proxy: offline) fails at once with one clear
:class:`~features._checks.FairmarginError` line instead of retrying.

ccxt 4.5.90 has no BitMEX class; BitMEX data is read from its own instrument records
(:mod:`pipelines.importers.bitmex`) or from ccxt JSON.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import ccxt
import pandas as pd

from features._checks import FairmarginError, FairmarginInputError
from pipelines.importers._common import ImportResult
from pipelines.importers._symbols import parse_unified
from pipelines.importers.ccxt_json import read_ccxt_json

__all__ = [
    "ReplayResult",
    "connect",
    "fetch_funding_rate_history",
    "fetch_leverage_tiers",
    "fetch_ohlcv",
    "fetch_option_chain",
    "fetch_order_book",
    "minimal_market",
    "offline_exchange",
    "parse_funding_rate_history",
    "parse_greeks",
    "parse_leverage_tiers",
    "parse_ohlcv",
    "parse_option_chain",
    "parse_order_book",
    "replay",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Error text of a host that cannot be reached at all: retrying will not help.
_UNREACHABLE = re.compile(
    r"NameResolutionError|Name or service not known|Temporary failure in name resolution|"
    r"nodename nor servname|getaddrinfo failed|ProxyError|Unable to connect to proxy|"
    r"Connection refused|Network is unreachable|No route to host",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ReplayResult:
    """ccxt's unified output for a recorded reply, and our tables from it.

    Attributes
    ----------
    unified : object
        What ccxt's method returned (comparable to a fixture's ``parsedResponse``).
    result : ImportResult
        :func:`read_ccxt_json` of ``unified``.
    """

    unified: Any
    result: ImportResult


# --------------------------------------------------------------------------- exchanges


def _exchange_class(exchange_id: str) -> Any:
    cls = getattr(ccxt, exchange_id, None)
    if cls is None or exchange_id not in ccxt.exchanges:
        raise FairmarginInputError(
            f"ccxt: exchange_id must be a ccxt {ccxt.__version__} exchange id, got {exchange_id!r}"
        )
    return cls


def minimal_market(
    exchange: Any,
    *,
    symbol: str,
    market_id: str,
    contract_size: float | None = None,
    info: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A ccxt market built from a unified symbol and the exchange's id for it.

    Type, base, quote, settle, linear/inverse, expiry (08:00 UTC), strike and option type come
    from the symbol; ``contract_size`` defaults to 1 for derivatives. ``fields`` override any
    market key (e.g. ``baseId``); ``exchange.safe_market_structure`` fills the rest.
    """
    s = parse_unified(symbol)
    deriv = s.type != "spot"
    expiry = None if s.expiry is None else int(s.expiry.value // 1_000_000)
    market = {
        "id": market_id,
        "symbol": symbol,
        "base": s.base,
        "quote": s.quote,
        "settle": s.settle if deriv else None,
        "baseId": s.base,
        "quoteId": s.quote,
        "settleId": s.settle if deriv else None,
        "type": s.type,
        "spot": s.type == "spot",
        "swap": s.type == "swap",
        "future": s.type == "future",
        "option": s.type == "option",
        "contract": deriv,
        "linear": s.linear if deriv else None,
        "inverse": (not s.linear) if deriv else None,
        "contractSize": (1.0 if contract_size is None else float(contract_size))
        if deriv
        else None,
        "expiry": expiry,
        "expiryDatetime": None if s.expiry is None else s.expiry.isoformat(),
        "strike": s.strike,
        "optionType": s.option_type,
        "active": True,
        "precision": {"amount": None, "price": None},
        "info": dict(info or {}),
        **fields,
    }
    return dict(exchange.safe_market_structure(market))


def offline_exchange(
    exchange_id: str,
    *,
    markets: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
) -> Any:
    """A ccxt exchange for offline replay: no rate limiter, dummy credentials, given markets.

    The credentials are placeholders so that signed endpoints (e.g. Binance's leverage
    brackets) can be replayed; nothing is ever sent.
    """
    cls = _exchange_class(exchange_id)
    ex = cls(
        {
            "enableRateLimit": False,
            "apiKey": "replay",
            "secret": "replay",
            "password": "replay",
            **dict(config or {}),
        }
    )
    if markets:
        ms = list(markets.values()) if isinstance(markets, Mapping) else list(markets)
        built = [m if "symbol" in m and "id" in m else None for m in ms]
        if any(b is None for b in built):
            raise FairmarginInputError("offline_exchange: every market needs id and symbol")
        ex.set_markets([dict(m) for m in ms])
    return ex


@contextmanager
def _transport(exchange: Any, raw: Any) -> Iterator[None]:
    """Replace the exchange's HTTP call by one returning ``raw`` (ccxt's static-test method)."""
    had = "fetch" in vars(exchange)
    saved = vars(exchange).get("fetch")

    def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        # what ccxt's own fetch does after the HTTP call: the exchange's error checks
        text = json.dumps(raw)
        exchange.handle_errors(200, "OK", url, method, {}, text, raw, headers, body)
        return raw

    exchange.fetch = fetch
    try:
        yield
    finally:
        if had:
            exchange.fetch = saved
        else:
            del exchange.fetch


def replay(exchange: Any, method: str, raw: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ccxt's unified ``method`` (snake_case) on a recorded raw reply, offline."""
    fn = getattr(exchange, method, None)
    if fn is None or not callable(fn):
        raise FairmarginInputError(
            f"replay: method must be a ccxt method of {exchange.id}, got {method!r}"
        )
    with _transport(exchange, raw):
        try:
            return fn(*args, **kwargs)
        except ccxt.BaseError as err:
            raise FairmarginInputError(
                f"replay: ccxt {exchange.id}.{method} could not parse the reply: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            ) from err


def parse_ohlcv(
    exchange: Any,
    raw: Any,
    *,
    symbol: str,
    timeframe: str,
    since: int | None = None,
    limit: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """Candles of a raw reply through ccxt's ``fetch_ohlcv`` parsing, then into ``ohlcv``.

    Parameters
    ----------
    exchange : ccxt.Exchange
        An exchange with markets for ``symbol`` (:func:`offline_exchange`).
    raw : object
        The exchange's raw reply, as JSON-decoded (a fixture's ``httpResponse``).
    symbol, timeframe, since, limit, params
        The arguments of the recorded ``fetch_ohlcv`` call (they shape the parsing, e.g.
        Bybit's reply is newest first and ccxt sorts it; ``limit`` trims).

    Returns
    -------
    ReplayResult
        ccxt's unified candles and the ``ohlcv`` table from them.
    """
    unified = replay(
        exchange, "fetch_ohlcv", raw, symbol, timeframe, since, limit, dict(params or {})
    )
    res = read_ccxt_json(
        unified,
        kind="ohlcv",
        venue=exchange.id,
        symbol=symbol,
        timeframe=timeframe,
        markets=exchange.markets,
    )
    return ReplayResult(unified, res)


def parse_order_book(
    exchange: Any,
    raw: Any,
    *,
    symbol: str,
    limit: int | None = None,
    params: Mapping[str, Any] | None = None,
    timestamp: Any = None,
) -> ReplayResult:
    """A raw book reply through ccxt's ``fetch_order_book``; sizes from the markets."""
    unified = replay(exchange, "fetch_order_book", raw, symbol, limit, dict(params or {}))
    res = read_ccxt_json(
        unified,
        kind="order_book",
        venue=exchange.id,
        symbol=symbol,
        timestamp=timestamp,
        markets=exchange.markets,
    )
    return ReplayResult(unified, res)


def parse_funding_rate_history(
    exchange: Any,
    raw: Any,
    *,
    symbol: str,
    since: int | None = None,
    limit: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """A raw funding-history reply through ccxt's ``fetch_funding_rate_history``."""
    unified = replay(
        exchange, "fetch_funding_rate_history", raw, symbol, since, limit, dict(params or {})
    )
    res = read_ccxt_json(
        unified,
        kind="funding_rate_history",
        venue=exchange.id,
        symbol=symbol,
        markets=exchange.markets,
    )
    return ReplayResult(unified, res)


def parse_leverage_tiers(
    exchange: Any,
    raw: Any,
    *,
    as_of: Any,
    symbols: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """A raw leverage-tier reply through ccxt's ``fetch_leverage_tiers``.

    ``as_of``: when the reply was taken (tiers carry no date).
    """
    unified = replay(
        exchange,
        "fetch_leverage_tiers",
        raw,
        None if symbols is None else list(symbols),
        dict(params or {}),
    )
    res = read_ccxt_json(
        unified, kind="leverage_tiers", venue=exchange.id, as_of=as_of, markets=exchange.markets
    )
    return ReplayResult(unified, res)


def parse_option_chain(
    exchange: Any,
    raw: Any,
    *,
    code: str,
    timestamp: Any = None,
    params: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """A raw option-chain reply through ccxt's ``fetch_option_chain``.

    ``timestamp`` stamps options that carry no time (e.g. Bybit's tickers: pass the reply's
    ``time``); Deribit's book summaries carry ``creation_timestamp``, used when ccxt's is null.
    """
    unified = replay(exchange, "fetch_option_chain", raw, code, dict(params or {}))
    res = read_ccxt_json(
        unified,
        kind="option_chain",
        venue=exchange.id,
        timestamp=timestamp,
        markets=exchange.markets,
    )
    return ReplayResult(unified, res)


def parse_greeks(
    exchange: Any,
    raw: Any,
    *,
    symbols: Sequence[str] | None = None,
    timestamp: Any = None,
    params: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """A raw greeks reply through ccxt's ``fetch_all_greeks`` (mark IV, delta...)."""
    unified = replay(
        exchange,
        "fetch_all_greeks",
        raw,
        None if symbols is None else list(symbols),
        dict(params or {}),
    )
    res = read_ccxt_json(
        unified, kind="greeks", venue=exchange.id, timestamp=timestamp, markets=exchange.markets
    )
    return ReplayResult(unified, res)


# --------------------------------------------------------------------------- live


def connect(
    exchange_id: str, *, timeout_ms: int = 10_000, config: Mapping[str, Any] | None = None
) -> Any:
    """A ccxt exchange for live use, with ccxt's rate limiter on (``enableRateLimit``).

    Construction is offline; the first fetch loads the markets.
    """
    cls = _exchange_class(exchange_id)
    return cls({"enableRateLimit": True, "timeout": int(timeout_ms), **dict(config or {})})


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _with_retries(
    exchange: Any,
    what: str,
    fn: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn``; retry ``ccxt.NetworkError`` with backoff ``backoff_s * 2**k``.

    An unreachable host fails at once; other ccxt errors fail at once, as one line.
    """
    if retries < 0 or backoff_s < 0:
        raise ValueError(
            f"{what}: retries and backoff_s must be >= 0, got {retries!r}, {backoff_s!r}"
        )
    attempt = 0
    while True:
        try:
            return fn()
        except ccxt.BadSymbol as err:
            raise FairmarginInputError(f"{exchange.id} {what}: {_first_line(err)}") from err
        except ccxt.NetworkError as err:
            chain = f"{err} {err.__cause__!r} {err.__context__!r}"
            if _UNREACHABLE.search(chain):
                raise FairmarginError(
                    f"{exchange.id} {what}: exchange unreachable (offline or blocked?), not "
                    f"retried: {type(err).__name__}"
                ) from err
            if attempt >= retries:
                raise FairmarginError(
                    f"{exchange.id} {what}: network error after {attempt + 1} attempt(s): "
                    f"{type(err).__name__}: {_first_line(err)}"
                ) from err
            wait = backoff_s * 2**attempt
            logger.warning(
                "%s %s: %s, retry %d/%d in %.2f s",
                exchange.id,
                what,
                type(err).__name__,
                attempt + 1,
                retries,
                wait,
            )
            (sleep or time.sleep)(wait)
            attempt += 1
        except ccxt.BaseError as err:
            raise FairmarginError(
                f"{exchange.id} {what}: {type(err).__name__}: {_first_line(err)}"
            ) from err


def _live(exchange: Any, what: str, fn: Callable[[], T], *, retries: int, backoff_s: float) -> T:
    _with_retries(
        exchange, "load_markets", exchange.load_markets, retries=retries, backoff_s=backoff_s
    )
    return _with_retries(exchange, what, fn, retries=retries, backoff_s=backoff_s)


def fetch_ohlcv(
    exchange: Any,
    symbol: str,
    timeframe: str,
    *,
    since: int | None = None,
    limit: int | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> ImportResult:
    """Live candles into ``ohlcv`` (see module docstring for retries and offline failure).

    Parameters
    ----------
    exchange : ccxt.Exchange
        From :func:`connect`.
    symbol, timeframe, since, limit
        As ccxt's ``fetch_ohlcv`` (``since`` in epoch milliseconds).
    retries : int
        Retries of a transient ``ccxt.NetworkError`` (an unreachable host is not retried).
    backoff_s : float
        First wait in seconds; the k-th retry waits ``backoff_s * 2**k``.

    Raises
    ------
    FairmarginError
        One line naming the exchange and the call, when the exchange cannot be reached or
        the retries are exhausted; :class:`FairmarginInputError` for an unknown symbol.
    """
    raw = _live(
        exchange,
        f"fetch_ohlcv {symbol}",
        lambda: exchange.fetch_ohlcv(symbol, timeframe, since, limit),
        retries=retries,
        backoff_s=backoff_s,
    )
    return read_ccxt_json(
        raw,
        kind="ohlcv",
        venue=exchange.id,
        symbol=symbol,
        timeframe=timeframe,
        markets=exchange.markets,
    )


def fetch_order_book(
    exchange: Any,
    symbol: str,
    *,
    limit: int | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> ImportResult:
    """A live book into ``order_books``, stamped with the fetch time where ccxt gives none."""
    now = pd.Timestamp.now(tz="UTC")
    raw = _live(
        exchange,
        f"fetch_order_book {symbol}",
        lambda: exchange.fetch_order_book(symbol, limit),
        retries=retries,
        backoff_s=backoff_s,
    )
    return read_ccxt_json(
        raw,
        kind="order_book",
        venue=exchange.id,
        symbol=symbol,
        timestamp=now,
        markets=exchange.markets,
    )


def fetch_funding_rate_history(
    exchange: Any,
    symbol: str,
    *,
    since: int | None = None,
    limit: int | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> ImportResult:
    """Live funding history into ``funding_rates``."""
    raw = _live(
        exchange,
        f"fetch_funding_rate_history {symbol}",
        lambda: exchange.fetch_funding_rate_history(symbol, since, limit),
        retries=retries,
        backoff_s=backoff_s,
    )
    return read_ccxt_json(
        raw,
        kind="funding_rate_history",
        venue=exchange.id,
        symbol=symbol,
        markets=exchange.markets,
    )


def fetch_leverage_tiers(
    exchange: Any,
    symbols: Sequence[str] | None = None,
    *,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> ImportResult:
    """Live leverage tiers into ``margin_tiers``, ``as_of`` the fetch time.

    Binance's endpoint is signed: the exchange needs API credentials in ``config``.
    """
    now = pd.Timestamp.now(tz="UTC").floor("s")
    raw = _live(
        exchange,
        "fetch_leverage_tiers",
        lambda: exchange.fetch_leverage_tiers(None if symbols is None else list(symbols)),
        retries=retries,
        backoff_s=backoff_s,
    )
    return read_ccxt_json(
        raw, kind="leverage_tiers", venue=exchange.id, as_of=now, markets=exchange.markets
    )


def fetch_option_chain(
    exchange: Any,
    code: str,
    *,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> ImportResult:
    """A live option chain into ``option_quotes``, stamped with the fetch time if none."""
    now = pd.Timestamp.now(tz="UTC")
    raw = _live(
        exchange,
        f"fetch_option_chain {code}",
        lambda: exchange.fetch_option_chain(code),
        retries=retries,
        backoff_s=backoff_s,
    )
    return read_ccxt_json(
        raw, kind="option_chain", venue=exchange.id, timestamp=now, markets=exchange.markets
    )
