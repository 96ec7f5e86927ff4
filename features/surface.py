"""Option-surface features: ATM term structure, 25-delta skew and smile-fit quality.

Pure and vectorised across snapshots: the quotes are sorted once and every per-expiry or
per-snapshot quantity is found with NumPy on group boundaries (the optional SVI fit is the only
per-expiry loop). Conventions: implied volatilities are annualised fractions (0.55 = 55 %),
time to expiry ``T`` is in years of 365 days (crypto trades every day), rates are zero, so the
forward of an expiry is the ``underlying_price`` quoted with it (Deribit quotes the expiry's
future or synthetic future there), log-moneyness is ``k = ln(K / F)`` and total implied
variance is ``w = iv^2 T``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

from features._checks import FairmarginInputError, require_columns

__all__ = [
    "SmileFit",
    "fit_smile",
    "implied_minus_realised",
    "surface_features",
]

_SECONDS_PER_YEAR = 365.0 * 86400.0
# N^-1(0.75): |d1| of a 25-delta option.
_Z25 = float(special.ndtri(0.75))
_MIN_FIT_POINTS = {"quadratic": 5, "svi": 7}
# Sort keys are packed into one int64 while the product of their cardinalities stays below.
_PACK_LIMIT = 2**62

OPTION_QUOTE_COLUMNS = (
    "venue",
    "underlying",
    "timestamp",
    "expiry",
    "strike",
    "option_type",
    "mark_iv",
    "underlying_price",
)


# --------------------------------------------------------------------------------------------
# Smile fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmileFit:
    """A least-squares fit of one expiry's total-variance smile ``w(k)``.

    Attributes
    ----------
    model : {"svi", "quadratic"}
        ``"svi"``: raw SVI ``w(k) = a + b (rho (k - m) + sqrt((k - m)^2 + sigma^2))``;
        ``"quadratic"``: ``w(k) = c0 + c1 k + c2 k^2``.
    params : tuple of float
        ``(a, b, rho, m, sigma)`` or ``(c0, c1, c2)``; see ``param_names``.
    rmse_total_variance : float
        Root mean square of the fit residuals in total variance (years x vol^2).
    rmse_vol_points : float
        Root mean square of the residuals in implied volatility, in vol points
        (``100 x`` the annualised fraction; 1.0 = one volatility point), when the expiry was
        given; NaN otherwise.
    n_points : int
        Number of quotes fitted.
    success : bool
        The optimiser reported convergence (always True for the quadratic).
    """

    model: Literal["svi", "quadratic"]
    params: tuple[float, ...]
    rmse_total_variance: float
    rmse_vol_points: float
    n_points: int
    success: bool
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = ("a", "b", "rho", "m", "sigma") if self.model == "svi" else ("c0", "c1", "c2")
        object.__setattr__(self, "param_names", names)

    def total_variance(self, log_moneyness: ArrayLike) -> NDArray[np.float64]:
        """Fitted total variance at ``log_moneyness`` (``ln(K / F)``)."""
        k = np.asarray(log_moneyness, dtype=np.float64)
        if self.model == "svi":
            return _svi(k, np.asarray(self.params))
        c0, c1, c2 = self.params
        return np.asarray(c0 + c1 * k + c2 * k * k, dtype=np.float64)


def _svi(k: NDArray[np.float64], p: NDArray[np.float64]) -> NDArray[np.float64]:
    a, b, rho, m, sigma = p
    x = k - m
    return np.asarray(a + b * (rho * x + np.sqrt(x * x + sigma * sigma)), dtype=np.float64)


def _svi_start(k: NDArray[np.float64], w: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Starting points from the quasi-explicit reduction on a (m, sigma) grid.

    For fixed ``(m, sigma)`` raw SVI is linear in ``(a, b rho, b)``; the best few grid points
    (after clipping to ``b >= 0``, ``|rho| < 1``) seed the non-linear fit.
    """
    span = max(float(k.max() - k.min()), 1e-4)
    candidates = []
    for m in np.linspace(k.min(), k.max(), 7):
        for sigma in span * np.array([0.02, 0.05, 0.1, 0.2, 0.4, 0.8]):
            x = k - m
            root = np.sqrt(x * x + sigma * sigma)
            design = np.column_stack([np.ones_like(k), x, root])
            coef, *_ = np.linalg.lstsq(design, w, rcond=None)
            a, c, d = coef
            b = max(float(d), 1e-6)
            rho = float(np.clip(c / b, -0.99, 0.99))
            a = float(np.mean(w - b * (rho * x + root)))
            p = np.array([a, b, rho, m, sigma])
            sse = float(np.sum((_svi(k, p) - w) ** 2))
            candidates.append((sse, p))
    candidates.sort(key=lambda c: c[0])
    return [p for _, p in candidates[:3]]


