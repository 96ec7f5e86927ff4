"""Binance USD-M leverage brackets (freqtrade's history of ``GET /fapi/v1/leverageBracket``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.importers._common import (
    ImportResult,
    finish,
    parse_time,
    quarantine_frame,
    require_header,
)
from pipelines.importers._symbols import SymbolInfo, contracts_frame, parse_unified, split_pair

__all__ = ["read_binance_leverage_brackets"]

logger = logging.getLogger(__name__)

_WHO = "read_binance_leverage_brackets"
_COLUMNS = [
    "snapshot_commit",
    "snapshot_date",
    "symbol",
    "bracket",
    "initialLeverage",
    "notionalFloor",
    "notionalCap",
    "maintMarginRatio",
]
#: Binance writes an unbounded last cap as the int64 maximum (9223372036854775807).
_UNBOUNDED_CAP = 9.2e18


def usdm_symbol(raw: str) -> SymbolInfo | None:
    """A symbol as freqtrade/ccxt wrote it over the years, to its USD-M unified symbol.

    ``BTC/USDT:USDT`` stays; ``BTC/USDT`` (ccxt before 2022-06) -> ``BTC/USDT:USDT``;
    raw ids of delisted markets ``DOTECOUSDT`` -> ``DOTECO/USDT:USDT`` and dated futures
    ``BTCUSDT_220624`` -> ``BTC/USDT:USDT-220624``. None when not recognised.
    """
    if "/" in raw:
        if ":" not in raw:
            base, _, quote = raw.partition("/")
            raw = f"{base}/{quote}:{quote}"
        try:
            return parse_unified(raw)
        except ValueError:
            return None
    pair, _, date = raw.partition("_")
    split = split_pair(pair)
    if split is None or (date and not (len(date) == 6 and date.isdigit())):
        return None
    base, quote = split
    return parse_unified(f"{base}/{quote}:{quote}" + (f"-{date}" if date else ""))


def read_binance_leverage_brackets(
    path: str | Path,
    *,
    venue: str = "binanceusdm",
    strict: bool = False,
) -> ImportResult:
    """Read freqtrade's Binance USD-M leverage-bracket history into ``margin_tiers``.

    Each ``(snapshot_date, symbol)`` is one published schedule: ``as_of`` is the snapshot's
    commit time in UTC (two snapshots on one day, 2022-05-21 and 2022-09-27, differ by time),
    ``tier`` the bracket, ``max_leverage`` Binance's ``initialLeverage`` and
    ``initial_margin_rate = 1 / initialLeverage`` (the minimum IM rate of the bracket),
    ``min_notional``/``max_notional`` the notional floor and cap in the quote currency (an
    int64-maximum cap means unbounded and becomes +inf) and ``maintenance_margin_rate`` the
    ``maintMarginRatio``. Symbols are mapped to ccxt unified USD-M symbols (see
    :func:`usdm_symbol`). Rows with empty notional bounds (the whole 2022-04-16 snapshot)
    break the contract and go to the quarantine with the reason.

    Parameters
    ----------
    path : str or Path
        The ``.csv`` or ``.csv.gz`` file.
    venue : str
        ccxt exchange id written in ``venue``.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.

    Returns
    -------
    ImportResult
        ``margin_tiers`` and ``contracts`` (USD-M contracts are in base units:
        ``contract_size`` 1), ``extras["snapshots"]`` (as_of, snapshot_commit, rows).
    """
    path = Path(path)
    raw = pd.read_csv(
        path,
        dtype={"snapshot_commit": "str", "snapshot_date": "str", "symbol": "str"},
        low_memory=False,
    )
    require_header(raw.columns, _COLUMNS, path=path, who=_WHO)
    raw["_row"] = np.arange(len(raw))
    as_of = parse_time(raw["snapshot_date"])

    infos = {s: usdm_symbol(s) for s in raw["symbol"].dropna().unique()}
    unified = raw["symbol"].map({k: (v.symbol if v else None) for k, v in infos.items()})
    cap = pd.to_numeric(raw["notionalCap"], errors="coerce")
    lev = pd.to_numeric(raw["initialLeverage"], errors="coerce").astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        imr = 1.0 / lev.where(lev > 0)
    tiers = pd.DataFrame(
        {
            "venue": venue,
            "symbol": unified,
            "as_of": as_of,
            "tier": pd.to_numeric(raw["bracket"], errors="coerce"),
            "min_notional": pd.to_numeric(raw["notionalFloor"], errors="coerce"),
            "max_notional": cap.where(~(cap >= _UNBOUNDED_CAP), np.inf),
            "maintenance_margin_rate": pd.to_numeric(raw["maintMarginRatio"], errors="coerce"),
            "max_leverage": lev,
            "initial_margin_rate": imr,
            "_row": raw["_row"],
        }
    )
    # name the source fields: the 2022-04-16 snapshot has both bounds empty on every row
    floor_na = raw["notionalFloor"].isna()
    cap_na = raw["notionalCap"].isna()
    no_bounds = floor_na | cap_na
    q_bounds = quarantine_frame(
        str(path),
        raw.loc[no_bounds, "_row"],
        [
            f"margin_tiers ({venue}, {s}, {a}, {b}): notionalFloor/notionalCap must not be "
            f"empty (tier bounds unknown), got notionalFloor={f!r}, notionalCap={c!r}"
            for s, a, b, f, c in zip(
                unified[no_bounds],
                as_of[no_bounds],
                raw.loc[no_bounds, "bracket"],
                raw.loc[no_bounds, "notionalFloor"],
                raw.loc[no_bounds, "notionalCap"],
                strict=True,
            )
        ],
    )
    tiers = tiers.loc[~no_bounds]
    unknown = sorted(k for k, v in infos.items() if v is None)
    if unknown:
        logger.warning("%s: %d symbol(s) not recognised: %s", _WHO, len(unknown), unknown[:10])

    first_row = raw.groupby("symbol", sort=False)["_row"].min()
    known = [(k, v) for k, v in infos.items() if v is not None]
    contracts = contracts_frame(
        venue, [v for _, v in known], rows=[int(first_row[k]) for k, _ in known]
    )
    snaps = (
        pd.DataFrame({"as_of": as_of, "snapshot_commit": raw["snapshot_commit"]})
        .groupby(["as_of", "snapshot_commit"], sort=True)
        .size()
        .rename("rows")
        .reset_index()
    )
    return finish(
        {"margin_tiers": tiers, "contracts": contracts},
        rows_read=len(raw),
        source=str(path),
        who=_WHO,
        strict=strict,
        quarantine=[q_bounds],
        extras={"snapshots": snaps},
    )
