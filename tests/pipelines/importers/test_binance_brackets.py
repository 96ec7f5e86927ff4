"""Binance USD-M leverage-bracket history (freqtrade) -> margin_tiers, on the real file."""

from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_binance_leverage_brackets
from pipelines.importers.binance_brackets import usdm_symbol

_ROOT = str(Path(__file__).resolve().parents[3])
DATA = Path(_ROOT).parent / "shared" / "data"
FILE = (
    DATA
    / "margin_schedules"
    / "binance_usdm_freqtrade"
    / "binance_usdm_leverage_brackets_history.csv.gz"
)


@pytest.fixture(scope="module")
def raw_rows():
    """The file read with the csv module: an independent path to the counts."""
    with gzip.open(FILE, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def timed():
    """The whole history read once for the module, with the seconds it took."""
    t0 = time.perf_counter()
    res = read_binance_leverage_brackets(FILE)
    return res, time.perf_counter() - t0


@pytest.fixture(scope="module")
def result(timed):
    return timed[0]


def test_every_row_is_read_and_accounted_for(result, raw_rows):
    assert result.rows_read == len(raw_rows) == 110_797
    empty = [
        i for i, r in enumerate(raw_rows) if r["notionalFloor"] == "" or r["notionalCap"] == ""
    ]
    assert len(empty) == 1077
    assert sorted(result.quarantine["row"]) == empty
    assert len(result.tables["margin_tiers"]) + len(result.quarantine) == len(raw_rows)


def test_empty_bounds_are_the_2022_04_16_snapshot_and_say_why(result, raw_rows):
    dates = {raw_rows[r]["snapshot_date"][:10] for r in result.quarantine["row"]}
    assert dates == {"2022-04-16"}
    assert (
        result.quarantine["rule"]
        .str.contains(r"notionalFloor/notionalCap must not be empty")
        .all()
    )


def test_one_schedule_per_snapshot_and_symbol(result, raw_rows):
    mt = result.tables["margin_tiers"]
    snapshots = {r["snapshot_date"] for r in raw_rows}
    assert len(snapshots) == 57
    # the 2022-04-16 snapshot is entirely quarantined
    assert mt["as_of"].nunique() == 56
    same_day = sorted(t for t in mt["as_of"].unique() if t.strftime("%Y-%m-%d") == "2022-05-21")
    # 16:05 and 16:10 at +02:00 are 14:05 and 14:10 UTC
    assert same_day == [
        pd.Timestamp("2022-05-21 14:05", tz="UTC"),
        pd.Timestamp("2022-05-21 14:10", tz="UTC"),
    ]
    assert str(mt["as_of"].dtype) == "datetime64[ns, UTC]"
    assert str(mt["tier"].dtype) == "int64"


def test_latest_btc_schedule_matches_the_file(result, raw_rows):
    last = max(r["snapshot_date"] for r in raw_rows)
    src = sorted(
        (r for r in raw_rows if r["snapshot_date"] == last and r["symbol"] == "BTC/USDT:USDT"),
        key=lambda r: int(r["bracket"]),
    )
    mt = result.tables["margin_tiers"]
    got = mt[(mt["symbol"] == "BTC/USDT:USDT") & (mt["as_of"] == mt["as_of"].max())]
    assert got["tier"].tolist() == [int(r["bracket"]) for r in src]
    np.testing.assert_allclose(got["max_leverage"], [float(r["initialLeverage"]) for r in src])
    np.testing.assert_allclose(
        got["initial_margin_rate"], [1 / float(r["initialLeverage"]) for r in src]
    )
    np.testing.assert_allclose(got["min_notional"], [float(r["notionalFloor"]) for r in src])
    np.testing.assert_allclose(got["max_notional"], [float(r["notionalCap"]) for r in src])
    np.testing.assert_allclose(
        got["maintenance_margin_rate"], [float(r["maintMarginRatio"]) for r in src]
    )
    # hand check of bracket 1 as published: 125x, MMR 0.4 %, 0 - 50,000 USDT
    first = got.iloc[0]
    assert (first["max_leverage"], first["maintenance_margin_rate"]) == (125.0, 0.004)
    assert first["initial_margin_rate"] == pytest.approx(0.008)
    assert (first["min_notional"], first["max_notional"]) == (0.0, 50_000.0)


def test_symbols_mapped_to_unified(result, raw_rows):
    syms = set(result.tables["margin_tiers"]["symbol"])
    assert all(":" in s for s in syms)
    # 2022 files wrote BTC/USDT: it becomes the linear perpetual
    first_date = min(r["snapshot_date"] for r in raw_rows)
    assert any(r["symbol"] == "BTC/USDT" for r in raw_rows if r["snapshot_date"] == first_date)
    mt = result.tables["margin_tiers"]
    assert "BTC/USDT:USDT" in set(mt.loc[mt["as_of"] == mt["as_of"].min(), "symbol"])
    assert usdm_symbol("BTCUSDT_220624").symbol == "BTC/USDT:USDT-220624"  # type: ignore[union-attr]
    assert usdm_symbol("DOTECOUSDT").symbol == "DOTECO/USDT:USDT"  # type: ignore[union-attr]
    c = result.tables["contracts"].set_index("symbol")
    assert c.loc["BTC/USDT:USDT-220624", "type"] == "future"
    assert c.loc["BTC/USDT:USDT-220624", "expiry"] == pd.Timestamp("2022-06-24 08:00", tz="UTC")
    assert c.loc["ETH/BTC:BTC", "linear"]  # quote and settle BTC
    assert (c["contract_size"] == 1.0).all()


def test_int64_max_cap_is_unbounded(result, raw_rows):
    unbounded = sum(1 for r in raw_rows if r["notionalCap"] and float(r["notionalCap"]) >= 9.2e18)
    assert unbounded > 0
    assert int(np.isposinf(result.tables["margin_tiers"]["max_notional"]).sum()) == unbounded


def test_tiers_pass_the_schedule_rules(result):
    mt = result.tables["margin_tiers"]
    g = mt.groupby(["venue", "symbol", "as_of"])
    prev = g["max_notional"].shift()
    assert (mt["min_notional"][prev.notna()] == prev[prev.notna()]).all()
    assert (g["tier"].diff().dropna() == 1).all()


def test_whole_history_reads_in_a_few_seconds(timed):
    assert timed[1] < 15.0  # measured 0.4 s on 2 cores; generous for a loaded CI machine


@pytest.fixture(scope="module")
def sample(raw_rows):
    """Two real schedules (the last snapshot's BTC and ETH) as a small frame to corrupt."""
    last = max(r["snapshot_date"] for r in raw_rows)
    rows = [
        r
        for r in raw_rows
        if r["snapshot_date"] == last and r["symbol"] in ("BTC/USDT:USDT", "ETH/USDT:USDT")
    ]
    return pd.DataFrame(rows)


def test_wrong_header_names_file_and_field(tmp_path, sample):
    p = tmp_path / "brackets.csv"
    sample.rename(columns={"notionalFloor": "floor"}).to_csv(p, index=False)
    with pytest.raises(
        FairmarginInputError, match=r"brackets\.csv: header must have.*notionalFloor"
    ):
        read_binance_leverage_brackets(p)


def test_gap_in_tiers_quarantines_the_schedule(tmp_path, sample):
    bad = sample.copy()
    i = bad.index[(bad["symbol"] == "BTC/USDT:USDT") & (bad["bracket"] == "3")][0]
    bad.loc[i, "notionalFloor"] = "700000"
    p = tmp_path / "gap.csv"
    bad.to_csv(p, index=False)
    res = read_binance_leverage_brackets(p)
    n_btc = int((sample["symbol"] == "BTC/USDT:USDT").sum())
    assert len(res.quarantine) == n_btc
    assert set(res.tables["margin_tiers"]["symbol"]) == {"ETH/USDT:USDT"}
    assert (
        res.quarantine["rule"]
        .str.contains(f"first broken: row {i}: tiers must be contiguous")
        .all()
    )
    with pytest.raises(
        FairmarginInputError, match=rf"gap\.csv row {i}: .*tiers must be contiguous"
    ):
        read_binance_leverage_brackets(p, strict=True)


def test_rows_out_of_order_give_the_same_tables(tmp_path, sample):
    p1, p2 = tmp_path / "a.csv", tmp_path / "b.csv"
    sample.to_csv(p1, index=False)
    sample.iloc[::-1].to_csv(p2, index=False)
    a = read_binance_leverage_brackets(p1).tables["margin_tiers"]
    b = read_binance_leverage_brackets(p2).tables["margin_tiers"]
    pd.testing.assert_frame_equal(a, b)


def test_duplicate_bracket_with_other_values_is_quarantined(tmp_path, sample):
    dup = sample.iloc[[0]].assign(maintMarginRatio="0.9")
    p = tmp_path / "dup.csv"
    pd.concat([sample, dup]).to_csv(p, index=False)
    res = read_binance_leverage_brackets(p)
    assert res.quarantine["rule"].str.contains("duplicate key").any()
    assert res.rows_read == len(sample) + 1
