"""Baselines on known processes: Gaussian random walks with intrabar paths (so the reflection
principle holds), checked against their known coverage, plus golden values from independent
code paths and causality."""

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from models.baselines import (
    EwmaBaseline,
    FilteredHSBaseline,
    HistoricalSimulationBaseline,
    PublishedMarginBaseline,
    conformal_quantile,
    make_baseline,
)
from models.fair import add_labels

SUB = 30  # intrabar steps: high/low come from a path, not just the close
Q = 0.99


def _walk(n_bars=6000, sigma_bar=0.01, symbols=("A", "B"), seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for sym in symbols:
        steps = rng.standard_normal((n_bars, SUB)) * sigma_bar / np.sqrt(SUB)
        logp = np.cumsum(steps.ravel()).reshape(n_bars, SUB)
        p = 100.0 * np.exp(logp)
        frames.append(
            pd.DataFrame(
                {
                    "venue": "sim",
                    "symbol": sym,
                    "t": pd.date_range("2024-01-01 01:00", periods=n_bars, freq="1h", tz="UTC"),
                    "base": sym,
                    "linear": True,
                    "bar_minutes": 60.0,
                    "high": p.max(axis=1),
                    "low": p.min(axis=1),
                    "close": p[:, -1],
                    "sigma_ann": sigma_bar * np.sqrt(24 * 365),
                }
            )
        )
    return add_labels(pd.concat(frames, ignore_index=True), horizons_minutes=(60, 240))


@pytest.fixture(scope="module")
def walk():
    return _walk()


def _exception_rate(model, panel, cutoff, h, side):
    grid = model.quantile_grid(panel.drop(columns=[c for c in panel if c.startswith("y_")]))
    j = list(grid.horizons).index(h)
    test = (panel["t"] > cutoff).to_numpy()
    f = grid.quantile[side][test, j]
    y = panel[f"y_{side}_{h}"].to_numpy()[test]
    ok = np.isfinite(f) & np.isfinite(y)
    step = h // 60
    # non-overlapping observations
    f, y = f[ok][::step], y[ok][::step]
    return float(np.mean(y > f)), f


@pytest.mark.parametrize(
    ("model", "tol"),
    [
        # lambda 0.995 (about 400 effective returns): with RiskMetrics' 0.94 (about 32) the
        # estimated sigma is noisy (sd ~12 %), which fattens the tail of move / sigma_hat and
        # the normal quantile then under-covers even on Gaussian data, as it should.
        (
            EwmaBaseline(coverage=Q, horizons_minutes=(60, 240), distribution="normal", lam=0.995),
            0.006,
        ),
        (FilteredHSBaseline(coverage=Q, horizons_minutes=(60, 240)), 0.006),
        (HistoricalSimulationBaseline(coverage=Q, horizons_minutes=(60, 240)), 0.008),
    ],
    ids=["ewma_normal", "fhs_garch", "hs"],
)
def test_baseline_covers_about_q_on_a_gaussian_walk(walk, model, tol):
    # 2 symbols x 3000 test bars: at H = 1 bar 6000 observations, 60 expected exceptions,
    # binomial sd 0.13 %; at 4 bars 1500 observations, sd 0.26 %. Tolerances are >= 2.3 sd.
    cutoff = walk["t"].iloc[2999]
    model.fit(walk, cutoff=cutoff)
    for h in (60, 240):
        for side in ("long", "short"):
            rate, _ = _exception_rate(model, walk, cutoff, h, side)
            assert abs(rate - (1 - Q)) < tol, (h, side, rate)


def test_ewma_normal_factor_is_near_one_on_brownian_paths(walk):
    # For Brownian motion the reflection principle is exact: the 90 % quantile of the running
    # extreme over sigma sqrt(h) is z_0.95 = 1.645, so the fitted excursion factor is ~1
    # (a little below: 30 intrabar steps miss part of the true extreme).
    m = EwmaBaseline(coverage=Q, horizons_minutes=(60, 240)).fit(walk, cutoff=walk["t"].iloc[2999])
    for side in ("long", "short"):
        for h in (60, 240):
            assert 0.85 < m.excursion_[side][h] < 1.03


def test_student_t_is_wider_than_normal_on_fat_tails():
    # Student-t(3) returns: the fitted df is small and the t quantile exceeds the normal one.
    rng = np.random.default_rng(5)
    walk = _walk(n_bars=3000, symbols=("A",), seed=1)
    r = rng.standard_t(3, size=len(walk)) * 0.01 / np.sqrt(3.0)
    close = 100 * np.exp(np.cumsum(r))
    walk = walk.assign(close=close, high=close, low=close)
    walk = add_labels(
        walk[[c for c in walk if not c.startswith("y_")]], horizons_minutes=(60, 240)
    )
    cutoff = walk["t"].iloc[2000]
    t_model = EwmaBaseline(coverage=Q, horizons_minutes=(60, 240), distribution="t")
    n_model = EwmaBaseline(coverage=Q, horizons_minutes=(60, 240), distribution="normal")
    t_model.fit(walk, cutoff=cutoff)
    n_model.fit(walk, cutoff=cutoff)
    assert 2.5 <= t_model.df_ < 6
    rows = walk.drop(columns=[c for c in walk if c.startswith("y_")])
    qt = t_model.quantile_grid(rows).quantile["long"][-1]
    qn = n_model.quantile_grid(rows).quantile["long"][-1]
    assert (qt > qn).all()


def test_historical_simulation_matches_a_direct_computation(walk):
    # independent path: for the last row, the labels known at t (label rows t' <= t - h) over
    # the trailing 365 days, their 'higher' 99 % quantile by np.quantile.
    model = HistoricalSimulationBaseline(coverage=Q, horizons_minutes=(60, 240))
    model.fit(walk, cutoff=walk["t"].iloc[100])
    a = walk[walk["symbol"] == "A"].reset_index(drop=True)
    grid = model.quantile_grid(a.drop(columns=[c for c in a if c.startswith("y_")]))
    i = len(a) - 1
    for j, h in enumerate((60, 240)):
        hb = h // 60
        window = a[f"y_short_{h}"].to_numpy()[max(i - hb - 365 * 24 + 1, 0) : i - hb + 1]
        expected = np.quantile(window[np.isfinite(window)], Q, method="higher")
        assert grid.quantile["short"][i, j] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["ewma_normal", "ewma_t", "hs", "fhs_garch"])
