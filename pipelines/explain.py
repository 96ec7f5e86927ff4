"""Drivers of fair margin in plain words.

LightGBM's per-row feature contributions (``pred_contrib=True``) of each side's quantile model,
taken at every grid horizon, are turned into percentage points of margin (times the row's scale
and the horizon's conformal factor, as the quantile itself is). A flags row then names its top
drivers on the binding side at the grid horizon nearest its H, each against the median of the
training panel: ``30-day ATM IV 85 % vs 52 % median adds +1.90 pp``.

The medians are kept on the model (``feature_medians_``, set by :func:`attach_medians` from the
panel it was trained on), so a logged model explains itself when it is served.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.fair import FairMarginModel, QuantileGrid, model_matrix
from models.labels import SIDES

__all__ = [
    "Contributions",
    "attach_medians",
    "contributions",
    "describe",
    "feature_medians",
    "nearest_grid_index",
]

MEDIANS_ATTR = "feature_medians_"

Fmt = Callable[[float], str]


def _pct(v: float) -> str:
    return f"{100 * v:.3g} %"


def _bp(v: float) -> str:
    return f"{v:.3g} bp"


def _bp_of_fraction(v: float) -> str:
    return f"{1e4 * v:.3g} bp"


def _money(v: float) -> str:
    a = abs(v)
    for div, unit in ((1e9, "bn"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _num(v: float) -> str:
    return f"{v:.3g}"


def _ratio(v: float) -> str:
    return f"{v:.3g}x"


def _volpts(v: float) -> str:
    return f"{100 * v:+.3g} vol pts"


def _minutes(v: float) -> str:
    if v >= 2880:
        return f"{v / 1440:.3g} d"
    if v >= 120:
        return f"{v / 60:.3g} h"
    return f"{v:.3g} min"


def _yesno(v: float) -> str:
    return "yes" if v >= 0.5 else "no"


def _window(w: str) -> str:
    """``1d`` -> ``1-day``, ``7d`` -> ``7-day``, ``4h`` -> ``4-hour``, ``30d`` -> ``30-day``."""
    m = re.fullmatch(r"(\d+)([mhdw])", w)
    if not m:
        return w
    unit = {"m": "minute", "h": "hour", "d": "day", "w": "week"}[m.group(2)]
    return f"{m.group(1)}-{unit}"


_ESTIMATORS = {
    "rv": "realised vol",
    "pk": "Parkinson vol",
    "gk": "Garman-Klass vol",
    "rs": "Rogers-Satchell vol",
    "yz": "Yang-Zhang vol",
}

# (pattern, label builder, formatter); the first match wins.
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str], Fmt]] = [
    (re.compile(r"atm_iv_(\w+)"), lambda m: f"{_window(m[1])} ATM IV", _pct),
    (re.compile(r"(rv|pk|gk|rs|yz)_(\d+[mhdw])"),
     lambda m: f"{_window(m[2])} {_ESTIMATORS[m[1]]}", _pct),
    (re.compile(r"ewma_vol"), lambda _m: "EWMA vol", _pct),
    (re.compile(r"semivol_down_(\w+)"), lambda m: f"{_window(m[1])} downside semivol", _pct),
    (re.compile(r"rv_ratio_(\w+)_(\w+)"),
     lambda m: f"{_window(m[1])} / {_window(m[2])} realised-vol ratio", _ratio),
    (re.compile(r"iv_rv_ratio_(\w+)"), lambda m: f"{_window(m[1])} IV / realised vol", _ratio),
    (re.compile(r"var_(long|short)_(\w+)"),
     lambda m: f"{_window(m[2])} per-bar VaR of a {m[1]}", _pct),
    (re.compile(r"es_(long|short)_(\w+)"),
     lambda m: f"{_window(m[2])} per-bar expected shortfall of a {m[1]}", _pct),
    (re.compile(r"ret_1bar"), lambda _m: "last bar's return", _pct),
    (re.compile(r"ret_(\w+)"), lambda m: f"{_window(m[1])} return", _pct),
    (re.compile(r"drawdown_(\w+)"), lambda m: f"{_window(m[1])} max drawdown", _pct),
    (re.compile(r"volvol_(\w+)"), lambda m: f"{_window(m[1])} vol of vol", _num),
    (re.compile(r"jumps_(\w+)"), lambda m: f"jumps in {_window(m[1])}", _num),
    (re.compile(r"kurt_(\w+)"), lambda m: f"{_window(m[1])} return kurtosis", _num),
    (re.compile(r"skew_(\w+)"), lambda m: f"{_window(m[1])} return skewness", _num),
    (re.compile(r"volume_ratio_(\w+)"),
     lambda m: f"{_window(m[1])} volume vs its average", _ratio),
    (re.compile(r"depth_(bid|ask)_(\d+)bp"),
     lambda m: f"{m[1]} depth within {m[2]} bp", _money),
    (re.compile(r"depth_total_(bid|ask)"), lambda m: f"displayed {m[1]} depth", _money),
    (re.compile(r"book_imb_(\d+)bp"), lambda m: f"book imbalance within {m[1]} bp", _num),
    (re.compile(r"book_slope_(bid|ask)"), lambda m: f"{m[1]} book slope", _num),
    (re.compile(r"slip_(long|short)_(\w+)"),
     lambda m: f"book cost of closing a {m[2]} {m[1]}", _bp),
    (re.compile(r"spread_bp"), lambda _m: "bid-ask spread", _bp),
    (re.compile(r"microprice_offset_bp"), lambda _m: "microprice offset from mid", _bp),
    (re.compile(r"funding_rate"), lambda _m: "funding rate", _bp_of_fraction),
    (re.compile(r"funding_rate_change"), lambda _m: "funding rate change", _bp_of_fraction),
    (re.compile(r"funding_rate_mean_(\d+)"),
     lambda m: f"funding rate (mean of {m[1]})", _bp_of_fraction),
    (re.compile(r"term_slope"), lambda _m: "IV term slope", _volpts),
    (re.compile(r"rr25_(\w+)"), lambda m: f"{_window(m[1])} 25-delta risk reversal", _volpts),
    (re.compile(r"bf25_(\w+)"), lambda m: f"{_window(m[1])} 25-delta butterfly", _volpts),
    (re.compile(r"smile_rmse_volpt"), lambda _m: "smile fit error (vol pts)", _num),
    (re.compile(r"minutes_to_expiry"), lambda _m: "time to expiry", _minutes),
    (re.compile(r"is_future"), lambda _m: "dated future", _yesno),
    (re.compile(r"log_sigma_ann"), lambda _m: "annualised vol", _pct),
    (re.compile(r"log_h"), lambda _m: "liquidation horizon", _minutes),
]  # fmt: skip


def describe(name: str) -> tuple[str, Fmt]:
    """Plain-words label and value formatter of a model input (``atm_iv_30d`` -> ``30-day ATM
    IV``, shown as a percentage); an unknown name is shown as it is."""
    for pattern, label, fmt in _RULES:
        if m := pattern.fullmatch(name):
            return label(m), fmt
    return name, _num


def _raw_column(name: str) -> str:
    """The panel column a model input is shown as (the model sees scaled or logged values)."""
    return "sigma_ann" if name == "log_sigma_ann" else name


def feature_medians(panel: pd.DataFrame, model: FairMarginModel) -> dict[str, float]:
    """Median of each model input's panel column over the rows known at the model's cutoff."""
    rows = panel if model.cutoff_ is None else panel[panel["t"] <= model.cutoff_]
    out: dict[str, float] = {}
    for name in [*model.features_, "log_sigma_ann"]:
        col = _raw_column(name)
        if col not in rows:
            continue
        v = rows[col].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[name] = float(np.median(v))
    return out


def attach_medians(model: FairMarginModel, panel: pd.DataFrame) -> dict[str, float]:
    """Keep the training panel's medians on the model (once); return them."""
    have = getattr(model, MEDIANS_ATTR, None)
    if isinstance(have, dict):
        return have
    medians = feature_medians(panel, model)
    setattr(model, MEDIANS_ATTR, medians)
    return medians


