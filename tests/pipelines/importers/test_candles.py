"""CryptoDataDownload CSV and freqtrade parquet -> ohlcv and funding_rates, on the real files."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import read_cryptodatadownload, read_freqtrade

_ROOT = str(Path(__file__).resolve().parents[3])
RET = Path(_ROOT).parent / "shared" / "data" / "returns"
CDD = sorted(RET.glob("cryptodatadownload_*/*.csv"))
FREQ = sorted(RET.glob("binance_usdm_perps_freqtrade_cyft/*.parquet"))


def _cdd_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        first = fh.readline()
        if not first.lower().startswith("http"):
            fh.seek(0)
        return list(csv.DictReader(fh))


def _superseded(rows: list[dict[str, str]]) -> int:
    """Bars given in both formats: seconds-format rows whose hour has a millisecond row."""
    ms = {
        int(float(r["unix" if "unix" in r else "Unix"]))
        for r in rows
        if float(r["unix" if "unix" in r else "Unix"]) >= 1e11
    }
    return sum(
        1
        for r in rows
        if (u := float(r["unix" if "unix" in r else "Unix"])) < 1e11 and int(u) * 1000 in ms
    )


@pytest.mark.parametrize("path", CDD, ids=lambda p: p.name)
def test_cryptodatadownload_every_row(path):
    rows = _cdd_rows(path)
    res = read_cryptodatadownload(path)
    o = res.tables["ohlcv"]
    dup = _superseded(rows)
    assert res.rows_read == len(rows)
    assert len(o) == len(rows) - dup
    assert len(res.quarantine) == dup
    assert o["timestamp"].is_monotonic_increasing
    assert o["timestamp"].is_unique
    base = path.name.split("_")[1].removesuffix("USDT")
    assert set(o["symbol"]) == {f"{base}/USDT"}
    assert set(o["venue"]) == {"binance"}
    assert set(o["timeframe"]) == {"1d" if path.name.endswith("_d.csv") else "1h"}


def test_cryptodatadownload_btc_daily_first_bar_and_hourly_overlap():
    daily = read_cryptodatadownload(
        RET / "cryptodatadownload_binance_spot_daily_causcrypto" / "Binance_BTCUSDT_d.csv"
    )
    first = daily.tables["ohlcv"].iloc[0]
    # last line of the file:
    # 1502928000000,2017-08-17,BTCUSDT,4261.48,4485.39,4200.74,4285.08,795.150377
    assert first["timestamp"] == pd.Timestamp("2017-08-17", tz="UTC")
    assert (first["open"], first["high"], first["low"], first["close"]) == (
        4261.48,
        4485.39,
        4200.74,
        4285.08,
    )
    assert first["volume"] == 795.150377  # Volume BTC, not Volume USDT
    hourly = read_cryptodatadownload(
        RET / "cryptodatadownload_binance_spot_hourly_andrewsiah" / "Binance_BTCUSDT_1h.csv"
    )
    assert len(hourly.quarantine) == 2649
    assert hourly.quarantine["rule"].str.contains("older seconds-format row is superseded").all()
    o = hourly.tables["ohlcv"].set_index("timestamp")
    # both formats give 2020-11-20 07:00; the millisecond row (close 18212.00) is kept
    assert o.loc[pd.Timestamp("2020-11-20 07:00", tz="UTC"), "close"] == 18212.0
    # the oldest row is in seconds: unix 1502942400.0 = 2017-08-17 04:00 UTC
    assert o.index[0] == pd.Timestamp("2017-08-17 04:00", tz="UTC")


def test_cryptodatadownload_malformed(tmp_path):
    src = RET / "cryptodatadownload_binance_spot_daily_causcrypto" / "Binance_SOLUSDT_d.csv"
    lines = src.read_text().splitlines()
    p = tmp_path / "Binance_SOLUSDT_d.csv"
    # out of order: shuffled data rows read the same
    body = lines[2:]
    rng = np.random.default_rng(0)
    p.write_text("\n".join([lines[0], lines[1], *[body[i] for i in rng.permutation(len(body))]]))
    a = read_cryptodatadownload(src).tables["ohlcv"]
    b = read_cryptodatadownload(p).tables["ohlcv"]
    pd.testing.assert_frame_equal(a, b)
    # a repeated bar with other values: both rows quarantined
    row = body[10].split(",")
    row[6] = str(float(row[6]) * 1.01)
    p.write_text("\n".join([lines[0], lines[1], *body, ",".join(row)]))
    res = read_cryptodatadownload(p)
    assert sorted(res.quarantine["row"]) == [10, len(body)]
    assert res.quarantine["rule"].str.contains("duplicate key").all()
    # wrong header
    p.write_text("\n".join([lines[0], lines[1].replace("Close", "Last"), *body]))
    with pytest.raises(
        FairmarginInputError, match=r"header must have columns .*fields \['close'\]"
    ):
        read_cryptodatadownload(p)


@pytest.mark.parametrize("path", FREQ, ids=lambda p: p.name)
def test_freqtrade_every_row(path, caplog):
    n = pq.ParquetFile(path).metadata.num_rows  # independent of pandas
    with caplog.at_level(logging.INFO, logger="pipelines.importers.candles"):
        res = read_freqtrade(path)
    assert res.rows_read == n
    assert res.quarantine.empty
    pair = path.name.split("-")[0].split("_")
    symbol = f"{pair[0]}/{pair[1]}:{pair[2]}"
    if path.name.endswith("-futures.parquet"):
        o = res.tables["ohlcv"]
        assert len(o) == n
        assert set(o["symbol"]) == {symbol}
        assert set(o["timeframe"]) == {path.name.split("-")[1]}
    elif path.name.endswith("-funding_rate.parquet"):
        fr = res.tables["funding_rates"]
        assert len(fr) == n
        np.testing.assert_allclose(
            fr["funding_rate"], pq.read_table(path).column("open").to_numpy()
        )
    else:  # -mark: skipped with a note
        assert "ohlcv" not in res.tables
        assert "mark candles skipped" in caplog.text


def test_freqtrade_btc_counts_and_mark_option():
    btc = RET / "binance_usdm_perps_freqtrade_cyft"
    assert len(read_freqtrade(btc / "BTC_USDT_USDT-1h-futures.parquet").tables["ohlcv"]) == 11_991
    assert len(read_freqtrade(btc / "BTC_USDT_USDT-15m-futures.parquet").tables["ohlcv"]) == 47_966
    mark = read_freqtrade(btc / "BTC_USDT_USDT-8h-mark.parquet", mark="ohlcv").tables["ohlcv"]
    assert len(mark) == 1498
    assert set(mark["timeframe"]) == {"8h"}
    c = read_freqtrade(btc / "BTC_USDT_USDT-1h-futures.parquet").tables["contracts"].iloc[0]
    assert (c["venue"], c["symbol"], c["type"], c["linear"]) == (
        "binanceusdm",
        "BTC/USDT:USDT",
        "swap",
        True,
    )


def test_freqtrade_bad_name_and_columns(tmp_path):
    src = RET / "binance_usdm_perps_freqtrade_cyft" / "LTC_USDT_USDT-1h-futures.parquet"
    df = pd.read_parquet(src)
    p = tmp_path / "ltc_hourly.parquet"
    df.to_parquet(p)
    with pytest.raises(
        FairmarginInputError, match="file name must look like BTC_USDT_USDT-1h-futures"
    ):
        read_freqtrade(p)
    q = tmp_path / "LTC_USDT_USDT-1h-futures.parquet"
    df.drop(columns=["volume"]).to_parquet(q)
    with pytest.raises(FairmarginInputError, match=r"fields \['volume'\]"):
        read_freqtrade(q)
    s = tmp_path / "LTC_USDT-1h.feather"
    df.reset_index(drop=True).to_feather(s)
    spot = read_freqtrade(s)
    assert set(spot.tables["ohlcv"]["symbol"]) == {"LTC/USDT"}
    assert set(spot.tables["ohlcv"]["venue"]) == {"binance"}
    with pytest.raises(ValueError, match="mark must be 'skip' or 'ohlcv'"):
        read_freqtrade(src, mark="keep")