def test_forecast_at_t_ignores_later_bars(walk, name):
    # causal filters: forecasts on a prefix equal those on the whole series
    model = make_baseline(name, coverage=Q, horizons_minutes=(60, 240))
    model.fit(walk, cutoff=walk["t"].iloc[1500])
    rows = walk[walk["symbol"] == "A"].drop(columns=[c for c in walk if c.startswith("y_")])
    full = model.quantile_grid(rows).quantile["long"]
    head = model.quantile_grid(rows.iloc[:2500]).quantile["long"]
    np.testing.assert_array_equal(full[:2500], head)


def test_fit_uses_only_labels_known_at_the_cutoff(walk):
    cutoff = walk["t"].iloc[2999]
    m1 = EwmaBaseline(coverage=Q, horizons_minutes=(60, 240)).fit(walk, cutoff=cutoff)
    later = walk.copy()
    for c in [c for c in later if c.startswith("y_")]:
        late = later["t"] + pd.Timedelta(minutes=int(c.rsplit("_", 1)[1])) > cutoff
        later.loc[late, c] = 99.0  # poison every label not known at the cutoff
    m2 = EwmaBaseline(coverage=Q, horizons_minutes=(60, 240)).fit(later, cutoff=cutoff)
    assert m1.excursion_ == m2.excursion_


def test_published_margin_is_the_first_tier_as_of_t():
    tiers = pd.DataFrame(
        {
            "venue": ["v", "v", "v"],
            "symbol": ["S", "S", "S"],
            "as_of": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-03"], utc=True),
            "tier": [1, 2, 1],
            "max_leverage": [50.0, 20.0, 25.0],
            "initial_margin_rate": [0.02, 0.05, np.nan],
        }
    )
    rows = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "S",
            "t": pd.to_datetime(["2023-12-31", "2024-01-02", "2024-01-04"], utc=True),
        }
    )
    m = PublishedMarginBaseline(horizons_minutes=(60, 240), margin_tiers=tiers)
    grid = m.fit(rows, cutoff=rows["t"].iloc[0]).quantile_grid(rows)
    # before any schedule: none; then tier 1's 2 %; then 1 / max_leverage = 4 %
    np.testing.assert_allclose(grid.quantile["long"][:, 0], [np.nan, 0.02, 0.04])
    np.testing.assert_allclose(grid.quantile["short"][:, 1], [np.nan, 0.02, 0.04])


def test_conformal_quantile_rank():
    # ceil((n + 1) q): n = 9, q = 0.5 -> rank 5 of 1..9 is 5; q = 0.99 -> rank 10 > n -> max
    s = np.arange(1.0, 10.0)
    assert conformal_quantile(s, 0.5) == 5.0
    assert conformal_quantile(s, 0.99) == 9.0


def test_bad_inputs(walk):
    with pytest.raises(FairmarginInputError, match="coverage must be in"):
        EwmaBaseline(coverage=1.2).fit(walk, cutoff=walk["t"].iloc[-1])
    with pytest.raises(FairmarginInputError, match="distribution must be 'normal' or 't'"):
        EwmaBaseline(distribution="cauchy").fit(walk, cutoff=walk["t"].iloc[-1])
    with pytest.raises(FairmarginInputError, match="not fitted"):
        EwmaBaseline().quantile_grid(walk)
    with pytest.raises(FairmarginInputError, match="margin_tiers must hold rows"):
        PublishedMarginBaseline().fit(walk, cutoff=walk["t"].iloc[-1])
    with pytest.raises(FairmarginInputError, match="name must be one of"):
        make_baseline("var", coverage=Q, horizons_minutes=(60,))
    with pytest.raises(FairmarginInputError, match="must be in increasing t"):
        HistoricalSimulationBaseline(horizons_minutes=(60,)).fit(
            walk, cutoff=walk["t"].iloc[-1]
        ).quantile_grid(walk.iloc[::-1])
    with pytest.raises(FairmarginInputError, match="no horizon of"):
        EwmaBaseline(horizons_minutes=(60, 240)).fit(walk, cutoff=walk["t"].iloc[10])
