"""BingX USDT-M perpetual risk tiers (the cornix_ccxt history of ``bingx_limits.py``)."""

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
from pipelines.importers._symbols import contracts_frame, parse_unified, split_pair

__all__ = ["read_bingx_risk_tiers"]

logger = logging.getLogger(__name__)

_WHO = "read_bingx_risk_tiers"
_COLUMNS = ["snapshot_commit", "snapshot_date", "symbol", "tier_id", "limit", "max_leverage"]


def read_bingx_risk_tiers(
    path: str | Path,
    *,
    venue: str = "bingx",
    strict: bool = False,
) -> ImportResult:
    """Read BingX risk tiers (max leverage by position notional) into ``margin_tiers``.

    The file numbers tiers from the largest notional down (tier 1 is the lowest leverage);
    here tiers are renumbered by ascending notional, so tier 1 is the smallest positions.
    ``limit`` is a tier's maximum position notional (USDT); bounds are made contiguous:
    ``min_notional`` is the previous tier's ``limit`` (0 for the first). BingX publishes no
    maintenance rate (null) and ``initial_margin_rate = 1 / max_leverage``. ``as_of`` is
    ``snapshot_date`` in UTC; ``BTC/USDT`` becomes ``BTC/USDT:USDT`` (contract size 1 base unit).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    venue : str
        ccxt exchange id.
    strict : bool
        Raise on the first row that breaks a contract rule instead of quarantining it.
    """
    path = Path(path)
    raw = pd.read_csv(
        path, dtype={"snapshot_commit": "str", "snapshot_date": "str", "symbol": "str"}
    )
    require_header(raw.columns, _COLUMNS, path=path, who=_WHO)
    raw["_row"] = np.arange(len(raw))
    raw["as_of"] = parse_time(raw["snapshot_date"])
    uniq = raw["symbol"].dropna().unique()
    infos = {}
    for s in uniq:
        pair = split_pair(str(s))
        infos[s] = parse_unified(f"{pair[0]}/{pair[1]}:{pair[1]}") if pair else None
    raw["unified"] = raw["symbol"].map({k: (v.symbol if v else None) for k, v in infos.items()})
    raw["limit"] = pd.to_numeric(raw["limit"], errors="coerce")
    raw["max_leverage"] = pd.to_numeric(raw["max_leverage"], errors="coerce")

    bad_sym = raw["unified"].isna()
    q = quarantine_frame(
        str(path),
        raw.loc[bad_sym, "_row"],
        [f"bingx symbol must look like BASE/USDT, got {s!r}" for s in raw.loc[bad_sym, "symbol"]],
    )
    d = raw.loc[~bad_sym].sort_values(["as_of", "unified", "limit"], kind="stable")
    g = d.groupby(["as_of", "unified"], sort=False)
    lev = d["max_leverage"].astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        imr = 1.0 / lev.where(lev > 0)
    tiers = pd.DataFrame(
        {
            "venue": venue,
            "symbol": d["unified"],
            "as_of": d["as_of"],
            "tier": g.cumcount() + 1,
            "min_notional": g["limit"].shift().fillna(0.0),
            "max_notional": d["limit"],
            "maintenance_margin_rate": np.nan,
            "max_leverage": lev,
            "initial_margin_rate": imr,
            "_row": d["_row"],
        }
    )
    first_row = raw.groupby("symbol", sort=False)["_row"].min()
    known = [(k, v) for k, v in infos.items() if v is not None]
    contracts = contracts_frame(
        venue, [v for _, v in known], rows=[int(first_row[k]) for k, _ in known]
    )
    return finish(
        {"margin_tiers": tiers, "contracts": contracts},
        rows_read=len(raw),
        source=str(path),
        who=_WHO,
        strict=strict,
        quarantine=[q],
    )