def fit_smile(
    log_moneyness: ArrayLike,
    total_variance: ArrayLike,
    *,
    model: Literal["svi", "quadratic"] = "svi",
    expiry_years: float | None = None,
) -> SmileFit:
    """Least-squares fit of a total-variance smile (one expiry).

    Parameters
    ----------
    log_moneyness : array_like of float
        ``k = ln(K / F)`` per quote.
    total_variance : array_like of float
        ``w = iv^2 T`` per quote (>= 0), same length.
    model : {"svi", "quadratic"}, default "svi"
        Raw SVI (Gatheral) fitted with :func:`scipy.optimize.least_squares` (bounds
        ``b >= 0``, ``|rho| < 1``, ``sigma > 0``; started from the quasi-explicit linear
        reduction on a grid of ``(m, sigma)``), needing >= 7 points; or a quadratic in ``k``
        (linear least squares), needing >= 3 points.
    expiry_years : float, optional
        ``T`` (> 0); when given, ``rmse_vol_points`` compares ``sqrt(w / T)`` (fitted ``w``
        floored at 0) with the quoted implied volatilities.

    Returns
    -------
    SmileFit
    """
    who = "fit_smile"
    k = np.asarray(log_moneyness, dtype=np.float64).ravel()
    w = np.asarray(total_variance, dtype=np.float64).ravel()
    if k.shape != w.shape:
        raise FairmarginInputError(
            f"{who}: log_moneyness and total_variance must have the same length, "
            f"got {k.size} and {w.size}"
        )
    if not (np.isfinite(k).all() and np.isfinite(w).all() and (w >= 0).all()):
        raise FairmarginInputError(
            f"{who}: log_moneyness must be finite and total_variance finite and >= 0, "
            f"got {k.size} points with non-finite or negative values"
        )
    if model not in ("svi", "quadratic"):
        raise FairmarginInputError(f"{who}: model must be 'svi' or 'quadratic', got {model!r}")
    need = 7 if model == "svi" else 3
    if k.size < need or np.unique(k).size < 3:
        raise FairmarginInputError(
            f"{who}: a {model} fit needs >= {need} points with >= 3 distinct log_moneyness, "
            f"got {k.size} points"
        )
    if expiry_years is not None and not (expiry_years > 0 and math.isfinite(expiry_years)):
        raise FairmarginInputError(
            f"{who}: expiry_years must be finite and > 0, got {expiry_years!r}"
        )
    if model == "quadratic":
        design = np.column_stack([np.ones_like(k), k, k * k])
        coef, *_ = np.linalg.lstsq(design, w, rcond=None)
        params = np.asarray(coef, dtype=np.float64)
        success = True
        fitted = design @ params
    else:
        lo = [-np.inf, 0.0, -0.999, float(k.min()) - 1.0, 1e-6]
        hi = [np.inf, np.inf, 0.999, float(k.max()) + 1.0, 10.0]
        best: optimize.OptimizeResult | None = None
        for start in _svi_start(k, w):
            x0 = np.clip(start, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
            res = optimize.least_squares(
                lambda p: _svi(k, p) - w,
                x0,
                bounds=(lo, hi),
                method="trf",
                x_scale="jac",
                ftol=1e-12,
                xtol=1e-12,
                gtol=1e-12,
                max_nfev=300,
            )
            if best is None or res.cost < best.cost:
                best = res
        assert best is not None
        params = np.asarray(best.x, dtype=np.float64)
        success = bool(best.success)
        fitted = _svi(k, params)
    rmse_w = float(np.sqrt(np.mean((fitted - w) ** 2)))
    if expiry_years is None:
        rmse_vol = math.nan
    else:
        iv_fit = np.sqrt(np.maximum(fitted, 0.0) / expiry_years)
        rmse_vol = 100.0 * float(np.sqrt(np.mean((iv_fit - np.sqrt(w / expiry_years)) ** 2)))
    return SmileFit(
        model=model,
        params=tuple(float(p) for p in params),
        rmse_total_variance=rmse_w,
        rmse_vol_points=rmse_vol,
        n_points=int(k.size),
        success=success,
    )


# --------------------------------------------------------------------------------------------
# Surface features
# --------------------------------------------------------------------------------------------


def _label(days: float) -> str:
    return f"{days:.6g}".replace(".", "p")


def _is_datetime(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype)


def _check_quotes(q: pd.DataFrame, *, who: str) -> None:
    require_columns(q, OPTION_QUOTE_COLUMNS, who=who)
    for name in ("venue", "underlying", "timestamp", "expiry", "option_type"):
        if q[name].isna().any():
            row = int(np.flatnonzero(q[name].isna().to_numpy())[0])
            raise FairmarginInputError(f"{who}: option_quotes row {row}: {name} must not be null")
    for name in ("timestamp", "expiry"):
        if not _is_datetime(q[name]):
            raise FairmarginInputError(
                f"{who}: {name} must be datetime64 (UTC), got dtype {q[name].dtype}"
            )
    for name in ("strike", "underlying_price", "mark_iv"):
        v = q[name].to_numpy(dtype=np.float64, na_value=np.nan)
        good = (v > 0) & (v < np.inf)
        if not good.all():
            row = int(np.argmin(good))
            raise FairmarginInputError(
                f"{who}: option_quotes row {row}: {name} must be finite and > 0, "
                f"got {float(v[row])!r}"
            )
    iv = q["mark_iv"].to_numpy(dtype=np.float64)
    if (iv > 5).any():
        row = int(np.argmax(iv > 5))
        raise FairmarginInputError(
            f"{who}: option_quotes row {row}: mark_iv must be an annualised fraction (<= 5), "
            f"got {float(iv[row])!r}; divide percent quotes (Deribit, tardis) by 100"
        )
    ok_type = np.asarray(q["option_type"].isin(["call", "put"]), dtype=bool)
    if not ok_type.all():
        row = int(np.argmin(ok_type))
        raise FairmarginInputError(
            f"{who}: option_quotes row {row}: option_type must be 'call' or 'put', "
            f"got {q['option_type'].iloc[row]!r}"
        )


def _first_per_group(
    group: NDArray[np.intp], mask: NDArray[np.bool_], n_groups: int
) -> NDArray[np.intp]:
    """Index of the first row of each group where ``mask`` holds (-1 where none)."""
    rows = np.flatnonzero(mask)
    first = np.full(n_groups, -1, dtype=np.intp)
    first[group[rows][::-1]] = rows[::-1]  # later writes win: reversed, the first row wins
    return first


def _crossing_interp(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    eg: NDArray[np.intp],
    target: NDArray[np.float64],
    n_groups: int,
) -> NDArray[np.float64]:
    """Per group, ``y`` linearly interpolated in ``x`` where ``x`` first crosses ``target``.

    Rows are in group order; a crossing is a consecutive pair of the same group with
    ``target`` between (inclusive) their ``x``. NaN for a group with no crossing.
    """
    out = np.full(n_groups, np.nan)
    if x.size < 2:
        return out
    t = target[eg]
    x0, x1 = x[:-1], x[1:]
    t0 = t[:-1]
    same = eg[1:] == eg[:-1]
    cross = same & (np.minimum(x0, x1) <= t0) & (t0 <= np.maximum(x0, x1)) & (x0 != x1)
    first = _first_per_group(eg[:-1], cross, n_groups)
    has = first >= 0
    i = first[has]
    frac = (target[has] - x[i]) / (x[i + 1] - x[i])
    out[has] = y[i] + (y[i + 1] - y[i]) * frac
    return out


def _term_interp(
    snap: NDArray[np.intp],
    years: NDArray[np.float64],
    iv: NDArray[np.float64],
    tau: float,
    n_snap: int,
) -> NDArray[np.float64]:
    """Implied vol at ``tau`` years per snapshot from per-expiry vols (rows sorted by snap, T).

    Linear in total variance ``iv^2 T`` between the bracketing expiries; flat in iv beyond the
    first and last expiry with a value. NaN values are skipped.
    """
    ok = np.isfinite(iv)
    s, t, v = snap[ok], years[ok], iv[ok]
    out = np.full(n_snap, np.nan)
    if s.size == 0:
        return out
    total = np.bincount(s, minlength=n_snap)
    start = np.concatenate(([0], np.cumsum(total)[:-1]))
    below = np.bincount(s[t <= tau], minlength=n_snap)
    lo = start + below - 1
    hi = start + below
    has_lo = below > 0
    has_hi = below < total
    both = has_lo & has_hi
    if both.any():
        a, b = lo[both], hi[both]
        wa, wb = v[a] ** 2 * t[a], v[b] ** 2 * t[b]
        wt = wa + (wb - wa) * (tau - t[a]) / (t[b] - t[a])
        out[both] = np.sqrt(np.maximum(wt, 0.0) / tau)
    only_hi = has_hi & ~has_lo
    out[only_hi] = v[hi[only_hi]]
    only_lo = has_lo & ~has_hi
    out[only_lo] = v[lo[only_lo]]
    return out


def _epoch_ns(ts: pd.Series) -> NDArray[np.int64]:
    """Nanoseconds since the epoch of a datetime64 column of any unit."""
    unit = str(ts.dt.unit)
    factor = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    return np.asarray(ts.array.asi8, dtype=np.int64) * factor


def _sorted_codes(values: pd.Series | NDArray[Any]) -> NDArray[np.int64]:
    """Integer codes whose order is the order of the values (hash factorise, rank uniques)."""
    codes, uniques = pd.factorize(values)
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.argsort(np.asarray(uniques), kind="stable")] = np.arange(len(uniques))
    return rank[codes]


