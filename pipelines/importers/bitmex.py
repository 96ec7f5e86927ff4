"""BitMEX ``GET /api/v1/instrument`` records: risk-limit tiers, contracts and funding.

BitMEX's documented risk-limit rule (https://www.bitmex.com/app/riskLimitsExamples, "Risk Limits
Examples", XBTUSD worked example): a position up to the base risk limit (``riskLimit``) carries
the base initial and maintenance margins (``initMargin``, ``maintMargin``); "at each step, the
maintenance and initial margin are raised by the base maintenance margin", one step being
``riskStep`` more of position value. So tier k (k = 1, 2, ...) covers position values in
(riskLimit + (k-2) riskStep, riskLimit + (k-1) riskStep] (the first from 0) with

    initial_margin_rate(k)     = initMargin + (k - 1) * maintMargin
    maintenance_margin_rate(k) = k * maintMargin

(the page's table for XBTUSD, base 1.00 % / 0.50 %, limit 200 XBT, step 150 XBT: < 200 XBT
1.00 % / 0.50 %, < 350 XBT 1.50 % / 1.00 %, < 500 XBT 2.00 % / 1.50 %). The last tier is bounded;
tiers stop before either rate would exceed 100 %.

Amounts: ``riskLimit`` and ``riskStep`` are in the settlement currency's base units (``XBt`` =
1e-8 XBT, ``USDt`` = 1e-6 USDT, ``Gwei`` = 1e-9 ETH). Notionals are written in the contract's
quote currency: an amount settled in the quote coin is used as is; one settled in the base coin
(XBTUSD, XBTETH: inverse) is converted at the record's mark price (quote per base).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
)
from pipelines.importers._symbols import COMMON_CODES, SymbolInfo, contracts_frame, parse_unified

__all__ = ["bitmex_symbol", "read_bitmex_instruments"]

logger = logging.getLogger(__name__)

#: Settlement currency -> (ccxt currency code, size of one base unit).
SETTLE_UNITS: dict[str, tuple[str, float]] = {
    "XBt": ("BTC", 1e-8),
    "USDt": ("USDT", 1e-6),
    "Gwei": ("ETH", 1e-9),
    "LAMp": ("USDC", 1e-6),
    "MVt": ("MV", 1e-6),
}
#: BitMEX ``typ`` codes: perpetual swap, dated future, spot.
_TYPES = {"FFWCSX": "swap", "FFCCSX": "future", "IFXXXP": "spot"}


def _code(c: str) -> str:
    return COMMON_CODES.get(c, c.upper())


def bitmex_symbol(rec: Mapping[str, Any]) -> SymbolInfo:
    """An instrument record to its ccxt unified symbol and contract fields.

    ``XBTUSD`` -> ``BTC/USD:BTC`` (inverse), ``JTOUSDT`` -> ``JTO/USDT:USDT`` (linear),
    ``XBTETH`` -> ``BTC/ETH:BTC`` (inverse). Raises for quanto contracts (neither linear nor
    inverse) and unknown types.
    """
    typ = _TYPES.get(str(rec.get("typ")))
    if typ is None:
        raise FairmarginInputError(
            f"bitmex typ must be one of {sorted(_TYPES)}, got {rec.get('typ')!r}"
        )
    if rec.get("isQuanto"):
        raise FairmarginInputError("bitmex quanto contracts are neither linear nor inverse")
    base = _code(str(rec.get("underlying") or rec.get("rootSymbol")))
    quote = _code(str(rec.get("quoteCurrency")))
    if typ == "spot":
        return parse_unified(f"{base}/{quote}")
    settle_raw = str(rec.get("settlCurrency"))
    if settle_raw not in SETTLE_UNITS:
        raise FairmarginInputError(
            f"bitmex settlCurrency must be one of {sorted(SETTLE_UNITS)}, got {settle_raw!r}"
        )
    settle = SETTLE_UNITS[settle_raw][0]
    date = ""
    if typ == "future":
        exp = parse_time(pd.Series([rec.get("expiry")])).iloc[0]
        if pd.isna(exp):
            raise FairmarginInputError(f"bitmex future needs an expiry, got {rec.get('expiry')!r}")
        date = "-" + exp.strftime("%y%m%d")
    info = parse_unified(f"{base}/{quote}:{settle}{date}")
    inverse = bool(rec.get("isInverse"))
    if inverse == info.linear:
        raise FairmarginInputError(
            f"bitmex isInverse={inverse} must match settle {settle} vs quote {quote}"
        )
    if typ == "future":
        exp = parse_time(pd.Series([rec.get("expiry")])).iloc[0]
        return SymbolInfo(**{**_asdict(info), "expiry": exp})
    return info


def _asdict(info: SymbolInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in SymbolInfo.__slots__}


def _contract_size(rec: Mapping[str, Any], info: SymbolInfo) -> float:
    """Quote units per contract for inverse, base units per contract for linear contracts."""
    mult = abs(float(rec.get("multiplier") or 0))
    if info.type == "spot":
        return 1.0
    if not info.linear:
        u2s = abs(float(rec.get("underlyingToSettleMultiplier") or 0))
        return mult / u2s if u2s else np.nan
    q2s = abs(float(rec.get("quoteToSettleMultiplier") or 0))
    return mult / q2s if q2s else np.nan


def read_bitmex_instruments(
    source: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    venue: str = "bitmex",
    n_tiers: int = 10,
    strict: bool = False,
) -> ImportResult:
    """Read BitMEX instrument records into ``margin_tiers``, ``contracts`` and ``funding_rates``.

    Tiers follow BitMEX's documented risk-limit rule (module docstring), ``n_tiers`` of them
    (fewer when a rate would pass 100 %), ``as_of`` the record's ``timestamp`` and
    ``max_leverage = 1 / initial_margin_rate``. The funding rate of a perpetual is fixed one
    interval ahead by BitMEX and charged at ``fundingTimestamp``: it is written there.

    Parameters
    ----------
    source : str, Path, mapping or list of mappings
        A JSON file holding one record or a list of them, or the parsed object.
    venue : str
        ccxt exchange id.
    n_tiers : int
        Number of tiers to generate per instrument (>= 1).
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_bitmex_instruments"
    if n_tiers < 1:
        raise ValueError(f"{who}: n_tiers must be >= 1, got {n_tiers!r}")
    path = None if isinstance(source, Mapping | list) else Path(str(source))
    obj: Any = load_json(path, who=who) if path is not None else source
    records = [obj] if isinstance(obj, Mapping) else list(obj)
    where = str(path or "object")
    tiers: list[dict[str, Any]] = []
    contracts: list[tuple[SymbolInfo, float, int]] = []
    funding: list[dict[str, Any]] = []
    q: list[pd.DataFrame] = []
    for row, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "symbol" not in rec:
            raise FairmarginInputError(
                f"{who}: {where} row {row}: each record must be an instrument object with a "
                f"symbol, got {type(rec).__name__}"
            )
        try:
            info = bitmex_symbol(rec)
        except FairmarginInputError as err:
            q.append(quarantine_frame(where, [row], [f"bitmex {rec.get('symbol')}: {err}"]))
            continue
        contracts.append((info, _contract_size(rec, info), row))
        as_of = parse_time(pd.Series([rec.get("timestamp")])).iloc[0]
        if info.type in ("swap", "future"):
            tiers += _tiers(rec, info, as_of, venue, n_tiers, row, where, q)
        if info.type == "swap" and rec.get("fundingRate") is not None:
            funding.append(
                {
                    "venue": venue,
                    "symbol": info.symbol,
                    "timestamp": rec.get("fundingTimestamp"),
                    "funding_rate": rec.get("fundingRate"),
                    "_row": row,
                }
            )
    frames: dict[str, pd.DataFrame] = {
        "contracts": contracts_frame(
            venue,
            [c[0] for c in contracts],
            contract_size=[c[1] for c in contracts],
            rows=[c[2] for c in contracts],
        ),
        "margin_tiers": pd.DataFrame.from_records(
            tiers,
            columns=[
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
            ],
        ),
        "funding_rates": pd.DataFrame.from_records(
            funding, columns=["venue", "symbol", "timestamp", "funding_rate", "_row"]
        ),
    }
    return finish(
        frames, rows_read=len(records), source=where, who=who, strict=strict, quarantine=q
    )


