"""BingX risk-tier history -> margin_tiers renumbered by ascending notional."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_bingx_risk_tiers

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
FILE = DATA / "margin_schedules" / "bingx_cornix" / "bingx_perp_risk_tiers_history.csv"


@pytest.fixture(scope="module")
def raw_rows():
    with open(FILE, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def result():
    return read_bingx_risk_tiers(FILE)


def test_row_counts_match_the_file(result, raw_rows):
    assert result.rows_read == len(raw_rows) == 23_363
    assert len(result.tables["margin_tiers"]) == len(raw_rows)
    assert result.quarantine.empty
    schedules = {(r["snapshot_date"], r["symbol"]) for r in raw_rows}
    mt = result.tables["margin_tiers"]
    assert mt.groupby(["as_of", "symbol"]).ngroups == len(schedules)
    assert result.tables["contracts"]["symbol"].nunique() == len({r["symbol"] for r in raw_rows})


def test_btc_first_version_renumbered_and_contiguous(result, raw_rows):
    src = [
        r
        for r in raw_rows
        if r["symbol"] == "BTC/USDT" and r["snapshot_date"].startswith("2025-04-01")
    ]
    src.sort(key=lambda r: float(r["limit"]))
    mt = result.tables["margin_tiers"]
    got = mt[(mt["symbol"] == "BTC/USDT:USDT") & (mt["as_of"] == mt["as_of"].min())]
    assert got["tier"].tolist() == list(range(1, len(src) + 1))
    # the file's tier 1 (largest notional, 1x) is the last tier here
    assert int(src[-1]["tier_id"]) == 1
    assert got["max_leverage"].iloc[-1] == 1.0
    np.testing.assert_allclose(got["max_notional"], [float(r["limit"]) for r in src])
    np.testing.assert_allclose(got["min_notional"], [0.0] + [float(r["limit"]) for r in src[:-1]])
    np.testing.assert_allclose(
        got["initial_margin_rate"], [1 / float(r["max_leverage"]) for r in src]
    )
    assert got["maintenance_margin_rate"].isna().all()
    # hand check, first tier: up to 150,000 USDT at 125x -> 0.8 %
    assert (got["max_notional"].iloc[0], got["max_leverage"].iloc[0]) == (150_000.0, 125.0)
    assert got["initial_margin_rate"].iloc[0] == pytest.approx(0.008)


def test_as_of_in_utc_one_per_version(result, raw_rows):
    versions = {r["snapshot_date"] for r in raw_rows}
    mt = result.tables["margin_tiers"]
    assert mt["as_of"].nunique() == len(versions) == 5
    # 2025-04-01T11:45:09+03:00 is 08:45:09 UTC
    assert mt["as_of"].min() == pd.Timestamp("2025-04-01 08:45:09", tz="UTC")


def test_leverage_never_rises_with_notional(result):
    mt = result.tables["margin_tiers"]
    d = mt.groupby(["as_of", "symbol"])["max_leverage"].diff().dropna()
    assert (d <= 0).all()


def _sample(raw_rows: list[dict[str, str]]) -> pd.DataFrame:
    by = defaultdict(list)
    for r in raw_rows:
        if r["snapshot_date"].startswith("2026-03-03") and r["symbol"] in ("BTC/USDT", "ETH/USDT"):
            by[r["symbol"]].append(r)
    return pd.DataFrame(by["BTC/USDT"] + by["ETH/USDT"])


def test_repeated_limit_breaks_the_schedule(tmp_path, raw_rows):
    df = _sample(raw_rows)
    btc = df.index[df["symbol"] == "BTC/USDT"]
    df.loc[btc[1], "limit"] = df.loc[btc[0], "limit"]  # two tiers with the same cap
    p = tmp_path / "dup.csv"
    df.to_csv(p, index=False)
    res = read_bingx_risk_tiers(p)
    assert set(res.tables["margin_tiers"]["symbol"]) == {"ETH/USDT:USDT"}
    assert len(res.quarantine) == len(btc)
    assert res.quarantine["rule"].str.contains("BTC/USDT:USDT").all()


def test_wrong_header_and_bad_symbol(tmp_path, raw_rows):
    df = _sample(raw_rows)
    p = tmp_path / "hdr.csv"
    df.drop(columns=["limit"]).to_csv(p, index=False)
    with pytest.raises(
        FairmarginInputError, match=r"hdr\.csv: header must have columns \['limit'\]"
    ):
        read_bingx_risk_tiers(p)
    df.loc[0, "symbol"] = "???"
    q = tmp_path / "sym.csv"
    df.to_csv(q, index=False)
    res = read_bingx_risk_tiers(q)
    assert 0 in set(res.quarantine["row"])
    assert "bingx symbol must look like BASE/USDT, got '???'" in set(res.quarantine["rule"])
