"""The fair-margin model recovers a known quantile: driftless GBM, where the reflection principle
gives the q-quantile of the running minimum."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from features._checks import FairmarginInputError
from models.fair import FairMarginModel, add_labels, side_asymmetry_weight
from models.horizon import running_max

SIGMAS = {"A": 0.5, "B": 0.8, "C": 1.1}  # annualised
MIN_PER_YEAR = 365 * 1440


def _panel(days=60, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    n_min = days * 1440
    for name, sig in SIGMAS.items():
        s = sig / np.sqrt(MIN_PER_YEAR)
        logp = np.cumsum(rng.standard_normal(n_min) * s - 0.5 * s * s)
        p = 100 * np.exp(logp).reshape(-1, 5)
        t = pd.date_range("2026-01-01 00:05", periods=p.shape[0], freq="5min", tz="UTC")
        r = np.diff(np.log(p[:, -1]), prepend=np.log(100.0))
        sigma_bar = pd.Series(r**2).ewm(halflife=288, min_periods=288).mean().pow(0.5).to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    "venue": "sim",
                    "symbol": name,
                    "t": t,
                    "base": name,
                    "linear": True,
                    "bar_minutes": 5,
                    "high": p.max(axis=1),
                    "low": p.min(axis=1),
                    "close": p[:, -1],
                    "sigma_bar": sigma_bar,
                    "sigma_ann": sigma_bar * np.sqrt(MIN_PER_YEAR / 5),
                    "traded_notional_per_minute": 1e5,
                    "rv_1d": pd.Series(r).rolling(288).std().to_numpy()
                    * np.sqrt(MIN_PER_YEAR / 5),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _reflection_quantile(sigma_ann, minutes, q):
    a = sigma_ann * np.sqrt(minutes / MIN_PER_YEAR) * stats.norm.ppf(1 - (1 - q) / 2)
    return 1 - np.exp(-a)  # long: (P0 - min P) / P0


@pytest.fixture(scope="module")
def fitted():
    horizons = (15, 60, 240)
    labelled = add_labels(_panel(), horizons_minutes=horizons)
    cutoff = labelled["t"].max()
    model = FairMarginModel(
        coverage=0.99,
        horizons_minutes=horizons,
        sample_every_minutes=15,
        regressor_params={"n_estimators": 60, "min_child_samples": 100, "n_jobs": 2},
    ).fit(labelled, cutoff=cutoff)
    return model, labelled


def _assert_reflection_at_the_end(model, labelled):
    """The long side's quantile at the last t is the reflection quantile of each symbol (5-minute
    lows miss the 1-minute path's extremes between samples, reflection is continuous: 25 %; the
    scale is itself an estimate from a 1-day half-life), inside its interval."""
    last = labelled[labelled["t"] == labelled["t"].max()]
    grid = model.quantile_grid(last)
    for i, name in enumerate(last["symbol"]):
        for j, h in enumerate(model.horizons_):
            want = _reflection_quantile(SIGMAS[name], h, 0.99)
            assert grid.quantile["long"][i, j] == pytest.approx(want, rel=0.25)
            assert (
                grid.lower["long"][i, j] <= grid.quantile["long"][i, j] <= grid.upper["long"][i, j]
            )


def test_recovers_the_reflection_quantile(fitted):
    _assert_reflection_at_the_end(*fitted)


def test_a_lower_fit_level_is_carried_to_q_by_the_conformal_factor():
    horizons = (15, 60, 240)
    labelled = add_labels(_panel(), horizons_minutes=horizons)
    model = FairMarginModel(
        coverage=0.99,
        fit_level=0.95,
        horizons_minutes=horizons,
        sample_every_minutes=15,
        regressor_params={"n_estimators": 60, "min_child_samples": 100, "n_jobs": 2},
    ).fit(labelled, cutoff=labelled["t"].max())
    assert model.regressors_["long"].coverage == 0.95
    # the boosters aim at the 95 % quantile: about 5 % of the calibration rows exceed them, and
    # the factor carries them up by about the reflection ratio z(0.995) / z(0.975) = 1.31
    assert 0.03 < model.metrics_["exceedance_rate_long"] < 0.08
    for h in model.horizons_:
        assert 1.15 < model.calibration_["long"][h].factor < 1.5
    _assert_reflection_at_the_end(model, labelled)
    with pytest.raises(FairmarginInputError, match=r"fit_level must be in \(0.5, coverage"):
        FairMarginModel(coverage=0.95, fit_level=0.99).fit(labelled, cutoff=labelled["t"].max())


def test_quantiles_are_monotone_in_horizon(fitted):
    model, labelled = fitted
    grid = model.quantile_grid(labelled.dropna(subset=["sigma_bar"]).tail(500))
    for side in ("long", "short"):
        assert (np.diff(grid.quantile[side], axis=1) >= 0).all()


def test_never_trains_on_labels_after_the_cutoff():
    horizons = (15, 60)
    labelled = add_labels(_panel(days=30, seed=1), horizons_minutes=horizons)
    cutoff = labelled["t"].min() + pd.Timedelta(days=20)
    params = {"n_estimators": 20, "min_child_samples": 50, "n_jobs": 2}
    a = FairMarginModel(horizons_minutes=horizons, regressor_params=params).fit(
        labelled, cutoff=cutoff
    )
    # scramble every price after the cutoff: the fitted model must not change
    later = labelled["t"] > cutoff
    scrambled = labelled.copy()
    for col in ("high", "low", "close"):
        scrambled.loc[later, col] = scrambled.loc[later, col].to_numpy()[::-1]
    scrambled = add_labels(
        scrambled.drop(columns=[c for c in scrambled if c.startswith("y_")]),
        horizons_minutes=horizons,
    )
    b = FairMarginModel(horizons_minutes=horizons, regressor_params=params).fit(
        scrambled, cutoff=cutoff
    )
    rows = labelled[labelled["t"] == cutoff]
    np.testing.assert_array_equal(
        a.quantile_grid(rows).quantile["long"], b.quantile_grid(rows).quantile["long"]
    )


def test_too_little_history_is_a_clear_error():
    labelled = add_labels(_panel(days=3), horizons_minutes=(15, 60))
    with pytest.raises(FairmarginInputError, match="too little history"):
        FairMarginModel(horizons_minutes=(15, 60)).fit(labelled, cutoff=labelled["t"].max())


def _blocks(n, per_block):
    return np.arange(n) // per_block


def test_side_weight_shrinks_noise_and_keeps_a_real_skew():
    rng = np.random.default_rng(5)
    n = 20_000
    # symmetric: both sides from the same law, independent draws; any sample skew is noise
    weights = [
        side_asymmetry_weight(
            np.abs(rng.standard_t(4, n)),
            np.abs(rng.standard_t(4, n)),
            _blocks(n, 100),
            coverage=0.99,
            z=1.0,
            rng=rng,
        )
        for _ in range(5)
    ]
    assert np.mean(weights) < 0.5
    # a real skew: the short side's tail 1.6x the long side's on every draw
    w_skew = side_asymmetry_weight(
        np.abs(rng.standard_t(4, n)),
        1.6 * np.abs(rng.standard_t(4, n)),
        _blocks(n, 100),
        coverage=0.99,
        z=2.576,
        rng=rng,
    )
    assert w_skew > 0.9
    # too few blocks to support any asymmetry, however skewed the sample: symmetric
    few = side_asymmetry_weight(
        np.abs(rng.standard_t(4, 900)),
        3.0 * np.abs(rng.standard_t(4, 900)),
        _blocks(900, 100),
        coverage=0.99,
        z=1.0,
        rng=rng,
    )
    assert few == 0.0


def test_side_weight_zero_puts_both_sides_at_their_geometric_mean(fitted):
    model, labelled = fitted
    rows = labelled.dropna(subset=["sigma_bar"]).tail(50)
    plain = replace(model, side_weights_={}).quantile_grid(rows)
    shrunk = replace(model, side_weights_=dict.fromkeys(model.horizons_, 0.0)).quantile_grid(rows)
    kept = replace(model, side_weights_=dict.fromkeys(model.horizons_, 1.0)).quantile_grid(rows)
    mid = np.sqrt(plain.quantile["long"] * plain.quantile["short"])
    np.testing.assert_allclose(shrunk.quantile["long"], shrunk.quantile["short"], rtol=1e-12)
    np.testing.assert_allclose(shrunk.quantile["long"], running_max(mid), rtol=1e-12)
    np.testing.assert_allclose(kept.quantile["short"], plain.quantile["short"], rtol=1e-12)
    for side in ("long", "short"):
        assert (shrunk.lower[side] <= shrunk.quantile[side]).all()
        assert (shrunk.quantile[side] <= shrunk.upper[side]).all()
        assert (np.diff(shrunk.quantile[side], axis=1) >= 0).all()


def test_fit_records_a_side_weight_per_horizon(fitted):
    model, _ = fitted
    assert set(model.side_weights_) == set(model.horizons_)
    assert all(0.0 <= w <= 1.0 for w in model.side_weights_.values())
    assert (
        model.metrics_[f"side_weight_{model.horizons_[0]}"]
        == model.side_weights_[model.horizons_[0]]
    )


def test_a_horizon_with_too_few_independent_windows_leaves_the_grid(fitted):
    _, labelled = fitted
    # 60 days, a 30 % calibration window of 18 days, 3 underlyings: at 240 minutes
    # 3 x (18 x 1440 / 240 - 1) = 321 non-overlapping windows, at 60 minutes 1293
    model = FairMarginModel(
        coverage=0.99,
        horizons_minutes=(15, 60, 240),
        sample_every_minutes=15,
        min_independent_scores=400,
        regressor_params={"n_estimators": 10, "min_child_samples": 100, "n_jobs": 2},
    ).fit(labelled, cutoff=labelled["t"].max())
    assert model.horizons_ == (15, 60)
    rows = labelled.dropna(subset=["sigma_bar"]).tail(3)
    grid = model.quantile_grid(rows)
    # beyond the grid the power law through the last two horizons carries on
    q240 = grid.at("long", np.full(3, 240.0))
    q15, q60 = grid.quantile["long"][:, 0], grid.quantile["long"][:, 1]
    b = np.log(q60 / q15) / np.log(60 / 15)
    np.testing.assert_allclose(q240, q60 * (240 / 60) ** b, rtol=1e-9)
    # however few the windows, the two shortest horizons stay: a short history still gets a grid
    strict = replace(model, min_independent_scores=1e9, regressors_={}, calibration_={})
    assert strict.fit(labelled, cutoff=labelled["t"].max()).horizons_ == (15, 60)


def test_level_drift_widens_the_interval_and_leaves_fair(fitted):
    model, labelled = fitted
    assert model.level_sd_ >= 0.0
    assert model.metrics_["level_drift_sd"] == model.level_sd_
    rows = labelled.dropna(subset=["sigma_bar"]).tail(50)
    plain = replace(model, level_sd_=0.0).quantile_grid(rows)
    drift = replace(model, level_sd_=0.1).quantile_grid(rows)
    for side in ("long", "short"):
        np.testing.assert_allclose(drift.quantile[side], plain.quantile[side], rtol=1e-12)
        # at least the drift's own 90 % half-width (1.645 x 0.1 in log) on each side
        assert (np.log(drift.upper[side] / drift.quantile[side]) >= 0.1645 - 1e-9).all()
        assert (np.log(drift.quantile[side] / drift.lower[side]) >= 0.1645 - 1e-9).all()
        assert (drift.upper[side] >= plain.upper[side] - 1e-15).all()
        assert (drift.lower[side] <= plain.lower[side] + 1e-15).all()
        assert (np.diff(drift.lower[side], axis=1) >= 0).all()