def _sort_quotes(
    q: pd.DataFrame,
    ts_ns: NDArray[np.int64],
    ex_ns: NDArray[np.int64],
    strike: NDArray[np.float64],
    is_call: NDArray[np.bool_],
) -> tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]]:
    """Order by (venue, underlying, timestamp, expiry, strike, type) and group keys.

    Each key is factorised to sorted codes and the codes are packed into one int64, sorted
    with a single argsort (much faster than a 6-key lexsort on millions of rows). Returns the
    order and, per sorted row, a snapshot key and an (snapshot, expiry) key, both increasing.
    """
    codes = [
        _sorted_codes(q["venue"]),
        _sorted_codes(q["underlying"]),
        _sorted_codes(ts_ns),
        _sorted_codes(ex_ns),
        _sorted_codes(strike),
        is_call.astype(np.int64),
    ]
    sizes = [int(c.max()) + 1 if c.size else 1 for c in codes[:-1]] + [2]
    if math.prod(sizes) >= _PACK_LIMIT:  # cannot pack into an int64: the general path
        order = np.lexsort(tuple(reversed(codes)))
        packed = [c[order].astype(np.int64) for c in codes]
        snap = (packed[0] * sizes[1] + packed[1]) * sizes[2] + packed[2]
        # The expiry key must stay increasing within the sorted order: rank the pairs.
        pair = np.ones(order.size, dtype=bool)
        pair[1:] = (snap[1:] != snap[:-1]) | (packed[3][1:] != packed[3][:-1])
        return order, snap, np.cumsum(pair) - 1
    key = np.zeros(len(q), dtype=np.int64)
    for c, size in zip(codes, sizes, strict=True):
        key *= size
        key += c
    order = np.argsort(key)
    tail = sizes[4] * sizes[5]
    eg_key = key[order] // tail
    return order, eg_key // sizes[3], eg_key


