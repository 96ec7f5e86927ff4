"""Tests of the market simulator (pipelines/simulator.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kurtosis, norm

from pipelines import _sim_truth
from pipelines._sim_market import BookArrays, ContractPath, Instrument
from pipelines.simulator import (
    TABLE_COLUMNS,
    BasisPaths,
    PathModel,
    SimConfig,
    SimResult,
    book_liquidation_cost,
    run_simulation,
    simulate_extremes,
    simulate_market,
)

VALIDATOR = Path(__file__).resolve().parents[3] / "shared" / "tools" / "validate_bundle.py"
KEYS = {
    "contracts": ["venue", "symbol"],
    "margin_tiers": ["venue", "symbol", "as_of", "tier"],
    "ohlcv": ["venue", "symbol", "timeframe", "timestamp"],
    "order_books": ["venue", "symbol", "timestamp", "side", "level"],
    "option_quotes": ["venue", "symbol", "timestamp"],
    "funding_rates": ["venue", "symbol", "timestamp"],
    "truth": ["venue", "symbol", "as_of", "tier"],
}
# short regimes so that a 10-day bundle sees both calm and stressed spells
SMALL = SimConfig(days=10, mc_paths=2000, mean_calm_days=3.0, mean_stress_days=1.0)


@pytest.fixture(scope="module")
def sim() -> SimResult:
    return run_simulation(SMALL)


def _write(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)


# --- reproducibility and format -----------------------------------------------------------------


def test_same_seed_gives_identical_frames_and_parquet_bytes(tmp_path):
    cfg = SimConfig(days=7, mc_paths=200)
    a = simulate_market(cfg)
    b = simulate_market(cfg)
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    # the Monte-Carlo threads change the speed, never the numbers
    c = simulate_market(dataclasses.replace(cfg, mc_threads=1))
    pd.testing.assert_frame_equal(a["truth"], c["truth"])
    _write(a, tmp_path / "a")
    _write(b, tmp_path / "b")
    for name in a:
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (
            tmp_path / "b" / f"{name}.parquet"
        ).read_bytes(), name


def test_different_seed_gives_a_different_market(sim):
    other = simulate_market(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    mine = sim.tables
    assert not np.allclose(mine["ohlcv"]["close"], other["ohlcv"]["close"])
    assert not np.allclose(
        mine["truth"]["fair_initial_margin_rate"], other["truth"]["fair_initial_margin_rate"]
    )


def test_frames_have_contract_columns_dtypes_order_and_index(sim):
    tables = sim.tables
    assert set(tables) == set(KEYS)
    for name, df in tables.items():
        assert tuple(df.columns) == TABLE_COLUMNS[name], name
        assert isinstance(df.index, pd.RangeIndex), name
        assert df.index.start == 0, name
        srt = df.sort_values(KEYS[name], kind="stable", ignore_index=True)
        pd.testing.assert_frame_equal(df, srt, obj=name)
        assert not df.duplicated(KEYS[name]).any(), name
        for col in df.columns:
            dt = df[col].dtype
            if col in ("timestamp", "as_of", "expiry"):
                assert str(dt) == "datetime64[ns, UTC]", (name, col, dt)
            elif col in ("linear", "planted"):
                assert dt == np.dtype(bool), (name, col, dt)
            elif col in ("tier", "level"):
                assert dt == np.dtype(np.int64), (name, col, dt)
            elif pd.api.types.is_string_dtype(dt):
                assert dt == pd.StringDtype(na_value=np.nan), (name, col, dt)
            else:
                assert dt == np.dtype(np.float64), (name, col, dt)


@pytest.mark.skipif(not VALIDATOR.exists(), reason="the shared bundle checker is not present")
def test_written_bundle_passes_the_independent_checker(sim, tmp_path):
    _write(sim.tables, tmp_path / "bundle")
    proc = subprocess.run(
        [sys.executable, str(VALIDATOR), str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout, proc.stdout


# --- structure --------------------------------------------------------------------------------


def test_market_structure(sim):
    t = sim.tables
    c = t["contracts"]
    swaps = c[c["type"] == "swap"]
    futures = c[c["type"] == "future"]
    assert swaps["venue"].nunique() >= 3
    assert swaps["base"].nunique() >= 3
    assert futures["base"].nunique() >= 3
    assert set(swaps["venue"]) >= {"binanceusdm", "bybit", "okx"}
    assert "BTC/USDT:USDT" in set(swaps["symbol"])
    end = SMALL.end_ts
    assert (futures["expiry"] > end + pd.Timedelta(days=14)).all()
    inverse = c[~c["linear"] & (c["type"] == "swap")]
    assert len(inverse) == 1
    assert inverse.iloc[0]["symbol"] == "BTC/USD:BTC"
    assert inverse.iloc[0]["settle"] == "BTC"
    options = c[c["type"] == "option"]
    assert set(options["base"]) >= {"BTC", "ETH"}
    assert set(options["venue"]) == {"deribit"}
    q = t["option_quotes"]
    assert set(q["underlying"]) == {"BTC", "ETH"}
    assert set(q["symbol"]) <= set(options["symbol"])
    assert (q["expiry"] > q["timestamp"]).all()
    days_out = (q["expiry"] - q["timestamp"]).dt.total_seconds() / 86400
    assert days_out.max() <= 92
    assert days_out.min() >= 1
    assert 0.2 < q["mark_iv"].median() < 2.0

    # venues differ in size: traded notional per minute on the BTC swap
    o = t["ohlcv"]
    btc = o[o["symbol"].isin(["BTC/USDT:USDT", "BTC/USDC:USDC"])]
    traded = (btc["volume"] * btc["close"]).groupby(btc["venue"]).sum()
    assert traded["binanceusdm"] > traded["bybit"] > traded["okx"] > traded["dydx"]

    # every swap and future has 25-level books on the bar grid at every snapshot
    b = t["order_books"]
    tradable = c[c["type"].isin(["swap", "future"])]
    assert set(map(tuple, b[["venue", "symbol"]].drop_duplicates().to_numpy())) == set(
        map(tuple, tradable[["venue", "symbol"]].to_numpy())
    )
    per_snap = b.groupby(["venue", "symbol", "timestamp", "side"]).size()
    assert (per_snap == 25).all()
    assert (b["level"].between(0, 24)).all()
    bar_ns = SMALL.bar_minutes * 60 * 10**9
    assert ((b["timestamp"].astype("int64") - SMALL.start_ts.value) % bar_ns == 0).all()
    assert b["timestamp"].max() == end

    # funding every 8 h per swap
    f = t["funding_rates"]
    assert set(f["symbol"]) == set(swaps["symbol"])
    gaps = f.groupby(["venue", "symbol"])["timestamp"].diff().dropna().unique()
    assert list(gaps) == [pd.Timedelta(hours=8)]


def test_margin_schedules_styles_and_latest_as_of(sim):
    mt = sim.tables["margin_tiers"]
    end = SMALL.end_ts
    c = sim.tables["contracts"]
    tradable = set(map(tuple, c.loc[c["type"] != "option", ["venue", "symbol"]].to_numpy()))
    latest = mt.groupby(["venue", "symbol"])["as_of"].max()
    assert set(latest.index) == tradable
    assert (latest == end).all()
    assert (mt.groupby(["venue", "symbol"])["as_of"].nunique() >= 2).all()
    # a single-tier [0, +inf) schedule exists
    n_tiers = mt.groupby(["venue", "symbol", "as_of"]).size()
    assert (n_tiers == 1).any()
    single = mt[mt.set_index(["venue", "symbol", "as_of"]).index.isin(n_tiers[n_tiers == 1].index)]
    assert (single["min_notional"] == 0).all()
    assert np.isposinf(single["max_notional"]).all()
    assert np.allclose(mt["max_leverage"] * mt["initial_margin_rate"], 1.0)
    assert np.allclose(mt["maintenance_margin_rate"], 0.5 * mt["initial_margin_rate"])

    # >= 2 policy styles, visible in the data: static schedules repeat the same rates,
    # volatility-scaled ones move with realised vol
    assert len(set(sim.venue_styles.values())) >= 2
    hist = mt[mt["as_of"] < end]

    def n_distinct(venue: str) -> int:
        g = hist[hist["venue"] == venue]
        per = g.groupby(["symbol", "as_of"])["initial_margin_rate"].apply(tuple)
        return int(per.groupby(level="symbol").nunique().max())

    assert sim.venue_styles["binanceusdm"] == "static"
    assert n_distinct("binanceusdm") == 1
    assert sim.venue_styles["bybit"] == "vol_scaled"
    assert n_distinct("bybit") >= 2


def test_truth_covers_exactly_latest_tiers_with_planted_bands(sim):
    mt = sim.tables["margin_tiers"]
    tr = sim.tables["truth"]
    latest = mt[mt["as_of"] == mt.groupby(["venue", "symbol"])["as_of"].transform("max")]
    key = ["venue", "symbol", "as_of", "tier"]
    m = latest.merge(tr, on=key, how="outer", indicator=True)
    assert (m["_merge"] == "both").all()
    d = m["planted_deviation"]
    np.testing.assert_allclose(d, m["initial_margin_rate"] / m["fair_initial_margin_rate"] - 1)
    under = m["planted"] & (d < 0)
    over = m["planted"] & (d > 0)
    assert d[under].between(-0.90, -0.40).all()
    assert d[over].between(0.40, 1.00).all()
    assert d[~m["planted"]].abs().le(0.10).all()
    assert 0.25 <= m["planted"].mean() <= 0.35
    m["base"] = m["symbol"].str.split("/").str[0]
    for col in ("venue", "base"):
        for name, g in m.groupby(col):
            gu, go = (
                g["planted"] & (g["planted_deviation"] < 0),
                g["planted"] & (g["planted_deviation"] > 0),
            )
            assert gu.any() or go.any(), (col, name)
            if col == "base" or len(g) >= 4:
                assert gu.any(), (col, name)
                assert go.any(), (col, name)
    # venue tendencies: binanceusdm leans over, okx leans under
    lean = m[m["planted"]].groupby("venue")["planted_deviation"].apply(lambda s: (s > 0).mean())
    assert lean["binanceusdm"] > 0.5 > lean["okx"]
    # published schedules stay valid: rates non-decreasing with tier
    assert (latest.groupby(["venue", "symbol"])["initial_margin_rate"].diff().dropna() >= 0).all()
    assert (tr["fair_initial_margin_rate"] > 0).all()
    assert (tr["fair_initial_margin_rate"] < 0.6).all()


# --- the truth, checked against independent computations on the bundle -------------------------


def _walk(prices: np.ndarray, amounts: np.ndarray, mid: float, notional: float) -> float:
    """Book walk written independently of the simulator: level by level, then 1.5x beyond."""
    left, qty = notional, 0.0
    for p, a in zip(prices, amounts, strict=True):
        take = min(left, p * a)
        qty += take / p
        left -= take
        if left <= 0:
            break
    if left > 0:
        qty += left / (mid + 1.5 * (prices[-1] - mid))
    return abs(notional / qty - mid) / mid


def test_truth_horizon_and_cost_match_the_bundle(sim):
    t = sim.tables
    end = SMALL.end_ts
    mt = t["margin_tiers"]
    latest = mt[mt["as_of"] == end]
    o = t["ohlcv"]
    window = o[(o["timestamp"] + pd.Timedelta(minutes=5) > end - pd.Timedelta(days=7))]
    assert (window.groupby(["venue", "symbol"]).size() == 7 * 288).all()
    traded = (window["volume"] * window["close"]).groupby(
        [window["venue"], window["symbol"]]
    ).sum() / (7 * 1440)
    books = t["order_books"]
    last_books = books[books["timestamp"] == books["timestamp"][books["timestamp"] <= end].max()]
    detail = sim.truth_detail.set_index(["venue", "symbol", "tier"])
    expiry = t["contracts"].set_index(["venue", "symbol"])["expiry"]
    for (venue, symbol), g in latest.groupby(["venue", "symbol"]):
        g = g.sort_values("tier")
        lo, hi = g["min_notional"].to_numpy(), g["max_notional"].to_numpy()
        if len(g) == 1:
            notional = np.array([1e6])
        else:
            notional = hi.copy()
            notional[-1] = min(hi[-1], 10 * lo[-1])
        h = 15 + notional / (0.10 * traded[(venue, symbol)])
        exp = expiry[(venue, symbol)]
        if pd.notna(exp):
            h = np.minimum(h, (exp - end).total_seconds() / 60)
        bk = last_books[(last_books["venue"] == venue) & (last_books["symbol"] == symbol)]
        bids = bk[bk["side"] == "bid"].sort_values("level")
        asks = bk[bk["side"] == "ask"].sort_values("level")
        mid = 0.5 * (bids["price"].iloc[0] + asks["price"].iloc[0])
        for i, tier in enumerate(g["tier"]):
            row = detail.loc[(venue, symbol, tier)]
            assert row["evaluated_notional"] == pytest.approx(notional[i], rel=1e-12)
            assert row["horizon_minutes"] == pytest.approx(h[i], rel=1e-9)
            long_cost = _walk(
                bids["price"].to_numpy(), bids["amount"].to_numpy(), mid, notional[i]
            )
            short_cost = _walk(
                asks["price"].to_numpy(), asks["amount"].to_numpy(), mid, notional[i]
            )
            assert row["cost_long"] == pytest.approx(long_cost, rel=1e-9)
            assert row["cost_short"] == pytest.approx(short_cost, rel=1e-9)
            fair = max(row["q_long"] + long_cost, row["q_short"] + short_cost)
            assert row["fair"] == pytest.approx(fair, rel=1e-12)
    assert sim.truth_detail["horizon_minutes"].max() < min(
        grid[-1] for grid in sim.mc_horizons_minutes.values()
    )


def test_truth_fair_rises_with_tier_and_implied_horizon_is_consistent(sim):
    tr = sim.tables["truth"]
    det = sim.truth_detail
    assert (tr.groupby(["venue", "symbol"])["fair_initial_margin_rate"].diff().dropna() > 0).all()
    ih = tr["implied_horizon_minutes"].to_numpy()
    h = det["horizon_minutes"].to_numpy()
    d = tr["planted_deviation"].to_numpy()
    finite = np.isfinite(ih)
    assert finite[~tr["planted"].to_numpy()].mean() > 0.9
    # g(H) = fair at the evaluated horizon and g rises with H: published above fair <=> H* above H
    assert np.all((ih[finite] - h[finite]) * np.sign(d[finite]) >= -1e-6 * h[finite])
    inline = finite & ~tr["planted"].to_numpy()
    ratio = ih[inline] / h[inline]
    assert ratio.min() > 0.5
    assert ratio.max() < 2.0
    # a finite implied horizon lies on the Monte-Carlo grid of its underlying
    top = (
        tr["symbol"]
        .str.split("/")
        .str[0]
        .map({u: g[-1] for u, g in sim.mc_horizons_minutes.items()})
    )
    assert (ih[finite] >= 1.0).all()
    assert (ih[finite] <= top.to_numpy()[finite]).all()


def test_truth_scale_is_plausible_for_a_short_horizon(sim):
    """At H ~ 15-20 min the quantile is the 99 % max excursion of a few-bp-per-minute process:
    between 2 and 6 conditional sds (Gaussian reflection gives 2.58, fat tails more)."""
    det = sim.truth_detail
    first = det[(det["venue"] == "binanceusdm") & (det["symbol"] == "BTC/USDT:USDT")].iloc[0]
    o = sim.tables["ohlcv"]
    btc = o[(o["venue"] == "binanceusdm") & (o["symbol"] == "BTC/USDT:USDT")]
    r = np.diff(np.log(btc["close"].to_numpy()[-288:]))
    sd_h = r.std() * np.sqrt(first["horizon_minutes"] / 5)
    assert 1.5 * sd_h < first["q_long"] < 8 * sd_h


# --- the Monte-Carlo engine on known answers ----------------------------------------------------


def test_mc_running_extremes_match_the_reflection_principle():
    """Driftless Brownian motion, sigma per minute, monitored each minute.

    Continuous monitoring: P(max_{s<=T} W >= a) = 2 Phi(-a / (sigma sqrt T)), so the q-quantile of
    the maximum (and of minus the minimum) is sigma sqrt(T) Phi^-1(1 - (1 - q) / 2). Monitoring at
    n = T steps lowers it by 0.5826 sigma sqrt(dt) (Broadie, Glasserman and Kou 1997; the error of
    that correction is o(sqrt dt)). MC error of a q-quantile: sd = sqrt(q (1 - q) / n) / f(Q), with
    the density of the maximum f(Q) = 2 phi(z) / (sigma sqrt T): relative sd
    sqrt(q (1 - q) / n) / (2 phi(z) z) = 0.67 % at n = 40,000; tolerance 4 sd + 0.5 %.
    """
    sigma, q, n = 1e-3, 0.99, 40_000
    model = PathModel(omega=sigma**2, alpha=0.0, beta=0.0, t_df=None)
    horizons = [60, 240, 1440]
    run_min, run_max = simulate_extremes(
        model,
        h0=sigma**2,
        stressed0=False,
        horizons=horizons,
        n_paths=n,
        rng=np.random.default_rng(20260101),
    )
    assert run_min.shape == run_max.shape == (1, 3, n)
    z = norm.ppf(1 - (1 - q) / 2)
    rel_sd = np.sqrt(q * (1 - q) / n) / (2 * norm.pdf(z) * z)
    for i, t in enumerate(horizons):
        continuous = sigma * np.sqrt(t) * z
        expected = continuous - 0.5826 * sigma
        for sample in (-run_min[0, i], run_max[0, i]):
            got = np.quantile(sample, q)
            assert got == pytest.approx(expected, rel=4 * rel_sd + 0.005), t
    # the running extremes include the start and never shrink
    assert (run_min <= 0).all()
    assert (run_max >= 0).all()
    assert (np.diff(run_max, axis=1) >= 0).all()
    assert (np.diff(run_min, axis=1) <= 0).all()


def test_mc_first_minute_variance_has_regime_and_jumps():
    """Over one minute x_1 = min + max (one of them is the start, 0). Forced into the stressed
    regime (switch probability 1), Var(x_1) = m^2 h0 + rate * f * E[J^2], E[J^2] = s^2 df/(df-2).
    Here 4e-6 + 0.01 * 3 * 2.5e-5 * 5/3 = 5.25e-6; sample-variance relative sd ~ sqrt((kurt - 1)
    / n) < 1.5 % at n = 200,000 (kurtosis < 40): tolerance 6 %."""
    model = PathModel(
        omega=1e-7,
        alpha=0.05,
        beta=0.85,
        t_df=5.0,
        stress_vol_multiplier=2.0,
        p_calm_to_stress=1.0,
        p_stress_to_calm=0.0,
        jump_rates=(0.01,),
        jump_stress_factor=3.0,
        jump_scale=5e-3,
        jump_df=5.0,
    )
    run_min, run_max = simulate_extremes(
        model,
        h0=1e-6,
        stressed0=False,
        horizons=[1],
        n_paths=200_000,
        rng=np.random.default_rng(5),
    )
    x1 = run_min[0, 0] + run_max[0, 0]
    expected = 4e-6 + 0.01 * 3 * 2.5e-5 * 5 / 3
    assert model.conditional_variance(np.array([1e-6]), np.array([True]))[0] == pytest.approx(
        expected
    )
    assert x1.var() == pytest.approx(expected, rel=0.06)


def test_mc_basis_moves_contract_prices_on_block_boundaries():
    """A basis that steps up by 1 % at the first block boundary (minute 5) and a near-still index:
    the contract's running max is ~0 through minute 4 and ~0.01 from minute 5."""
    model = PathModel(omega=1e-14, alpha=0.0, beta=0.0, t_df=None)
    level = np.array([[0.0, 0.01, 0.01, 0.01]])
    basis = BasisPaths(
        ou0=np.zeros(1),
        phi=np.zeros(1),
        innov_sd=np.zeros(1),
        level=level,
        scale=np.zeros_like(level),
    )
    run_min, run_max = simulate_extremes(
        model,
        h0=1e-14,
        stressed0=False,
        horizons=[4, 5, 12],
        n_paths=50,
        rng=np.random.default_rng(0),
        basis=basis,
    )
    np.testing.assert_allclose(run_max[0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(run_max[0, 1:], 0.01, atol=1e-5)
    np.testing.assert_allclose(run_min[0], 0.0, atol=1e-5)


def test_truth_quantiles_match_the_reflection_principle_for_linear_and_inverse(monkeypatch):
    """The truth pipeline on a driftless Gaussian index with no basis noise and a still basis.

    With a = sigma sqrt(H) z - 0.5826 sigma the 99 % quantile of the log max excursion (see the
    reflection test), the adverse moves are: linear long 1 - exp(-a), linear short exp(a) - 1,
    inverse long exp(a) - 1, inverse short 1 - exp(-a). H = 15 + N / (0.1 x 1e6): 60 and
    1000 minutes (1000 lies between grid points, so the power-law interpolation is used; its error
    for sqrt-like growth on a grid with ratio ~1.12 is < 0.1 %). Tolerance 4 MC sd + 0.5 %.
    """
    monkeypatch.setattr(_sim_truth, "basis_ou_params", lambda _inst: (0.0, 0.0, 0.0))
    sigma, n, q = 1e-3, 40_000, 0.99
    m = 1440
    lin = Instrument(
        venue="venue", symbol="X/USDT:USDT", kind="swap", underlying="BTC", quote="USDT",
        settle="USDT", linear=True, contract_size=1.0, expiry_ns=None,
        design_notional_per_min=1e6, spread_bps=1.0, gap_bps=1.0, tick=0.01, basis_mu=0.0,
        carry=0.0, n_tiers=2, style="static",
    )  # fmt: skip
    inv = dataclasses.replace(lin, symbol="X/USD:X", linear=False)
    path = ContractPath(np.zeros(m + 1), np.zeros(m + 1), np.zeros(m // 5 + 1))
    prices = 100.0 + np.arange(1, 4, dtype=np.float64)
    book = BookArrays(
        mark=np.array([0, m], dtype=np.int64),
        bid_price=np.vstack([200.0 - prices] * 2),
        bid_amount=np.full((2, 3), 1e9),
        ask_price=np.vstack([prices] * 2),
        ask_amount=np.full((2, 3), 1e9),
    )
    notional = np.array([4.5e6, 98.5e6])
    res = _sim_truth.truth_for_underlying(
        PathModel(omega=sigma**2, alpha=0.0, beta=0.0, t_df=None),
        h0=sigma**2,
        stressed0=False,
        instruments=[lin, inv],
        paths=[path, path],
        books=[book, book],
        notionals=[notional, notional],
        trailing=[1e6, 1e6],
        end_mark=m,
        start_ns=0,
        coverage=q,
        base_latency_minutes=15.0,
        participation=0.10,
        beyond_depth_multiplier=1.5,
        n_paths=n,
        rng=np.random.default_rng(11),
    )
    z = norm.ppf(1 - (1 - q) / 2)
    tol = 4 * np.sqrt(q * (1 - q) / n) / (2 * norm.pdf(z) * z) + 0.005
    h = np.array([60.0, 1000.0])
    a = sigma * np.sqrt(h) * z - 0.5826 * sigma
    lin_t, inv_t = res
    np.testing.assert_allclose(lin_t.horizon_minutes, h, rtol=1e-12)
    np.testing.assert_allclose(lin_t.q_long, -np.expm1(-a), rtol=tol)
    np.testing.assert_allclose(lin_t.q_short, np.expm1(a), rtol=tol)
    np.testing.assert_allclose(inv_t.q_long, np.expm1(a), rtol=tol)
    np.testing.assert_allclose(inv_t.q_short, -np.expm1(-a), rtol=tol)
    # the book: mid 100, first level 1 % away and deep: cost ~1 % on both sides
    np.testing.assert_allclose(lin_t.cost_long, 0.01, rtol=1e-6)
    np.testing.assert_allclose(lin_t.cost_short, 0.01, rtol=1e-6)
    np.testing.assert_allclose(
        lin_t.fair, np.maximum(lin_t.q_long, lin_t.q_short) + 0.01, rtol=1e-6
    )


def test_book_walk_on_a_flat_hand_built_book():
    bids = np.array([99.0, 98.0, 97.0])
    asks = np.array([101.0, 102.0, 103.0])
    ones = np.ones(3)
    # 150 into the bids: 99 fills level 0 (1 unit), 51 at 98 -> qty 149/98, VWAP 14700/149,
    # cost (100 - 14700/149) / 100 = 200/14900
    got = book_liquidation_cost(bids, ones, mid=100.0, notional=150.0, beyond_depth_multiplier=1.5)
    assert got == pytest.approx(200 / 14900, rel=1e-12)
    # 394 into the bids: 294 displayed, 100 beyond at 100 - 1.5 * 3 = 95.5;
    # qty 3 + 100/95.5 = 386.5/95.5, VWAP 394 * 95.5 / 386.5, cost 1023/38650
    got = book_liquidation_cost(bids, ones, mid=100.0, notional=394.0, beyond_depth_multiplier=1.5)
    assert got == pytest.approx(1023 / 38650, rel=1e-12)
    # 101 into the asks fills level 0 exactly: VWAP 101, cost 1 %
    got = book_liquidation_cost(asks, ones, mid=100.0, notional=101.0, beyond_depth_multiplier=1.5)
    assert got == pytest.approx(0.01, rel=1e-12)
    # 406 into the asks: 306 displayed, 100 at 100 + 1.5 * 3 = 104.5;
    # qty 3 + 100/104.5 = 413.5/104.5, VWAP 406 * 104.5 / 413.5, cost (42427 - 41350)/41350
    got = book_liquidation_cost(asks, ones, mid=100.0, notional=406.0, beyond_depth_multiplier=1.5)
    assert got == pytest.approx(1077 / 41350, rel=1e-12)
    with pytest.raises(ValueError, match=r"book_liquidation_cost: notional must be > 0, got 0\.0"):
        book_liquidation_cost(bids, ones, mid=100.0, notional=0.0, beyond_depth_multiplier=1.5)


# --- stylised facts -----------------------------------------------------------------------------


def test_stylised_facts(sim):
    o = sim.tables["ohlcv"]
    btc = o[(o["venue"] == "binanceusdm") & (o["symbol"] == "BTC/USDT:USDT")]
    r = np.diff(np.log(btc["close"].to_numpy()))
    assert kurtosis(r) > 1.0  # excess kurtosis (Fisher): fat tails
    a = np.abs(r - r.mean())
    acf1 = np.corrcoef(a[:-1], a[1:])[0, 1]
    acf12 = np.corrcoef(a[:-12], a[12:])[0, 1]
    # white noise would give |acf| ~ 1/sqrt(2880) ~ 0.02
    assert acf1 > 0.06
    assert acf12 > 0.06
    ann = r.std() * np.sqrt(365 * 288)
    assert 0.25 < ann < 1.5
    # cross-asset correlation through the common factor
    eth = o[(o["venue"] == "binanceusdm") & (o["symbol"] == "ETH/USDT:USDT")]
    r_eth = np.diff(np.log(eth["close"].to_numpy()))
    assert np.corrcoef(r, r_eth)[0, 1] > 0.4

    # books: spread wider and depth thinner in the stressed regime
    b = sim.tables["order_books"]
    top = b[b["level"] == 0].pivot_table(
        index=["venue", "symbol", "timestamp"], columns="side", values="price"
    )
    spread = ((top["ask"] - top["bid"]) / (0.5 * (top["ask"] + top["bid"]))).reset_index()
    spread["stressed"] = sim.stressed.reindex(pd.DatetimeIndex(spread["timestamp"])).to_numpy()
    assert spread["stressed"].any()
    assert (~spread["stressed"]).any()
    by = spread.groupby(["venue", "symbol", "stressed"])[0].mean().unstack()
    assert (by[True] > 1.2 * by[False]).all()
    depth = (
        b.assign(n=b["price"] * b["amount"]).groupby(["venue", "symbol", "timestamp"])["n"].sum()
    ).reset_index()
    depth["stressed"] = sim.stressed.reindex(pd.DatetimeIndex(depth["timestamp"])).to_numpy()
    dby = depth.groupby(["venue", "symbol", "stressed"])["n"].mean().unstack()
    assert (dby[True] < dby[False]).all()

    # option surface: the put wing over ATM steepens in stress
    q = sim.tables["option_quotes"]
    q = q[q["underlying"] == "BTC"]
    q = q.assign(m=np.log(q["strike"] / q["underlying_price"]))
    atm = q.loc[q.groupby(["timestamp", "expiry"])["m"].apply(lambda s: s.abs().idxmin())]
    wing = q.loc[q.groupby(["timestamp", "expiry"])["m"].idxmin()]
    skew = (
        wing.set_index(["timestamp", "expiry"])["mark_iv"]
        - atm.set_index(["timestamp", "expiry"])["mark_iv"]
    ).reset_index()
    skew["stressed"] = sim.stressed.reindex(pd.DatetimeIndex(skew["timestamp"])).to_numpy()
    s_by = skew.groupby("stressed")["mark_iv"].mean()
    assert s_by[True] > s_by[False] > 0


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 3}, r"SimConfig: days must be an int >= 7, got 3"),
        ({"start": "2026-01-01 12:00"}, r"SimConfig: start must be a UTC midnight"),
        ({"bar_minutes": 7}, r"SimConfig: bar_minutes must divide 60, got 7"),
        ({"book_interval_minutes": 7}, r"book_interval_minutes must be a multiple of bar_minutes"),
        ({"coverage": 1.0}, r"SimConfig: coverage must be in \(0.5, 1\), got 1.0"),
        ({"mc_paths": 10}, r"SimConfig: mc_paths must be an int >= 100, got 10"),
        ({"participation": 0.0}, r"SimConfig: participation must be in \(0, 1\], got 0.0"),
        ({"venues": ("binanceusdm", "ftx")}, r"SimConfig: venues must be distinct names from"),
        ({"underlyings": ()}, r"SimConfig: underlyings must be distinct names from"),
        ({"planted_share": 0.8}, r"SimConfig: planted_share must be in \[0, 0.5\], got 0.8"),
        ({"garch_alpha": 0.1, "garch_beta": 0.95}, r"garch_alpha, garch_beta must be >= 0"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimConfig(**kwargs)


def test_path_model_refuses_bad_parameters():
    with pytest.raises(ValueError, match=r"PathModel: omega must be > 0, got 0.0"):
        PathModel(omega=0.0, alpha=0.0, beta=0.0)
    with pytest.raises(
        ValueError, match="simulate_extremes: horizons must be strictly increasing"
    ):
        simulate_extremes(
            PathModel(omega=1e-6, alpha=0.0, beta=0.0),
            h0=1e-6,
            stressed0=False,
            horizons=[5, 5],
            n_paths=10,
            rng=np.random.default_rng(0),
        )
