"""Classical margin baselines with the interface of :class:`models.fair.FairMarginModel`.

Each baseline is fitted with ``fit(labelled, cutoff=)`` on what is known at ``cutoff`` (labels
with ``t + h <= cutoff``) and forecasts with ``quantile_grid(rows) -> QuantileGrid``. Unlike the
main model, a baseline's forecast at t depends on the contract's own price history up to t
(a filter), so ``rows`` must hold each contract's bars in time order, on its bar grid, from early
enough for the filter to warm up; only bars at or before each row's t are read (causal filters),
never a label column. ``needs_history = True`` says so to the walk-forward engine.

- :class:`EwmaBaseline`: RiskMetrics EWMA variance (lambda 0.94) per bar; the side's quantile is
  ``m x F^{-1}((1 + q) / 2) x sigma_t x sqrt(h)`` with ``F`` the standard normal or a
  unit-variance Student-t (degrees of freedom fitted on standardised returns before the cutoff):
  the reflection principle maps the q-quantile of a running extreme to the ``(1 + q) / 2``
  quantile of the end point. The max-excursion factor ``m`` (per side and horizon) is
  calibrated before the cutoff at a central level (0.90, where scores are plenty) as the
  empirical quantile of ``move / (sigma sqrt(h))`` over ``F^{-1}(0.95)``; the tail beyond it
  comes from ``F``. So normal and Student-t differ only in their tails.
- :class:`HistoricalSimulationBaseline`: the empirical q-quantile of the contract's own realised
  adverse moves over the horizon whose labels were known at t, over a trailing year (or the
  history there is).
- :class:`FilteredHSBaseline`: GARCH(1,1) (``arch``) per contract fitted before the cutoff; the
  h-bar variance forecast (mean-reverting sum) scales the empirical q-quantile of the
  devolatilised historical adverse moves (pooled over contracts, before the cutoff).
- :class:`PublishedMarginBaseline`: the venue's published initial-margin rate of the first tier
  as of t (the same at every horizon).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats
from scipy.signal import lfilter

from features._checks import FairmarginInputError, require_columns
from models.fair import QuantileGrid
from models.horizon import running_max
from models.labels import SIDES, adverse_moves

__all__ = [
    "BASELINES",
    "EwmaBaseline",
    "FilteredHSBaseline",
    "HistoricalSimulationBaseline",
    "PublishedMarginBaseline",
    "conformal_quantile",
    "make_baseline",
]

log = logging.getLogger(__name__)
_NS_PER_MIN = 60_000_000_000
_CENTRAL = 0.90  # level at which the max-excursion factor is calibrated
_ROW_COLUMNS = ["venue", "symbol", "t", "high", "low", "close", "bar_minutes", "linear"]


def conformal_quantile(scores: NDArray[np.float64], level: float) -> float:
    """The finite-sample conformal quantile: the ``ceil((n + 1) level)``-th smallest finite
    score (the largest when that rank exceeds ``n``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    if s.size == 0:
        raise FairmarginInputError("conformal_quantile: scores must hold a finite value, got none")
    k = min(math.ceil((s.size + 1) * level), s.size)
    return float(s[k - 1])


def _check_coverage(coverage: float, who: str) -> None:
    if not 0.5 < coverage < 1:
        raise FairmarginInputError(f"{who}: coverage must be in (0.5, 1), got {coverage!r}")


def _groups(rows: pd.DataFrame, who: str) -> list[tuple[tuple[str, str], NDArray[np.intp]]]:
    """Positions of each contract's rows, checked to be in time order."""
    require_columns(rows, _ROW_COLUMNS, who=who)
    out = []
    key: Any
    for key, idx in rows.groupby(["venue", "symbol"], sort=False).indices.items():
        t = pd.DatetimeIndex(rows["t"].iloc[idx])
        if not (t.is_monotonic_increasing and t.is_unique):
            raise FairmarginInputError(
                f"{who}: rows of {key} must be in increasing t (one per bar), got them unsorted"
            )
        out.append(((str(key[0]), str(key[1])), np.asarray(idx)))
    return out


def _log_returns(close: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.diff(np.log(close), prepend=np.nan)
    return np.where(np.isfinite(r), r, np.nan)


def _ewma_var(r: NDArray[np.float64], lam: float, seed_bars: int = 20) -> NDArray[np.float64]:
    """RiskMetrics variance known at each bar close (returns up to and including it); missing
    returns leave it unchanged; NaN until ``seed_bars`` returns have been seen (seeded with
    their mean square)."""
    out = np.full(r.size, np.nan)
    finite = np.flatnonzero(np.isfinite(r))
    if finite.size < seed_bars:
        return out
    x2 = r[finite] ** 2
    v0 = float(np.mean(x2[:seed_bars]))
    v = np.empty(finite.size)
    v[:seed_bars] = v0
    rest = x2[seed_bars:]
    if rest.size:
        v[seed_bars:] = lfilter([1.0 - lam], [1.0, -lam], rest, zi=[lam * v0])[0]
    # carry each value to the following bars without a return
    pos = np.full(r.size, -1)
    pos[finite] = np.arange(finite.size)
    pos = np.maximum.accumulate(pos)
    started = pos >= seed_bars - 1
    out[started] = v[pos[started]]
    return out


def _grid(
    horizons: Sequence[int], quantile: Mapping[Any, NDArray[Any]], scale: NDArray[np.float64]
) -> QuantileGrid:
    hs = np.asarray(horizons, dtype=np.float64)
    q: dict[str, NDArray[np.float64]] = {}
    for s in SIDES:
        m = running_max(quantile[s])
        q[s] = np.where(np.isfinite(m), m, np.nan)
    return QuantileGrid(horizons=hs, quantile=q, lower=dict(q), upper=dict(q), scale=scale)


def _labels_known(
    high: NDArray[np.float64],
    low: NDArray[np.float64],
    close: NDArray[np.float64],
    t: NDArray[Any],
    *,
    h_bars: int,
    linear: bool,
) -> dict[str, NDArray[np.float64]]:
    """Each side's adverse move over ``h_bars`` from t, recomputed from the bars."""
    bars = pd.DataFrame({"high": high, "low": low, "close": close}, index=pd.DatetimeIndex(t))
    lab = adverse_moves(bars, horizons_bars=[h_bars], linear=linear)
    return {s: lab[f"{s}_{h_bars}"].to_numpy(dtype=np.float64) for s in SIDES}


def _usable(horizons: Sequence[int], bar: int) -> list[int]:
    return [h for h in horizons if h % bar == 0]


@dataclass
class _Baseline:
    """Shared fields: the interface of :class:`FairMarginModel` that the backtests use."""

    needs_history: ClassVar[bool] = True
    name: ClassVar[str] = "baseline"

    coverage: float = 0.99
    horizons_minutes: tuple[int, ...] = (15, 30, 60, 240, 1440, 4320, 10080)
    horizons_: tuple[int, ...] = ()
    cutoff_: pd.Timestamp | None = None
    metrics_: dict[str, float] = field(default_factory=dict)

    def _known(self, t: NDArray[Any], h: int) -> NDArray[np.bool_]:
        """Rows whose label over ``h`` minutes is known at the cutoff."""
        assert self.cutoff_ is not None
        t_ns = pd.DatetimeIndex(t).as_unit("ns").asi8
        return t_ns + h * _NS_PER_MIN <= self.cutoff_.value

    def _check_fitted(self) -> None:
        if self.cutoff_ is None:
            raise FairmarginInputError(f"{type(self).__name__}: not fitted")


@dataclass
class EwmaBaseline(_Baseline):
    """EWMA-volatility quantiles with a calibrated max-excursion factor.

    Parameters
    ----------
    coverage : q.
    horizons_minutes : the horizon grid.
    distribution : ``"normal"`` or ``"t"`` (unit-variance Student-t, df fitted before cutoff).
    lam : RiskMetrics decay (0.94).

    Attributes
    ----------
    excursion_ : side -> {horizon: m}. df_ : Student-t degrees of freedom (inf for normal).
    """

    name: ClassVar[str] = "ewma"
    distribution: str = "normal"
    lam: float = 0.94
    excursion_: dict[str, dict[int, float]] = field(default_factory=dict)
    df_: float = math.inf

    def _ppf(self, p: float) -> float:
        if math.isinf(self.df_):
            return float(stats.norm.ppf(p))
        return float(stats.t.ppf(p, self.df_) * math.sqrt((self.df_ - 2.0) / self.df_))

    def _states(self, rows: pd.DataFrame) -> NDArray[np.float64]:
        sig = np.full(len(rows), np.nan)
        close = rows["close"].to_numpy(dtype=np.float64)
        for _, idx in _groups(rows, type(self).__name__):
            sig[idx] = np.sqrt(_ewma_var(_log_returns(close[idx]), self.lam))
        return sig

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> EwmaBaseline:
        who = "EwmaBaseline.fit"
        _check_coverage(self.coverage, who)
        if self.distribution not in ("normal", "t"):
            raise FairmarginInputError(
                f"{who}: distribution must be 'normal' or 't', got {self.distribution!r}"
            )
        if not 0 < self.lam < 1:
            raise FairmarginInputError(f"{who}: lam must be in (0, 1), got {self.lam!r}")
        self.cutoff_ = pd.Timestamp(cutoff)
        rows = labelled[labelled["t"] <= cutoff]
        sig = self._states(rows)
        self.df_ = math.inf
        if self.distribution == "t":
            close = rows["close"].to_numpy(dtype=np.float64)
            z_all = []
            for _, idx in _groups(rows, who):
                r = _log_returns(close[idx])
                prev = np.concatenate([[np.nan], sig[idx][:-1]])
                with np.errstate(invalid="ignore", divide="ignore"):
                    z_all.append(r / prev)
            z = np.concatenate(z_all)
            z = z[np.isfinite(z)]
            if z.size < 100:
                raise FairmarginInputError(
                    f"{who}: need >= 100 standardised returns before {cutoff}, got {z.size}"
                )
            df, _, _ = stats.t.fit(z[-20_000:], floc=0.0)
            self.df_ = float(np.clip(df, 2.5, 50.0))
        self.excursion_ = {s: {} for s in SIDES}
        t = rows["t"].to_numpy()
        bar = rows["bar_minutes"].to_numpy(dtype=np.float64)
        denom = self._ppf(0.5 + _CENTRAL / 2.0)
        for h in self.horizons_minutes:
            ok = self._known(t, h) & (h % bar == 0) & (sig > 0)
            if f"y_long_{h}" not in rows or ok.sum() < 50:
                continue
            scale = sig[ok] * np.sqrt(h / bar[ok])
            for s in SIDES:
                score = rows[f"y_{s}_{h}"].to_numpy(dtype=np.float64)[ok] / scale
                if np.isfinite(score).sum() < 50:
                    continue
                self.excursion_[s][h] = conformal_quantile(score, _CENTRAL) / denom
        kept = [h for h in self.horizons_minutes if all(h in self.excursion_[s] for s in SIDES)]
        if not kept:
            raise FairmarginInputError(
                f"{who}: no horizon of {self.horizons_minutes} has 50 labels known at {cutoff}"
            )
        self.horizons_ = tuple(kept)
        return self

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        self._check_fitted()
        sig = self._states(rows)
        bar = rows["bar_minutes"].to_numpy(dtype=np.float64)
        hs = np.asarray(self.horizons_, dtype=np.float64)
        scale = sig[:, None] * np.sqrt(hs[None, :] / bar[:, None])
        z = self._ppf(0.5 + self.coverage / 2.0)
        q = {
            s: scale * z * np.array([self.excursion_[s][int(h)] for h in hs])[None, :]
            for s in SIDES
        }
        return _grid(self.horizons_, q, scale)


@dataclass
class HistoricalSimulationBaseline(_Baseline):
    """Empirical q-quantile of the contract's own adverse moves known at t, trailing year.

    ``min_observations`` labels are needed before a forecast is made (NaN before).
    """

    name: ClassVar[str] = "hs"
    lookback_days: float = 365.0
    min_observations: int = 100

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> HistoricalSimulationBaseline:
        _check_coverage(self.coverage, "HistoricalSimulationBaseline.fit")
        require_columns(labelled, _ROW_COLUMNS, who="HistoricalSimulationBaseline.fit")
        self.cutoff_ = pd.Timestamp(cutoff)
        self.horizons_ = tuple(self.horizons_minutes)
        return self

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        self._check_fitted()
        who = type(self).__name__
        hs = np.asarray(self.horizons_, dtype=np.float64)
        q = {s: np.full((len(rows), hs.size), np.nan) for s in SIDES}
        cols = {c: rows[c].to_numpy(dtype=np.float64) for c in ("high", "low", "close")}
        t_all = rows["t"].to_numpy()
        for _, idx in _groups(rows, who):
            bar = int(rows["bar_minutes"].iloc[idx[0]])
            window = max(int(self.lookback_days * 1440 / bar), 1)
            linear = bool(rows["linear"].iloc[idx[0]])
            for j, h in enumerate(self.horizons_):
                if h % bar:
                    continue
                hb = h // bar
                lab = _labels_known(
                    cols["high"][idx],
                    cols["low"][idx],
                    cols["close"][idx],
                    t_all[idx],
                    h_bars=hb,
                    linear=linear,
                )
                for s in SIDES:
                    # the label at t - h bars is the last one known at t
                    known = pd.Series(lab[s]).shift(hb)
                    qq = known.rolling(window, min_periods=self.min_observations).quantile(
                        self.coverage, interpolation="higher"
                    )
                    q[s][idx, j] = qq.to_numpy(dtype=np.float64)
        scale = np.ones((len(rows), hs.size))
        return _grid(self.horizons_, q, scale)


@dataclass
class FilteredHSBaseline(_Baseline):
    """Filtered historical simulation on a GARCH(1,1) per contract (``arch``).

    Attributes
    ----------
    params_ : (venue, symbol) -> (omega, alpha, beta) on returns in percent.
    quantile_ : side -> {horizon: empirical q-quantile of devolatilised moves}.
    """

    name: ClassVar[str] = "fhs_garch"
    max_fit_bars: int = 2000
    params_: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    quantile_: dict[str, dict[int, float]] = field(default_factory=dict)

    def _fit_garch(self, r: NDArray[np.float64]) -> tuple[float, float, float]:
        from arch import arch_model

        x = 100.0 * r[np.isfinite(r)][-self.max_fit_bars :]
        if x.size < 100:
            raise FairmarginInputError(
                f"FilteredHSBaseline.fit: need >= 100 returns per contract, got {x.size}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = arch_model(x, mean="Zero", vol="GARCH", p=1, q=1, dist="normal").fit(
                disp="off", show_warning=False
            )
        p = res.params
        omega, alpha, beta = float(p["omega"]), float(p["alpha[1]"]), float(p["beta[1]"])
        if not (omega > 0 and alpha >= 0 and beta >= 0 and alpha + beta < 0.995):
            # a degenerate or near-integrated fit (its long-run variance explodes on a young
            # contract): fall back to RiskMetrics-like persistence on the sample variance
            var = float(np.var(x))
            alpha, beta = 0.06, 0.93
            omega = var * (1.0 - alpha - beta)
        return omega, alpha, beta

    def _h_scale(
        self, rows: pd.DataFrame, idx: NDArray[np.intp], key: tuple[str, str], hbars: list[int]
    ) -> NDArray[np.float64]:
        """sqrt of the sum of the next ``h`` bars' expected variances, (len(idx), len(hbars))."""
        omega, alpha, beta = self.params_[key]
        r = 100.0 * _log_returns(rows["close"].to_numpy(dtype=np.float64)[idx])
        persistence = alpha + beta
        vbar = omega / (1.0 - persistence)
        # variance of the next bar, known at each close; a missing return leaves it unchanged
        finite = np.flatnonzero(np.isfinite(r))
        nxt = np.full(r.size, vbar)
        if finite.size:
            v = lfilter([1.0], [1.0, -beta], omega + alpha * r[finite] ** 2, zi=[beta * vbar])[0]
            pos = np.full(r.size, -1)
            pos[finite] = np.arange(finite.size)
            pos = np.maximum.accumulate(pos)
            nxt[pos >= 0] = v[pos[pos >= 0]]
        out = np.empty((r.size, len(hbars)))
        for j, hb in enumerate(hbars):
            # E[sigma2_{t+k}] = vbar + persistence^(k-1) (sigma2_{t+1} - vbar), k = 1..hb
            decay = float((persistence ** np.arange(hb)).sum())
            out[:, j] = np.sqrt(np.maximum(hb * vbar + (nxt - vbar) * decay, 0.0))
        return out / 100.0

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> FilteredHSBaseline:
        who = "FilteredHSBaseline.fit"
        _check_coverage(self.coverage, who)
        self.cutoff_ = pd.Timestamp(cutoff)
        rows = labelled[labelled["t"] <= cutoff]
        groups = _groups(rows, who)
        close = rows["close"].to_numpy(dtype=np.float64)
        self.params_ = {}
        for key, idx in groups:
            r = _log_returns(close[idx])
            if np.isfinite(r).sum() >= 100:  # a younger contract gets no forecast yet
                self.params_[key] = self._fit_garch(r)
        if not self.params_:
            raise FairmarginInputError(
                f"{who}: need >= 100 returns of some contract before {cutoff}, got fewer"
            )
        groups = [(key, idx) for key, idx in groups if key in self.params_]
        scores: dict[str, dict[int, list[NDArray[np.float64]]]] = {
            s: {h: [] for h in self.horizons_minutes} for s in SIDES
        }
        t = rows["t"].to_numpy()
        for key, idx in groups:
            bar = int(rows["bar_minutes"].iloc[idx[0]])
            hs = _usable(self.horizons_minutes, bar)
            if not hs:
                continue
            sc = self._h_scale(rows, idx, key, [h // bar for h in hs])
            for j, h in enumerate(hs):
                ok = self._known(t[idx], h)
                for s in SIDES:
                    y = rows[f"y_{s}_{h}"].to_numpy(dtype=np.float64)[idx]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        scores[s][h].append((y / sc[:, j])[ok])
        self.quantile_ = {s: {} for s in SIDES}
        for s in SIDES:
            for h, parts in scores[s].items():
                if not parts:
                    continue
                z = np.concatenate(parts)
                if np.isfinite(z).sum() >= 50:
                    self.quantile_[s][h] = conformal_quantile(z, self.coverage)
        kept = [h for h in self.horizons_minutes if all(h in self.quantile_[s] for s in SIDES)]
        if not kept:
            raise FairmarginInputError(
                f"{who}: no horizon of {self.horizons_minutes} has 50 labels known at {cutoff}"
            )
        self.horizons_ = tuple(kept)
        return self

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        self._check_fitted()
        hs = np.asarray(self.horizons_, dtype=np.float64)
        scale = np.full((len(rows), hs.size), np.nan)
        for key, idx in _groups(rows, type(self).__name__):
            if key not in self.params_:
                continue  # a contract unseen at fit time gets no forecast
            bar = int(rows["bar_minutes"].iloc[idx[0]])
            cols = [j for j, h in enumerate(self.horizons_) if h % bar == 0]
            if cols:
                sc = self._h_scale(rows, idx, key, [self.horizons_[j] // bar for j in cols])
                scale[np.ix_(idx, np.asarray(cols, dtype=np.intp))] = sc
        q = {s: scale * np.array([self.quantile_[s][int(h)] for h in hs])[None, :] for s in SIDES}
        return _grid(self.horizons_, q, scale)


@dataclass
class PublishedMarginBaseline(_Baseline):
    """The venue's published initial-margin rate of its first tier, as of each row's t.

    Parameters
    ----------
    margin_tiers : the bundle's ``margin_tiers`` table (``initial_margin_rate`` null means
        ``1 / max_leverage``).
    """

    name: ClassVar[str] = "published"
    needs_history: ClassVar[bool] = False
    margin_tiers: pd.DataFrame | None = None

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> PublishedMarginBaseline:
        who = "PublishedMarginBaseline.fit"
        if self.margin_tiers is None or self.margin_tiers.empty:
            raise FairmarginInputError(f"{who}: margin_tiers must hold rows, got none")
        require_columns(
            self.margin_tiers,
            ["venue", "symbol", "as_of", "tier", "max_leverage", "initial_margin_rate"],
            who=who,
        )
        del labelled
        self.cutoff_ = pd.Timestamp(cutoff)
        self.horizons_ = tuple(self.horizons_minutes)
        return self

    def quantile_grid(self, rows: pd.DataFrame) -> QuantileGrid:
        self._check_fitted()
        assert self.margin_tiers is not None
        tiers = self.margin_tiers
        first = tiers[
            tiers["tier"] == tiers.groupby(["venue", "symbol", "as_of"])["tier"].transform("min")
        ]
        rate = first["initial_margin_rate"].fillna(1.0 / first["max_leverage"])
        pub = (
            first.assign(rate=rate.astype(np.float64), t=first["as_of"])[
                ["venue", "symbol", "t", "rate"]
            ]
            .astype({"venue": object, "symbol": object})
            .sort_values("t")
        )
        left = rows[["venue", "symbol", "t"]].astype({"venue": object, "symbol": object})
        left = left.assign(_pos=np.arange(len(rows))).sort_values("t")
        merged = pd.merge_asof(left, pub, on="t", by=["venue", "symbol"], direction="backward")
        value = np.full(len(rows), np.nan)
        value[merged["_pos"].to_numpy()] = merged["rate"].to_numpy(dtype=np.float64)
        hs = np.asarray(self.horizons_, dtype=np.float64)
        q = {s: np.repeat(value[:, None], hs.size, axis=1) for s in SIDES}
        return _grid(self.horizons_, q, np.ones((len(rows), hs.size)))


BASELINES = ("ewma_normal", "ewma_t", "hs", "fhs_garch", "published")


def make_baseline(
    name: str,
    *,
    coverage: float,
    horizons_minutes: Sequence[int],
    margin_tiers: pd.DataFrame | None = None,
) -> _Baseline:
    """A fresh, unfitted baseline by name (one of :data:`BASELINES`)."""
    hs = tuple(int(h) for h in horizons_minutes)
    if name == "ewma_normal":
        return EwmaBaseline(coverage=coverage, horizons_minutes=hs, distribution="normal")
    if name == "ewma_t":
        return EwmaBaseline(coverage=coverage, horizons_minutes=hs, distribution="t")
    if name == "hs":
        return HistoricalSimulationBaseline(coverage=coverage, horizons_minutes=hs)
    if name == "fhs_garch":
        return FilteredHSBaseline(coverage=coverage, horizons_minutes=hs)
    if name == "published":
        return PublishedMarginBaseline(
            coverage=coverage, horizons_minutes=hs, margin_tiers=margin_tiers
        )
    raise FairmarginInputError(f"make_baseline: name must be one of {BASELINES}, got {name!r}")
