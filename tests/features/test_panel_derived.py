"""Panel columns derived across tables: cross-venue basis, depth over traded volume, book
resilience, microprice offset, implied over realised volatility, days to expiry. Each is checked
against a hand computation or an independent code path, and for point-in-time safety."""

import numpy as np
import pandas as pd
import pytest

from features.book import book_features
from features.panel import PanelSpec, _asof, build_panel
from models.fair import model_matrix

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _contracts(rows):
    return pd.DataFrame(
        {
            "venue": [r[0] for r in rows],
            "symbol": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "base": [r[3] for r in rows],
            "linear": True,
            "expiry": pd.Series([r[4] for r in rows], dtype="datetime64[ns, UTC]"),
        }
    )


def _bars(venue, symbol, close, *, volume=1.0, start=T0, minutes=5):
    close = np.asarray(close, dtype=np.float64)
    return pd.DataFrame(
        {
            "venue": venue,
            "symbol": symbol,
            "timeframe": f"{minutes}m",
            "timestamp": start + pd.to_timedelta(np.arange(len(close)) * minutes, unit="min"),
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": volume,
        }
    )


def _flat_book(venue, symbol, times, *, mid=100.0, amounts=None):
    """Two levels a side at mid -+ 0.1 and -+ 0.6 (10 bp and 60 bp), given amounts per snapshot
    (shape (n, 4): bid0, bid1, ask0, ask1) or 10 each."""
    n = len(times)
    amt = np.full((n, 4), 10.0) if amounts is None else np.asarray(amounts, dtype=np.float64)
    rows = []
    for i, ts in enumerate(times):
        for side, lvl, px, a in (
            ("ask", 0, mid + 0.1, amt[i, 2]),
            ("ask", 1, mid + 0.6, amt[i, 3]),
            ("bid", 0, mid - 0.1, amt[i, 0]),
            ("bid", 1, mid - 0.6, amt[i, 1]),
        ):
            rows.append((venue, symbol, ts, side, lvl, px, a))
    return pd.DataFrame(
        rows, columns=["venue", "symbol", "timestamp", "side", "level", "price", "amount"]
    )


# ---------------------------------------------------------------------------------------------
# basis_bp
# ---------------------------------------------------------------------------------------------
def _basis_tables():
    n = 6
    contracts = _contracts(
        [
            ("a", "BTC/USDT:USDT", "swap", "BTC", None),
            ("a", "BTC/USDT:USDT-260327", "future", "BTC", pd.Timestamp("2026-03-27", tz="UTC")),
            ("b", "BTC/USDT:USDT", "swap", "BTC", None),
            ("c", "BTC/USDT:USDT", "swap", "BTC", None),
            ("c", "BTC/USD:BTC", "swap", "BTC", None),
            ("a", "ETH/USDT:USDT", "swap", "ETH", None),
        ]
    )
    c_usd = np.full(n, 104.0)
    c_usd[3] = np.nan  # a missing bar of one of venue c's swaps
    ohlcv = pd.concat(
        [
            _bars("a", "BTC/USDT:USDT", np.full(n, 100.0)),
            _bars("a", "BTC/USDT:USDT-260327", np.full(n, 102.0)),
            _bars("b", "BTC/USDT:USDT", np.full(n, 101.0)),
            _bars("c", "BTC/USDT:USDT", np.full(n, 103.0)),
            _bars("c", "BTC/USD:BTC", c_usd),
            _bars("a", "ETH/USDT:USDT", np.full(n, 3000.0)),
        ],
        ignore_index=True,
    )
    return {"contracts": contracts, "ohlcv": ohlcv.dropna(subset=["close"])}


