"""ccxt unified structures -> contract tables (fixtures' parsedResponse and hand-made objects)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import (
    read_ccxt_json,
    read_ccxt_options,
    read_ccxt_static,
)
from pipelines.importers.ccxt_json import sniff_ccxt_kind

_ROOT = str(Path(__file__).resolve().parents[3])
STATIC = Path(_ROOT).parent / "shared" / "data" / "ccxt_static"


def _entries(exchange: str, method: str) -> list[dict]:
    return json.loads((STATIC / exchange / f"{method}.json").read_text())


def _trade_candles(entries: list[dict]) -> list[dict]:
    """Entries of trade candles (not mark/index prices, which the reader skips)."""
    return [
        e for e in entries if not any(isinstance(a, dict) and a.get("price") for a in e["input"])
    ]


@pytest.mark.parametrize(
    "exchange", ["binance", "bitmex", "bybit", "deribit", "dydx", "hyperliquid", "okx"]
)
def test_static_ohlcv_row_counts(exchange):
    entries = _entries(exchange, "fetchOHLCV")
    trade = _trade_candles(entries)
    res = read_ccxt_static(STATIC / exchange / "fetchOHLCV.json")
    n = sum(len(e["parsedResponse"]) for e in trade)
    assert res.rows_read == n
    assert len(res.tables["ohlcv"]) + len(res.quarantine) == n - _overlap(trade)
    o = res.tables["ohlcv"]
    if len(o):
        assert set(o["symbol"]) <= {e["input"][0] for e in trade}
        assert str(o["timestamp"].dtype) == "datetime64[ns, UTC]"


def _overlap(entries: list[dict]) -> int:
    """Candles given twice with the same values (hyperliquid PURR/USDC twice): merged."""
    seen = set()
    dup = 0
    for e in entries:
        for c in e["parsedResponse"]:
            key = (e["input"][0], e["input"][1], *c)
            dup += key in seen
            seen.add(key)
    return dup


def test_static_ohlcv_values_and_binance_venue():
    e = _entries("binance", "fetchOHLCV")[2]  # BTC/USDT:USDT 1m
    res = read_ccxt_static(STATIC / "binance" / "fetchOHLCV.json")
    o = res.tables["ohlcv"]
    perp = o[o["symbol"] == "BTC/USDT:USDT"]
    assert (perp["venue"] == "binanceusdm").all()  # binance derivatives -> ccxt's USD-M id
    assert (o.loc[o["symbol"] == "BTC/USDT", "venue"] == "binance").all()
    exp = np.array(e["parsedResponse"], dtype=float)
    np.testing.assert_allclose(perp[["open", "high", "low", "close", "volume"]], exp[:, 1:])
    assert perp["timestamp"].tolist() == list(pd.to_datetime(exp[:, 0], unit="ms", utc=True))
    assert "BTC/USD:BTC" not in set(o["symbol"])  # the index-price entry is skipped


def test_static_bitmex_candles_breaking_ohlc_are_quarantined():
    res = read_ccxt_static(STATIC / "bitmex" / "fetchOHLCV.json")
    # ccxt's own expected output: open 68195 with low 68358, then high 67186.5 below open
    assert res.tables["ohlcv"].empty
    assert len(res.quarantine) == 2
    assert res.quarantine["rule"].str.contains("low must be <= open and close").any()
    assert res.quarantine["rule"].str.contains("high must be >= open and close").any()


@pytest.mark.parametrize("exchange", ["binance", "bybit", "okx", "dydx"])
def test_static_order_book_level_counts(exchange):
    entries = _entries(exchange, "fetchOrderBook")
    res = read_ccxt_static(STATIC / exchange / "fetchOrderBook.json")
    n = sum(len(e["parsedResponse"]["bids"]) + len(e["parsedResponse"]["asks"]) for e in entries)
    assert res.rows_read == n
    untimed = sum(
        len(e["parsedResponse"]["bids"]) + len(e["parsedResponse"]["asks"])
        for e in entries
        if e["parsedResponse"]["timestamp"] is None
    )
    assert len(res.tables["order_books"]) == n - untimed
    assert len(res.quarantine) == untimed
    if untimed:
        assert res.quarantine["rule"].str.contains("timestamp must not be null").all()


def test_order_book_timestamp_option_and_contract_size_conversion():
    e = _entries("okx", "fetchOrderBook")[0]  # BTC/USDT:USDT, sizes in contracts
    # OKX BTC-USDT-SWAP: 1 contract = 0.01 BTC (its instrument ctVal)
    res = read_ccxt_json(e["parsedResponse"], kind="order_book", venue="okx", contract_size=0.01)
    ob = res.tables["order_books"]
    bids = ob[ob["side"] == "bid"].sort_values("level")
    np.testing.assert_allclose(bids["amount"], [b[1] * 0.01 for b in e["parsedResponse"]["bids"]])
    c = res.tables["contracts"].iloc[0]
    assert (c["symbol"], c["contract_size"], c["type"]) == ("BTC/USDT:USDT", 0.01, "swap")
    d = _entries("dydx", "fetchOrderBook")[0]["parsedResponse"]
    res2 = read_ccxt_json(d, kind="auto", venue="dydx", timestamp="2025-07-29T05:00:00Z")
    assert len(res2.tables["order_books"]) == 2
    assert (
        res2.tables["order_books"]["timestamp"] == pd.Timestamp("2025-07-29 05:00", tz="UTC")
    ).all()


def test_inverse_book_amounts_become_base_units():
    book = {
        "symbol": "BTC/USD:BTC",
        "bids": [[50000.0, 10.0]],
        "asks": [[50010.0, 20.0]],
        "timestamp": 1_700_000_000_000,
    }
    # 10 contracts of 100 USD at 50,000 USD/BTC = 0.02 BTC (hand computation)
    res = read_ccxt_json(book, kind="order_book", venue="binance", contract_size=100.0)
    ob = res.tables["order_books"].set_index("side")
    assert ob.loc["bid", "amount"] == pytest.approx(0.02)
    assert ob.loc["ask", "amount"] == pytest.approx(20 * 100 / 50010)
    assert set(ob["venue"]) == {"binancecoinm"}


@pytest.mark.parametrize(("exchange", "n"), [("dydx", 1), ("bitmex", 2)])
def test_static_funding_history(exchange, n):
    entries = _entries(exchange, "fetchFundingRateHistory")
    res = read_ccxt_static(STATIC / exchange / "fetchFundingRateHistory.json")
    assert res.rows_read == n == sum(len(e["parsedResponse"]) for e in entries)
    fr = res.tables["funding_rates"]
    assert sorted(fr["funding_rate"]) == sorted(
        x["fundingRate"] for e in entries for x in e["parsedResponse"]
    )
    assert fr["timestamp"].is_monotonic_increasing  # bitmex's reply is newest first


def test_static_current_funding_rate_is_stamped_at_its_funding_time():
    e = _entries("bybit", "fetchFundingRate")[0]["parsedResponse"]
    res = read_ccxt_static(STATIC / "bybit" / "fetchFundingRate.json")
    row = res.tables["funding_rates"].iloc[0]
    assert row["funding_rate"] == e["fundingRate"] == 0.0001
    assert row["timestamp"] == pd.Timestamp(e["fundingDatetime"])
    res2 = read_ccxt_static(STATIC / "bybit" / "fetchFundingRates.json")
    assert len(res2.tables["funding_rates"]) == 1


def test_static_greeks_need_a_time_and_an_underlying_price():
    bybit = read_ccxt_static(STATIC / "bybit" / "fetchAllGreeks.json")
    assert bybit.rows_read == 1
    assert bybit.tables["option_quotes"].empty
    assert bybit.quarantine["rule"].str.contains("timestamp must not be null").all()
    g = _entries("bybit", "fetchAllGreeks")[0]["parsedResponse"]
    res = read_ccxt_json(g, kind="greeks", venue="bybit", timestamp=1_744_124_642_786)
    q = res.tables["option_quotes"].iloc[0]
    v = next(iter(g.values()))
    assert q["mark_iv"] == v["markImpliedVolatility"]
    assert (q["strike"], q["option_type"], q["underlying"]) == (70000.0, "call", "BTC")
    assert q["expiry"] == pd.Timestamp("2025-05-30 08:00", tz="UTC")
    binance = _entries("binance", "fetchAllGreeks")[0]["parsedResponse"]
    res_b = read_ccxt_json(binance, kind="greeks", venue="binance", timestamp=0)
    # Binance gives no underlying price: the quote cannot be used
    assert res_b.quarantine["rule"].str.contains("underlying_price must not be null").all()


def test_leverage_tiers_and_sniffing():
    tiers = {
        "BTC/USDT:USDT": [
            {
                "tier": 1,
                "symbol": "BTC/USDT:USDT",
                "currency": "USDT",
                "minNotional": 0,
                "maxNotional": 50000,
                "maintenanceMarginRate": 0.004,
                "maxLeverage": 125,
            },
            {
                "tier": 2,
                "symbol": "BTC/USDT:USDT",
                "currency": "USDT",
                "minNotional": 50000,
                "maxNotional": None,
                "maintenanceMarginRate": 0.005,
                "maxLeverage": 100,
            },
        ]
    }
    assert sniff_ccxt_kind(tiers) == "leverage_tiers"
    res = read_ccxt_json(
        tiers, kind="auto", venue="binanceusdm", as_of="2024-10-24", contract_size=1.0
    )
    mt = res.tables["margin_tiers"]
    assert mt["initial_margin_rate"].tolist() == pytest.approx([1 / 125, 1 / 100])
    assert np.isposinf(mt["max_notional"].iloc[1])
    with pytest.raises(FairmarginInputError, match="as_of must be given for an in-memory"):
        read_ccxt_json(tiers, kind="leverage_tiers", venue="binanceusdm")


def test_markets_give_contracts():
    m = _entries("dydx", "fetchMarkets")[0]["parsedResponse"]
    res = read_ccxt_json(m, kind="markets", venue="dydx", contract_size=1.0)
    c = res.tables["contracts"].iloc[0]
    assert (c["symbol"], c["type"], c["linear"], c["settle"]) == (
        "BTC/USDC:USDC",
        "swap",
        True,
        "USDC",
    )


def test_maintenance_only_brackets_are_quarantined_and_kept():
    block = json.loads((STATIC / "binance" / "options.json").read_text())["leverageBrackets"]
    res = read_ccxt_options(STATIC / "binance" / "options.json")
    n = sum(len(v) for v in block.values())
    assert res.rows_read == n == 46
    assert len(res.quarantine) == n
    assert res.quarantine["rule"].str.contains("max_leverage must not be null").all()
    ext = res.extras["maintenance_brackets"]
    btc = ext[ext["symbol"] == "BTC/USDT:USDT"]
    assert btc["maintenance_margin_rate"].iloc[0] == 0.004
    assert btc["max_notional"].iloc[0] == 50_000  # next bracket's floor
    assert set(ext.loc[ext["symbol"] == "BTC/USD:BTC", "venue"]) == {"binancecoinm"}


def test_bad_ccxt_input(tmp_path):
    with pytest.raises(FairmarginInputError, match="kind ohlcv needs symbol= and timeframe="):
        read_ccxt_json([[1, 2, 3, 1, 2, 1]], kind="ohlcv", venue="x", symbol="BTC/USDT")
    with pytest.raises(FairmarginInputError, match="kind must be one of"):
        read_ccxt_json([], kind="tickers", venue="x")
    with pytest.raises(FairmarginInputError, match="ohlcv row 1 must be"):
        read_ccxt_json(
            [[1, 2, 3, 1, 2, 1], [5]], kind="ohlcv", venue="x", symbol="A/B", timeframe="1m"
        )
    with pytest.raises(FairmarginInputError, match="object must be one of the ccxt structures"):
        sniff_ccxt_kind({"foo": 1})
    p = tmp_path / "cut.json"
    p.write_text((STATIC / "okx" / "fetchOHLCV.json").read_text()[:200])
    with pytest.raises(FairmarginInputError, match=r"cut\.json must be valid JSON"):
        read_ccxt_static(p)
    q = tmp_path / "notfix.json"
    q.write_text("[1]")
    with pytest.raises(FairmarginInputError, match="must be a list of entries with method"):
        read_ccxt_static(q)


def test_out_of_order_and_conflicting_candles():
    c = [[1_700_003_600_000, 2, 3, 1, 2, 5], [1_700_000_000_000, 1, 2, 1, 2, 4]]
    res = read_ccxt_json(c, kind="ohlcv", venue="okx", symbol="BTC/USDT", timeframe="1h")
    assert res.tables["ohlcv"]["timestamp"].is_monotonic_increasing
    conflict = [*c, [1_700_000_000_000, 1, 2, 1, 1.5, 4]]
    res2 = read_ccxt_json(conflict, kind="ohlcv", venue="okx", symbol="BTC/USDT", timeframe="1h")
    assert sorted(res2.quarantine["row"]) == [1, 2]
    assert res2.quarantine["rule"].str.contains("duplicate key").all()