def nearest_grid_index(
    horizons: NDArray[np.float64], horizon: NDArray[np.float64]
) -> NDArray[np.intp]:
    """Index of the grid horizon nearest each H in log terms (0 where H is not finite)."""
    h = np.asarray(horizon, dtype=np.float64)
    ok = np.isfinite(h) & (h > 0)
    lh = np.log(np.where(ok, h, horizons[0]))
    return np.abs(np.log(horizons)[None, :] - lh[:, None]).argmin(axis=1)


@dataclass(frozen=True)
class Contributions:
    """Signed contributions of each model input to each side's quantile, in percentage points
    of margin, for state rows at every grid horizon.

    Attributes
    ----------
    names : model inputs (model-matrix columns).
    pp : side -> array (n_rows, n_horizons, n_inputs).
    values : (n_rows, n_inputs) the inputs' panel values as shown (NaN where missing; the
        horizon column is filled from the grid when shown).
    horizons : the grid (minutes).
    medians : (n_inputs,) the training panel's medians (NaN where unknown).
    """

    names: list[str]
    pp: dict[str, NDArray[np.float64]]
    values: NDArray[np.float64]
    horizons: NDArray[np.float64]
    medians: NDArray[np.float64]

    def top(self, row: int, grid_index: int, side: str, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` largest contributions (by size) of one row on one side."""
        pp = self.pp[side][row, grid_index]
        order = np.argsort(-np.abs(pp), kind="stable")[:k]
        out = []
        for j in order:
            name = self.names[j]
            value = float(self.horizons[grid_index]) if name == "log_h" else self.values[row, j]
            out.append(
                {
                    "feature": name,
                    "value": float(value),
                    "median": float(self.medians[j]),
                    "pp": float(pp[j]),
                }
            )
        return out

    def text(self, row: int, grid_index: int, side: str, k: int = 3) -> str:
        """``30-day ATM IV 85 % vs 52 % median adds +1.90 pp; ...``."""
        parts = []
        for d in self.top(row, grid_index, side, k):
            label, fmt = describe(d["feature"])
            value = "missing" if not math.isfinite(d["value"]) else fmt(d["value"])
            median = (
                f" vs {fmt(d['median'])} median"
                if math.isfinite(d["median"]) and d["feature"] != "log_h"
                else ""
            )
            parts.append(f"{label} {value}{median} adds {d['pp']:+.2f} pp")
        return "; ".join(parts)


def contributions(
    model: FairMarginModel,
    rows: pd.DataFrame,
    grid: QuantileGrid,
    medians: Mapping[str, float] | None = None,
    *,
    only: tuple[NDArray[np.intp], NDArray[Any], NDArray[np.bool_]] | None = None,
) -> Contributions:
    """Contributions of ``rows`` (panel rows, one per state) at every horizon of ``grid``.

    ``only = (grid_index, side, wanted)`` computes just each wanted row's entry at its grid
    horizon on its side (one LightGBM ``pred_contrib`` row each, the per-position path); the
    other entries are NaN. An entry is the same either way (contributions are per row).
    """
    hs = grid.horizons
    n, g = len(rows), len(hs)
    factor = {
        side: np.array([model.calibration_[side][int(h)].factor for h in hs]) for side in SIDES
    }
    if only is None:
        X = model_matrix(rows.loc[rows.index.repeat(g)], np.tile(hs, n), features=model.features_)
    else:
        gi, which, wanted = only
        sel = np.flatnonzero(wanted)
        X = model_matrix(rows.iloc[sel], hs[gi[sel]], features=model.features_)
    names = [str(c) for c in X.columns]
    X_arr = X.to_numpy(dtype=np.float64)
    pp: dict[str, NDArray[np.float64]] = {}
    for side in SIDES:
        reg = model.regressors_[side]  # X has the fitted columns, in order
        if only is None:
            raw = reg.contributions_unchecked(X_arr)[:, :-1]
            raw = raw.reshape(n, g, len(names))
            pp[side] = raw * (grid.scale * factor[side][None, :])[:, :, None] * 100.0
            continue
        pp[side] = np.full((n, g, len(names)), np.nan)
        mine = which[sel] == side
        rows_s, gi_s = sel[mine], gi[sel][mine]
        if rows_s.size == 0:
            continue
        raw = reg.contributions_unchecked(X_arr[mine])[:, :-1]
        scale = grid.scale[rows_s, gi_s] * factor[side][gi_s]
        pp[side][rows_s, gi_s] = raw * scale[:, None] * 100.0
    values = np.full((n, len(names)), np.nan)
    for j, name in enumerate(names):
        col = _raw_column(name)
        if col in rows:
            values[:, j] = rows[col].to_numpy(dtype=np.float64)
    med = medians if medians is not None else getattr(model, MEDIANS_ATTR, None) or {}
    medians_arr = np.array([med.get(name, np.nan) for name in names], dtype=np.float64)
    return Contributions(names=names, pp=pp, values=values, horizons=hs, medians=medians_arr)