def _tiers(
    rec: Mapping[str, Any],
    info: SymbolInfo,
    as_of: pd.Timestamp,
    venue: str,
    n_tiers: int,
    row: int,
    where: str,
    q: list[pd.DataFrame],
) -> list[dict[str, Any]]:
    im0 = float(rec.get("initMargin") or np.nan)
    mm0 = float(rec.get("maintMargin") or np.nan)
    settle_raw = str(rec.get("settlCurrency"))
    code, unit = SETTLE_UNITS.get(settle_raw, (None, np.nan))
    if code is None:
        q.append(
            quarantine_frame(
                where,
                [row],
                [
                    f"bitmex {rec['symbol']}: settlCurrency must be one of "
                    f"{sorted(SETTLE_UNITS)}, got {settle_raw!r}"
                ],
            )
        )
        return []
    if code == info.quote:
        fx = 1.0
    elif code == info.base:
        fx = float(rec.get("markPrice") or np.nan)
    else:
        fx = np.nan
    limit = float(rec.get("riskLimit") or np.nan) * unit * fx
    step = float(rec.get("riskStep") or np.nan) * unit * fx
    if not all(np.isfinite([im0, mm0, limit, step])) or limit <= 0 or step <= 0:
        q.append(
            quarantine_frame(
                where,
                [row],
                [
                    f"margin_tiers ({venue}, {info.symbol}, {as_of}): initMargin, maintMargin, "
                    f"riskLimit, riskStep and (inverse) markPrice must be finite and > 0, got "
                    f"initMargin={im0!r}, "
                    f"maintMargin={mm0!r}, riskLimit={rec.get('riskLimit')!r}, "
                    f"riskStep={rec.get('riskStep')!r}, markPrice={rec.get('markPrice')!r}"
                ],
            )
        )
        return []
    out = []
    for k in range(1, n_tiers + 1):
        im = im0 + (k - 1) * mm0
        mm = k * mm0
        if im > 1 or mm > 1:
            break
        out.append(
            {
                "venue": venue,
                "symbol": info.symbol,
                "as_of": as_of,
                "tier": k,
                "min_notional": 0.0 if k == 1 else limit + (k - 2) * step,
                "max_notional": limit + (k - 1) * step,
                "maintenance_margin_rate": mm,
                "max_leverage": 1.0 / im,
                "initial_margin_rate": im,
                "_row": row,
            }
        )
    return out
