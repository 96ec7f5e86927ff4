"""Tests of features.book: hand-computed flat books, ragged books, bad input, real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from features._checks import FairmarginInputError
from features.book import (
    BookArrays,
    book_arrays,
    book_features,
    depth_resilience,
    depth_vs_volume,
    liquidation_cost,
    notional_label,
)

TARDIS = Path(
    "/work/shared/data/orderbooks/tardis_samples_nautilus/"
    "tardis_binance-futures_book_snapshot_25_BTCUSDT_2020-09-01.csv"
)
T0 = pd.Timestamp("2024-01-01", tz="UTC")
COLS = ["venue", "symbol", "timestamp", "side", "level", "price", "amount"]


def long_book(snapshots):
    """Long-format frame, sorted as the contract says, from
    [(venue, symbol, timestamp, bids [(px, amt)], asks [(px, amt)]), ...]."""
    rows = []
    for venue, symbol, ts, bids, asks in snapshots:
        for side, levels in (("ask", asks), ("bid", bids)):
            rows += [(venue, symbol, ts, side, i, p, a) for i, (p, a) in enumerate(levels)]
    df = pd.DataFrame(rows, columns=COLS)
    return df.sort_values(COLS[:5], ignore_index=True)


# A flat book: mid 100, half-spread 0.05, levels 0.10 apart, 10 base units each, 5 a side.
# Bid i at 99.95 - 0.1 i (5, 15, 25, 35, 45 bp from mid); ask i at 100.05 + 0.1 i.
FLAT_BIDS = [(round(99.95 - 0.1 * i, 2), 10.0) for i in range(5)]
FLAT_ASKS = [(round(100.05 + 0.1 * i, 2), 10.0) for i in range(5)]


@pytest.fixture
def flat():
    return long_book([("binance", "BTC/USDT:USDT", T0, FLAT_BIDS, FLAT_ASKS)])


def test_book_arrays_reshapes_flat_book(flat):
    b = book_arrays(flat)
    assert b.n_snapshots == 1
    assert_allclose(b.bid_px[0], [99.95, 99.85, 99.75, 99.65, 99.55])
    assert_allclose(b.ask_px[0], [100.05, 100.15, 100.25, 100.35, 100.45])
    assert_allclose(b.bid_amt, 10.0)
    assert not b.bid_px.flags.writeable
    # Complete books are reshaped views of the price column, not copies.
    assert np.shares_memory(b.bid_px, flat["price"].to_numpy())
    assert list(b.keys.columns) == ["venue", "symbol", "timestamp"]
    assert b.keys["timestamp"].iloc[0] == T0


def test_flat_book_features_by_hand(flat):
    f = book_features(flat, depth_bps=(10, 25), slippage_notionals=(1998.0, 1500.0))
    row = f.iloc[0]
    assert row["mid"] == pytest.approx(100.0, rel=1e-12)
    assert row["microprice"] == pytest.approx(100.0, rel=1e-12)  # equal best amounts
    assert row["spread_bp"] == pytest.approx(10.0, rel=1e-9)  # 0.10 / 100 * 1e4
    # Within 10 bp only level 0 (5 bp): 99.95 * 10 and 100.05 * 10.
    assert row["depth_bid_10bp"] == pytest.approx(999.5, rel=1e-12)
    assert row["depth_ask_10bp"] == pytest.approx(1000.5, rel=1e-12)
    assert row["book_imb_10bp"] == pytest.approx((999.5 - 1000.5) / 2000.0, rel=1e-9)
    # Within 25 bp: levels at 5, 15 and 25 bp (the boundary counts).
    assert row["depth_bid_25bp"] == pytest.approx(10 * (99.95 + 99.85 + 99.75), rel=1e-12)
    assert row["depth_ask_25bp"] == pytest.approx(10 * (100.05 + 100.15 + 100.25), rel=1e-12)
    assert row["depth_total_bid"] == pytest.approx(4987.5, rel=1e-12)  # 10 * 498.75
    assert row["depth_total_ask"] == pytest.approx(5012.5, rel=1e-12)  # 10 * 501.25
    # Slope: x = 5, 15, 25, 35, 45 bp; cumulative bid depth 999.5, 1998, 2995.5, 3992,
    # 4987.5; sum(x^2) = 4125, sum(x y) = 474012.5 -> 114.912121...
    assert row["book_slope_bid"] == pytest.approx(474012.5 / 4125.0, rel=1e-9)
    # Walking exactly two bid levels (999.5 + 998.5 = 1998 for 20 units): VWAP 99.90, 10 bp.
    assert row["slip_long_1p998k"] == pytest.approx(10.0, rel=1e-9)
    # 1500 into the bids: 999.5 at 99.95 (10 units), 500.5 at 99.85.
    vwap = 1500.0 / (10.0 + 500.5 / 99.85)
    assert row["slip_long_1p5k"] == pytest.approx((100.0 - vwap) / 100.0 * 1e4, rel=1e-9)
    # 1500 into the asks: 1000.5 at 100.05, 499.5 at 100.15.
    vwap = 1500.0 / (10.0 + 499.5 / 100.15)
    assert row["slip_short_1p5k"] == pytest.approx((vwap - 100.0) / 100.0 * 1e4, rel=1e-9)


def test_microprice_leans_toward_the_thinner_side():
    b = book_arrays(long_book([("v", "S", T0, [(99.0, 3.0)], [(101.0, 1.0)])]))
    # (b0 * A0 + a0 * B0) / (B0 + A0) = (99 * 1 + 101 * 3) / 4 = 100.5: bids 3x heavier.
    assert book_features(b)["microprice"].iloc[0] == pytest.approx(100.5, rel=1e-12)


def test_liquidation_cost_beyond_displayed_depth(flat):
    b = book_arrays(flat)
    n = np.array([[0.0, 6000.0, 4987.5]])
    long_cost = liquidation_cost(b, n, side="long")
    # N = 0: the limit, the best bid's distance from mid: 0.05 / 100.
    assert long_cost[0, 0] == pytest.approx(5e-4, rel=1e-9)
    # 6000: all 5 levels (4987.5 for 50 units), the rest 1012.5 at 1.5 x the deepest
    # distance (0.45): 100 - 0.675 = 99.325.
    vwap = 6000.0 / (50.0 + 1012.5 / 99.325)
    assert long_cost[0, 1] == pytest.approx((100.0 - vwap) / 100.0, rel=1e-9)
    # Exactly the displayed depth: VWAP 4987.5 / 50 = 99.75, 25 bp.
    assert long_cost[0, 2] == pytest.approx(0.0025, rel=1e-9)
    short_cost = liquidation_cost(b, [6000.0], side="short")
    vwap = 6000.0 / (50.0 + 987.5 / 100.675)  # 5012.5 displayed, 987.5 at 100 + 0.675
    assert short_cost[0] == pytest.approx((vwap - 100.0) / 100.0, rel=1e-9)
    # The multiplier is a parameter: at 3x the rest fills at 100 - 1.35.
    vwap = 6000.0 / (50.0 + 1012.5 / 98.65)
    assert liquidation_cost(b, 6000.0, side="long", beyond_depth_multiplier=3.0)[
        0
    ] == pytest.approx((100.0 - vwap) / 100.0, rel=1e-9)


def test_liquidation_cost_caps_at_total_loss_when_beyond_price_reaches_zero():
    # Bids 60 and 30 around mid 100 (ask 140): 1.5 x 70 from mid is below zero, so the rest
    # fills at 0 and VWAP -> 0: the whole notional is lost.
    b = book_arrays(long_book([("v", "S", T0, [(60.0, 1.0), (30.0, 1.0)], [(140.0, 1.0)])]))
    assert liquidation_cost(b, [1e6], side="long")[0] == 1.0
    # Within the displayed depth it is an ordinary walk: 60 notional = 1 unit at 60.
    assert liquidation_cost(b, [60.0], side="long")[0] == pytest.approx(0.4, rel=1e-12)
    assert (
        liquidation_cost(b, [np.nan], side="long")[0]
        != liquidation_cost(b, [np.nan], side="long")[0]
    )  # NaN in, NaN out


def test_ragged_books_are_nan_padded_and_walked_per_snapshot():
    snaps = [
        ("v", "S", T0, [(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0), (102.0, 1.0), (103.0, 5.0)]),
        ("v", "S", T0 + pd.Timedelta("1min"), [(99.5, 3.0)], [(100.5, 1.0)]),
        ("v", "S", T0 + pd.Timedelta("2min"), [], [(100.5, 1.0)]),  # one-sided
    ]
    df = long_book(snaps)
    b = book_arrays(df)
    assert b.bid_px.shape == (3, 3)
    assert_allclose(b.bid_px[0], [99.0, 98.0, np.nan])
    assert_allclose(b.ask_amt[1], [1.0, np.nan, np.nan])
    assert np.isnan(b.bid_px[2]).all()
    f = book_features(b, depth_bps=(100,), slippage_notionals=(500.0,))
    # Snapshot 0: mid 100; 1% covers bid 99 and ask 101 only.
    assert f["depth_bid_100bp"].iloc[0] == pytest.approx(99.0)
    assert f["depth_ask_100bp"].iloc[0] == pytest.approx(101.0)
    assert f["depth_total_bid"].iloc[0] == pytest.approx(99.0 + 196.0)
    # Long 500 on snapshot 0: 99 (1 unit), 196 (2 units) displayed, 205 at 100 - 1.5 x 2 = 97.
    vwap = 500.0 / (3.0 + 205.0 / 97.0)
    assert f["slip_long_500"].iloc[0] == pytest.approx((100.0 - vwap) / 100.0 * 1e4, rel=1e-9)
    # Snapshot 1: one level a side, mid 100; long 500: 298.5 at 99.5, 201.5 at 99.25.
    vwap = 500.0 / (3.0 + 201.5 / 99.25)
    assert f["slip_long_500"].iloc[1] == pytest.approx((100.0 - vwap) / 100.0 * 1e4, rel=1e-9)
    # One-sided snapshot: no mid, every feature NaN.
    assert f.iloc[2, 3:].isna().all()


def test_ragged_and_complete_paths_agree():
    rng = np.random.default_rng(7)
    snaps = []
    for i in range(20):
        mid = 100 + rng.normal()
        bids = [(mid - 0.05 - 0.1 * j, float(rng.integers(1, 9))) for j in range(4)]
        asks = [(mid + 0.05 + 0.1 * j, float(rng.integers(1, 9))) for j in range(4)]
        snaps.append(("v", "S", T0 + pd.Timedelta(minutes=i), bids, asks))
    complete = book_arrays(long_book(snaps))  # reshape path
    extra = ("v", "S", T0 + pd.Timedelta(minutes=99), [(99.0, 1.0)], [(101.0, 1.0)])
    ragged = book_arrays(long_book([*snaps, extra]))  # scatter path
    for name in ("bid_px", "bid_amt", "ask_px", "ask_amt"):
        assert_allclose(getattr(ragged, name)[:20], getattr(complete, name))


def test_level_gaps_and_categorical_side_order():
    df = long_book([("v", "S", T0, [(99.0, 1.0), (98.0, 1.0)], [(101.0, 1.0), (102.0, 2.0)])])
    df.loc[df["side"] == "bid", "level"] = [0, 3]  # a gap in level numbers
    b = book_arrays(df)
    assert_allclose(b.bid_px[0], [99.0, 98.0])
    # A categorical side sorts in category order: bids first for ["bid", "ask"].
    cat = df.assign(side=pd.Categorical(df["side"], categories=["bid", "ask"]))
    cat = cat.sort_values(COLS[:5], ignore_index=True)
    assert cat["side"].iloc[0] == "bid"
    b2 = book_arrays(cat)
    assert_allclose(b2.ask_px[0], [101.0, 102.0])
    assert_allclose(b2.bid_px[0], [99.0, 98.0])


def test_several_venues_and_symbols_keep_input_order():
    snaps = [
        (v, s, T0 + pd.Timedelta(minutes=m), [(99.0, 1.0)], [(101.0, 1.0)])
        for v in ("binance", "okx")
        for s in ("BTC/USDT:USDT", "ETH/USDT:USDT")
        for m in range(3)
    ]
    f = book_features(long_book(snaps))
    assert len(f) == 12
    assert list(f["venue"].iloc[[0, 6]]) == ["binance", "okx"]
    assert list(f["symbol"].iloc[[0, 3]]) == ["BTC/USDT:USDT", "ETH/USDT:USDT"]


# ------------------------------------------------------------------------------ bad input


def test_unsorted_rows_are_rejected(flat):
    swapped = flat.iloc[[1, 0, *range(2, len(flat))]].reset_index(drop=True)
    with pytest.raises(FairmarginInputError, match=r"must be sorted by \(venue, symbol, time"):
        book_arrays(swapped)


def test_unsorted_snapshots_are_rejected():
    df = long_book(
        [
            ("v", "S", T0, [(99.0, 1.0)], [(101.0, 1.0)]),
            ("v", "S", T0 + pd.Timedelta("1min"), [(99.0, 1.0)], [(101.0, 1.0)]),
        ]
    )
    backwards = pd.concat([df.iloc[2:], df.iloc[:2]], ignore_index=True)
    with pytest.raises(FairmarginInputError, match=r"book_arrays: order_books must be sorted"):
        book_arrays(backwards)


def test_duplicate_key_is_rejected(flat):
    dup = pd.concat([flat.iloc[:1], flat], ignore_index=True)
    with pytest.raises(FairmarginInputError, match=r"unique keys, got row 1 "):
        book_arrays(dup)


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("side", "buy", r"side must be 'bid' or 'ask', got 'buy'"),
        ("price", -1.0, r"price must be finite and > 0, got -1.0"),
        ("amount", 0.0, r"amount must be finite and > 0, got 0.0"),
        ("price", np.nan, r"price must be finite and > 0, got nan"),
    ],
)
def test_bad_values_are_rejected(flat, column, value, pattern):
    bad = flat.copy()
    bad.loc[3, column] = value
    with pytest.raises(FairmarginInputError, match=pattern):
        book_arrays(bad)


def test_missing_column_is_rejected(flat):
    with pytest.raises(FairmarginInputError, match=r"missing columns \['amount'\]"):
        book_features(flat.drop(columns="amount"))


def test_crossed_and_misordered_books_are_rejected():
    crossed = long_book([("v", "S", T0, [(101.0, 1.0)], [(100.0, 1.0)])])
    with pytest.raises(FairmarginInputError, match=r"best bid must be < best ask, got 101.0"):
        book_arrays(crossed)
    rising_bids = long_book([("v", "S", T0, [(99.0, 1.0), (99.5, 1.0)], [(101.0, 1.0)])])
    with pytest.raises(FairmarginInputError, match=r"bid prices must strictly fall with level"):
        book_arrays(rising_bids)


def test_bad_arguments_are_rejected(flat):
    b = book_arrays(flat)
    with pytest.raises(FairmarginInputError, match=r"notional must be >= 0, got -1.0"):
        liquidation_cost(b, [-1.0], side="long")
    with pytest.raises(FairmarginInputError, match=r"notional must have shape \(n_snapshots=1,"):
        liquidation_cost(b, [1.0, 2.0], side="long")
    with pytest.raises(FairmarginInputError, match=r"side must be 'long' or 'short'"):
        liquidation_cost(b, [1.0], side="both")  # type: ignore[arg-type]
    with pytest.raises(FairmarginInputError, match=r"beyond_depth_multiplier must be finite"):
        book_features(b, beyond_depth_multiplier=0.5)
    with pytest.raises(FairmarginInputError, match=r"depth_bps must be finite and > 0"):
        book_features(b, depth_bps=(0,))
    with pytest.raises(FairmarginInputError, match=r"slippage_notionals must give distinct"):
        book_features(b, slippage_notionals=(1e6, 1000000.0))
    with pytest.raises(FairmarginInputError, match=r"must be 2-D of shape \(len\(keys\)=1, L\)"):
        BookArrays(b.keys, b.bid_px[0], b.bid_amt[0], b.ask_px, b.ask_amt)


def test_notional_label():
    assert [notional_label(x) for x in (1e5, 1e6, 1e7, 2.5e6, 500.0, 3e9)] == [
        "100k",
        "1m",
        "10m",
        "2p5m",
        "500",
        "3b",
    ]


# ------------------------------------------------------------------------------ properties

levels = st.lists(
    st.tuples(st.integers(1, 50), st.integers(1, 1000)),  # (gap in ticks, amount in lots)
    min_size=1,
    max_size=8,
)


def _book_from(bid_levels, ask_levels, tick=0.5, lot=0.01):
    mid = 1000.0
    bids = [
        (mid - tick * (0.5 + sum(g for g, _ in bid_levels[: i + 1])), lot * a)
        for i, (_, a) in enumerate(bid_levels)
    ]
    asks = [
        (mid + tick * (0.5 + sum(g for g, _ in ask_levels[: i + 1])), lot * a)
        for i, (_, a) in enumerate(ask_levels)
    ]
    return book_arrays(long_book([("v", "S", T0, bids, asks)]))


@settings(max_examples=60, deadline=None)
@given(
    bid_levels=levels,
    ask_levels=levels,
    notionals=st.lists(st.integers(0, 200_000), min_size=2, max_size=12),
    multiplier=st.sampled_from([1.0, 1.5, 3.0]),
)
def test_cost_is_non_decreasing_in_notional(bid_levels, ask_levels, notionals, multiplier):
    b = _book_from(bid_levels, ask_levels)
    grid = np.sort(np.asarray(notionals, dtype=np.float64))[None, :]
    for side in ("long", "short"):
        cost = liquidation_cost(b, grid, side=side, beyond_depth_multiplier=multiplier)[0]
        assert np.isfinite(cost).all()
        # Each VWAP is a ratio of sums of ~1e5 terms: rounding is ~1e-15 relative.
        assert (np.diff(cost) >= -1e-12).all(), (side, cost)


@settings(max_examples=60, deadline=None)
@given(
    bid_levels=levels,
    ask_levels=levels,
    depths=st.lists(st.integers(1, 2000), min_size=2, max_size=6, unique=True),
)
def test_depth_is_non_decreasing_in_distance(bid_levels, ask_levels, depths):
    b = _book_from(bid_levels, ask_levels)
    ds = sorted(depths)
    f = book_features(b, depth_bps=ds, slippage_notionals=(1e3,))
    for side in ("bid", "ask"):
        series = np.array([f[f"depth_{side}_{d}bp"].iloc[0] for d in ds])
        assert (np.diff(series) >= 0).all()
        assert series[-1] <= f[f"depth_total_{side}"].iloc[0] + 1e-9


# ------------------------------------------------------------------------------ real data


def tardis_long(path: Path) -> pd.DataFrame:
    """tardis book_snapshot_25 (wide: asks[i].price, ...) -> the contract's long format."""
    wide = pd.read_csv(path)
    ts = pd.to_datetime(wide["timestamp"], unit="us", utc=True)  # tardis: microseconds
    parts = []
    for side, prefix in (("ask", "asks"), ("bid", "bids")):
        for i in range(25):
            parts.append(
                pd.DataFrame(
                    {
                        "venue": wide["exchange"],
                        "symbol": wide["symbol"],
                        "timestamp": ts,
                        "side": side,
                        "level": i,
                        "price": wide[f"{prefix}[{i}].price"],
                        "amount": wide[f"{prefix}[{i}].amount"],
                    }
                )
            )
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(COLS[:5], ignore_index=True)


