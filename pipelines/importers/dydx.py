"""dYdX v4: the indexer's ``GET /v4/perpetualMarkets`` reply and the genesis liquidity tiers.

dYdX v4 markets are USDC-margined linear perpetuals; ccxt files ``BTC-USD`` as
``BTC/USDC:USDC`` (see ccxt's own ``fetchMarkets`` fixture). Positions are in base units, so
``contract_size`` is 1.
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
    column,
    finish,
    load_json,
    parse_time,
    quarantine_frame,
    resolve_as_of,
)
from pipelines.importers._symbols import SymbolInfo, contracts_frame, parse_unified

__all__ = ["dydx_symbol", "read_dydx_genesis", "read_dydx_indexer_markets"]

logger = logging.getLogger(__name__)

#: dYdX v4 collateral is USDC: ``BTC-USD`` trades as ``BTC/USDC:USDC`` in ccxt.
_QUOTE = "USDC"
#: USDC quantums: amounts in the genesis file are in 1e-6 USDC.
_QUANTUM = 1e-6


def dydx_symbol(ticker: str) -> SymbolInfo | None:
    """``BTC-USD`` -> ``BTC/USDC:USDC``; None when the ticker is not ``BASE-USD``."""
    base, sep, quote = ticker.partition("-")
    if not sep or quote != "USD" or not base:
        return None
    return parse_unified(f"{base}/{_QUOTE}:{_QUOTE}")


def _one_tier_frame(
    venue: str,
    symbols: list[str | None],
    as_of: Any,
    imf: pd.Series,
    mmf: pd.Series,
    rows: Any,
) -> pd.DataFrame:
    """A single tier [0, +inf) per market: IM = IMF, MM = MMF, max leverage = 1 / IMF."""
    imf = pd.to_numeric(imf, errors="coerce").astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = 1.0 / imf.where(imf > 0)
    return pd.DataFrame(
        {
            "venue": venue,
            "symbol": symbols,
            "as_of": as_of,
            "tier": 1,
            "min_notional": 0.0,
            "max_notional": np.inf,
            "maintenance_margin_rate": pd.to_numeric(mmf, errors="coerce").astype("float64"),
            "max_leverage": lev,
            "initial_margin_rate": imf,
            "_row": rows,
        }
    )


def read_dydx_indexer_markets(
    source: str | Path | Mapping[str, Any],
    *,
    as_of: Any = None,
    venue: str = "dydx",
    strict: bool = False,
) -> ImportResult:
    """Read a dYdX v4 indexer ``perpetualMarkets`` reply into one tier per market.

    Each market gives a single tier covering [0, +inf) with ``initial_margin_rate =
    initialMarginFraction``, ``maintenance_margin_rate = maintenanceMarginFraction`` and
    ``max_leverage = 1 / initialMarginFraction``. The open-interest caps
    (``openInterestLowerCap``/``UpperCap``, between which dYdX raises the IMF of isolated
    markets) are market data, not tiers: they are returned in ``extras["dydx_markets"]`` with the
    status, oracle price, open interest and 24 h volume.

    Parameters
    ----------
    source : str, Path or mapping
        The JSON file (``{"markets": {ticker: {...}}}``) or the parsed object (e.g. a ccxt
        fixture's ``httpResponse``).
    as_of : timestamp-like, optional
        When the reply was taken; the reply carries no date. Default: the file's modification
        time, logged (an in-memory object needs it).
    venue : str
        ccxt exchange id.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_dydx_indexer_markets"
    path = None if isinstance(source, Mapping) else Path(source)
    obj = source if isinstance(source, Mapping) else load_json(Path(source), who=who)
    markets = obj.get("markets") if isinstance(obj, Mapping) else None
    if not isinstance(markets, Mapping):
        got = f"keys {sorted(obj)[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise FairmarginInputError(
            f"{who}: {path or 'object'} must hold a 'markets' mapping (indexer "
            f"/v4/perpetualMarkets), got {got}"
        )
    ts = resolve_as_of(as_of, path, who=who)
    recs = pd.DataFrame.from_records([{"_key": k, **dict(v)} for k, v in markets.items()])
    recs["_row"] = np.arange(len(recs))
    for col in ("ticker", "initialMarginFraction", "maintenanceMarginFraction"):
        if col not in recs.columns:
            raise FairmarginInputError(
                f"{who}: {path or 'object'} row 0: field {col} must be present in every market"
            )
    infos = [dydx_symbol(str(t)) for t in recs["ticker"]]
    symbols = [i.symbol if i else None for i in infos]
    tiers = _one_tier_frame(
        venue,
        symbols,
        ts,
        recs["initialMarginFraction"],
        recs["maintenanceMarginFraction"],
        recs["_row"],
    )
    bad = [i is None for i in infos]
    q = quarantine_frame(
        str(path or "object"),
        recs.loc[bad, "_row"],
        [f"dydx ticker must look like BASE-USD, got {t!r}" for t in recs.loc[bad, "ticker"]],
    )
    tiers = tiers.loc[[not b for b in bad]]
    known = [(i, r) for i, r in zip(infos, recs["_row"], strict=True) if i is not None]
    contracts = contracts_frame(venue, [i for i, _ in known], rows=[r for _, r in known])

    def num(col: str) -> pd.Series:
        if col not in recs.columns:
            return pd.Series(np.nan, index=recs.index)
        return pd.to_numeric(recs[col], errors="coerce").astype("float64")

    extras = pd.DataFrame(
        {
            "venue": venue,
            "symbol": pd.Series(symbols, dtype="str"),
            "as_of": ts,
            "ticker": recs["ticker"].astype("str"),
            "status": recs.get("status", pd.Series(None, index=recs.index)).astype("str"),
            "market_type": recs.get("marketType", pd.Series(None, index=recs.index)).astype("str"),
            "open_interest": num("openInterest"),
            "open_interest_lower_cap": num("openInterestLowerCap"),
            "open_interest_upper_cap": num("openInterestUpperCap"),
            "oracle_price": num("oraclePrice"),
            "volume_24h": num("volume24H"),
            "next_funding_rate": num("nextFundingRate"),
            "tick_size": num("tickSize"),
            "step_size": num("stepSize"),
        }
    )
    return finish(
        {"margin_tiers": tiers, "contracts": contracts},
        rows_read=len(recs),
        source=str(path or "object"),
        who=who,
        strict=strict,
        quarantine=[q],
        extras={"dydx_markets": extras},
    )


