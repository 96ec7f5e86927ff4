"""ccxt connector: recorded raw replies through ccxt's own parsers, and live-fetch failure modes.

No test touches the network: replays stub the exchange's HTTP call, and the offline test points
the exchange at a proxy on a closed local port.
"""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path
from typing import Any

import ccxt
import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginError, FairmarginInputError
from pipelines.importers import (
    read_binance_leverage_brackets,
    read_ccxt_json,
    read_deribit_book_summary,
)
from pipelines.importers._symbols import deribit_symbol
from pipelines.importers.ccxt_live import (
    connect,
    fetch_ohlcv,
    fetch_order_book,
    minimal_market,
    offline_exchange,
    parse_funding_rate_history,
    parse_greeks,
    parse_leverage_tiers,
    parse_ohlcv,
    parse_option_chain,
    parse_order_book,
    replay,
)

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
STATIC = DATA / "ccxt_static"


def _market_id(exchange: str, symbol: str) -> str:
    """The exchange's id for a symbol, by each venue's naming (not sent anywhere)."""
    base, rest = symbol.split("/")
    quote, _, settle = rest.partition(":")
    if exchange.startswith("binance"):
        return f"{base}USD_PERP" if settle and settle != quote else f"{base}{quote}"
    if exchange == "bybit":
        return f"{base}{quote}"
    if exchange == "okx":
        return f"{base}-{quote}" + ("-SWAP" if settle else "")
    if exchange == "dydx":
        return f"{base}-USD"
    if exchange == "deribit":
        return f"{base}_{quote}"
    return symbol


def _exchange(exchange: str, symbols: list[str], **sizes: float) -> Any:
    ex = offline_exchange(exchange)
    markets = [
        minimal_market(
            ex,
            symbol=s,
            market_id=_market_id(exchange, s),
            contract_size=sizes.get(s.replace("/", "_").replace(":", "_")),
        )
        for s in symbols
    ]
    return offline_exchange(exchange, markets=markets)


def _entries(method: str) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(STATIC.glob(f"*/{method}.json")):
        if f.parent.name == "bitmex":  # no BitMEX class in ccxt 4.5.90
            continue
        out += [(f.parent.name, e) for e in json.loads(f.read_text())]
    return out


def _same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert set(a) == set(b)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])


@pytest.mark.parametrize(
    ("exchange", "entry"), _entries("fetchOHLCV"), ids=lambda x: x if isinstance(x, str) else ""
)
def test_ohlcv_replay_equals_ccxt_expected_output(exchange, entry):
    inp = entry["input"]
    ex = _exchange(exchange, [inp[0]])
    rr = parse_ohlcv(
        ex,
        entry["httpResponse"],
        symbol=inp[0],
        timeframe=inp[1],
        since=inp[2] if len(inp) > 2 else None,
        limit=inp[3] if len(inp) > 3 else None,
        params=inp[4] if len(inp) > 4 else None,
    )
    assert rr.unified == entry["parsedResponse"]
    assert rr.result.rows_read == len(entry["parsedResponse"])
    ours = read_ccxt_json(
        entry["parsedResponse"],
        kind="ohlcv",
        venue=exchange,
        symbol=inp[0],
        timeframe=inp[1],
        markets=ex.markets,
    )
    _same_tables(rr.result.tables, ours.tables)
    assert len(rr.result.tables["ohlcv"]) == len(entry["parsedResponse"])


