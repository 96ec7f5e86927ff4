import numpy as np
import pytest
from scipy import stats

from features._checks import FairmarginInputError
from models.conformal import calibrate_scores, level_drift_sd


def test_factor_recovers_a_known_quantile():
    rng = np.random.default_rng(1)
    s = rng.lognormal(0.0, 0.3, size=200_000)
    got = calibrate_scores(s, coverage=0.99)
    true = np.exp(0.3 * stats.norm.ppf(0.99))
    assert got.method == "empirical"
    # 99 % quantile of 200k lognormal draws: standard error ~ 0.3 %
    assert got.factor == pytest.approx(true, rel=0.02)
    assert got.factor_lower <= got.factor <= got.factor_upper


def test_gpd_tail_when_too_few_scores_beyond_q():
    rng = np.random.default_rng(2)
    # Pareto with tail index 4: quantile (1 - p)^(-1/4)
    s = rng.pareto(4.0, size=300) + 1.0
    got = calibrate_scores(s, coverage=0.995, min_tail=5)
    assert got.method == "gpd"
    assert got.factor == pytest.approx(0.005 ** (-1 / 4), rel=0.35)


def test_interval_covers_the_true_quantile_at_about_its_level():
    rng = np.random.default_rng(3)
    true = stats.norm.ppf(0.99)
    hits = 0
    reps = 300
    for _ in range(reps):
        s = rng.standard_normal(2000)
        c = calibrate_scores(s, coverage=0.99, interval_level=0.90)
        hits += c.factor_lower <= true <= c.factor_upper
    # nominal 90 %; binomial sd over 300 reps ~ 1.7 %, order-statistic bounds are conservative
    assert 0.84 <= hits / reps <= 0.99


def test_fewer_independent_scores_widen_the_interval():
    rng = np.random.default_rng(4)
    s = rng.standard_normal(5000)
    wide = calibrate_scores(s, coverage=0.99, n_eff=200)
    narrow = calibrate_scores(s, coverage=0.99, n_eff=5000)
    assert wide.factor_upper - wide.factor_lower > narrow.factor_upper - narrow.factor_lower


def test_bad_inputs():
    with pytest.raises(FairmarginInputError, match="at least 20 finite scores"):
        calibrate_scores([1.0, 2.0], coverage=0.99)
    with pytest.raises(FairmarginInputError, match=r"coverage must be in \(0.5, 1\)"):
        calibrate_scores(np.ones(50), coverage=1.5)


def test_fractional_n_eff_gives_finite_bounds():
    # the model passes n_eff as a float (calibration days x groups / horizon)
    s = np.random.default_rng(5).standard_normal(3000)
    c = calibrate_scores(s, coverage=0.99, n_eff=77.4)
    assert np.isfinite([c.factor_lower, c.factor_upper]).all()
    assert c.factor_lower < c.factor < c.factor_upper


def test_block_bootstrap_widens_when_tails_cluster():
    from models.conformal import block_bootstrap_factor

    rng = np.random.default_rng(6)
    n_days, per_day = 60, 100
    days = np.repeat(np.arange(n_days), per_day)
    iid = rng.standard_normal(n_days * per_day)
    # the same marginal scale, but each day draws its own volatility: tails come in bunches
    clustered = rng.standard_normal(n_days * per_day) * np.repeat(
        rng.lognormal(0.0, 0.6, n_days), per_day
    )
    lo_i, hi_i = block_bootstrap_factor(iid, days, coverage=0.99, rng=np.random.default_rng(1))
    lo_c, hi_c = block_bootstrap_factor(
        clustered, days, coverage=0.99, rng=np.random.default_rng(1)
    )
    true_iid = stats.norm.ppf(0.99)
    assert lo_i < true_iid < hi_i
    # relative width: clustered tails leave the 99 % quantile far less certain
    c_c = calibrate_scores(clustered, coverage=0.99).factor
    assert (hi_c - lo_c) / c_c > 2 * (hi_i - lo_i) / true_iid


def test_block_bootstrap_rejects_misaligned_inputs():
    from models.conformal import block_bootstrap_factor

    with pytest.raises(FairmarginInputError, match="scores and blocks must align"):
        block_bootstrap_factor(
            np.ones(30), np.ones(29), coverage=0.99, rng=np.random.default_rng()
        )


def _drift_scores(tau, *, n_blocks=40, times_per_block=24, symbols=8, common=0.0, seed=0):
    """Log-normal scores: a level per block (sd ``tau``), a factor shared by the symbols at one
    time (sd ``common``) and an idiosyncratic part."""
    rng = np.random.default_rng(seed)
    n_times = n_blocks * times_per_block
    block = np.repeat(np.arange(n_blocks), times_per_block)
    level = rng.normal(0.0, tau, n_blocks)[block] if tau > 0 else np.zeros(n_times)
    shared = rng.normal(0.0, common, n_times) if common > 0 else np.zeros(n_times)
    log_s = (level + shared)[:, None] + rng.normal(0.0, 0.5, (n_times, symbols))
    times = np.repeat(np.arange(n_times), symbols)
    return np.exp(log_s).ravel(), times, np.repeat(block, symbols)


def test_level_drift_recovers_a_known_block_effect():
    estimates = []
    for seed in range(5):
        s, t, b = _drift_scores(0.15, seed=seed)
        estimates.append(level_drift_sd(s, t, b, rng=np.random.default_rng(seed)))
    assert 0.10 < np.mean(estimates) < 0.20


def test_level_drift_is_about_zero_without_a_block_effect():
    s, t, b = _drift_scores(0.0)
    assert level_drift_sd(s, t, b, rng=np.random.default_rng(0)) < 0.04


def test_level_drift_is_not_fooled_by_symbols_moving_together():
    # a strong factor shared across symbols at each time makes the block quantiles noisy; the
    # bootstrap resamples whole times, so that noise is not taken for drift (resampling rows
    # one by one sees a drift of 0.16-0.20 here)
    for seed in range(3):
        s, t, b = _drift_scores(0.0, common=0.8, seed=seed)
        assert level_drift_sd(s, t, b, rng=np.random.default_rng(0)) < 0.07
        assert level_drift_sd(s, np.arange(s.size), b, rng=np.random.default_rng(0)) > 0.12


def test_level_drift_needs_enough_blocks():
    s, t, b = _drift_scores(0.3, n_blocks=4)
    assert level_drift_sd(s, t, b, rng=np.random.default_rng(0)) == 0.0
    with pytest.raises(FairmarginInputError, match="align"):
        level_drift_sd(s, t[:-1], b, rng=np.random.default_rng(0))