def test_tardis_binance_btcusdt_snapshot_is_plausible():
    df = tardis_long(TARDIS)
    assert len(df) == 10 * 50
    f = book_features(df)
    assert len(f) == 10
    assert f["mid"].between(11_000, 12_500).all()  # BTC on 2020-09-01
    assert (f["spread_bp"] > 0).all()
    assert (f["spread_bp"] < 5).all()  # BTCUSDT perp: one tick (0.01) is ~0.009 bp
    for side in ("bid", "ask"):
        assert (f[f"depth_total_{side}"] > 0).all()
        assert (f[f"depth_{side}_10bp"] > 0).all()
        assert (f[f"book_slope_{side}"] > 0).all()
    assert f["slip_long_100k"].between(0, 10).all()
    assert f["slip_short_100k"].between(0, 10).all()
    assert (f["slip_long_10m"] >= f["slip_long_1m"]).all()
    assert f["book_imb_10bp"].between(-1, 1).all()
    # Microprice lies within the spread.
    b = book_arrays(df)
    assert ((f["microprice"] >= b.bid_px[:, 0]) & (f["microprice"] <= b.ask_px[:, 0])).all()


# ------------------------------------------------------------------------------ resilience


def _ar1_frame(phi, n, *, seed, minutes=1.0, symbol="S"):
    rng = np.random.default_rng(seed)
    y = np.empty(n)
    y[0] = 0.0
    eps = rng.normal(0, 0.2, n)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + eps[t]
    ts = T0 + pd.to_timedelta(np.arange(n) * minutes, unit="min")
    return pd.DataFrame(
        {"venue": "v", "symbol": symbol, "timestamp": ts, "depth": 1e6 * np.exp(y)}
    )