def read_dydx_genesis(
    source: str | Path | Mapping[str, Any],
    *,
    venue: str = "dydx",
    strict: bool = False,
) -> ImportResult:
    """Read the dYdX v4 genesis perpetuals and liquidity tiers into one tier per perpetual.

    Per perpetual, its liquidity tier gives ``initial_margin_rate = initial_margin_ppm / 1e6``
    and ``maintenance_margin_rate = initial_margin_rate * maintenance_fraction_ppm / 1e6``
    over [0, +inf); ``max_leverage = 1 / initial_margin_rate``; ``as_of = genesis_time``.
    ``extras["dydx_liquidity_tiers"]`` keeps the tiers (notionals converted from USDC
    quantums, 1e-6 USDC, to USDC).

    Parameters
    ----------
    source : str, Path or mapping
        The genesis JSON (``genesis_time`` and the perpetuals module under
        ``perpetuals_module`` or ``app_state.perpetuals``), or the parsed object.
    venue : str
        ccxt exchange id.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    who = "read_dydx_genesis"
    path = None if isinstance(source, Mapping) else Path(source)
    obj = source if isinstance(source, Mapping) else load_json(Path(source), who=who)
    where = str(path or "object")
    module = obj.get("perpetuals_module") or obj.get("app_state", {}).get("perpetuals")
    if not isinstance(module, Mapping) or "genesis_time" not in obj:
        raise FairmarginInputError(
            f"{who}: {where} must hold genesis_time and the perpetuals module "
            f"(perpetuals_module or app_state.perpetuals), got keys {sorted(obj)[:10]}"
        )
    as_of = parse_time(pd.Series([obj["genesis_time"]])).iloc[0]
    if pd.isna(as_of):
        raise FairmarginInputError(
            f"{who}: {where}: genesis_time must be an ISO-8601 time, got {obj['genesis_time']!r}"
        )
    lts = pd.DataFrame.from_records(list(module.get("liquidity_tiers", [])))
    need = ("id", "initial_margin_ppm", "maintenance_fraction_ppm")
    if lts.empty or any(c not in lts.columns for c in need):
        raise FairmarginInputError(
            f"{who}: {where}: liquidity_tiers must list {list(need)} per tier, "
            f"got columns {list(lts.columns)}"
        )
    lts = lts.set_index("id")
    imf = lts["initial_margin_ppm"].astype("float64") / 1e6
    mmf = imf * lts["maintenance_fraction_ppm"].astype("float64") / 1e6
    perps = pd.DataFrame.from_records(
        [dict(p.get("params", p)) for p in module.get("perpetuals", [])]
    )
    if perps.empty or "ticker" not in perps or "liquidity_tier" not in perps:
        raise FairmarginInputError(
            f"{who}: {where}: perpetuals must give params.ticker and params.liquidity_tier"
        )
    perps["_row"] = np.arange(len(perps))
    infos = [dydx_symbol(str(t)) for t in perps["ticker"]]
    lt = perps["liquidity_tier"]
    known_tier = lt.isin(lts.index)
    ok = pd.Series([i is not None for i in infos], index=perps.index) & known_tier
    q = quarantine_frame(
        where,
        perps.loc[~ok, "_row"],
        [
            f"dydx perpetual {t!r}: liquidity_tier {k!r} must be one of {sorted(lts.index)} "
            f"and the ticker BASE-USD"
            for t, k in zip(perps.loc[~ok, "ticker"], lt[~ok], strict=True)
        ],
    )
    sel = perps.loc[ok]
    sel_infos = [i for i, o in zip(infos, ok, strict=True) if o and i is not None]
    tiers = _one_tier_frame(
        venue,
        [i.symbol for i in sel_infos],
        as_of,
        sel["liquidity_tier"].map(imf).reset_index(drop=True),
        sel["liquidity_tier"].map(mmf).reset_index(drop=True),
        sel["_row"].to_numpy(),
    )
    contracts = contracts_frame(venue, sel_infos, rows=sel["_row"].tolist())
    lts_rec = lts.reset_index()
    extras = pd.DataFrame(
        {
            "liquidity_tier": lts_rec["id"],
            "name": lts_rec["name"].astype("str") if "name" in lts_rec else None,
            "initial_margin_rate": imf.to_numpy(),
            "maintenance_margin_rate": mmf.to_numpy(),
            "base_position_notional": column(lts_rec, "base_position_notional") * _QUANTUM,
            "impact_notional": column(lts_rec, "impact_notional") * _QUANTUM,
        }
    )
    return finish(
        {"margin_tiers": tiers, "contracts": contracts},
        rows_read=len(perps),
        source=where,
        who=who,
        strict=strict,
        quarantine=[q],
        extras={"dydx_liquidity_tiers": extras},
    )
