"""Exchange ids and instrument names to ccxt unified symbols."""

from __future__ import annotations

import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers._symbols import (
    contracts_frame,
    deribit_symbol,
    fmt_number,
    parse_unified,
    split_pair,
    unified_symbol,
)


def test_parse_unified_kinds():
    spot = parse_unified("BTC/USDT")
    assert (spot.type, spot.settle, spot.linear, spot.expiry) == ("spot", "USDT", True, None)
    swap = parse_unified("BTC/USDT:USDT")
    assert (swap.type, swap.linear) == ("swap", True)
    inv = parse_unified("BTC/USD:BTC")
    assert (inv.type, inv.linear, inv.settle) == ("swap", False, "BTC")
    fut = parse_unified("ETH/USDT:USDT-230331")
    assert fut.type == "future"
    assert fut.expiry == pd.Timestamp("2023-03-31 08:00", tz="UTC")
    opt = parse_unified("BTC/USD:BTC-240628-70000-C")
    assert (opt.type, opt.strike, opt.option_type) == ("option", 70000.0, "call")


def test_parse_unified_rejects_non_symbols():
    with pytest.raises(FairmarginInputError, match=r"must be a ccxt unified symbol.*BTCUSDT"):
        parse_unified("BTCUSDT")


def test_deribit_names():
    o = deribit_symbol("BTC-28JUN24-70000-C")
    assert o is not None
    assert o.symbol == "BTC/USD:BTC-240628-70000-C"
    assert o.expiry == pd.Timestamp("2024-06-28 08:00", tz="UTC")
    lin = deribit_symbol("AVAX_USDC-29MAY26-8d6-P")
    assert lin is not None
    assert (lin.symbol, lin.strike, lin.linear) == ("AVAX/USDC:USDC-260529-8.6-P", 8.6, True)
    short_day = deribit_symbol("BTC-5APR24-60000-P")
    assert short_day is not None
    assert short_day.expiry == pd.Timestamp("2024-04-05 08:00", tz="UTC")
    perp = deribit_symbol("BTC-PERPETUAL")
    assert perp is not None
    assert (perp.symbol, perp.type, perp.linear) == ("BTC/USD:BTC", "swap", False)
    fut = deribit_symbol("BTC-27DEC24")
    assert fut is not None
    assert (fut.symbol, fut.type) == ("BTC/USD:BTC-241227", "future")
    assert deribit_symbol("SYN.BTC-12MAR24") is None
    assert deribit_symbol("BTC-31FOO24-1-C") is None


def test_split_pair_and_formatting():
    assert split_pair("1000PEPEUSDT") == ("1000PEPE", "USDT")
    assert split_pair("BTCFDUSD") == ("BTC", "FDUSD")
    assert split_pair("BTC-USD") == ("BTC", "USD")
    assert split_pair("USDT") is None
    assert fmt_number(70000.0) == "70000"
    assert fmt_number(8.6) == "8.6"
    assert fmt_number(1e6) == "1000000"
    exp = pd.Timestamp("2024-06-28 08:00", tz="UTC")
    assert (
        unified_symbol("BTC", "USD", "BTC", expiry=exp, strike=70000, option_type="call")
        == "BTC/USD:BTC-240628-70000-C"
    )


def test_contracts_frame_one_row_per_symbol():
    infos = [parse_unified("BTC/USDT:USDT"), parse_unified("BTC/USDT:USDT")]
    df = contracts_frame("binanceusdm", infos, rows=[3, 7])
    assert df["symbol"].tolist() == ["BTC/USDT:USDT"]
    assert df["_row"].tolist() == [3]