def test_depth_resilience_recovers_known_half_life():
    phi = 0.9  # 1-minute snapshots: half-life ln 2 / -ln 0.9 = 6.579 minutes
    df = _ar1_frame(phi, 4000, seed=1)
    hl = depth_resilience(df, depth_col="depth", window=3000, min_pairs=100)
    assert hl.name == "depth_halflife_min"
    assert hl.iloc[:99].isna().all()  # fewer than 100 pairs
    true = math.log(2) / -math.log(phi)
    # AR(1) slope s.e. sqrt((1 - phi^2) / n) ~ 0.008 at n = 3000 -> half-life within ~15 %.
    assert hl.iloc[-1] == pytest.approx(true, rel=0.15)
    # phi < 0 (depth overshoots and snaps back): recovery within one snapshot, half-life 0.
    flip = depth_resilience(_ar1_frame(-0.5, 500, seed=5), depth_col="depth")
    assert (flip.dropna() == 0.0).all()
    assert flip.notna().sum() == 500 - 30  # pair i ends at row i: rows 30..499 have 30+


def test_depth_resilience_is_point_in_time_and_order_free():
    a = _ar1_frame(0.8, 300, seed=2, symbol="A")
    b = _ar1_frame(0.5, 300, seed=3, symbol="B")
    df = pd.concat([a, b], ignore_index=True)
    base = depth_resilience(df, depth_col="depth", window=60, min_pairs=20)
    # Shuffled rows: same values per row label.
    shuffled = df.sample(frac=1.0, random_state=0)
    again = depth_resilience(shuffled, depth_col="depth", window=60, min_pairs=20)
    assert_allclose(again.sort_index().to_numpy(), base.to_numpy(), equal_nan=True)
    # Changing every row after t leaves every value up to t unchanged (exactly).
    t = T0 + pd.Timedelta(minutes=200)
    moved = df.copy()
    later = moved["timestamp"] > t
    moved.loc[later, "depth"] = moved.loc[later, "depth"] * 3.7 + 5.0
    changed = depth_resilience(moved, depth_col="depth", window=60, min_pairs=20)
    assert_allclose(changed[~later].to_numpy(), base[~later].to_numpy(), equal_nan=True)
    assert not np.allclose(changed[later].to_numpy(), base[later].to_numpy(), equal_nan=True)


