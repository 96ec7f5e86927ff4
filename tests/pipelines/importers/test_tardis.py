"""tardis.dev CSV datasets -> order_books, option_quotes, funding_rates."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import (
    read_tardis_book_snapshot,
    read_tardis_derivative_ticker,
    read_tardis_incremental_book,
    read_tardis_options_chain,
)

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
SNAP25 = (
    DATA
    / "orderbooks"
    / "tardis_samples_nautilus"
    / "tardis_binance-futures_book_snapshot_25_BTCUSDT_2020-09-01.csv"
)
L2 = (
    DATA
    / "orderbooks"
    / "tardis_samples_nautilus"
    / "tardis_deribit_incremental_book_L2_BTC-PERPETUAL.csv"
)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_book_snapshot_25_wide_to_long():
    rows = _rows(SNAP25)
    res = read_tardis_book_snapshot(SNAP25)
    ob = res.tables["order_books"]
    cells = sum(1 for r in rows for k, v in r.items() if k.endswith("].price") and v != "")
    assert res.rows_read == len(rows) == 10
    assert len(ob) == cells == 500
    assert res.quarantine.empty
    first = ob[ob["timestamp"] == ob["timestamp"].min()]
    r0 = rows[0]
    ts0 = pd.Timestamp(int(r0["timestamp"]) * 1000, tz="UTC")  # microseconds -> ns
    assert first["timestamp"].iloc[0] == ts0
    ask0 = first[(first["side"] == "ask") & (first["level"] == 0)].iloc[0]
    assert (ask0["price"], ask0["amount"]) == (
        float(r0["asks[0].price"]),
        float(r0["asks[0].amount"]),
    )
    bid24 = first[(first["side"] == "bid") & (first["level"] == 24)].iloc[0]
    assert bid24["price"] == float(r0["bids[24].price"])
    assert set(ob["venue"]) == {"binanceusdm"}
    assert set(ob["symbol"]) == {"BTC/USDT:USDT"}
    assert len(read_tardis_book_snapshot(SNAP25, levels=5).tables["order_books"]) == 10 * 2 * 5
    local = read_tardis_book_snapshot(SNAP25, time_column="local_timestamp").tables["order_books"]
    assert local["timestamp"].min() == pd.Timestamp(int(r0["local_timestamp"]) * 1000, tz="UTC")


def test_book_snapshot_wrong_header(tmp_path):
    df = pd.read_csv(SNAP25)
    p = tmp_path / "snap.csv"
    df.drop(columns=["local_timestamp"]).to_csv(p, index=False)
    with pytest.raises(
        FairmarginInputError, match=r"snap\.csv: header must have columns \['local_timestamp'\]"
    ):
        read_tardis_book_snapshot(p)
    q = tmp_path / "nolevels.csv"
    df.iloc[:, :4].to_csv(q, index=False)
    with pytest.raises(FairmarginInputError, match=r"header must have asks\[i\]\.price"):
        read_tardis_book_snapshot(q)


def test_incremental_l2_snapshot_rows_make_a_book():
    rows = _rows(L2)
    res = read_tardis_incremental_book(L2)
    ob = res.tables["order_books"]
    # all 15 rows are snapshot rows of the ask side: one 15-level ask book
    assert res.rows_read == len(rows) == 15
    assert res.quarantine.empty
    assert (ob["side"] == "ask").all()
    assert ob["level"].tolist() == list(range(15))
    prices = sorted(float(r["price"]) for r in rows)
    assert ob["price"].tolist() == prices
    # Deribit BTC-PERPETUAL sizes are USD: 18640 USD at 6421.5 = 2.90275 BTC (hand computation)
    assert ob["amount"].iloc[0] == pytest.approx(18640 / 6421.5)
    c = res.tables["contracts"].iloc[0]
    assert (c["symbol"], c["linear"], c["contract_size"]) == ("BTC/USD:BTC", False, 10.0)


def test_incremental_l2_replay_updates_and_early_updates(tmp_path):
    df = pd.read_csv(L2)
    t = int(df["timestamp"].iloc[-1])
    head = pd.DataFrame(
        [["deribit", "BTC-PERPETUAL", t - 5, t, "false", "ask", 6500.0, 100.0]] * 2,
        columns=df.columns,
    )
    tail = pd.DataFrame(
        [
            ["deribit", "BTC-PERPETUAL", t + 1000, t + 1001, "false", "ask", 6421.5, 0.0],
            ["deribit", "BTC-PERPETUAL", t + 2000, t + 2001, "false", "bid", 6420.0, 6420.0],
        ],
        columns=df.columns,
    )
    p = tmp_path / "l2.csv"
    pd.concat([head, df, tail]).to_csv(p, index=False)
    res = read_tardis_incremental_book(p)
    assert sorted(res.quarantine["row"]) == [0, 1]
    assert res.quarantine["rule"].str.contains("update before any snapshot row").all()
    ob = res.tables["order_books"]
    assert ob["timestamp"].nunique() == 2  # after the snapshot run, and after the last row
    final = ob[ob["timestamp"] == ob["timestamp"].max()]
    assert final.query("side == 'ask'")["price"].min() == 6422.0  # 6421.5 deleted
    bid = final.query("side == 'bid'").iloc[0]
    assert (bid["price"], bid["amount"]) == (6420.0, pytest.approx(1.0))  # 6420 USD / 6420
    only_final = read_tardis_incremental_book(p, emit="final").tables["order_books"]
    assert only_final["timestamp"].nunique() == 1


# the options_chain row of tardis.dev's documentation preview (Deribit, 2020-06-07)
DOC_ROW = (
    "deribit,BTC-9JUN20-9875-P,1591574399413000,1591574400196008,put,9875,1591689600000000,0.1,"
    "0.0295,0.0205,15.0,55.91,0.0235,15.0,68.94,0.02210436,62.89,SYN.BTC-9JUN20,9756.36,"
    "-0.61752,0.00103,2.24964,-53.05655,-0.22796"
)
CHAIN_HEADER = (
    "exchange,symbol,timestamp,local_timestamp,type,strike_price,expiration,open_interest,"
    "last_price,bid_price,bid_amount,bid_iv,ask_price,ask_amount,ask_iv,mark_price,mark_iv,"
    "underlying_index,underlying_price,delta,gamma,vega,theta,rho"
)


def test_options_chain_documented_row(tmp_path):
    p = tmp_path / "chain.csv"
    p.write_text(CHAIN_HEADER + "\n" + DOC_ROW + "\n")
    res = read_tardis_options_chain(p)
    q = res.tables["option_quotes"].iloc[0]
    assert q["symbol"] == "BTC/USD:BTC-200609-9875-P"
    assert (q["underlying"], q["option_type"], q["strike"]) == ("BTC", "put", 9875.0)
    # expiration 1591689600000000 us = 1591689600 s = 2020-06-09 08:00 UTC
    assert q["expiry"] == pd.Timestamp("2020-06-09 08:00", tz="UTC")
    assert q["mark_iv"] == pytest.approx(0.6289)
    assert (q["bid_iv"], q["ask_iv"]) == (pytest.approx(0.5591), pytest.approx(0.6894))
    assert q["underlying_price"] == 9756.36
    assert q["delta"] == -0.61752
    assert q["timestamp"] == pd.Timestamp(1591574399413000 * 1000, tz="UTC")


def test_options_chain_from_real_deribit_chain(tmp_path):
    src = pd.read_csv(
        DATA / "options" / "deribit_tessicin" / "deribit_btc_option_chain_snapshot.csv"
    )
    t_us = 1_772_274_780_000_000
    chain = pd.DataFrame(
        {
            "exchange": "deribit",
            "symbol": src["instrument_name"],
            "timestamp": t_us,
            "local_timestamp": t_us + 100,
            "type": src["type"],
            "strike_price": src["strike"],
            "expiration": src["expiration_timestamp"] * 1000,
            "open_interest": src["open_interest"],
            "last_price": np.nan,
            "bid_price": src["best_bid_price"],
            "bid_amount": 1.0,
            "bid_iv": src["bid_iv"],
            "ask_price": src["best_ask_price"],
            "ask_amount": 1.0,
            "ask_iv": src["ask_iv"],
            "mark_price": src["mark_price"],
            "mark_iv": src["mark_iv"],
            "underlying_index": "x",
            "underlying_price": src["underlying_price"],
            "delta": src["delta"],
            "gamma": src["gamma"],
            "vega": src["vega"],
            "theta": src["theta"],
            "rho": 0.0,
        }
    )
    p = tmp_path / "deribit_options_chain.csv"
    chain.to_csv(p, index=False)
    res = read_tardis_options_chain(p)
    oq = res.tables["option_quotes"]
    assert res.rows_read == len(src) == 166
    assert len(oq) == 166
    m = oq.set_index("strike").sort_index()
    s = src.assign(expiry=pd.to_datetime(src["expiration_timestamp"], unit="ms", utc=True))
    merged = oq.merge(
        s, left_on=["strike", "expiry", "option_type"], right_on=["strike", "expiry", "type"]
    )
    assert len(merged) == 166
    np.testing.assert_allclose(merged["mark_iv_x"], merged["mark_iv_y"] / 100)
    zero_bid = merged["bid_iv_y"] == 0
    assert zero_bid.any()
    assert merged.loc[zero_bid, "bid_iv_x"].isna().all()
    assert m["underlying"].eq("BTC").all()


def _funding_ticker(tmp_path: Path, n: int = 10) -> tuple[Path, pd.DataFrame]:
    """A derivative_ticker file built around n real funding events (freqtrade BTC history)."""
    f = pd.read_parquet(
        DATA
        / "returns"
        / "binance_usdm_perps_freqtrade_cyft"
        / "BTC_USDT_USDT-8h-funding_rate.parquet"
    ).iloc[1 : n + 1]
    rows = []
    for t, r in zip(f["date"], f["open"], strict=True):
        t_us = int(t.value // 1000)
        for dt_s, rate, fts in (
            (-8 * 3600 + 60, r * 0.5, t_us),
            (-60, r, t_us),
            (30, r * 3, t_us),
            (60, 0.0, None),
        ):
            when = t_us + dt_s * 1_000_000
            rows.append(
                ["binance-futures", "BTCUSDT", when, when + 5, fts, rate, None, 1.0, 1.0, 1.0, 1.0]
            )
    df = pd.DataFrame(
        rows,
        columns=[
            "exchange",
            "symbol",
            "timestamp",
            "local_timestamp",
            "funding_timestamp",
            "funding_rate",
            "predicted_funding_rate",
            "open_interest",
            "last_price",
            "index_price",
            "mark_price",
        ],
    )
    df["funding_timestamp"] = df["funding_timestamp"].astype("Int64")
    p = tmp_path / "derivative_ticker.csv"
    df.sample(frac=1.0, random_state=0).to_csv(p, index=False)  # out of order on purpose
    return p, f


def test_derivative_ticker_gives_the_rate_charged_at_each_funding(tmp_path):
    p, f = _funding_ticker(tmp_path)
    res = read_tardis_derivative_ticker(p)
    fr = res.tables["funding_rates"]
    assert res.rows_read == 4 * len(f)
    assert fr["timestamp"].tolist() == list(f["date"].dt.tz_convert("UTC"))
    np.testing.assert_allclose(fr["funding_rate"], f["open"])
    assert (fr["symbol"] == "BTC/USDT:USDT").all()
    assert (fr["venue"] == "binanceusdm").all()


def test_unknown_exchange_rows_are_quarantined(tmp_path):
    df = pd.read_csv(SNAP25)
    df.loc[3, "exchange"] = "nowhere"
    p = tmp_path / "x.csv"
    df.to_csv(p, index=False)
    res = read_tardis_book_snapshot(p)
    assert res.quarantine["row"].tolist() == [3]
    assert "exchange='nowhere'" in res.quarantine["rule"].iloc[0]
    assert res.tables["order_books"]["timestamp"].nunique() == 9
