"""dYdX v4 indexer markets and genesis liquidity tiers -> one tier per market."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_dydx_genesis, read_dydx_indexer_markets

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
INDEXER = DATA / "margin_schedules" / "dydx_v4" / "dydx_v4_indexer_perpetual_markets_2024.json"
GENESIS = (
    DATA / "margin_schedules" / "dydx_v4" / "dydx_mainnet1_genesis_perpetuals_liquidity_tiers.json"
)
AS_OF = "2024-08-22"  # the commit date of the recording: an upper bound of its capture time


def test_indexer_one_tier_per_market():
    markets = json.loads(INDEXER.read_text())["markets"]
    res = read_dydx_indexer_markets(INDEXER, as_of=AS_OF)
    mt = res.tables["margin_tiers"]
    assert res.rows_read == len(markets) == 125
    assert len(mt) == 125
    assert res.quarantine.empty
    assert (mt["tier"] == 1).all()
    assert (mt["min_notional"] == 0).all()
    assert np.isposinf(mt["max_notional"]).all()
    assert (mt["as_of"] == pd.Timestamp(AS_OF, tz="UTC")).all()
    btc = mt.set_index("symbol").loc["BTC/USDC:USDC"]
    # from the file: initialMarginFraction "0.05", maintenanceMarginFraction "0.03"
    assert (btc["initial_margin_rate"], btc["maintenance_margin_rate"]) == (0.05, 0.03)
    assert btc["max_leverage"] == pytest.approx(20.0)
    for ticker, m in markets.items():
        sym = ticker.replace("-USD", "/USDC:USDC")
        row = mt.set_index("symbol").loc[sym]
        assert row["initial_margin_rate"] == float(m["initialMarginFraction"])
        assert row["maintenance_margin_rate"] == float(m["maintenanceMarginFraction"])


def test_indexer_open_interest_caps_are_market_data_not_tiers():
    res = read_dydx_indexer_markets(INDEXER, as_of=AS_OF)
    ext = res.extras["dydx_markets"].set_index("ticker")
    # 1INCH-USD in the file: openInterestLowerCap "5000000", openInterestUpperCap "10000000"
    assert ext.loc["1INCH-USD", "open_interest_lower_cap"] == 5_000_000
    assert ext.loc["1INCH-USD", "open_interest_upper_cap"] == 10_000_000
    assert set(ext["status"]) == {"ACTIVE", "FINAL_SETTLEMENT"}
    c = res.tables["contracts"]
    assert len(c) == 125
    assert (c["type"] == "swap").all()
    assert c["linear"].all()


def test_indexer_default_as_of_is_the_file_mtime(tmp_path):
    p = tmp_path / "markets.json"
    p.write_text(INDEXER.read_text())
    os.utime(p, (1_724_284_800, 1_724_284_800))  # 2024-08-22 00:00:00 UTC
    res = read_dydx_indexer_markets(p)
    assert (res.tables["margin_tiers"]["as_of"] == pd.Timestamp(AS_OF, tz="UTC")).all()
    with pytest.raises(FairmarginInputError, match="as_of must be given for an in-memory"):
        read_dydx_indexer_markets(json.loads(INDEXER.read_text()))


def test_indexer_reads_ccxt_fixture_reply_with_ccxt_symbol():
    fix = json.loads((DATA / "ccxt_static" / "dydx" / "fetchMarkets.json").read_text())[0]
    res = read_dydx_indexer_markets(fix["httpResponse"], as_of="2025-07-29")
    row = res.tables["margin_tiers"].iloc[0]
    assert row["symbol"] == fix["parsedResponse"][0]["symbol"] == "BTC/USDC:USDC"
    assert (row["initial_margin_rate"], row["maintenance_margin_rate"]) == (0.02, 0.012)


def test_indexer_truncated_and_wrong_shape(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text(INDEXER.read_text()[:5000])
    with pytest.raises(FairmarginInputError, match=r"cut\.json must be valid JSON"):
        read_dydx_indexer_markets(p, as_of=AS_OF)
    q = tmp_path / "list.json"
    q.write_text("[1, 2]")
    with pytest.raises(FairmarginInputError, match="must hold a 'markets' mapping"):
        read_dydx_indexer_markets(q, as_of=AS_OF)


def test_indexer_bad_fraction_is_quarantined(tmp_path):
    obj = json.loads(INDEXER.read_text())
    obj["markets"]["BTC-USD"]["initialMarginFraction"] = "0"
    p = tmp_path / "m.json"
    p.write_text(json.dumps(obj))
    res = read_dydx_indexer_markets(p, as_of=AS_OF)
    assert len(res.tables["margin_tiers"]) == 124
    row = list(obj["markets"]).index("BTC-USD")
    assert res.quarantine["row"].tolist() == [row]
    assert "BTC/USDC:USDC" in res.quarantine["rule"].iloc[0]


def test_genesis_tiers_from_liquidity_tiers():
    g = json.loads(GENESIS.read_text())
    perps = g["perpetuals_module"]["perpetuals"]
    res = read_dydx_genesis(GENESIS)
    mt = res.tables["margin_tiers"].set_index("symbol")
    assert res.rows_read == len(perps) == 33
    assert len(mt) == 33
    assert res.quarantine.empty
    assert (mt["as_of"] == pd.Timestamp("2023-10-26 17:00", tz="UTC")).all()
    # BTC-USD is in liquidity tier 0 (Large-Cap): initial_margin_ppm 50000 -> 5 %,
    # maintenance_fraction_ppm 600000 -> 60 % of 5 % = 3 % (hand computation)
    assert mt.loc["BTC/USDC:USDC", "initial_margin_rate"] == pytest.approx(0.05)
    assert mt.loc["BTC/USDC:USDC", "maintenance_margin_rate"] == pytest.approx(0.03)
    tiers = {t["id"]: t for t in g["perpetuals_module"]["liquidity_tiers"]}
    for p in perps:
        t = tiers[p["params"]["liquidity_tier"]]
        sym = p["params"]["ticker"].replace("-USD", "/USDC:USDC")
        imf = t["initial_margin_ppm"] / 1e6
        assert mt.loc[sym, "initial_margin_rate"] == pytest.approx(imf)
        assert mt.loc[sym, "maintenance_margin_rate"] == pytest.approx(
            imf * t["maintenance_fraction_ppm"] / 1e6
        )
    lt = res.extras["dydx_liquidity_tiers"].set_index("name")
    assert lt.loc["Large-Cap", "base_position_notional"] == pytest.approx(1_000_000.0)


def test_genesis_unknown_liquidity_tier_is_quarantined(tmp_path):
    g = json.loads(GENESIS.read_text())
    g["perpetuals_module"]["perpetuals"][0]["params"]["liquidity_tier"] = 9
    p = tmp_path / "g.json"
    p.write_text(json.dumps(g))
    res = read_dydx_genesis(p)
    assert res.quarantine["row"].tolist() == [0]
    assert "liquidity_tier 9 must be one of [0, 1, 2, 3]" in res.quarantine["rule"].iloc[0]
    with pytest.raises(FairmarginInputError, match=r"g\.json row 0: .*liquidity_tier 9"):
        read_dydx_genesis(p, strict=True)
    del g["genesis_time"]
    p.write_text(json.dumps(g))
    with pytest.raises(FairmarginInputError, match="must hold genesis_time"):
        read_dydx_genesis(p)