def surface_features(
    option_quotes: pd.DataFrame,
    *,
    tenors_days: Sequence[float] = (7, 30, 90),
    skew_tenor_days: float = 30,
    smile_fit: Literal["quadratic", "svi", "none"] = "quadratic",
    min_days_to_expiry: float = 1.0,
    smile_band_sd: float = 3.0,
) -> pd.DataFrame:
    """Volatility-surface features, one row per (venue, underlying, timestamp) snapshot.

    Parameters
    ----------
    option_quotes : pandas.DataFrame
        The contract's ``option_quotes`` table (any row order): ``venue, underlying,
        timestamp, expiry`` (datetime64, UTC), ``strike`` (> 0), ``option_type``
        (``call``/``put``), ``mark_iv`` (annualised fraction, not percent),
        ``underlying_price`` (> 0, the expiry's forward); optional ``delta``.
    tenors_days : sequence of float, default (7, 30, 90)
        Tenors (days, > 0) of the ATM-volatility columns.
    skew_tenor_days : float, default 30
        Tenor (days) of the 25-delta risk reversal and butterfly.
    smile_fit : {"quadratic", "svi", "none"}, default "quadratic"
        Model of the per-expiry smile fit behind ``smile_rmse_volpt``. The quadratic is
        vectorised over all expiries; SVI loops over expiries with scipy (about 10-50 ms per
        expiry: fine for a few hundred snapshots, slow for a year of hourly ones); "none"
        leaves the column NaN.
    min_days_to_expiry : float, default 1.0
        Expiries closer than this (days, >= 0) are ignored: their implied vols are dominated by
        the last hours' noise. Quotes at or after expiry are always ignored.
    smile_band_sd : float, default 3.0
        The smile fit uses quotes with ``|k| <= smile_band_sd x atm_iv x sqrt(T)`` (standard
        deviations of the expiry), where deep-wing marks carry little information.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``venue, underlying, timestamp``; columns:

        - ``venue``, ``underlying``, ``timestamp``: the snapshot key.
        - ``atm_iv_{d}d`` per tenor: ATM implied vol at ``d`` days. Per expiry, ATM is the
          forward (``k = 0``): total variance linearly interpolated in ``k`` between the two
          strikes around the forward (NaN for an expiry whose strikes do not straddle it).
          Across expiries, total variance is interpolated linearly in ``T``; before the first
          and after the last expiry the vol is **extrapolated flat** (the nearest expiry's
          ATM vol).
        - ``term_slope``: ATM vol at the longest tenor minus at the shortest (90d - 7d by
          default).
        - ``rr25_{d}d``, ``bf25_{d}d``: 25-delta risk reversal ``iv(25d call) - iv(25d put)``
          and butterfly ``(iv(25d call) + iv(25d put)) / 2 - atm_iv`` at the skew tenor.
          Per expiry, each quote's call-equivalent delta (call delta; put delta + 1) comes
          from the ``delta`` column where present and not null, else Black-Scholes with
          zero rates, ``N(d1)``, ``d1 = (-k + w / 2) / sqrt(w)``; the 25-delta call vol is
          interpolated linearly in delta where the delta crosses 0.25 (the put: 0.75). When
          the quotes do not cross it, the moneyness equivalent of a flat smile is used
          instead: ``k = +/-0.674 atm_iv sqrt(T) + atm_iv^2 T / 2`` (vol interpolated in
          ``k``). The two vols are carried to the tenor like the ATM vol.
        - ``smile_rmse_volpt``: the mean over expiries of the smile fit's rmse in vol points
          (:func:`fit_smile`), over expiries with enough quotes in the band (5 for the
          quadratic, 7 for SVI).
        - ``n_quotes``: quotes of the snapshot in the input; ``n_expiries``: expiries with an
          ATM vol.

    Notes
    -----
    Per expiry one quote per strike is kept: the out-of-the-money one (call for ``K >= F``,
    put below) when both types are quoted.
    """
    who = "surface_features"
    tenors = [float(d) for d in tenors_days]
    if not tenors or not all(d > 0 and math.isfinite(d) for d in tenors):
        raise FairmarginInputError(
            f"{who}: tenors_days must be a non-empty sequence of finite values > 0, got {tenors}"
        )
    labels = [_label(d) for d in tenors]
    if len(set(labels)) != len(labels):
        raise FairmarginInputError(f"{who}: tenors_days must be distinct, got {tenors}")
    if not (skew_tenor_days > 0 and math.isfinite(skew_tenor_days)):
        raise FairmarginInputError(
            f"{who}: skew_tenor_days must be finite and > 0, got {skew_tenor_days!r}"
        )
    if smile_fit not in ("quadratic", "svi", "none"):
        raise FairmarginInputError(
            f"{who}: smile_fit must be 'quadratic', 'svi' or 'none', got {smile_fit!r}"
        )
    if not (min_days_to_expiry >= 0 and math.isfinite(min_days_to_expiry)):
        raise FairmarginInputError(
            f"{who}: min_days_to_expiry must be finite and >= 0, got {min_days_to_expiry!r}"
        )
    if not (smile_band_sd > 0):
        raise FairmarginInputError(f"{who}: smile_band_sd must be > 0, got {smile_band_sd!r}")
    _check_quotes(option_quotes, who=who)

    q = option_quotes
    ts_ns, ex_ns = _epoch_ns(q["timestamp"]), _epoch_ns(q["expiry"])
    years_all = np.asarray((ex_ns - ts_ns) / (1e9 * _SECONDS_PER_YEAR), dtype=np.float64)
    strike_all = q["strike"].to_numpy(dtype=np.float64)
    is_call_all = np.asarray(q["option_type"] == "call", dtype=bool)
    order, snap_sorted, eg_sorted = _sort_quotes(q, ts_ns, ex_ns, strike_all, is_call_all)
    new_snap = np.ones(len(order), dtype=bool)
    new_snap[1:] = snap_sorted[1:] != snap_sorted[:-1]
    snap_all = np.cumsum(new_snap) - 1
    n_snap = int(snap_all[-1]) + 1 if len(order) else 0
    keys = q[["venue", "underlying", "timestamp"]].iloc[order[new_snap]].reset_index(drop=True)
    n_quotes = np.bincount(snap_all, minlength=n_snap)

    # Quotes used: strictly before expiry and at least min_days_to_expiry ahead.
    years_sorted = years_all[order]
    use = (years_sorted > 0) & (years_sorted * 365.0 >= min_days_to_expiry)
    rows = order[use]
    snap = snap_all[use]
    years = years_sorted[use]
    strike = strike_all[rows]
    is_call = is_call_all[rows]
    ex = eg_sorted[use]
    iv = q["mark_iv"].to_numpy(dtype=np.float64)[rows]
    under = q["underlying_price"].to_numpy(dtype=np.float64)[rows]

    # Expiry groups (snapshot, expiry), in sorted order.
    n = len(rows)
    new_eg = np.ones(n, dtype=bool)
    new_eg[1:] = ex[1:] != ex[:-1]
    eg = np.cumsum(new_eg) - 1
    n_eg = int(eg[-1]) + 1 if n else 0
    dup = (eg[1:] == eg[:-1]) & (strike[1:] == strike[:-1])
    same_type = dup & (is_call[1:] == is_call[:-1])
    if same_type.any():
        i = int(rows[1:][same_type][0])
        raise FairmarginInputError(
            f"{who}: option_quotes row {i}: (venue, underlying, timestamp, expiry, strike, "
            "option_type) must be unique, got a duplicate"
        )
    eg_count = np.bincount(eg, minlength=n_eg)
    forward_eg = np.bincount(eg, weights=under, minlength=n_eg) / np.maximum(eg_count, 1)
    forward = forward_eg[eg]
    otm = np.where(is_call, strike >= forward, strike < forward)
    drop = np.zeros(n, dtype=bool)  # of a call/put pair at one strike, drop the ITM one
    drop[:-1] |= dup & ~otm[:-1]
    drop[1:] |= dup & ~otm[1:]
    keep = ~drop
    rows, snap, eg = rows[keep], snap[keep], eg[keep]
    years, strike, iv, forward = years[keep], strike[keep], iv[keep], forward[keep]
    is_call = is_call[keep]
    k = np.log(strike / forward)
    w = iv * iv * years

    first_eg = np.flatnonzero(np.concatenate(([True], eg[1:] != eg[:-1]))) if eg.size else eg
    snap_eg = np.full(n_eg, -1, dtype=np.intp)
    years_eg = np.full(n_eg, np.nan)
    snap_eg[eg[first_eg]] = snap[first_eg]
    years_eg[eg[first_eg]] = years[first_eg]
    live = snap_eg >= 0  # groups that kept at least one quote (all of them, in practice)

    # ATM per expiry: w linear in k between the strikes straddling the forward.
    atm_w = _crossing_interp(k, w, eg, np.zeros(n_eg), n_eg)
    atm_iv_eg = np.sqrt(np.maximum(atm_w, 0.0) / np.where(live, years_eg, 1.0))

    # 25-delta vols per expiry.
    call_delta = _call_equivalent_delta(q, rows, is_call, k, w)
    c25 = _crossing_interp(call_delta, iv, eg, np.full(n_eg, 0.25), n_eg)
    p25 = _crossing_interp(call_delta, iv, eg, np.full(n_eg, 0.75), n_eg)
    sd = atm_iv_eg * np.sqrt(years_eg)
    drift = 0.5 * atm_iv_eg**2 * years_eg
    c25_fb = _crossing_interp(k, iv, eg, _Z25 * sd + drift, n_eg)
    p25_fb = _crossing_interp(k, iv, eg, -_Z25 * sd + drift, n_eg)
    c25 = np.where(np.isnan(c25), c25_fb, c25)
    p25 = np.where(np.isnan(p25), p25_fb, p25)

    # Smile-fit error per expiry, averaged per snapshot.
    if smile_fit == "none" or n == 0:
        rmse_eg = np.full(n_eg, np.nan)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            z = k / sd[eg]
        band = np.abs(z) <= smile_band_sd  # NaN sd (no ATM) -> False
        if smile_fit == "quadratic":
            rmse_eg = _quadratic_rmse(z, w, iv, years, eg, band, n_eg)
        else:
            rmse_eg = _svi_rmse(k, w, years_eg, eg, band, n_eg)
    has_fit = np.isfinite(rmse_eg) & live
    fit_count = np.bincount(snap_eg[has_fit], minlength=n_snap)
    fit_sum = np.bincount(snap_eg[has_fit], weights=rmse_eg[has_fit], minlength=n_snap)

    s_eg, y_eg = snap_eg[live], years_eg[live]
    cols: dict[str, NDArray[np.float64]] = {}
    for d, lab in zip(tenors, labels, strict=True):
        cols[f"atm_iv_{lab}d"] = _term_interp(s_eg, y_eg, atm_iv_eg[live], d / 365.0, n_snap)
    short, long_ = labels[int(np.argmin(tenors))], labels[int(np.argmax(tenors))]
    cols["term_slope"] = (
        cols[f"atm_iv_{long_}d"] - cols[f"atm_iv_{short}d"]
        if len(tenors) > 1
        else np.full(n_snap, np.nan)
    )
    tau = skew_tenor_days / 365.0
    atm_skew = _term_interp(s_eg, y_eg, atm_iv_eg[live], tau, n_snap)
    call_v = _term_interp(s_eg, y_eg, c25[live], tau, n_snap)
    put_v = _term_interp(s_eg, y_eg, p25[live], tau, n_snap)
    sk = _label(skew_tenor_days)
    cols[f"rr25_{sk}d"] = call_v - put_v
    cols[f"bf25_{sk}d"] = 0.5 * (call_v + put_v) - atm_skew
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["smile_rmse_volpt"] = np.where(fit_count > 0, fit_sum / fit_count, np.nan)
    out = pd.concat([keys, pd.DataFrame(cols, index=keys.index)], axis=1)
    out["n_quotes"] = n_quotes.astype(np.int64)
    out["n_expiries"] = np.bincount(
        snap_eg[live & np.isfinite(atm_iv_eg)], minlength=n_snap
    ).astype(np.int64)
    return out