@pytest.mark.parametrize(
    ("exchange", "entry"),
    _entries("fetchOrderBook"),
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_order_book_replay_equals_ccxt_expected_output(exchange, entry):
    inp = entry["input"]
    # OKX swaps are sized in contracts of 0.01 BTC (OKX's ctVal for BTC-USDT-SWAP)
    ex = _exchange(exchange, [inp[0]], BTC_USDT_USDT=0.01 if exchange == "okx" else 1.0)
    rr = parse_order_book(
        ex,
        entry["httpResponse"],
        symbol=inp[0],
        limit=inp[1] if len(inp) > 1 else None,
        timestamp=0,
    )
    assert rr.unified == entry["parsedResponse"]
    n = len(entry["parsedResponse"]["bids"]) + len(entry["parsedResponse"]["asks"])
    assert len(rr.result.tables["order_books"]) == n
    size = ex.markets[inp[0]]["contractSize"] or 1.0
    bids = rr.result.tables["order_books"].query("side == 'bid'").sort_values("level")
    np.testing.assert_allclose(
        bids["amount"], [b[1] * size for b in entry["parsedResponse"]["bids"]]
    )


def test_funding_history_replay_equals_ccxt_expected_output():
    ((exchange, entry),) = _entries("fetchFundingRateHistory")
    inp = entry["input"]
    ex = _exchange(exchange, [inp[0]])
    rr = parse_funding_rate_history(
        ex, entry["httpResponse"], symbol=inp[0], since=inp[1], limit=inp[2]
    )
    assert rr.unified == entry["parsedResponse"]
    fr = rr.result.tables["funding_rates"]
    assert fr["funding_rate"].tolist() == [0.000176]
    assert fr["timestamp"].iloc[0] == pd.Timestamp("2025-07-29T05:00:01.053Z")


def test_greeks_replay_equals_ccxt_expected_output():
    entry = json.loads((STATIC / "binance" / "fetchAllGreeks.json").read_text())[0]
    sym = entry["input"][0][0]
    ex = _exchange("binance", [sym])
    ex.markets[sym]["id"] = "ETH-231229-800-C"
    ex = offline_exchange("binance", markets=list(ex.markets.values()))
    rr = parse_greeks(ex, entry["httpResponse"], symbols=[sym], timestamp=0)
    assert rr.unified == entry["parsedResponse"]


@pytest.fixture(scope="module")
def last_binance_snapshot():
    f = (
        DATA
        / "margin_schedules"
        / "binance_usdm_freqtrade"
        / "binance_usdm_leverage_brackets_history.csv.gz"
    )
    with gzip.open(f, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    last = max(r["snapshot_date"] for r in rows)
    keep = [
        r
        for r in rows
        if r["snapshot_date"] == last and r["symbol"] in ("BTC/USDT:USDT", "ETH/USDT:USDT")
    ]
    return last, keep


def test_leverage_tiers_replay_matches_the_bracket_importer(tmp_path, last_binance_snapshot):
    last, rows = last_binance_snapshot
    # Binance's raw /fapi/v1/leverageBracket reply, rebuilt from the brackets' raw fields
    raw = []
    for sym in ("BTC/USDT:USDT", "ETH/USDT:USDT"):
        raw.append(
            {
                "symbol": sym.split("/")[0] + "USDT",
                "brackets": [
                    {
                        "bracket": int(r["bracket"]),
                        "initialLeverage": int(r["initialLeverage"]),
                        "notionalCap": int(float(r["notionalCap"])),
                        "notionalFloor": int(float(r["notionalFloor"])),
                        "maintMarginRatio": float(r["maintMarginRatio"]),
                        "cum": float(r["cum"]),
                    }
                    for r in rows
                    if r["symbol"] == sym
                ],
            }
        )
    ex = _exchange("binanceusdm", ["BTC/USDT:USDT", "ETH/USDT:USDT"])
    rr = parse_leverage_tiers(ex, raw, as_of=last)
    assert set(rr.unified) == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
    ours = rr.result.tables["margin_tiers"].sort_values(["symbol", "tier"]).reset_index(drop=True)
    # the same rows through the independent CSV importer
    p = tmp_path / "b.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    ref = read_binance_leverage_brackets(p).tables["margin_tiers"]
    ref = ref.sort_values(["symbol", "tier"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, ref)


def test_bybit_option_chain_replay():
    entry = json.loads((STATIC / "bybit" / "fetchTickers.json").read_text())[0]
    raw = entry["httpResponse"]
    ex0 = offline_exchange("bybit")
    markets = []
    for t in raw["result"]["list"]:
        base, date, strike, kind, quote = t["symbol"].split("-")  # BTC-30MAY25-68000-P-USDT
        yymmdd = pd.Timestamp(date).strftime("%y%m%d")
        markets.append(
            minimal_market(
                ex0,
                symbol=f"{base}/{quote}:{quote}-{yymmdd}-{strike}-{kind}",
                market_id=t["symbol"],
                baseId=base,
            )
        )
    ex = offline_exchange("bybit", markets=markets)
    rr = parse_option_chain(ex, raw, code="BTC", timestamp=int(raw["time"]))
    oq = rr.result.tables["option_quotes"].set_index("symbol")
    assert len(rr.unified) == len(oq) == len(raw["result"]["list"]) == 3
    for t, m in zip(raw["result"]["list"], markets, strict=True):
        q = oq.loc[m["symbol"]]
        assert q["mark_iv"] == float(t["markIv"])  # Bybit IVs are fractions
        assert q["underlying_price"] == float(t["underlyingPrice"])
        assert q["timestamp"] == pd.Timestamp(int(raw["time"]), unit="ms", tz="UTC")
    # the fetchTickers fixture's parsed ticker of the same option agrees on the mark price
    sym, tick = next(iter(entry["parsedResponse"].items()))
    assert rr.unified[sym]["markPrice"] == tick["markPrice"]


def test_deribit_option_chain_replay_matches_the_book_summary_importer():
    path = (
        DATA / "options" / "deribit_ow1display" / "deribit_btc_option_book_summary_2024-03-12.csv"
    )
    df = pd.read_csv(path)
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]
    ex0 = offline_exchange("deribit")
    markets = [
        minimal_market(ex0, symbol=deribit_symbol(n).symbol, market_id=n)  # type: ignore[union-attr]
        for n in df["instrument_name"]
    ]
    ex = offline_exchange("deribit", markets=markets)
    rr = parse_option_chain(ex, {"jsonrpc": "2.0", "result": rows}, code="BTC")
    ours = rr.result.tables["option_quotes"]
    ref = read_deribit_book_summary(path).tables["option_quotes"]
    assert len(ours) == len(ref) == len(df) == 1198
    cols = [
        "symbol",
        "timestamp",
        "expiry",
        "strike",
        "option_type",
        "mark_iv",
        "underlying_price",
        "open_interest",
    ]
    pd.testing.assert_frame_equal(
        ours[cols].reset_index(drop=True), ref[cols].reset_index(drop=True)
    )


def test_replay_errors_are_one_line():
    ex = _exchange("bybit", ["BTC/USDT:USDT"])
    with pytest.raises(FairmarginInputError, match="method must be a ccxt method of bybit"):
        replay(ex, "fetch_nothing", {})
    with pytest.raises(FairmarginInputError, match="could not parse the reply"):
        replay(
            ex, "fetch_order_book", {"retCode": 10001, "retMsg": "params error"}, "BTC/USDT:USDT"
        )
    with pytest.raises(FairmarginInputError, match=r"must be a ccxt .* exchange id, got 'nope'"):
        offline_exchange("nope")


def test_offline_fetch_fails_fast_with_one_line():
    # a proxy on a closed local port: the connection is refused, whatever the network
    ex = connect("binanceusdm", config={"httpsProxy": "http://127.0.0.1:9"})
    assert ex.enableRateLimit
    t0 = time.perf_counter()
    with pytest.raises(
        FairmarginError, match=r"binanceusdm load_markets: exchange unreachable"
    ) as ei:
        fetch_ohlcv(ex, "BTC/USDT:USDT", "1h", retries=3, backoff_s=1.0)
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in str(ei.value)


def test_network_errors_are_retried_with_backoff(monkeypatch):
    ex = connect("bybit")
    calls = {"n": 0}
    sleeps: list[float] = []
    candles = [[1_700_000_000_000, 1.0, 2.0, 0.5, 1.5, 10.0]]

    def flaky(*_args: Any, **_kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ccxt.RequestTimeout("bybit GET https://api.bybit.com timed out")
        return candles

    monkeypatch.setattr(ex, "load_markets", lambda *_a, **_k: {})
    monkeypatch.setattr(ex, "fetch_ohlcv", flaky)
    monkeypatch.setattr(time, "sleep", sleeps.append)
    res = fetch_ohlcv(ex, "BTC/USDT", "1h", retries=3, backoff_s=0.5)
    assert calls["n"] == 3
    assert sleeps == [0.5, 1.0]  # 0.5 * 2**k
    assert len(res.tables["ohlcv"]) == 1
    calls["n"] = -10
    with pytest.raises(
        FairmarginError, match=r"network error after 3 attempt\(s\): RequestTimeout"
    ):
        fetch_ohlcv(ex, "BTC/USDT", "1h", retries=2, backoff_s=0.0)


def test_bad_symbol_is_an_input_error(monkeypatch):
    ex = connect("bybit")
    monkeypatch.setattr(ex, "load_markets", lambda *_a, **_k: {})

    def bad(*_args: Any, **_kwargs: Any) -> Any:
        raise ccxt.BadSymbol("bybit does not have market symbol FOO/BAR")

    monkeypatch.setattr(ex, "fetch_order_book", bad)
    with pytest.raises(
        FairmarginInputError, match="bybit fetch_order_book FOO/BAR: bybit does not"
    ):
        fetch_order_book(ex, "FOO/BAR")
