"""The peer view: a model of the PUBLISHED initial margin rate from risk and notional.

Where :mod:`models.fair` asks "what should this tier charge for its risk?", the peer model asks
"what do venues charge for this risk and size?". It is fitted on the published rates of every
venue and contract, on features that describe the risk (volatility, liquidity, notional) and not
the venue, so that a venue's residual reads "charges 40 % less than its peers for the same risk".
It never sees our own fair margin.

The fit is LightGBM with the L2 objective on log(published rate), with a monotone (non-decreasing)
constraint in log notional: margin does not fall with position size. Missing risk features (a
contract without bars) are allowed: LightGBM routes NaN, so unpriced schedules still get a peer
view from their notional and contract type.

:func:`leave_one_group_out` predicts each venue's rows from a model fitted on the OTHER venues
only, so a venue is never its own peer.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from features._checks import FairmarginInputError

__all__ = ["PEER_FEATURES", "PeerMarginRegressor", "leave_one_group_out", "peer_features"]

ArrayLikeRate = NDArray[np.float64] | pd.Series

PEER_FEATURES = ["log_notional", "log_daily_vol", "log_daily_traded_notional", "linear", "future"]


def peer_features(
    notional: NDArray[np.float64] | pd.Series,
    daily_vol: NDArray[np.float64] | pd.Series,
    daily_traded_notional: NDArray[np.float64] | pd.Series,
    linear: NDArray[np.bool_] | pd.Series,
    future: NDArray[np.bool_] | pd.Series,
) -> pd.DataFrame:
    """The peer model's design matrix (columns :data:`PEER_FEATURES`).

    Parameters
    ----------
    notional : position notional, quote currency (> 0).
    daily_vol : standard deviation of daily log returns (fraction; NaN where unknown).
    daily_traded_notional : trailing traded notional per day, quote currency (NaN where unknown).
    linear, future : contract flags.
    """
    n = np.asarray(notional, dtype=np.float64)
    if np.any(~(n > 0)):
        raise FairmarginInputError(
            f"peer_features: notional must be > 0, got {n[~(n > 0)][:3].tolist()}"
        )
    vol = np.asarray(daily_vol, dtype=np.float64)
    traded = np.asarray(daily_traded_notional, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_vol = np.where(vol > 0, np.log(np.where(vol > 0, vol, 1.0)), np.nan)
        log_traded = np.where(traded > 0, np.log(np.where(traded > 0, traded, 1.0)), np.nan)
    return pd.DataFrame(
        {
            "log_notional": np.log(n),
            "log_daily_vol": log_vol,
            "log_daily_traded_notional": log_traded,
            "linear": np.asarray(linear, dtype=np.float64),
            "future": np.asarray(future, dtype=np.float64),
        }
    )


class PeerMarginRegressor(RegressorMixin, BaseEstimator):
    """Published initial margin rate from risk features and notional (L2 on log rate).

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples : LightGBM settings (few rows:
        schedules have tens to thousands of tiers, so the defaults are small).
    monotone_feature : name of the column the prediction must not fall with (None: no
        constraint); with a plain array X, the column index is looked up in ``feature_names_in_``
        and the constraint is skipped if absent.
    random_state : seed.

    Attributes
    ----------
    booster_ : the fitted ``LGBMRegressor`` (target: log rate).
    n_features_in_, feature_names_in_ : as in scikit-learn.
    """

    def __init__(
        self,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 8,
        min_child_samples: int = 5,
        monotone_feature: str | None = "log_notional",
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.monotone_feature = monotone_feature
        self.random_state = random_state

    def fit(self, X: pd.DataFrame | NDArray[np.float64], y: ArrayLikeRate) -> Self:
        """Fit on published rates ``y`` (fractions in (0, 1])."""
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators!r}")
        X_arr, y_arr = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True)
        y_arr = np.asarray(y_arr, dtype=np.float64)
        if np.any(~(y_arr > 0)):
            raise ValueError(
                f"PeerMarginRegressor: published rates must be > 0, got {y_arr[~(y_arr > 0)][:3]}"
            )
        constraints = [0] * X_arr.shape[1]
        names = list(getattr(self, "feature_names_in_", []))
        if self.monotone_feature is not None and self.monotone_feature in names:
            constraints[names.index(self.monotone_feature)] = 1
        self.booster_ = LGBMRegressor(
            objective="regression",
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            min_child_weight=1e-6,
            monotone_constraints=constraints,
            monotone_constraints_method="advanced",
            random_state=self.random_state,
            n_jobs=1,
            verbose=-1,
        ).fit(X_arr, np.log(y_arr))
        return self

    def predict(self, X: pd.DataFrame | NDArray[np.float64]) -> NDArray[np.float64]:
        """Expected published rate (fraction), the exponential of the fitted log rate."""
        check_is_fitted(self)
        X_arr = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return np.exp(np.asarray(self.booster_.predict(X_arr), dtype=np.float64))


def leave_one_group_out(
    X: pd.DataFrame,
    y: ArrayLikeRate,
    groups: ArrayLikeRate | NDArray[np.object_],
    *,
    estimator: PeerMarginRegressor | None = None,
) -> NDArray[np.float64]:
    """Peer-expected rate of each row from a model fitted on the other groups (venues) only.

    Rows of a group that is alone (no other group to learn from) get NaN.
    """
    g = np.asarray(groups, dtype=object)
    y_arr = np.asarray(y, dtype=np.float64)
    if len(g) != len(X) or len(y_arr) != len(X):
        raise FairmarginInputError(
            f"leave_one_group_out: X, y and groups must have the same length, got "
            f"{len(X)}, {len(y_arr)}, {len(g)}"
        )
    base = estimator if estimator is not None else PeerMarginRegressor()
    out = np.full(len(X), np.nan)
    for name in pd.unique(g):
        test = g == name
        if test.all():
            continue
        model = PeerMarginRegressor(**base.get_params()).fit(X[~test], y_arr[~test])
        out[test] = model.predict(X[test])
    return out
