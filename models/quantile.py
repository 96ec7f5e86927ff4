"""LightGBM quantile regression with the scikit-learn contract (STYLE.md §6)."""

from __future__ import annotations

from typing import Any, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["QuantileMarginRegressor"]


class QuantileMarginRegressor(RegressorMixin, BaseEstimator):
    """The q-quantile of a (volatility-scaled) adverse move, by LightGBM's quantile objective.

    Parameters
    ----------
    coverage : the quantile level q in (0.5, 1), e.g. 0.99.
    n_estimators, learning_rate, num_leaves, min_child_samples, subsample, colsample_bytree,
    reg_lambda : LightGBM parameters (see ``lightgbm.LGBMRegressor``).
    n_jobs : threads; 2 on the reference machine.
    random_state : seed; the same seed gives the same model.
    n_seeds : boosters fitted with seeds ``random_state, random_state + 1, ...`` whose
        predictions are averaged (seed bagging). Row and column subsampling make a single
        tail-quantile booster noticeably seed-dependent; the average is steadier at the cost of
        ``n_seeds`` times the training time.

    Attributes
    ----------
    boosters_ : the fitted ``lightgbm.LGBMRegressor`` per seed.
    booster_ : the first of them.
    feature_names_in_ : feature names seen in ``fit`` (when X is a DataFrame).
    n_features_in_ : number of features.
    """

    def __init__(
        self,
        coverage: float = 0.99,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 200,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        n_jobs: int = 2,
        random_state: int = 0,
        n_seeds: int = 1,
    ) -> None:
        self.coverage = coverage
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.n_seeds = n_seeds

    def fit(
        self, X: pd.DataFrame | NDArray[Any], y: pd.Series | NDArray[Any], **fit_params: Any
    ) -> Self:
        if not 0.5 < self.coverage < 1:
            raise ValueError(f"coverage must be in (0.5, 1), got {self.coverage!r}")
        if int(self.n_seeds) < 1:
            raise ValueError(f"n_seeds must be >= 1, got {self.n_seeds!r}")
        X_arr, y_arr = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True)
        self.boosters_ = [
            self._booster(self.random_state + i).fit(X_arr, y_arr, **fit_params)
            for i in range(int(self.n_seeds))
        ]
        self.booster_ = self.boosters_[0]
        return self

    def _booster(self, seed: int) -> lgb.LGBMRegressor:
        return lgb.LGBMRegressor(
            objective="quantile",
            alpha=self.coverage,
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=seed,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )

    def _mean(self, X: NDArray[Any], **kwargs: Any) -> NDArray[np.float64]:
        # one booster per seed (models pickled before seed bagging have only booster_); the
        # lightgbm.Booster directly: the sklearn wrapper's checks cost more than a small predict
        boosters = getattr(self, "boosters_", None) or [self.booster_]
        threads = getattr(self, "predict_threads_", None) or self.n_jobs
        out = np.zeros(0)
        for i, b in enumerate(boosters):
            p = np.asarray(b.booster_.predict(X, num_threads=threads, **kwargs), dtype=np.float64)
            out = p if i == 0 else out + p
        return out / len(boosters)

    def predict(self, X: pd.DataFrame | NDArray[Any]) -> NDArray[np.float64]:
        check_is_fitted(self)
        X_arr = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self._mean(X_arr)

    def predict_unchecked(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """``predict`` without scikit-learn's input validation, for hot paths whose matrix is
        built in the fitted column order (``models.fair.model_matrix``); about 1 ms less a call.
        """
        check_is_fitted(self)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"predict_unchecked: X must have {self.n_features_in_} columns, got {X.shape}"
            )
        return self._mean(X)

    def contributions_unchecked(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """``contributions`` without scikit-learn's input validation (see
        ``predict_unchecked``)."""
        check_is_fitted(self)
        return self._mean(X, pred_contrib=True)

    def set_threads(self, n_jobs: int) -> None:
        """Threads used by predictions from now on (1 is fastest on small inputs)."""
        self.predict_threads_ = int(n_jobs)
        for b in getattr(self, "boosters_", None) or [self.booster_]:
            b.set_params(n_jobs=n_jobs)

    def contributions(self, X: pd.DataFrame | NDArray[Any]) -> NDArray[np.float64]:
        """Per-row feature contributions (LightGBM ``pred_contrib``): (n, n_features + 1), the
        last column the bias; each row sums to ``predict`` (with several seeds, the mean of the
        boosters' contributions)."""
        check_is_fitted(self)
        X_arr = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self._mean(X_arr, pred_contrib=True)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