def test_depth_resilience_is_nan_where_snapshots_are_sparse():
    df = _ar1_frame(0.8, 200, seed=4, minutes=60.0)  # hourly: no pair within 15 minutes
    assert depth_resilience(df, depth_col="depth").isna().all()
    with pytest.raises(FairmarginInputError, match=r"must satisfy 3 <= min_pairs <= window"):
        depth_resilience(df, depth_col="depth", window=10, min_pairs=20)
    with pytest.raises(FairmarginInputError, match=r"missing columns \['nope'\]"):
        depth_resilience(df, depth_col="nope")
    dup = pd.concat([df.iloc[:1], df], ignore_index=True)
    with pytest.raises(FairmarginInputError, match=r"must be unique, got a duplicate"):
        depth_resilience(dup, depth_col="depth")


def test_depth_vs_volume():
    # 1e6 of depth against 5e8 traded a day: 1e6 / 5e8 = 0.002 days of volume.
    s = pd.Series([1e6, 2e6, 3e6], index=[10, 11, 12])
    v = pd.Series([5e8, 0.0, np.nan], index=[10, 11, 12])
    out = depth_vs_volume(s, v)
    assert out.name == "depth_to_daily_volume"
    assert out.iloc[0] == pytest.approx(0.002, rel=1e-12)
    assert out.iloc[1:].isna().all()
    assert_allclose(depth_vs_volume(np.array([1e6]), 4e8), [0.0025])
    with pytest.raises(FairmarginInputError, match=r"depth_quote must be >= 0"):
        depth_vs_volume(np.array([-1.0]), 1.0)