def test_basis_against_the_median_of_other_venues_swaps():
    panel = build_panel(_basis_tables())
    got = panel.set_index(["venue", "symbol", "t"])["basis_bp"]
    t_full = T0 + pd.Timedelta(minutes=10)  # close of bar 1: all five BTC swaps have a bar
    t_gap = T0 + pd.Timedelta(minutes=20)  # bar index 3 of c's BTC/USD:BTC is missing
    # By hand: venue a's reference is median(101, 103, 104) = 103 (its own swap and future
    # are left out); venue b's is median(100, 103, 104) = 103; venue c's is median(100, 101).
    expect_full = {
        ("a", "BTC/USDT:USDT"): 1e4 * np.log(100 / 103),
        ("a", "BTC/USDT:USDT-260327"): 1e4 * np.log(102 / 103),
        ("b", "BTC/USDT:USDT"): 1e4 * np.log(101 / 103),
        ("c", "BTC/USDT:USDT"): 1e4 * np.log(103 / 100.5),
        ("c", "BTC/USD:BTC"): 1e4 * np.log(104 / 100.5),
    }
    for (v, s), want in expect_full.items():
        assert got[(v, s, t_full)] == pytest.approx(want, rel=1e-12)
    # at the gap c's inverse swap has no bar: a's reference is median(101, 103) = 102
    assert got[("a", "BTC/USDT:USDT", t_gap)] == pytest.approx(1e4 * np.log(100 / 102))
    assert np.isnan(got[("c", "BTC/USD:BTC", t_gap)])
    # ETH is listed on one venue only: no reference, NaN (not 0)
    assert panel.loc[panel["base"] == "ETH", "basis_bp"].isna().all()


def test_basis_uses_closes_at_t_only():
    tables = _basis_tables()
    ohlcv = tables["ohlcv"].copy()
    later = ohlcv["timestamp"] >= T0 + pd.Timedelta(minutes=15)  # bars closing after t=15m
    ohlcv.loc[later & (ohlcv["venue"] == "b"), ["open", "high", "low", "close"]] *= 1.5
    a = build_panel(tables)
    b = build_panel({**tables, "ohlcv": ohlcv})
    t = T0 + pd.Timedelta(minutes=15)
    pd.testing.assert_series_equal(a.loc[a["t"] <= t, "basis_bp"], b.loc[b["t"] <= t, "basis_bp"])
    assert not np.allclose(
        a.loc[a["t"] > t, "basis_bp"], b.loc[b["t"] > t, "basis_bp"], equal_nan=True
    )


