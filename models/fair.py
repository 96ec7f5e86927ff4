"""The fair-initial-margin model: pooled LightGBM quantiles per side, conformally calibrated.

Targets are volatility-scaled adverse moves, ``y = move / (sigma_min x sqrt(h))`` with
``sigma_min`` the per-minute volatility known at t and ``h`` the horizon in minutes, pooled over
all venues, contracts and grid horizons (the horizon is an input). Per side, a
:class:`QuantileMarginRegressor` predicts the q-quantile of y; a held-out, time-ordered calibration
window turns ratio scores into per-horizon factors and an interval (:mod:`models.conformal`).
Quantiles are made monotone in H by a running maximum along the grid (LightGBM refuses monotone
constraints with the quantile objective).

The two sides are separate models, so a tail that happened to be fatter on one side in a short
history makes that side's margin higher than the other's even where the market is symmetric.
With ``side_asymmetry_z`` the log ratio of the sides is shrunk towards zero per horizon, by how
well the labelled history supports an asymmetry (:func:`side_asymmetry_weight`): a real,
persistent skew (crash risk) is kept; sampling noise is not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns
from models.conformal import (
    ScoreQuantiles,
    block_bootstrap_factor,
    block_resample,
    calibrate_scores,
    level_drift_sd,
)
from models.horizon import interpolate_power_law, running_max
from models.labels import SIDES, adverse_moves
from models.quantile import QuantileMarginRegressor

__all__ = [
    "FairMarginModel",
    "QuantileGrid",
    "TrainingFrame",
    "add_labels",
    "feature_columns",
    "model_matrix",
    "side_asymmetry_weight",
    "training_frame",
]

log = logging.getLogger(__name__)
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")

# Columns of the panel that are keys, raw levels or labels, never model inputs.
_NOT_FEATURES = {
    "venue",
    "symbol",
    "t",
    "base",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "sigma_bar",
    "sigma_ann",
    "traded_notional_per_minute",
    "bar_minutes",
    "linear",
}
# Annualised volatility columns: divided by sigma_ann so the model sees regimes, not levels.
_VOL_PREFIXES = ("rv_", "ewma_vol", "pk_", "gk_", "rs_", "yz_", "semivol", "atm_iv_")
# Per-bar return quantities: divided by sigma_bar.
_BAR_PREFIXES = ("var_", "es_", "ret_")
# Quote-currency depth: relative to the trailing traded notional per minute, in logs.
_DEPTH_PREFIXES = ("depth_", "book_slope")


def add_labels(panel: pd.DataFrame, *, horizons_minutes: Sequence[int]) -> pd.DataFrame:
    """Panel with label columns ``y_long_{h}``/``y_short_{h}`` (raw adverse moves, fractions).

    The panel rows of each contract sit on its regular bar grid (``build_panel``), so windows in
    bars are windows in time. A horizon that is not a whole number of bars is NaN for that
    contract.
    """
    require_columns(
        panel, ["venue", "symbol", "t", "high", "low", "close", "bar_minutes"], who="add_labels"
    )
    out = panel.copy()
    for h in horizons_minutes:
        out[f"y_long_{h}"] = np.nan
        out[f"y_short_{h}"] = np.nan
    for _, idx in panel.groupby(["venue", "symbol"], sort=False).indices.items():
        g = panel.iloc[idx]
        bar = int(g["bar_minutes"].iloc[0])
        usable = [h for h in horizons_minutes if h % bar == 0]
        if not usable:
            continue
        lab = adverse_moves(
            g.set_index("t")[["high", "low", "close"]],
            horizons_bars=[h // bar for h in usable],
            linear=bool(g["linear"].iloc[0]),
        )
        for h in usable:
            out.loc[out.index[idx], f"y_long_{h}"] = lab[f"long_{h // bar}"].to_numpy()
            out.loc[out.index[idx], f"y_short_{h}"] = lab[f"short_{h // bar}"].to_numpy()
    return out


def feature_columns(panel: pd.DataFrame) -> list[str]:
    """The numeric panel columns the model reads, in a stable order."""
    cols = []
    for c in panel.columns:
        if c in _NOT_FEATURES or c.startswith("y_"):
            continue
        if pd.api.types.is_numeric_dtype(panel[c]) or pd.api.types.is_bool_dtype(panel[c]):
            cols.append(c)
    return sorted(cols)


def model_matrix(
    rows: pd.DataFrame, horizon_minutes: NDArray[np.float64], *, features: Sequence[str]
) -> pd.DataFrame:
    """The model's input: scale-free features plus ``log_h`` (log horizon in minutes)."""
    sigma_ann = rows["sigma_ann"].to_numpy(dtype=np.float64)
    sigma_bar = rows["sigma_bar"].to_numpy(dtype=np.float64)
    traded = rows["traded_notional_per_minute"].to_numpy(dtype=np.float64)
    names = list(features)
    # one block conversion (a missing feature family is NaN), then per-family scaling by column
    v = np.array(rows.reindex(columns=names).to_numpy(dtype=np.float64, na_value=np.nan))
    vol = np.array([c.startswith(_VOL_PREFIXES) for c in names], dtype=bool)
    bar = np.array([c.startswith(_BAR_PREFIXES) for c in names], dtype=bool) & ~vol
    depth = np.array([c.startswith(_DEPTH_PREFIXES) for c in names], dtype=bool) & ~vol & ~bar
    with np.errstate(divide="ignore", invalid="ignore"):
        v[:, vol] /= sigma_ann[:, None]
        v[:, bar] /= sigma_bar[:, None]
        v[:, depth] = np.log1p(np.maximum(v[:, depth], 0.0) / traded[:, None])
        v[~np.isfinite(v)] = np.nan
        extra = np.column_stack(
            [np.log(sigma_ann), np.log(np.asarray(horizon_minutes, dtype=np.float64))]
        )
    return pd.DataFrame(
        np.hstack([v, extra]), index=rows.index, columns=[*names, "log_sigma_ann", "log_h"]
    )


