"""Features on the real files in ../shared/data (read where they lie, through the importers):
they compute without error and their values are plausible. The ranges stated here are wide
bands from market knowledge, not fitted to the files:

- order books: spread in (0, 10] bp on liquid perpetuals (BTC, XRP); mid inside a band around the
  traded price of the day; every depth > 0 and depth within d bp not falling in d; imbalance
  in [-1, 1]; slippage of 100k to 10m quote >= 0 and <= 500 bp, rising in the notional;
  microprice between the best bid and ask.
- option surfaces (Deribit BTC): ATM implied vol in [0.2, 1.5] at 7, 30 and 90 days; 25-delta
  risk reversal within +-0.3 and butterfly in [-0.02, 0.2] (fractions of vol); smile-fit error
  in [0, 10] vol points; each quote's mark_iv in [0.05, 5].
- returns (Binance BTC/USDT perpetual, 1h, 2023-2024): annualised rv_7d in [0.1, 1.5] with a
  median in [0.25, 0.8]; per-bar 99 % VaR below 10 %.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.book import book_features
from features.panel import contract_bars
from features.returns import return_features
from features.surface import surface_features
from pipelines.importers import read

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")

BOOKS = {
    # file -> (snapshots expected, mid band in quote currency)
    "orderbooks/tardis_samples_nautilus/tardis_binance-futures_book_snapshot_25_BTCUSDT_2020-09-01.csv": (  # noqa: E501
        10,
        (9_000.0, 15_000.0),
    ),
    "orderbooks/bybit_nautilus/bybit_linear_XRPUSDT_orderbook500_2024-12-01.jsonl": (
        1,
        (0.5, 5.0),
    ),
}


@pytest.mark.parametrize("rel", sorted(BOOKS))
def test_book_features_on_real_books_are_plausible(rel):
    n_snap, (lo, hi) = BOOKS[rel]
    books = read(DATA / rel).tables["order_books"]
    f = book_features(books)
    assert len(f) == n_snap
    assert f["spread_bp"].between(0.0, 10.0, inclusive="right").all()
    assert f["mid"].between(lo, hi).all()
    depth = [c for c in ("10", "25", "50", "100")]
    for side in ("bid", "ask"):
        cols = [f"depth_{side}_{d}bp" for d in depth] + [f"depth_total_{side}"]
        vals = f[cols].to_numpy()
        assert (vals > 0).all(), cols
        assert (np.diff(vals, axis=1) >= 0).all()  # more depth further from mid
    imb = f[[f"book_imb_{d}bp" for d in depth]].to_numpy()
    assert ((imb >= -1) & (imb <= 1)).all()
    for side in ("long", "short"):
        slip = f[[f"slip_{side}_{n}" for n in ("100k", "1m", "10m")]].to_numpy()
        assert ((slip >= 0) & (slip <= 500)).all()
        assert (np.diff(slip, axis=1) >= 0).all()
    best_bid = books[(books["side"] == "bid") & (books["level"] == 0)]["price"].to_numpy()
    best_ask = books[(books["side"] == "ask") & (books["level"] == 0)]["price"].to_numpy()
    assert ((f["microprice"] >= best_bid) & (f["microprice"] <= best_ask)).all()


def test_binance_depth_snapshot_is_one_sided_and_gives_missing_features():
    # The file holds the 100 bid levels of one REST snapshot and no asks: no mid, so every
    # book feature is missing (NaN), never a made-up number; the bids themselves are sane.
    rel = "orderbooks/binance_nautilus/binance_usdm_BTCUSDT_depth_snapshot_2022-11-01.csv"
    books = read(DATA / rel).tables["order_books"]
    assert set(books["side"]) == {"bid"}
    assert len(books) == 100
    assert books["price"].between(15_000, 25_000).all()
    assert (books["price"] * books["amount"] > 0).all()
    f = book_features(books)
    assert len(f) == 1
    assert f.drop(columns=["venue", "symbol", "timestamp"]).isna().all(axis=None)


SURFACES = {
    # file -> (snapshots with a full surface, how its rows are stamped)
    "options/deribit_tessicin/deribit_btc_option_chain_snapshot.csv": 1,
    # one REST sweep whose rows are stamped a few ms apart: one snapshot per minute
    "options/deribit_ow1display/deribit_btc_option_book_summary_2024-03-12.csv": 1,
}


@pytest.mark.parametrize("rel", sorted(SURFACES))
def test_surface_features_on_real_option_chains_are_plausible(rel):
    quotes = read(DATA / rel).tables["option_quotes"]
    assert quotes["mark_iv"].between(0.05, 5.0).all()
    s = surface_features(quotes.assign(timestamp=quotes["timestamp"].dt.floor("min")))
    assert len(s) == SURFACES[rel]
    assert (s["n_expiries"] >= 5).all()
    for tenor in (7, 30, 90):
        assert s[f"atm_iv_{tenor}d"].between(0.2, 1.5).all()
    assert s["rr25_30d"].between(-0.3, 0.3).all()
    assert s["bf25_30d"].between(-0.02, 0.2).all()
    assert s["smile_rmse_volpt"].between(0.0, 10.0).all()
    np.testing.assert_allclose(
        s["term_slope"], s["atm_iv_90d"] - s["atm_iv_7d"], rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "rel",
    [
        "options/deribit_tessicin/deribit_btc_option_chain_snapshot_small.csv",
        "options/deribit_luisjo819/deribit_trades_BTC-28JUN24-70000-C.csv",
    ],
)
def test_surface_features_on_thin_option_files_are_missing_not_invented(rel):
    # Four calls of one expiry, or one option's trades: no surface can be interpolated, so the
    # surface columns are NaN (the model takes NaN), and the quotes themselves are plausible.
    quotes = read(DATA / rel).tables["option_quotes"]
    assert quotes["mark_iv"].between(0.05, 5.0).all()
    s = surface_features(quotes)
    assert len(s) >= 1
    assert s[["atm_iv_7d", "atm_iv_30d", "atm_iv_90d", "rr25_30d"]].isna().all(axis=None)


def test_return_features_on_real_binance_candles_are_plausible():
    rel = "returns/binance_usdm_perps_freqtrade_cyft/BTC_USDT_USDT-1h-futures.parquet"
    ohlcv = read(DATA / rel).tables["ohlcv"]
    bars, minutes = contract_bars(ohlcv, venue="binanceusdm", symbol="BTC/USDT:USDT")
    assert minutes == 60
    f = return_features(bars, bar_minutes=minutes)
    rv = f["rv_7d"].dropna()
    assert len(rv) > 0.9 * len(f)
    assert rv.between(0.1, 1.5).all()
    assert 0.25 <= rv.median() <= 0.8
    for est in ("pk_1d", "gk_1d", "rs_1d", "yz_1d", "ewma_vol"):
        v = f[est].dropna()
        assert v.between(0.01, 5.0).all(), est
        # range estimators and close-to-close agree in the bulk (same market, same days)
        assert 0.5 < v.median() / f["rv_1d"].median() < 2.0, est
    assert (f["var_long_7d"].dropna() < 0.10).all()
    assert (f["es_long_7d"].dropna() >= f["var_long_7d"].dropna()).all()
    assert pd.api.types.is_float_dtype(f["drawdown_7d"])
