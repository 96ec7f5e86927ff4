import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.quantile import QuantileMarginRegressor


@parametrize_with_checks(
    [QuantileMarginRegressor(coverage=0.9, n_estimators=5, min_child_samples=1, n_jobs=1)],
    expected_failed_checks=lambda _est: {
        "check_regressors_train": "a 90 % quantile is not the mean: R^2 > 0.5 does not apply",
    },
)
def test_sklearn_contract(estimator, check):
    check(estimator)


def _hetero(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2.0, n)
    y = x * rng.standard_normal(n)  # scale grows with x: the 90 % quantile is 1.2816 x
    return pd.DataFrame({"x": x}), y


def test_quantile_covers_and_tracks_scale():
    X, y = _hetero(20_000, 0)
    reg = QuantileMarginRegressor(coverage=0.9, n_estimators=100, min_child_samples=50).fit(X, y)
    Xt, yt = _hetero(20_000, 1)
    pred = reg.predict(Xt)
    assert np.mean(yt <= pred) == pytest.approx(0.9, abs=0.02)
    hi, lo = reg.predict(pd.DataFrame({"x": [1.9]}))[0], reg.predict(pd.DataFrame({"x": [0.6]}))[0]
    assert hi / lo == pytest.approx(1.9 / 0.6, rel=0.3)


def test_same_seed_same_model_and_contributions_sum_to_prediction():
    X, y = _hetero(5000, 2)
    a = QuantileMarginRegressor(n_estimators=30, random_state=3).fit(X, y)
    b = QuantileMarginRegressor(n_estimators=30, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    contrib = a.contributions(X.head(10))
    np.testing.assert_allclose(contrib.sum(axis=1), a.predict(X.head(10)), rtol=1e-9, atol=1e-12)


def test_bad_coverage():
    X, y = _hetero(100, 4)
    with pytest.raises(ValueError, match=r"coverage must be in \(0.5, 1\)"):
        QuantileMarginRegressor(coverage=0.3).fit(X, y)


def test_unchecked_predict_equals_predict_and_checks_the_width():
    X, y = _hetero(2000, 5)
    reg = QuantileMarginRegressor(n_estimators=20).fit(X, y)
    np.testing.assert_array_equal(reg.predict_unchecked(X.to_numpy()), reg.predict(X))
    with pytest.raises(ValueError, match="must have 1 columns"):
        reg.predict_unchecked(np.ones((3, 2)))


def test_seed_bagging_averages_the_single_seed_boosters():
    X, y = _hetero(5000, 6)
    x2 = X.assign(z=np.random.default_rng(7).standard_normal(len(X)))  # colsample has a choice
    bag = QuantileMarginRegressor(n_estimators=20, random_state=4, n_seeds=3).fit(x2, y)
    singles = [
        QuantileMarginRegressor(n_estimators=20, random_state=4 + i).fit(x2, y) for i in range(3)
    ]
    expected = np.mean([s.predict(x2) for s in singles], axis=0)
    np.testing.assert_allclose(bag.predict(x2), expected, rtol=1e-12)
    assert not np.allclose(singles[0].predict(x2), singles[1].predict(x2))  # seeds differ
    contrib = bag.contributions(x2.head(10))
    np.testing.assert_allclose(contrib.sum(axis=1), bag.predict(x2.head(10)), rtol=1e-9)
    np.testing.assert_allclose(
        bag.contributions_unchecked(x2.head(10).to_numpy()), contrib, rtol=1e-12
    )


def test_bad_n_seeds():
    X, y = _hetero(100, 8)
    with pytest.raises(ValueError, match="n_seeds must be >= 1, got 0"):
        QuantileMarginRegressor(n_seeds=0).fit(X, y)