@dataclass(frozen=True)
class TrainingFrame:
    """Stacked (row, horizon) training data. ``y`` maps side -> scaled targets."""

    X: pd.DataFrame
    y: dict[str, NDArray[np.float64]]
    t: NDArray[np.int64]  # decision time, ns since the epoch (UTC)
    h: NDArray[np.float64]
    base: NDArray[np.object_]
    scale: NDArray[np.float64]  # sigma_min x sqrt(h): fraction per unit of y


def _sigma_min(rows: pd.DataFrame) -> NDArray[np.float64]:
    return rows["sigma_bar"].to_numpy(dtype=np.float64) / np.sqrt(
        rows["bar_minutes"].to_numpy(dtype=np.float64)
    )


def training_frame(
    labelled: pd.DataFrame,
    *,
    horizons_minutes: Sequence[int],
    features: Sequence[str],
    sample_every_minutes: int,
    cutoff: pd.Timestamp,
) -> TrainingFrame:
    """Rows at decision times on a ``sample_every_minutes`` grid whose label is known at
    ``cutoff`` (t + h <= cutoff) and whose scale is known."""
    t = labelled["t"]
    epoch_min = (t - _EPOCH) // pd.Timedelta(minutes=1)
    on_grid = (epoch_min % sample_every_minutes == 0) & (labelled["sigma_bar"] > 0)
    base_rows = labelled[on_grid & (t <= cutoff)]
    parts: list[tuple[pd.DataFrame, dict[str, Any], NDArray[np.float64]]] = []
    for h in horizons_minutes:
        known = base_rows["t"] + pd.Timedelta(minutes=h) <= cutoff
        rows = base_rows[
            known & base_rows[f"y_long_{h}"].notna() & base_rows[f"y_short_{h}"].notna()
        ]
        if rows.empty:
            continue
        scale = _sigma_min(rows) * np.sqrt(h)
        ys: dict[str, NDArray[np.float64]] = {
            s: rows[f"y_{s}_{h}"].to_numpy(dtype=np.float64) / scale for s in SIDES
        }
        X = model_matrix(rows, np.full(len(rows), float(h)), features=features)
        parts.append(
            (
                X.assign(
                    _t=((rows["t"] - _EPOCH) // pd.Timedelta(1, "ns")).to_numpy(dtype=np.int64),
                    _base=rows["base"].to_numpy(),
                    _h=float(h),
                    _scale=scale,
                ),
                ys,
                scale,
            )
        )
    if not parts:
        raise FairmarginInputError(
            f"training_frame: no labelled rows known at {cutoff} (history too short?)"
        )
    X = pd.concat([p[0] for p in parts], ignore_index=True)
    y: dict[str, NDArray[np.float64]] = {
        s: np.concatenate([p[1][s] for p in parts]) for s in SIDES
    }
    meta = X[["_t", "_base", "_h", "_scale"]]
    return TrainingFrame(
        X=X.drop(columns=["_t", "_base", "_h", "_scale"]),
        y=y,
        t=meta["_t"].to_numpy(dtype=np.int64),
        h=meta["_h"].to_numpy(dtype=np.float64),
        base=meta["_base"].to_numpy(dtype=object),
        scale=meta["_scale"].to_numpy(dtype=np.float64),
    )


@dataclass(frozen=True)
class QuantileGrid:
    """Calibrated quantiles of each side on the horizon grid, as fractions of notional.

    Arrays have shape (n_rows, n_horizons); ``lower``/``upper`` bound the quantile (interval).
    ``raw`` is the uncalibrated scaled prediction (model units), for explanations.
    """

    horizons: NDArray[np.float64]
    quantile: dict[str, NDArray[np.float64]]
    lower: dict[str, NDArray[np.float64]]
    upper: dict[str, NDArray[np.float64]]
    scale: NDArray[np.float64]  # (n_rows, n_horizons): sigma_min x sqrt(h) x factor

    def at(
        self, side: str, horizon: NDArray[np.float64], which: str = "quantile"
    ) -> NDArray[np.float64]:
        """One side's quantile (power law in H between grid points) or bound at per-row
        horizons. A bound is the quantile times its ratio to it, linear in log H between grid
        points and held flat outside the grid, so lower <= quantile <= upper everywhere."""
        q = interpolate_power_law(self.horizons, self.quantile[side], horizon)
        if which == "quantile":
            return q
        table = {"lower": self.lower, "upper": self.upper}[which][side]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = table / self.quantile[side]
        lh = np.log(self.horizons)
        h = np.maximum(np.asarray(horizon, dtype=np.float64), 1e-9)
        x = np.clip(np.log(h), lh[0], lh[-1])
        seg = np.clip(np.searchsorted(lh, x, side="right") - 1, 0, lh.size - 2)
        rows = np.arange(x.size)
        w = (x - lh[seg]) / (lh[seg + 1] - lh[seg])
        return q * (ratio[rows, seg] * (1 - w) + ratio[rows, seg + 1] * w)


@dataclass
class FairMarginModel:
    """Fair-margin quantile model of both sides with conformal factors per horizon.

    Parameters
    ----------
    coverage : q.
    interval_level : confidence of [lower, upper].
    horizons_minutes : the label grid.
    regressor_params : passed to :class:`QuantileMarginRegressor`.
    calibration_fraction, max_calibration_days : the calibration window of the ``"split"``
        method.
    min_scores : a horizon with fewer calibration scores than this is dropped from the grid.
    min_independent_scores : so is a horizon whose calibration window holds fewer
        non-overlapping windows than this (summed over underlyings): its factor would be a guess;
        the power law through the shorter horizons extends the grid instead. The two shortest
        horizons with scores always stay (their interval is wide where their windows are few).
    calibration_method : ``"split"`` (default: train on the earlier part, calibrate on the most
        recent ``calibration_fraction``) or ``"crossfit"`` (two time folds, each scored by a
        model trained on the other, a day apart; the final model is trained on everything).
    side_asymmetry_z : shrink the long/short log ratio of the quantiles per horizon by the
        weight :func:`side_asymmetry_weight` estimates from the labelled history: an asymmetry
        less than ``side_asymmetry_z`` standard errors wide is dropped, wider ones are kept in
        part (0: keep each side's model as it is).
    fit_level : quantile level the regressors are trained at (None: ``coverage``). A lower level
        (e.g. 0.95) rests each leaf on many more exceedances than the 99 % tail has; the
        conformal factor (scores are ratios to the prediction) then carries it to ``coverage``,
        which assumes the conditional shape of the tail is stable across regimes.
    level_drift_block_minutes : the interval also carries the drift of the calibrated level
        between blocks of this length in the calibration window (:func:`level_drift_sd` on the
        scores of the horizons no longer than ``sample_every_minutes``, both sides pooled): a
        single as_of inherits that level error, which the factor's own bounds do not hold.
        0: off.

    Attributes
    ----------
    features_ : panel columns read.
    regressors_ : side -> fitted regressor.
    calibration_ : side -> {horizon: ScoreQuantiles}.
    horizons_ : grid horizons kept (enough labels and calibration scores).
    cutoff_ : the time the model was trained at: it saw nothing known after it.
    metrics_ : pinball loss and exceedance rate of the regressors' raw predictions (at
        ``fit_level``) on the calibration rows (out of fold), per side.
    side_weights_ : horizon -> weight in [0, 1] kept of the model's long/short log ratio (1: as
        fitted, 0: both sides at their geometric mean).
    level_sd_ : the measured drift (standard deviation of the log level across blocks).
    """

    coverage: float = 0.99
    interval_level: float = 0.90
    horizons_minutes: tuple[int, ...] = (15, 30, 60, 240, 1440, 4320, 10080)
    regressor_params: dict[str, Any] = field(default_factory=dict)
    calibration_fraction: float = 0.30
    max_calibration_days: float = 120.0
    min_scores: int = 200
    min_independent_scores: float = 20.0
    sample_every_minutes: int = 30
    calibration_method: str = "split"
    side_asymmetry_z: float = 2.576
    level_drift_block_minutes: float = 1440.0
    fit_level: float | None = None
    features_: list[str] = field(default_factory=list)
    regressors_: dict[str, QuantileMarginRegressor] = field(default_factory=dict)
    calibration_: dict[str, dict[int, ScoreQuantiles]] = field(default_factory=dict)
    horizons_: tuple[int, ...] = ()
    cutoff_: pd.Timestamp | None = None
    metrics_: dict[str, float] = field(default_factory=dict)
    side_weights_: dict[int, float] = field(default_factory=dict)
    level_sd_: float = 0.0

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> FairMarginModel:
        """Train on rows known at ``cutoff`` and calibrate on scores no model saw in training
        (``calibration_method``); a gap separates every training label from the scores."""
        if not 0.5 < self.coverage < 1:
            raise FairmarginInputError(f"coverage must be in (0.5, 1), got {self.coverage!r}")
        fit_level = self.coverage if self.fit_level is None else float(self.fit_level)
        if not 0.5 < fit_level <= self.coverage:
            raise FairmarginInputError(
                f"fit_level must be in (0.5, coverage={self.coverage}], got {self.fit_level!r}"
            )
        self.features_ = feature_columns(labelled)
        tf = training_frame(
            labelled,
            horizons_minutes=self.horizons_minutes,
            features=self.features_,
            sample_every_minutes=self.sample_every_minutes,
            cutoff=cutoff,
        )
        t_ns = tf.t
        first, last = t_ns.min(), t_ns.max()
        span_days = (last - first) / 86_400e9
        label_end_ns = t_ns + (tf.h * 60e9).astype(np.int64)
        if self.calibration_method == "crossfit":
            # two time folds: each is predicted by a model trained on the other (a gap of a
            # day between them), so the scores cover the whole history, not one recent window
            mid = int(first + (last - first) // 2)
            gap = int(86_400e9)
            folds = [
                (t_ns < mid, t_ns >= mid + gap),
                (t_ns >= mid, label_end_ns <= mid),
            ]
            cal_days = span_days
        elif self.calibration_method == "split":
            cal_days = min(self.calibration_fraction * span_days, self.max_calibration_days)
            cal_start_ns = int(pd.Timestamp(cutoff).value - cal_days * 86_400e9)
            folds = [(t_ns >= cal_start_ns, label_end_ns <= cal_start_ns)]
        else:
            raise FairmarginInputError(
                "calibration method must be 'crossfit' or 'split', "
                f"got {self.calibration_method!r}"
            )
        calib = np.zeros(t_ns.size, dtype=bool)
        for held, fit_rows in folds:
            calib |= held
            if fit_rows.sum() < 1000 or held.sum() < 100:
                raise FairmarginInputError(
                    f"FairMarginModel.fit: too little history before {cutoff}: "
                    f"{int(fit_rows.sum())} training and {int(held.sum())} calibration rows "
                    "(need >= 1000 and >= 100)"
                )
        n_groups = max(len(np.unique(tf.base[calib])), 1)
        rng = np.random.default_rng(int(self.regressor_params.get("random_state", 0)))
        kept: list[int] = []
        drift_var: list[float] = []
        for side in SIDES:
            pred_all = np.full(t_ns.size, np.nan)
            for held, fit_rows in folds:
                reg = QuantileMarginRegressor(coverage=fit_level, **self.regressor_params)
                reg.fit(tf.X[fit_rows], tf.y[side][fit_rows])
                pred_all[held] = reg.predict(tf.X[held])
            if self.calibration_method == "crossfit":
                reg = QuantileMarginRegressor(coverage=fit_level, **self.regressor_params)
                reg.fit(tf.X, tf.y[side])
            self.regressors_[side] = reg
            pred = np.maximum(pred_all[calib], 1e-6)
            y_cal = tf.y[side][calib]
            h_cal = tf.h[calib]
            t_cal = t_ns[calib]
            self.calibration_[side] = {}
            for h in self.horizons_minutes:
                m = h_cal == h
                if m.sum() < max(self.min_scores, 20):
                    continue
                # independent scores: non-overlapping windows per underlying in the window
                n_eff = n_groups * max(cal_days * 1440.0 / h - 1.0, 1.0)
                if n_eff < self.min_independent_scores and len(self.calibration_[side]) >= 2:
                    continue  # the two shortest horizons stay: a grid needs two points
                sq = calibrate_scores(
                    y_cal[m] / pred[m],
                    coverage=self.coverage,
                    interval_level=self.interval_level,
                    n_eff=n_eff,
                )
                # tails cluster in time (regimes, jumps): widen to a block bootstrap over
                # blocks of max(3 days, h) when that is wider than the binomial bound
                block_ns = int(max(3 * 1440.0, float(h)) * 60e9)
                b_lo, b_hi = block_bootstrap_factor(
                    y_cal[m] / pred[m],
                    t_cal[m] // block_ns,
                    coverage=self.coverage,
                    interval_level=self.interval_level,
                    rng=rng,
                )
                if np.isfinite(b_lo) and np.isfinite(b_hi):
                    sq = replace(
                        sq,
                        factor_lower=min(sq.factor_lower, b_lo, sq.factor),
                        factor_upper=max(sq.factor_upper, b_hi, sq.factor),
                    )
                self.calibration_[side][h] = sq
            self.metrics_.update(_side_metrics(side, y_cal, pred, fit_level))
            if self.level_drift_block_minutes > 0:
                drift_var.append(self._level_drift(y_cal, pred, h_cal, t_cal, side, rng) ** 2)
        kept = [h for h in self.horizons_minutes if all(h in self.calibration_[s] for s in SIDES)]
        if len(kept) < 2:
            raise FairmarginInputError(
                f"FairMarginModel.fit: fewer than two horizons of {self.horizons_minutes} have "
                "calibration scores; the history is too short for this grid"
            )
        self.horizons_ = tuple(kept)
        self.cutoff_ = cutoff
        self.level_sd_ = float(np.sqrt(np.mean(drift_var))) if drift_var else 0.0
        self.metrics_["level_drift_sd"] = self.level_sd_
        self.side_weights_ = {}
        if self.side_asymmetry_z > 0:
            # blocks of 3 days (tails cluster), a tenth of a short history (>= 10 blocks)
            block_minutes = min(3 * 1440.0, span_days * 1440.0 / 10)
            for h in kept:
                m = tf.h == h
                self.side_weights_[h] = side_asymmetry_weight(
                    tf.y["long"][m],
                    tf.y["short"][m],
                    t_ns[m] // int(max(block_minutes, float(h)) * 60e9),
                    coverage=self.coverage,
                    z=self.side_asymmetry_z,
                    rng=rng,
                )
            self.metrics_.update({f"side_weight_{h}": w for h, w in self.side_weights_.items()})
        log.info(
            "fitted fair-margin model at %s on %d rows, horizons %s",
            cutoff,
            int(t_ns.size),
            kept,
        )
        return self

    def _level_drift(
        self,
        y: NDArray[np.float64],
        pred: NDArray[np.float64],
        h: NDArray[np.float64],
        t: NDArray[np.int64],
        side: str,
        rng: np.random.Generator,
    ) -> float:
        """One side's level drift on its calibrated scores of non-overlapping horizons."""
        cal = self.calibration_[side]
        short = [hh for hh in cal if hh <= self.sample_every_minutes]
        if not short:
            return 0.0
        m = np.isin(h, short)
        factor = np.array([cal[int(hh)].factor for hh in h[m]])
        block_ns = int(self.level_drift_block_minutes * 60e9)
        return level_drift_sd(y[m] / (pred[m] * factor), t[m], t[m] // block_ns, rng=rng)

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        """Calibrated quantiles on the kept horizon grid for panel rows (one per position)."""
        if not self.regressors_:
            raise FairmarginInputError("FairMarginModel: not fitted")
        hs = np.asarray(self.horizons_, dtype=np.float64)
        n, g = len(rows), len(hs)
        sig = _sigma_min(rows)
        scale = sig[:, None] * np.sqrt(hs)[None, :]
        q: dict[str, NDArray[np.float64]] = {}
        lo: dict[str, NDArray[np.float64]] = {}
        hi: dict[str, NDArray[np.float64]] = {}
        X = model_matrix(rows.loc[rows.index.repeat(g)], np.tile(hs, n), features=self.features_)
        for side in SIDES:
            # X is built by model_matrix in the fitted column order: skip sklearn's checks
            pred = self.regressors_[side].predict_unchecked(X.to_numpy())
            raw = np.maximum(pred.reshape(n, g), 1e-6)
            cal = [self.calibration_[side][int(h)] for h in hs]
            fac = np.array([c.factor for c in cal])
            q[side] = running_max(raw * fac * scale)
            lo[side] = np.minimum(
                running_max(raw * np.array([c.factor_lower for c in cal]) * scale), q[side]
            )
            hi[side] = np.maximum(
                running_max(raw * np.array([c.factor_upper for c in cal]) * scale), q[side]
            )
        weights = getattr(self, "side_weights_", None)  # absent from models pickled before
        if weights:
            w = np.array([weights.get(int(h), 1.0) for h in hs])[None, :]
            mid = np.sqrt(q["long"] * q["short"])
            for side in SIDES:
                # q' = mid x (q / mid)^w; bounds move by the same ratio, then monotone in H
                ratio = (mid / q[side]) ** (1.0 - w)
                q[side] = running_max(q[side] * ratio)
                lo[side] = np.minimum(running_max(lo[side] * ratio), q[side])
                hi[side] = np.maximum(running_max(hi[side] * ratio), q[side])
        drift = getattr(self, "level_sd_", 0.0)  # absent from models pickled before
        if drift > 0:
            # the level drift joins the factor's uncertainty in quadrature (log scale)
            half = NormalDist().inv_cdf(0.5 + self.interval_level / 2) * drift
            for side in SIDES:
                with np.errstate(divide="ignore"):
                    a_lo = np.log(q[side] / lo[side])
                    a_hi = np.log(hi[side] / q[side])
                lo[side] = np.minimum(
                    running_max(q[side] * np.exp(-np.sqrt(a_lo**2 + half**2))), q[side]
                )
                hi[side] = np.maximum(
                    running_max(q[side] * np.exp(np.sqrt(a_hi**2 + half**2))), q[side]
                )
        return QuantileGrid(horizons=hs, quantile=q, lower=lo, upper=hi, scale=scale)


def side_asymmetry_weight(
    y_long: NDArray[np.float64],
    y_short: NDArray[np.float64],
    blocks: NDArray[np.int64],
    *,
    coverage: float,
    z: float,
    rng: np.random.Generator,
    n_boot: int = 100,
) -> float:
    """How much of a long/short asymmetry the data support, in [0, 1].

    ``a = log Q_q(y_long) - log Q_q(y_short)`` on the pooled (volatility-scaled) labels of one
    horizon; its sampling variance ``v`` comes from a bootstrap over whole blocks of time (tails
    cluster, windows overlap). The weight ``max(0, 1 - z^2 v / a^2)`` is a positive-part
    James-Stein factor at a significance level: an asymmetry less than ``z`` standard errors wide
    is shrunk to nothing (2.576: a two-sided 1 % test, as strict as the 99 % margin itself), one
    many standard errors wide is kept. The margin is the larger side, so a noisy difference would
    otherwise bias it upwards. With fewer than 10 blocks or 5 tail labels the data cannot support
    an asymmetry: 0.
    """
    yl = np.asarray(y_long, dtype=np.float64)
    ys = np.asarray(y_short, dtype=np.float64)
    b = np.asarray(blocks)
    ok = np.isfinite(yl) & np.isfinite(ys) & (yl > 0) & (ys > 0)
    yl, ys, b = yl[ok], ys[ok], b[ok]
    _, inverse = np.unique(b, return_inverse=True)
    n_blocks = int(inverse.max()) + 1 if inverse.size else 0
    if n_blocks < 10 or yl.size * (1.0 - coverage) < 5:
        return 0.0
    a = float(np.log(np.quantile(yl, coverage)) - np.log(np.quantile(ys, coverage)))
    order = np.argsort(inverse, kind="stable")
    yl, ys, inverse = yl[order], ys[order], inverse[order]
    starts = np.searchsorted(inverse, np.arange(n_blocks))
    lengths = np.diff(np.append(starts, inverse.size))
    draws = np.empty(n_boot)
    for i in range(n_boot):
        idx = block_resample(starts, lengths, rng)
        draws[i] = np.log(np.quantile(yl[idx], coverage)) - np.log(np.quantile(ys[idx], coverage))
    v = z * z * float(np.var(draws))
    if a * a <= v:
        return 0.0
    return 1.0 - v / (a * a)


def _side_metrics(
    side: str, y: NDArray[np.float64], pred: NDArray[np.float64], q: float
) -> dict[str, float]:
    diff = y - pred
    pinball = float(np.mean(np.maximum(q * diff, (q - 1) * diff)))
    return {
        f"pinball_loss_{side}": pinball,
        f"exceedance_rate_{side}": float(np.mean(y > pred)),
    }
