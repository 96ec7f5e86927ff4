"""Binance depth CSV and Bybit websocket recordings replayed into order_books."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_binance_depth, read_bybit_orderbook_ws

_ROOT = str(Path(__file__).resolve().parents[3])
BOOKS = Path(_ROOT).parent / "shared" / "data" / "orderbooks"
SNAP = BOOKS / "binance_nautilus" / "binance_usdm_BTCUSDT_depth_snapshot_2022-11-01.csv"
UPD = BOOKS / "binance_nautilus" / "binance_usdm_BTCUSDT_depth_updates_2022-11-01.csv"
WS = BOOKS / "bybit_nautilus" / "bybit_linear_XRPUSDT_orderbook500_2024-12-01.jsonl"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_binance_snapshot_is_one_bid_book():
    rows = _rows(SNAP)
    res = read_binance_depth(SNAP)
    ob = res.tables["order_books"]
    assert res.rows_read == len(rows) == 100
    assert len(ob) == 100
    assert res.quarantine.empty
    assert (ob["side"] == "bid").all()  # the file holds the bid side only
    assert ob["price"].tolist() == sorted((float(r["price"]) for r in rows), reverse=True)
    top = ob.iloc[0]
    assert (top["level"], top["price"], top["amount"]) == (0, 20377.0, 1.770)  # first file row
    assert top["timestamp"] == pd.Timestamp(1667346579146, unit="ms", tz="UTC")
    assert top["symbol"] == "BTC/USDT:USDT"
    assert top["venue"] == "binanceusdm"


def test_binance_updates_without_a_chained_snapshot_are_quarantined():
    alone = read_binance_depth(UPD)
    assert alone.rows_read == 100
    assert alone.tables["order_books"].empty
    assert len(alone.quarantine) == 100
    assert alone.quarantine["rule"].str.contains("no snapshot to apply it to").all()
    # the recorded snapshot (lastUpdateId 2098021528332) does not reach the update's
    # U=2098041693435: 20 million updates are missing in between
    both = read_binance_depth(UPD, snapshot=SNAP)
    assert both.tables["order_books"].empty
    assert len(both.quarantine) == 100
    assert (
        both.quarantine["rule"]
        .str.contains(
            "U=2098041693435, u=2098041696700, pu=2098041693400 do not follow the snapshot "
            "lastUpdateId=2098021528332"
        )
        .all()
    )


def test_binance_chained_update_is_applied(tmp_path):
    snap = pd.read_csv(SNAP)
    upd = pd.read_csv(UPD)
    last = int(snap["last_update_id"].iloc[0])
    # the real update event re-numbered so that U <= lastUpdateId <= u (Binance's rule)
    upd["first_update_id"] = last - 5
    upd["last_update_id"] = last + 10
    p = tmp_path / "chained.csv"
    pd.concat([snap, upd]).to_csv(p, index=False)
    res = read_binance_depth(p)
    ob = res.tables["order_books"]
    assert res.quarantine.empty
    final = ob[ob["timestamp"] == ob["timestamp"].max()]
    # independent replay with plain dicts
    book: dict[str, dict[float, float]] = {"b": {}, "a": {}}
    for r in [*_rows(SNAP), *_rows(UPD)]:
        if float(r["qty"]) == 0:
            book[r["side"]].pop(float(r["price"]), None)
        else:
            book[r["side"]][float(r["price"])] = float(r["qty"])
    bids = final.query("side == 'bid'")
    asks = final.query("side == 'ask'")
    assert bids["price"].tolist() == sorted(book["b"], reverse=True)
    assert asks["price"].tolist() == sorted(book["a"])
    np.testing.assert_allclose(asks["amount"], [book["a"][p] for p in sorted(book["a"])])
    assert (
        len(
            read_binance_depth(p, levels=5)
            .tables["order_books"]
            .query("timestamp == timestamp.max()")
        )
        == 10
    )


def test_binance_depth_wrong_header(tmp_path):
    p = tmp_path / "d.csv"
    pd.read_csv(SNAP).drop(columns=["pu"]).to_csv(p, index=False)
    with pytest.raises(FairmarginInputError, match=r"d\.csv: header must have columns \['pu'\]"):
        read_binance_depth(p)


def _replay(lines: list[str]) -> dict[str, dict[float, float]]:
    """Independent replay of Bybit messages with plain dicts."""
    book: dict[str, dict[float, float]] = {"b": {}, "a": {}}
    for line in lines:
        m = json.loads(line)
        if m["type"] == "snapshot":
            book = {"b": {}, "a": {}}
        for k in ("b", "a"):
            for p, s in m["data"][k]:
                if float(s) == 0:
                    book[k].pop(float(p), None)
                else:
                    book[k][float(p)] = float(s)
    return book


def test_bybit_final_book_after_49_deltas():
    lines = WS.read_text().splitlines()
    res = read_bybit_orderbook_ws(WS)
    ob = res.tables["order_books"]
    assert res.rows_read == len(lines) == 50
    assert res.quarantine.empty
    assert len(ob) == 50  # 25 levels a side
    last = json.loads(lines[-1])
    assert (ob["timestamp"] == pd.Timestamp(last["ts"], unit="ms", tz="UTC")).all()
    book = _replay(lines)
    bids = ob.query("side == 'bid'")
    asks = ob.query("side == 'ask'")
    assert bids["price"].tolist() == sorted(book["b"], reverse=True)[:25]
    assert asks["price"].tolist() == sorted(book["a"])[:25]
    np.testing.assert_allclose(bids["amount"], [book["b"][p] for p in bids["price"]])
    assert set(ob["symbol"]) == {"XRP/USDT:USDT"}  # linear, from the file name


def test_bybit_emit_modes():
    lines = WS.read_text().splitlines()
    snaps = read_bybit_orderbook_ws(WS, emit="snapshots").tables["order_books"]
    assert snaps["timestamp"].nunique() == 2  # the snapshot message and the final book
    first = json.loads(lines[0])
    s0 = snaps[snaps["timestamp"] == pd.Timestamp(first["ts"], unit="ms", tz="UTC")]
    assert s0.query("side == 'bid' and level == 0")["price"].iloc[0] == float(
        first["data"]["b"][0][0]
    )
    every = read_bybit_orderbook_ws(WS, emit="all", levels=5).tables["order_books"]
    assert every["timestamp"].nunique() == 50
    assert len(every) == 50 * 10
    full = read_bybit_orderbook_ws(WS, levels=None).tables["order_books"]
    book = _replay(lines)
    assert len(full) == len(book["b"]) + len(book["a"])


def test_bybit_update_id_gap_quarantines_until_next_snapshot(tmp_path):
    lines = WS.read_text().splitlines()
    p = tmp_path / "gap_linear.jsonl"
    p.write_text("\n".join(lines[:10] + lines[11:]) + "\n")  # message u=20254879 lost
    res = read_bybit_orderbook_ws(p)
    assert res.rows_read == 49
    assert res.quarantine["row"].tolist() == list(range(10, 49))
    assert "update id gap: u 20254878 -> 20254880" in res.quarantine["rule"].iloc[0]
    ob = res.tables["order_books"]
    # the book stays known up to the last message before the gap
    assert ob["timestamp"].unique().tolist() == [
        pd.Timestamp(json.loads(lines[9])["ts"], unit="ms", tz="UTC")
    ]
    assert ob.query("side == 'ask'")["price"].tolist() == sorted(_replay(lines[:10])["a"])[:25]


def test_bybit_truncated_recording(tmp_path):
    text = WS.read_text()
    p = tmp_path / "cut.jsonl"
    p.write_text(text[: len(text) - 200])
    with pytest.raises(FairmarginInputError, match=r"cut\.jsonl row 49: each line must be a JSON"):
        read_bybit_orderbook_ws(p)
    with pytest.raises(ValueError, match="emit must be final, snapshots or all"):
        read_bybit_orderbook_ws(WS, emit="some")