def _call_equivalent_delta(
    q: pd.DataFrame,
    rows: NDArray[np.intp],
    is_call: NDArray[np.bool_],
    k: NDArray[np.float64],
    w: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Call delta of each quote's strike (put delta + 1), from ``delta`` or Black-Scholes."""
    d1 = (-k + 0.5 * w) / np.sqrt(w)
    bs = special.ndtr(d1)
    if "delta" not in q.columns:
        return np.asarray(bs, dtype=np.float64)
    given = q["delta"].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    given = np.where(is_call, given, given + 1.0)
    return np.asarray(np.where(np.isnan(given), bs, given), dtype=np.float64)


def _quadratic_rmse(
    z: NDArray[np.float64],
    w: NDArray[np.float64],
    iv: NDArray[np.float64],
    years: NDArray[np.float64],
    eg: NDArray[np.intp],
    band: NDArray[np.bool_],
    n_eg: int,
) -> NDArray[np.float64]:
    """Per-expiry rmse (vol points) of ``w = c0 + c1 z + c2 z^2`` fitted on the band.

    ``z`` is log-moneyness in ATM standard deviations: the same quadratic family as in ``k``,
    better conditioned. Normal equations per group from bincount sums.
    """
    g, zz, ww = eg[band], z[band], w[band]
    cnt = np.bincount(g, minlength=n_eg).astype(np.float64)
    z2 = zz * zz
    m = [
        cnt,
        np.bincount(g, weights=zz, minlength=n_eg),
        np.bincount(g, weights=z2, minlength=n_eg),
        np.bincount(g, weights=z2 * zz, minlength=n_eg),
        np.bincount(g, weights=z2 * z2, minlength=n_eg),
    ]
    r = [np.bincount(g, weights=ww * p, minlength=n_eg) for p in (1.0, zz, z2)]
    a = np.empty((n_eg, 3, 3))
    for i in range(3):
        for j in range(3):
            a[:, i, j] = m[i + j]
    rhs = np.stack(r, axis=1)
    enough = cnt >= _MIN_FIT_POINTS["quadratic"]
    det = np.linalg.det(a)
    scale = np.maximum(m[0] * m[2] * m[4], 1e-300)
    ok = enough & (np.abs(det) > 1e-10 * scale)
    a[~ok] = np.eye(3)
    rhs[~ok] = 0.0
    coef = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]
    fitted = coef[g, 0] + coef[g, 1] * zz + coef[g, 2] * z2
    iv_fit = np.sqrt(np.maximum(fitted, 0.0) / years[band])
    sse = np.bincount(g, weights=(iv_fit - iv[band]) ** 2, minlength=n_eg)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = 100.0 * np.sqrt(sse / cnt)
    return np.where(ok, rmse, np.nan)