# ---------------------------------------------------------------------------------------------
# book_depth_to_volume_50bp, microprice_offset_bp, and the model's normalisation
# ---------------------------------------------------------------------------------------------
def test_depth_to_volume_is_depth_over_a_days_traded_notional():
    n = 8 * 288  # 8 days of 5-minute bars: the 7-day traded notional is covered after day 7
    contracts = _contracts([("a", "X/USDT:USDT", "swap", "X", None)])
    ohlcv = _bars("a", "X/USDT:USDT", np.full(n, 100.0), volume=3.0)
    times = T0 + pd.to_timedelta(np.arange(1, 8 * 24 + 1), unit="h")
    amounts = np.tile([10.0, 50.0, 30.0, 70.0], (len(times), 1))
    books = _flat_book("a", "X/USDT:USDT", times, amounts=amounts)
    panel = build_panel({"contracts": contracts, "ohlcv": ohlcv, "order_books": books})
    # By hand: within 50 bp are the 10 bp levels only: 99.9 * 10 + 100.1 * 30 = 4002 quote.
    # Traded notional per 5-minute bar is 3 x 100 = 300, so 300 * 288 = 86,400 a day.
    want = 4002.0 / 86_400.0
    last = panel.iloc[-1]
    assert last["book_depth_to_volume_50bp"] == pytest.approx(want, rel=1e-12)
    early = panel["t"] < T0 + pd.Timedelta(days=7) - pd.Timedelta(minutes=5)
    assert panel.loc[early, "book_depth_to_volume_50bp"].isna().all()  # volume window open
    # microprice of the best levels: (99.9 * 30 + 100.1 * 10) / 40 = 99.95, i.e. -5 bp
    assert last["microprice_offset_bp"] == pytest.approx(-5.0, rel=1e-9)
    assert "microprice" not in panel.columns  # a price level is not a scale-free input
    # The model's input normalisation leaves these columns as they are (scale-free names).
    cols = ["book_depth_to_volume_50bp", "microprice_offset_bp", "book_resilience_min"]
    rows = panel.iloc[[-1]].assign(sigma_ann=0.5, sigma_bar=0.001)
    mm = model_matrix(rows, np.array([60.0]), features=cols)
    assert mm["book_depth_to_volume_50bp"].iloc[0] == pytest.approx(want, rel=1e-12)
    assert mm["microprice_offset_bp"].iloc[0] == pytest.approx(-5.0, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# book_resilience_min
# ---------------------------------------------------------------------------------------------
def _dense_book_tables(n_snap=400, phi=0.8, seed=3):
    rng = np.random.default_rng(seed)
    y = np.zeros(n_snap)
    for i in range(1, n_snap):
        y[i] = phi * y[i - 1] + rng.normal(0, 0.3)
    times = T0 + pd.to_timedelta(np.arange(1, n_snap + 1), unit="min")
    five = np.full(n_snap, 5.0)
    amounts = np.column_stack([10 * np.exp(y), five, 10 * np.exp(y), five])
    contracts = _contracts([("a", "X/USDT:USDT", "swap", "X", None)])
    ohlcv = _bars("a", "X/USDT:USDT", np.full(n_snap + 5, 100.0), minutes=1)
    books = _flat_book("a", "X/USDT:USDT", times, amounts=amounts)
    return {"contracts": contracts, "ohlcv": ohlcv, "order_books": books}, times, y


def test_resilience_half_life_matches_a_direct_ar1_fit():
    tables, times, y = _dense_book_tables()
    panel = build_panel(tables).set_index("t")
    # Independent path: within 50 bp sit the two 10 bp levels, 99.9 a + 100.1 a = 200 a with
    # a = 10 exp(y), so log depth = y + const. Fit y_i on y_{i-1} with np.polyfit on the
    # pairs ending at the last 120 snapshots, half-life = dt ln 2 / -ln(phi) with dt = 1 min.
    i = 300
    slope = np.polyfit(y[i - 120 : i], y[i - 119 : i + 1], 1)[0]
    want = np.log(2.0) / -np.log(slope)
    assert panel.loc[times[i], "book_resilience_min"] == pytest.approx(want, rel=1e-6)
    # too few pairs in the first snapshots: missing, not 0
    assert np.isnan(panel.loc[times[10], "book_resilience_min"])


def test_resilience_is_missing_on_sparse_snapshots_and_point_in_time():
    tables, times, _ = _dense_book_tables()
    hourly = tables["order_books"][tables["order_books"]["timestamp"].dt.minute == 0]
    sparse = build_panel({**tables, "order_books": hourly})
    assert sparse["book_resilience_min"].isna().all()
    t = times[250]
    books = tables["order_books"].copy()
    later = books["timestamp"] > t
    books.loc[later, "amount"] *= np.random.default_rng(0).uniform(0.1, 10.0, later.sum())
    a = build_panel(tables)
    b = build_panel({**tables, "order_books": books})
    cols = ["book_resilience_min", "book_depth_to_volume_50bp", "microprice_offset_bp"]
    pd.testing.assert_frame_equal(a.loc[a["t"] <= t, cols], b.loc[b["t"] <= t, cols])
    assert not np.allclose(
        a.loc[a["t"] > t + pd.Timedelta(minutes=5), "book_resilience_min"],
        b.loc[b["t"] > t + pd.Timedelta(minutes=5), "book_resilience_min"],
    )


def test_resilience_window_comes_from_the_spec():
    tables, times, y = _dense_book_tables()
    spec = PanelSpec(resilience_window=60, resilience_min_pairs=40)
    panel = build_panel(tables, spec=spec).set_index("t")
    i = 300
    slope = np.polyfit(y[i - 60 : i], y[i - 59 : i + 1], 1)[0]
    assert panel.loc[times[i], "book_resilience_min"] == pytest.approx(
        np.log(2.0) / -np.log(slope), rel=1e-6
    )
    assert np.isnan(panel.loc[times[38], "book_resilience_min"])  # 38 pairs < 40


# ---------------------------------------------------------------------------------------------
# iv_rv_ratio_30d and days_to_expiry on the simulator's panel
# ---------------------------------------------------------------------------------------------
def test_iv_rv_ratio_and_days_to_expiry(sim_panel):
    p, books = sim_panel
    both = p["atm_iv_30d"].notna() & p["rv_7d"].notna()
    assert both.sum() > 100
    np.testing.assert_allclose(
        p.loc[both, "iv_rv_ratio_30d"], p.loc[both, "atm_iv_30d"] / p.loc[both, "rv_7d"]
    )
    assert p.loc[~both, "iv_rv_ratio_30d"].isna().all()
    fut = p["is_future"]
    assert fut.any()
    np.testing.assert_allclose(
        p.loc[fut, "days_to_expiry"], p.loc[fut, "minutes_to_expiry"] / 1440.0
    )
    assert p.loc[~fut, "days_to_expiry"].isna().all()
    # the simulator's book features, joined as of t, match book_features on the same snapshot
    row = p[p["spread_bp"].notna()].iloc[-1]
    bf = book_features(books)
    snap = bf[(bf["venue"] == row["venue"]) & (bf["symbol"] == row["symbol"])]
    snap = snap[snap["timestamp"] <= row["t"]].iloc[-1]
    assert row["microprice_offset_bp"] == pytest.approx(
        1e4 * (snap["microprice"] - snap["mid"]) / snap["mid"], rel=1e-12
    )


@pytest.fixture(scope="module")
def sim_panel():
    from pipelines.simulator import SimConfig, simulate_market

    sim = simulate_market(SimConfig(seed=2, days=8, mc_paths=200))
    keep = {"okx", "bybit", "deribit"}
    tables = {
        k: v[v["venue"].isin(keep)].reset_index(drop=True) for k, v in sim.items() if k != "truth"
    }
    return build_panel(tables), tables["order_books"]


# ---------------------------------------------------------------------------------------------
# the as-of join against pandas.merge_asof (an independent implementation)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asof_join_matches_pandas_merge_asof(seed):
    rng = np.random.default_rng(seed)
    keys = ["a", "b", "c"]
    left = pd.DataFrame(
        {
            "k": rng.choice(keys, 300),
            "t": T0 + pd.to_timedelta(rng.integers(0, 600, 300), unit="min"),
        }
    )
    right = pd.DataFrame(
        {
            "k": rng.choice(keys[:2], 80),  # key "c" has no right rows
            "t": T0 + pd.to_timedelta(rng.integers(0, 600, 80) * 60 + 30, unit="s"),
            "x": rng.normal(size=80),
        }
    )
    groups = left.groupby("k").indices
    got = _asof(left, right, by=["k"], left_groups=groups, tolerance_minutes=45.0)
    want = (
        pd.merge_asof(
            left.reset_index().sort_values("t"),
            right.sort_values("t", kind="stable"),
            on="t",
            by="k",
            direction="backward",
            tolerance=pd.Timedelta(minutes=45),
        )
        .set_index("index")
        .sort_index()
    )
    np.testing.assert_array_equal(got["x"], want["x"].to_numpy())
    assert np.isnan(got["x"]).any()
    assert not np.isnan(got["x"]).all()


def test_panel_rows_are_sorted_by_contract_and_time(sim_panel):
    p, _ = sim_panel
    order = p.sort_values(["venue", "symbol", "t"]).index
    assert (order == p.index).all()
    # okx and bybit both list BTC, ETH and SOL swaps: every bar has a cross-venue reference
    assert p["basis_bp"].notna().mean() > 0.99
    swaps = ~p["is_future"]
    assert p.loc[swaps, "basis_bp"].abs().median() < 50  # same underlying: a few bp apart
