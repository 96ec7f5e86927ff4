"""Deribit book summaries, chain snapshots and option trades -> option_quotes."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import (
    read_deribit_book_summary,
    read_deribit_option_chain,
    read_deribit_trades,
)

_ROOT = str(Path(__file__).resolve().parents[3])
OPT = Path(_ROOT).parent / "shared" / "data" / "options"
SUMMARY = OPT / "deribit_ow1display" / "deribit_btc_option_book_summary_2024-03-12.csv"
CHAIN = OPT / "deribit_tessicin" / "deribit_btc_option_chain_snapshot.csv"
CHAIN_SMALL = OPT / "deribit_tessicin" / "deribit_btc_option_chain_snapshot_small.csv"
TRADES = OPT / "deribit_luisjo819" / "deribit_trades_BTC-28JUN24-70000-C.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_book_summary_every_option_row():
    rows = _rows(SUMMARY)
    res = read_deribit_book_summary(SUMMARY)
    oq = res.tables["option_quotes"]
    assert res.rows_read == len(rows) == 1198
    assert len(oq) == 1198
    assert res.quarantine.empty
    assert len(res.tables["contracts"]) == 1198
    q = oq.set_index("symbol").loc["BTC/USD:BTC-240314-72250-C"]
    # first row of the file: mark_iv 40.0 (%), underlying 72505.58708731517,
    # creation_timestamp 1710223032940 ms; expiry 14MAR24 at 08:00 UTC
    assert q["mark_iv"] == pytest.approx(0.40)
    assert q["underlying_price"] == pytest.approx(72505.58708731517)
    assert q["timestamp"] == pd.Timestamp(1710223032940, unit="ms", tz="UTC")
    assert q["expiry"] == pd.Timestamp("2024-03-14 08:00", tz="UTC")
    assert (q["strike"], q["option_type"], q["underlying"]) == (72250.0, "call", "BTC")
    np.testing.assert_allclose(
        np.sort(oq["mark_iv"].to_numpy()), np.sort([float(r["mark_iv"]) / 100 for r in rows])
    )


def test_book_summary_non_option_rows_are_quarantined(tmp_path):
    df = pd.read_csv(SUMMARY)
    df.loc[5, "instrument_name"] = "BTC-PERPETUAL"
    p = tmp_path / "s.csv"
    df.to_csv(p, index=False)
    res = read_deribit_book_summary(p)
    assert res.quarantine["row"].tolist() == [5]
    assert "must be a Deribit option" in res.quarantine["rule"].iloc[0]
    with pytest.raises(FairmarginInputError, match=r"s\.csv row 5: .*must be a Deribit option"):
        read_deribit_book_summary(p, strict=True)


def test_chain_snapshot_default_and_explicit_time():
    rows = _rows(CHAIN)
    res = read_deribit_option_chain(CHAIN)
    oq = res.tables["option_quotes"]
    assert res.rows_read == len(rows) == 166
    assert len(oq) == 166
    latest = max(int(r["creation_timestamp"]) for r in rows)
    assert (oq["timestamp"] == pd.Timestamp(latest, unit="ms", tz="UTC")).all()
    res2 = read_deribit_option_chain(CHAIN, as_of="2026-03-01T00:00:00Z")
    assert (
        res2.tables["option_quotes"]["timestamp"] == pd.Timestamp("2026-03-01", tz="UTC")
    ).all()
    c = res.tables["contracts"]
    assert (c["contract_size"] == 1.0).all()
    assert (c["type"] == "option").all()


def test_chain_small_zero_bid_iv_is_no_quote():
    rows = _rows(CHAIN_SMALL)
    res = read_deribit_option_chain(CHAIN_SMALL)
    oq = res.tables["option_quotes"].set_index("symbol")
    assert len(oq) == len(rows) == 4
    # BTC-13MAR26-61000-C has bid_iv 0.0 in the file (no bid above intrinsic value)
    q = oq.loc["BTC/USD:BTC-260313-61000-C"]
    assert np.isnan(q["bid_iv"])
    assert q["ask_iv"] == pytest.approx(0.9148)
    assert q["mark_iv"] == pytest.approx(0.6341)
    assert q["delta"] == pytest.approx(0.77163)


def test_chain_strike_disagreeing_with_name_is_quarantined(tmp_path):
    df = pd.read_csv(CHAIN_SMALL)
    df.loc[2, "strike"] = 6000.0
    p = tmp_path / "c.csv"
    df.to_csv(p, index=False)
    res = read_deribit_option_chain(p)
    assert res.quarantine["row"].tolist() == [2]
    assert "must match the instrument name" in res.quarantine["rule"].iloc[0]
    assert len(res.tables["option_quotes"]) == 3


def test_trades_one_quote_per_millisecond():
    rows = _rows(TRADES)
    res = read_deribit_trades(TRADES)
    oq = res.tables["option_quotes"]
    assert res.rows_read == len(rows) == 3062
    # independent count: group trades by timestamp; the last trade_seq sets the quote and the
    # trades whose (iv, index_price) differ from it are superseded
    by_ts: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_ts[r["timestamp"]].append(r)
    superseded = 0
    for trades in by_ts.values():
        last = max(trades, key=lambda r: int(r["trade_seq"]))
        superseded += sum(
            1
            for r in trades
            if (float(r["iv"]), float(r["index_price"]))
            != (float(last["iv"]), float(last["index_price"]))
        )
    assert len(oq) == len(by_ts) == 2737
    assert len(res.quarantine) == superseded == 12
    assert res.quarantine["rule"].str.contains("superseded by trade_seq").all()
    assert oq["timestamp"].is_monotonic_increasing  # the file is newest first
    assert (oq["strike"] == 70000.0).all()  # not the author's 7000.0
    assert (oq["expiry"] == pd.Timestamp("2024-06-28 08:00", tz="UTC")).all()
    newest = max(rows, key=lambda r: (r["timestamp"], int(r["trade_seq"])))
    q = oq.iloc[-1]
    assert q["mark_iv"] == pytest.approx(float(newest["iv"]) / 100)
    assert q["underlying_price"] == float(newest["index_price"])


def test_trades_wrong_header(tmp_path):
    df = pd.read_csv(TRADES, nrows=20)
    p = tmp_path / "t.csv"
    df.drop(columns=["iv"]).to_csv(p, index=False)
    with pytest.raises(FairmarginInputError, match=r"t\.csv: header must have columns \['iv'\]"):
        read_deribit_trades(p)