def _svi_rmse(
    k: NDArray[np.float64],
    w: NDArray[np.float64],
    years_eg: NDArray[np.float64],
    eg: NDArray[np.intp],
    band: NDArray[np.bool_],
    n_eg: int,
) -> NDArray[np.float64]:
    """Per-expiry rmse (vol points) of a raw-SVI fit on the band (one scipy fit per expiry)."""
    out = np.full(n_eg, np.nan)
    g, kk, ww = eg[band], k[band], w[band]
    if g.size == 0:
        return out
    bounds = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1], [True])))
    for lo, hi in itertools.pairwise(bounds):
        if hi - lo < _MIN_FIT_POINTS["svi"] or np.unique(kk[lo:hi]).size < 3:
            continue
        gi = int(g[lo])
        fit = fit_smile(kk[lo:hi], ww[lo:hi], model="svi", expiry_years=float(years_eg[gi]))
        out[gi] = fit.rmse_vol_points
    return out


def implied_minus_realised(atm_iv: pd.Series, realised_vol: pd.Series) -> pd.Series:
    """Volatility risk premium proxy: ``atm_iv - realised_vol`` (annualised fractions).

    Parameters
    ----------
    atm_iv : pandas.Series
        ATM implied volatility (e.g. ``atm_iv_30d``), annualised fraction.
    realised_vol : pandas.Series
        Realised volatility (annualised fraction, >= 0) on the same time basis, already
        aligned point-in-time to the labels of ``atm_iv`` (e.g. with ``merge_asof``).

    Returns
    -------
    pandas.Series
        On ``atm_iv``'s index (``realised_vol`` is matched by exact label; NaN where absent),
        named ``iv_minus_rv``.
    """
    who = "implied_minus_realised"
    if not isinstance(atm_iv, pd.Series) or not isinstance(realised_vol, pd.Series):
        raise FairmarginInputError(
            f"{who}: atm_iv and realised_vol must be pandas Series, "
            f"got {type(atm_iv).__name__} and {type(realised_vol).__name__}"
        )
    if realised_vol.index.has_duplicates:
        raise FairmarginInputError(f"{who}: realised_vol index must be unique, got duplicates")
    rv = realised_vol.reindex(atm_iv.index).to_numpy(dtype=np.float64, na_value=np.nan)
    if (rv < 0).any():
        raise FairmarginInputError(
            f"{who}: realised_vol must be >= 0, got {float(np.nanmin(rv))!r}"
        )
    iv = atm_iv.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.Series(iv - rv, index=atm_iv.index, name="iv_minus_rv")
