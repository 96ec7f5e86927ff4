"""The registry: format detection on every shared data file, read(), and the contract checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.importers import (
    READERS,
    ImportResult,
    detect_format,
    read,
    read_dydx_indexer_markets,
)

_ROOT = str(Path(__file__).resolve().parents[3])
SHARED = Path(_ROOT).parent / "shared"
DATA = SHARED / "data"
FILES = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix != ".md")

#: ccxt fixtures that hold no contract table (tickers, open interest): read, nothing written
NO_CONTRACT_DATA = {
    "ccxt_static/bitmex/fetchTicker.json",
    "ccxt_static/bybit/fetchTicker.json",
    "ccxt_static/bybit/fetchTickers.json",
    "ccxt_static/bybit/fetchOpenInterest.json",
    "ccxt_static/deribit/fetchTicker.json",
    "ccxt_static/okx/fetchOpenInterest.json",
    "ccxt_static/okx/fetchTicker.json",
}


def _expected_format(rel: str) -> str:
    if rel.startswith("ccxt_static/"):
        return "ccxt_options" if rel.endswith("options.json") else "ccxt_static"
    table = {
        "binance_usdm_freqtrade": "binance_leverage_brackets",
        "bingx_cornix": "bingx_risk_tiers",
        "bitmex_instruments": "bitmex_instruments",
        "deribit_luisjo819": "deribit_trades",
        "deribit_ow1display": "deribit_book_summary",
        "deribit_tessicin": "deribit_option_chain",
        "binance_nautilus": "binance_depth",
        "bybit_nautilus": "bybit_orderbook_ws",
        "binance_usdm_perps_freqtrade_cyft": "freqtrade",
    }
    folder = rel.split("/")[1]
    if folder == "dydx_v4":
        return "dydx_genesis" if "genesis" in rel else "dydx_indexer_markets"
    if folder == "tardis_samples_nautilus":
        return "tardis_incremental_book_l2" if "incremental" in rel else "tardis_book_snapshot"
    if folder.startswith("cryptodatadownload"):
        return "cryptodatadownload"
    return table[folder]


def test_all_shared_files_are_listed():
    assert len(FILES) == 74


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_every_data_file_is_detected_and_read(path):
    rel = str(path.relative_to(DATA))
    fmt = detect_format(path)
    assert fmt == _expected_format(rel)
    opts: dict[str, str] = {"as_of": "2024-08-22"} if fmt == "dydx_indexer_markets" else {}
    if rel.endswith("-mark.parquet"):
        opts["mark"] = "ohlcv"  # mark-price candles are skipped unless asked for
    res = read(path, **opts)
    assert isinstance(res, ImportResult)
    written = sum(len(t) for name, t in res.tables.items() if name != "contracts")
    if rel in NO_CONTRACT_DATA:
        assert written == 0
        assert res.quarantine.empty
    elif rel == "ccxt_static/dydx/fetchMarkets.json":
        # ccxt's market has no contract size, so no contracts row; its margins (IMF, MMF)
        # are in the raw indexer reply, read by the dYdX importer
        fix = json.loads(path.read_text())[0]
        tiers = read_dydx_indexer_markets(fix["httpResponse"], as_of="2025-07-29")
        assert len(tiers.tables["margin_tiers"]) == len(fix["httpResponse"]["markets"]) == 1
    else:
        # margins, candles, funding, books or options: every record lands somewhere
        assert res.rows_read > 0
        assert written + len(res.quarantine) > 0


def test_registry_and_read_errors(tmp_path):
    assert set(READERS) >= {
        "binance_leverage_brackets",
        "bingx_risk_tiers",
        "bitmex_instruments",
        "ccxt_json",
        "dydx_indexer_markets",
        "dydx_genesis",
        "tardis_book_snapshot",
        "tardis_options_chain",
        "tardis_derivative_ticker",
        "deribit_book_summary",
        "deribit_trades",
        "binance_depth",
        "bybit_orderbook_ws",
        "cryptodatadownload",
        "freqtrade",
    }
    p = tmp_path / "what.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(FairmarginInputError, match=r"what\.csv: CSV header must match a known"):
        detect_format(p)
    q = tmp_path / "cut.json"
    q.write_text('{"markets": {')
    with pytest.raises(FairmarginInputError, match=r"cut\.json must be valid JSON"):
        detect_format(q)
    with pytest.raises(FairmarginInputError, match="read: format must be one of"):
        read(p, format="nope")
    r = tmp_path / "x.txt"
    r.write_text("x")
    with pytest.raises(FairmarginInputError, match="file type must be"):
        detect_format(r)
    j = tmp_path / "ohlcv.json"
    j.write_text("[[1700000000000, 1, 2, 0.5, 1.5, 3]]")
    assert detect_format(j) == "ccxt_json"
    res = read(j, kind="auto", venue="okx", symbol="BTC/USDT", timeframe="1h")
    assert len(res.tables["ohlcv"]) == 1


def test_imported_bundle_passes_the_contract_checker(tmp_path):
    """Tables from many importers, written as a bundle, pass shared/tools/validate_bundle.py.

    BingX is left out: it publishes no maintenance rate, which the contract allows (null), but
    the checker flags a null maintenance_margin_rate as outside (0, 1] (see the report).
    """
    results = [
        read(
            DATA
            / "margin_schedules"
            / "binance_usdm_freqtrade"
            / "binance_usdm_leverage_brackets_history.csv.gz"
        ),
        read(
            DATA
            / "margin_schedules"
            / "dydx_v4"
            / "dydx_mainnet1_genesis_perpetuals_liquidity_tiers.json"
        ),
        read(
            DATA
            / "margin_schedules"
            / "bitmex_instruments"
            / "bitmex_instrument_snapshot_2024-03-02.json"
        ),
        read(
            DATA
            / "returns"
            / "binance_usdm_perps_freqtrade_cyft"
            / "BTC_USDT_USDT-1h-futures.parquet"
        ),
        read(
            DATA
            / "returns"
            / "binance_usdm_perps_freqtrade_cyft"
            / "BTC_USDT_USDT-8h-funding_rate.parquet"
        ),
        read(
            DATA
            / "returns"
            / "cryptodatadownload_binance_spot_hourly_andrewsiah"
            / "Binance_ETHUSDT_1h.csv"
        ),
        read(
            DATA
            / "orderbooks"
            / "tardis_samples_nautilus"
            / "tardis_binance-futures_book_snapshot_25_BTCUSDT_2020-09-01.csv"
        ),
        read(
            DATA
            / "orderbooks"
            / "bybit_nautilus"
            / "bybit_linear_XRPUSDT_orderbook500_2024-12-01.jsonl"
        ),
        read(
            DATA
            / "options"
            / "deribit_ow1display"
            / "deribit_btc_option_book_summary_2024-03-12.csv"
        ),
        read(DATA / "options" / "deribit_luisjo819" / "deribit_trades_BTC-28JUN24-70000-C.csv"),
        read(DATA / "options" / "deribit_tessicin" / "deribit_btc_option_chain_snapshot.csv"),
    ]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    names = ["contracts", "margin_tiers", "ohlcv", "order_books", "option_quotes", "funding_rates"]
    for name in names:
        parts = [r.tables[name] for r in results if name in r.tables and len(r.tables[name])]
        df = pd.concat(parts, ignore_index=True)
        if name == "contracts":
            df = df.drop_duplicates(["venue", "symbol"])
        df.to_parquet(bundle / f"{name}.parquet", index=False)
    checker = SHARED / "tools" / "validate_bundle.py"
    out = subprocess.run(
        [sys.executable, str(checker), str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "OK:" in out.stdout
