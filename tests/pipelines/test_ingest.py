"""`fairmargin ingest`: real files into one bundle; malformed real-world input; live offline.

Real files are read where they lie in ../shared/data; malformed variants are written in tmp_path
from them. Expected row counts come from reading the files directly with pandas (an independent
code path), not from the importers under test.
"""

import gzip
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.bundle import read_bundle
from pipelines.cli import main
from pipelines.contract import BundleValidationError
from pipelines.importers import ImportResult, read
from pipelines.ingest import IMPORT_TABLE, SourceResult, ingest, merge_results

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
PERPS = DATA / "returns" / "binance_usdm_perps_freqtrade_cyft"
BTC_1H = PERPS / "BTC_USDT_USDT-1h-futures.parquet"
BTC_FUND = PERPS / "BTC_USDT_USDT-8h-funding_rate.parquet"
BRACKETS = (
    DATA / "margin_schedules/binance_usdm_freqtrade/binance_usdm_leverage_brackets_history.csv.gz"
)
DYDX = DATA / "margin_schedules/dydx_v4/dydx_v4_indexer_perpetual_markets_2024.json"
BINGX = DATA / "margin_schedules/bingx_cornix/bingx_perp_risk_tiers_history.csv"

pytestmark = pytest.mark.skipif(not PERPS.is_dir(), reason="shared data not found")


@pytest.fixture(scope="module")
def brackets():
    return pd.read_csv(BRACKETS, dtype={"snapshot_date": "str", "symbol": "str"})


