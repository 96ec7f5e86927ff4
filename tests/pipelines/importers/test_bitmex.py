"""BitMEX instrument records -> risk-limit tiers, contracts and funding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_bitmex_instruments

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
DIR = DATA / "margin_schedules" / "bitmex_instruments"
XBTUSD = DIR / "bitmex_instrument_XBTUSD_2024-11-24.json"
SNAP = DIR / "bitmex_instrument_snapshot_2024-03-02.json"


def test_xbtusd_follows_bitmex_documented_table():
    res = read_bitmex_instruments(XBTUSD)
    assert res.rows_read == 1
    assert res.quarantine.empty
    mt = res.tables["margin_tiers"]
    assert len(mt) == 10
    # BitMEX "Risk Limits Examples" table for XBTUSD (base IM 1.00 %, MM 0.50 %, limit 200 XBT,
    # step 150 XBT): < 200 XBT 1.00/0.50, < 350 XBT 1.50/1.00, < 500 XBT 2.00/1.50,
    # < 650 XBT 2.50/2.00 -- the same parameters as this 2024-11-24 record
    np.testing.assert_allclose(mt["initial_margin_rate"][:4], [0.010, 0.015, 0.020, 0.025])
    np.testing.assert_allclose(mt["maintenance_margin_rate"][:4], [0.005, 0.010, 0.015, 0.020])
    mark = 97849.76  # the record's markPrice (USD per XBT)
    np.testing.assert_allclose(
        mt["max_notional"][:4], [200 * mark, 350 * mark, 500 * mark, 650 * mark], rtol=1e-12
    )
    assert mt["min_notional"].iloc[0] == 0.0
    assert (
        mt["min_notional"].iloc[1:].to_numpy() == mt["max_notional"].iloc[:-1].to_numpy()
    ).all()
    assert (mt["as_of"] == pd.Timestamp("2024-11-24 23:33:19.034", tz="UTC")).all()
    np.testing.assert_allclose(mt["max_leverage"], 1 / mt["initial_margin_rate"])


def test_xbtusd_is_inverse_btc_usd():
    res = read_bitmex_instruments(XBTUSD)
    c = res.tables["contracts"].iloc[0]
    assert (c["symbol"], c["type"], c["linear"], c["settle"]) == (
        "BTC/USD:BTC",
        "swap",
        False,
        "BTC",
    )
    assert c["contract_size"] == 1.0  # 1 USD per contract: |multiplier| 1e8 / 1e8
    f = res.tables["funding_rates"].iloc[0]
    assert f["funding_rate"] == 0.00011
    assert f["timestamp"] == pd.Timestamp("2024-11-25 04:00", tz="UTC")


def test_snapshot_usdt_linear_and_eth_quoted_inverse():
    recs = json.loads(SNAP.read_text())
    res = read_bitmex_instruments(SNAP)
    assert res.rows_read == len(recs) == 3
    c = res.tables["contracts"].set_index("symbol")
    assert set(c.index) == {"BTC/USD:BTC", "BTC/ETH:BTC", "JTO/USDT:USDT"}
    assert bool(c.loc["JTO/USDT:USDT", "linear"])
    assert not bool(c.loc["BTC/ETH:BTC", "linear"])
    mt = res.tables["margin_tiers"]
    jto = mt[mt["symbol"] == "JTO/USDT:USDT"]
    # riskLimit 2e10 USDt = 20,000 USDT (1 USDt = 1e-6 USDT), step the same
    assert jto["max_notional"].iloc[0] == pytest.approx(20_000.0)
    assert jto["max_notional"].iloc[1] == pytest.approx(40_000.0)
    eth = mt[mt["symbol"] == "BTC/ETH:BTC"]
    # riskLimit 7.5e9 XBt = 75 XBT at markPrice 18.0622 ETH per XBT = 1354.665 ETH
    assert eth["max_notional"].iloc[0] == pytest.approx(75 * 18.0622)
    assert len(res.tables["funding_rates"]) == 3


def test_tiers_stop_before_rates_pass_100_percent():
    rec = json.loads(XBTUSD.read_text())
    rec["initMargin"], rec["maintMargin"] = 0.5, 0.2
    res = read_bitmex_instruments(rec, n_tiers=10)
    # IM 0.5, 0.7, 0.9, then 1.1 > 1: three tiers (MM 0.2, 0.4, 0.6)
    np.testing.assert_allclose(res.tables["margin_tiers"]["initial_margin_rate"], [0.5, 0.7, 0.9])


def test_unknown_settle_currency_and_quanto_are_quarantined(tmp_path):
    recs = json.loads(SNAP.read_text())
    recs[0]["settlCurrency"] = "FOO"
    recs[1]["isQuanto"] = True
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(recs))
    res = read_bitmex_instruments(p)
    assert sorted(res.quarantine["row"].unique()) == [0, 1]
    assert res.quarantine["rule"].str.contains("settlCurrency must be one of").any()
    assert res.quarantine["rule"].str.contains("quanto").any()
    assert set(res.tables["margin_tiers"]["symbol"]) == {"BTC/USD:BTC"}


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="n_tiers must be >= 1, got 0"):
        read_bitmex_instruments(XBTUSD, n_tiers=0)
    p = tmp_path / "cut.json"
    p.write_text(XBTUSD.read_text()[:300])
    with pytest.raises(FairmarginInputError, match=r"cut\.json must be valid JSON"):
        read_bitmex_instruments(p)
    q = tmp_path / "nums.json"
    q.write_text("[1]")
    with pytest.raises(FairmarginInputError, match=r"nums\.json row 0: each record must be"):
        read_bitmex_instruments(q)


def test_spot_instrument_from_ccxt_fixture_gives_a_contract_no_tiers():
    fix = json.loads((DATA / "ccxt_static" / "bitmex" / "fetchTicker.json").read_text())[0]
    res = read_bitmex_instruments(fix["httpResponse"])
    assert res.tables["contracts"]["symbol"].tolist() == [fix["parsedResponse"]["symbol"]]
    assert res.tables["margin_tiers"].empty