def _bracket_file(tmp_path, frame, name="brackets.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _snapshot(brackets, date_prefix, bases=("BTC", "ETH")):
    """One snapshot's brackets of the USD-M perps of ``bases`` (2022 files write BTC/USDT)."""
    d = brackets[brackets["snapshot_date"].str.startswith(date_prefix)]
    names = {f"{b}/USDT{suffix}" for b in bases for suffix in ("", ":USDT")}
    return d[d["symbol"].isin(names)]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_real_files_merge_with_counts_from_the_files(tmp_path, brackets):
    tiers = _bracket_file(tmp_path, _snapshot(brackets, "2023-01-13"))
    res = ingest([BTC_1H, BTC_FUND, tiers])
    t = res.tables
    assert len(t["ohlcv"]) == len(pd.read_parquet(BTC_1H)) == 11_991
    assert len(t["funding_rates"]) == len(pd.read_parquet(BTC_FUND)) == 1_498
    n_tiers = len(_snapshot(brackets, "2023-01-13"))
    assert len(t["margin_tiers"]) == n_tiers > 0
    # one contracts row per (venue, symbol): BTC from all three files, ETH from the brackets
    assert sorted(t["contracts"]["symbol"]) == ["BTC/USDT:USDT", "ETH/USDT:USDT"]
    assert res.quarantine.empty
    s = res.summary.set_index(["source", "table"])
    assert s.loc[(str(BTC_1H), IMPORT_TABLE), "rows_read"] == 11_991
    assert s.loc[(str(BTC_1H), "ohlcv"), "kept"] == 11_991
    # the funding file's BTC contract row repeats the candle file's exactly: dropped
    assert s.loc[(str(BTC_FUND), "contracts"), "duplicates"] == 1
    assert s.loc[(str(BTC_FUND), "contracts"), "kept"] == 0


def test_cli_twice_gives_the_same_bytes_and_a_summary(tmp_path, capsys, brackets):
    tiers = _bracket_file(tmp_path, _snapshot(brackets, "2023-01-13"))
    args = ["ingest", str(BTC_1H), str(BTC_FUND), str(tiers)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "11,991" in out
    assert "rows_read" in out
    assert "kept" in out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--out", str(tmp_path / "a"), "--overwrite"]) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["contracts.parquet", "funding_rates.parquet", "margin_tiers.parquet",
                         "ohlcv.parquet"]  # fmt: skip
    assert a == b
    assert len(read_bundle(tmp_path / "a").ohlcv) == 11_991


def test_folder_source_reads_every_data_file_and_skips_notes(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(BTC_1H, folder / BTC_1H.name)
    shutil.copy(BTC_FUND, folder / BTC_FUND.name)
    (folder / "NOTES.md").write_text("not data")
    res = ingest([folder])
    assert set(res.summary["source"]) == {str(folder / BTC_1H.name), str(folder / BTC_FUND.name)}
    assert len(res.tables["funding_rates"]) == 1_498


def test_rows_out_of_order_give_the_same_bundle(tmp_path):
    bars = pd.read_parquet(BTC_1H)
    shuffled = tmp_path / "shuffled" / BTC_1H.name
    shuffled.parent.mkdir()
    bars.iloc[::-1].to_parquet(shuffled)  # newest first
    assert main(["ingest", str(BTC_1H), "--out", str(tmp_path / "a")]) == 0
    assert main(["ingest", str(shuffled), "--out", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_conflicting_duplicates_across_sources(tmp_path, capsys):
    bars = pd.read_parquet(BTC_1H)
    bars.loc[5, "volume"] = bars.loc[5, "volume"] * 1.5  # same bar, another volume
    other = tmp_path / "other" / BTC_1H.name
    other.parent.mkdir()
    bars.to_parquet(other)
    out = tmp_path / "b"
    assert main(["ingest", str(BTC_1H), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ohlcv: 2 row(s) share a key with different values" in err
    assert "rerun with --quarantine" in err
    assert not out.exists()  # nothing half-written
    assert main(["ingest", str(BTC_1H), str(other), "--out", str(out), "--quarantine"]) == 0
    q = pd.read_parquet(out / "quarantine.parquet")
    assert len(q) == 2
    assert q["rule"].str.contains("must be unique across sources").all()
    assert len(read_bundle(out).ohlcv) == 11_991 - 1
    res = ingest([BTC_1H, other], quarantine=True)
    s = res.summary.set_index(["source", "table"])
    assert s.loc[(str(other), "ohlcv"), "duplicates"] == 11_990


def test_truncated_json(tmp_path, capsys):
    text = DYDX.read_text()
    bad = tmp_path / "dydx_markets.json"
    bad.write_text(text[: len(text) // 2])
    out = tmp_path / "b"
    assert main(["ingest", str(BTC_1H), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "must be valid JSON" in err
    assert "truncated or corrupt file?" in err
    assert not out.exists()
    assert main(["ingest", str(BTC_1H), str(bad), "--out", str(out), "--quarantine"]) == 0
    q = pd.read_parquet(out / "quarantine.parquet")
    assert q["table"].tolist() == [IMPORT_TABLE]
    assert q["key"].tolist() == [str(bad)]
    assert q["rule"].str.contains("must be valid JSON").all()
    assert len(read_bundle(out).ohlcv) == 11_991


def test_csv_with_a_wrong_header(tmp_path, capsys, brackets):
    d = _snapshot(brackets, "2023-01-13").rename(columns={"notionalCap": "notional_cap"})
    bad = _bracket_file(tmp_path, d)
    assert main(["ingest", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "CSV header must match a known format" in capsys.readouterr().err
    # named format: the reader names the missing field
    code = main(
        ["ingest", str(bad), "--format", "binance_leverage_brackets", "--out", str(tmp_path / "b")]
    )
    assert code == 2
    assert "header must have columns ['notionalCap']" in capsys.readouterr().err
    with pytest.raises(FairmarginInputError, match=r"--format must be one of .* got 'nope'"):
        ingest([bad], format="nope")


def test_tier_list_with_a_gap(tmp_path, capsys, brackets):
    d = _snapshot(brackets, "2023-01-13").copy()
    btc = d.index[(d["symbol"] == "BTC/USDT:USDT") & (d["bracket"] == 3)][0]
    d.loc[btc, "notionalFloor"] = d.loc[btc, "notionalFloor"] + 1000.0  # a gap below tier 3
    bad = _bracket_file(tmp_path, d)
    out = tmp_path / "b"
    assert main(["ingest", str(bad), str(BTC_1H), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "margin_tiers" in err
    assert "BTC/USDT:USDT" in err
    assert "contiguous" in err
    assert not out.exists()
    assert main(["ingest", str(bad), str(BTC_1H), "--out", str(out), "--quarantine"]) == 0
    q = pd.read_parquet(out / "quarantine.parquet")
    n_btc = int((d["symbol"] == "BTC/USDT:USDT").sum())
    # the whole BTC schedule is set aside by the importer, with the rule; ETH's is kept
    assert len(q) == n_btc
    assert (q["table"] == IMPORT_TABLE).all()
    assert (q["key"] == str(bad)).all()
    assert q["rule"].str.contains("BTC/USDT:USDT").all()
    assert q["rule"].str.contains("tiers must be contiguous").any()
    kept = read_bundle(out).margin_tiers
    assert set(kept["symbol"]) == {"ETH/USDT:USDT"}
    assert len(kept) == len(d) - n_btc


def test_binance_snapshot_with_empty_bounds(tmp_path, capsys, brackets):
    d = brackets[brackets["snapshot_date"].str.startswith(("2022-04-16", "2022-02-16"))]
    n_empty = int(d["snapshot_date"].str.startswith("2022-04-16").sum())
    assert n_empty == 1_077  # PROVENANCE.md: all 1,077 rows of that snapshot
    src = tmp_path / "brackets.csv.gz"
    with gzip.open(src, "wt") as fh:
        d.to_csv(fh, index=False)
    out = tmp_path / "b"
    assert main(["ingest", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1077 source row(s) break the contract" in err
    assert "notionalFloor/notionalCap must not be empty" in err
    assert main(["ingest", str(src), "--out", str(out), "--quarantine"]) == 0
    q = pd.read_parquet(out / "quarantine.parquet")
    assert len(q) == n_empty
    assert len(read_bundle(out).margin_tiers) == len(d) - n_empty
    text = capsys.readouterr().out
    assert "1,077 row(s) set aside" in text


def test_missing_source_and_ccxt_options(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b")]) == 2
    assert "source must be a file or folder" in capsys.readouterr().err
    assert main(["ingest", "ccxt", "--out", str(tmp_path / "b")]) == 2
    assert "--exchange and --symbols must be given" in capsys.readouterr().err
    with pytest.raises(BundleValidationError, match=r"1077 source row\(s\) break the contract"):
        ingest([BRACKETS])


def test_ccxt_offline_fails_fast_with_one_line(tmp_path, capsys):
    out = tmp_path / "live"
    t0 = time.perf_counter()
    code = main(
        ["ingest", "ccxt", "--exchange", "binanceusdm", "--symbols", "BTC/USDT:USDT",
         "--out", str(out), "--https-proxy", "http://127.0.0.1:9"]
    )  # fmt: skip
    assert code == 2
    assert time.perf_counter() - t0 < 5.0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fairmargin")]
    assert err == [
        "fairmargin ingest: binanceusdm load_markets: exchange unreachable (offline or "
        "blocked?), not retried: NetworkError"
    ]
    assert not out.exists()


def test_merged_table_breaking_a_contract_rule():
    good = read(BTC_1H)
    bars = good.tables["ohlcv"].copy()
    bars.loc[7, "low"] = bars.loc[7, "high"] * 1.01  # low above high: a contract rule
    broken = ImportResult({**good.tables, "ohlcv": bars}, good.rows_read, good.quarantine)
    sources = [SourceResult(Path("a.parquet"), "freqtrade", broken)]
    with pytest.raises(BundleValidationError, match=r"ohlcv \(ingest of 1 source\(s\)\): 1 bad"):
        merge_results(sources)
    res = merge_results(sources, quarantine=True)
    assert res.quarantine["table"].tolist() == ["ohlcv"]
    assert res.quarantine["row"].tolist() == [7]
    assert res.quarantine["key"].iloc[0].startswith("a.parquet (binanceusdm, BTC/USDT:USDT, 1h")
    s = res.summary.set_index(["source", "table"])
    assert s.loc[("a.parquet", "ohlcv"), "quarantined"] == 1
    assert s.loc[("a.parquet", "ohlcv"), "kept"] == len(res.tables["ohlcv"]) == 11_990
