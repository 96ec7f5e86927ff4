"""Return-based features of one contract: volatility, tails, jumps, drawdown, funding, basis.

Time (METHOD.md): an OHLCV bar is known at its close, so the caller indexes bars by their CLOSE
time, and every feature at index t uses rows at or before t only. Windows are trailing (never
centred, never shifted backwards) and nothing is forward-filled.

Windows are counted in bars (rows), not in clock time. On a regular grid (missing bars present as
all-NaN rows) a window of w bars is w bars of time; on an index with gaps (missing bars absent) a
window of w bars reaches further back in time, and a log return spans the gap.

Missing values (NaN) are missing observations: a windowed statistic at t is computed from the
non-missing observations among the ``window`` rows ending at t, and is NaN unless there are at
least ``min_periods`` of them (default: ``window``, i.e. no missing row allowed).

Units: returns are natural-log returns per bar; volatilities are annualised,
``sigma_ann = sqrt(variance per bar * periods_per_year)`` (5-minute bars: ``365 * 288``);
value at risk, expected shortfall and drawdown are per-window fractions (not annualised).
Single-series functions take one contract; the caller groups by (venue, symbol).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns, require_sorted
from features._rolling import rolling_count, rolling_max_drawdown_log, rolling_top_k

__all__ = [
    "cross_venue_basis",
    "downside_semivol",
    "ewma_vol",
    "funding_features",
    "garman_klass_vol",
    "historical_es",
    "historical_var",
    "jump_count",
    "log_returns",
    "max_drawdown",
    "parkinson_vol",
    "realized_vol",
    "return_features",
    "rogers_satchell_vol",
    "rolling_kurtosis",
    "rolling_skew",
    "vol_of_vol",
    "yang_zhang_vol",
]

Side = Literal["long", "short"]

_LN2 = math.log(2.0)
_MINUTES_PER_YEAR = 365.0 * 1440.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|H|d|D|w|W)\s*$")
_UNIT_MINUTES = {"m": 1.0, "min": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0}


# --------------------------------------------------------------------------------------------
# Validation (at the top of every public function, nowhere deeper)
# --------------------------------------------------------------------------------------------
def _check_series(s: pd.Series, *, who: str, what: str) -> None:
    if not isinstance(s, pd.Series):
        raise FairmarginInputError(
            f"{who}: {what} must be a pandas Series, got {type(s).__name__}"
        )
    require_sorted(s.index, who=f"{who}: {what} index")


def _check_window(window: int, *, who: str, minimum: int = 2, what: str = "window") -> None:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < minimum:
        unit = " (bars)" if what == "window" else ""
        raise FairmarginInputError(
            f"{who}: {what} must be an integer >= {minimum}{unit}, got {window!r}"
        )


def _resolve_min_periods(
    min_periods: int | None, window: int, *, who: str, minimum: int = 2
) -> int:
    if min_periods is None:
        return int(window)
    if (
        isinstance(min_periods, bool)
        or not isinstance(min_periods, int | np.integer)
        or not minimum <= min_periods <= window
    ):
        raise FairmarginInputError(
            f"{who}: min_periods must be an integer in [{minimum}, window={window}], "
            f"got {min_periods!r}"
        )
    return int(min_periods)


def _check_periods_per_year(periods_per_year: float, *, who: str) -> float:
    ppy = float(periods_per_year)
    if not (math.isfinite(ppy) and ppy > 0):
        raise FairmarginInputError(
            f"{who}: periods_per_year must be finite and > 0, got {periods_per_year!r}"
        )
    return ppy


def _check_q(q: float, *, who: str) -> float:
    qq = float(q)
    if not 0.0 < qq < 1.0:
        raise FairmarginInputError(f"{who}: q must be in (0, 1), got {q!r}")
    return qq


def _check_side(side: str, *, who: str) -> None:
    if side not in ("long", "short"):
        raise FairmarginInputError(f"{who}: side must be 'long' or 'short', got {side!r}")


def _check_positive_prices(s: pd.Series, *, who: str, what: str) -> None:
    v = s.to_numpy(dtype=np.float64)
    bad = ~np.isnan(v) & ~(np.isfinite(v) & (v > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FairmarginInputError(
            f"{who}: {what} must be finite and > 0 (or NaN if missing), "
            f"got {float(v[i])!r} at {s.index[i]}"
        )


def _check_bars(bars: pd.DataFrame, cols: Sequence[str], *, who: str) -> None:
    """Prices finite and > 0 and ``low <= open, close <= high`` wherever both are present."""
    if not isinstance(bars, pd.DataFrame):
        raise FairmarginInputError(
            f"{who}: bars must be a pandas DataFrame, got {type(bars).__name__}"
        )
    require_columns(bars, cols, who=who)
    require_sorted(bars.index, who=f"{who}: bars index")
    for c in cols:
        _check_positive_prices(bars[c], who=who, what=c)
    if "high" in cols and "low" in cols:
        hi = bars["high"].to_numpy(dtype=np.float64)
        lo = bars["low"].to_numpy(dtype=np.float64)
        for c in cols:
            if c in ("high", "low"):
                continue
            v = bars[c].to_numpy(dtype=np.float64)
            _check_order(lo, v, bars.index, who=who, rule=f"low <= {c}")
            _check_order(v, hi, bars.index, who=who, rule=f"{c} <= high")
        _check_order(lo, hi, bars.index, who=who, rule="low <= high")


def _check_order(
    a: NDArray[np.float64], b: NDArray[np.float64], index: pd.Index, *, who: str, rule: str
) -> None:
    with np.errstate(invalid="ignore"):
        bad = a > b  # False where either is NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FairmarginInputError(
            f"{who}: every bar must have {rule}, "
            f"got {float(a[i])!r} > {float(b[i])!r} at {index[i]}"
        )


def _parse_minutes(duration: str, *, who: str) -> float:
    m = _DURATION.match(duration) if isinstance(duration, str) else None
    if m is None:
        raise FairmarginInputError(
            f"{who}: window durations must look like '30m', '1h', '1d' or '1w', got {duration!r}"
        )
    minutes = float(m.group(1)) * _UNIT_MINUTES[m.group(2).lower()]
    if minutes <= 0:
        raise FairmarginInputError(f"{who}: window durations must be > 0, got {duration!r}")
    return minutes


# --------------------------------------------------------------------------------------------
# Kernels (no validation: inputs are already checked)
# --------------------------------------------------------------------------------------------
def _log(s: pd.Series) -> pd.Series:
    """Natural log of a Series (NaN stays NaN; callers pass positive values or NaN)."""
    return pd.Series(np.log(s.to_numpy(dtype=np.float64)), index=s.index, name=s.name)


def _ann_sqrt(var_per_bar: pd.Series, ppy: float) -> pd.Series:
    # Rolling sums of non-negative terms may round to -1e-20: clip before the square root.
    return (var_per_bar.clip(lower=0.0) * ppy).pow(0.5)


def _rv(r: pd.Series, w: int, mp: int, ppy: float) -> pd.Series:
    return (r.rolling(w, min_periods=mp).var(ddof=1).clip(lower=0.0) * ppy).pow(0.5)


def _ewma(r: pd.Series, lam: float, ppy: float, mp: int) -> pd.Series:
    values = r.to_numpy(dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(values))
    out = np.full(values.shape[0], np.nan)
    if valid.size >= mp:
        x2 = values[valid] ** 2
        z = x2[mp - 1 :].copy()
        z[0] = float(np.mean(x2[:mp]))  # the seed
        # adjust=False is the recursion y_t = lam y_{t-1} + (1 - lam) z_t from y_0 = z_0.
        sigma2 = pd.Series(z).ewm(alpha=1.0 - lam, adjust=False).mean().to_numpy()
        out[valid[mp - 1 :]] = np.sqrt(sigma2 * ppy)
    return pd.Series(out, index=r.index, name="ewma_vol")


def _log_ratios(bars: pd.DataFrame) -> dict[str, pd.Series]:
    o = _log(bars["open"]) if "open" in bars else None
    h = _log(bars["high"])
    lo = _log(bars["low"])
    out = {"hl": h - lo}
    if o is not None and "close" in bars:
        c = _log(bars["close"])
        out |= {"co": c - o, "hc": h - c, "ho": h - o, "lc": lo - c, "lo": lo - o}
        out["oc_prev"] = o - c.shift(1)
    return out


def _pk(lr: dict[str, pd.Series], w: int, mp: int, ppy: float) -> pd.Series:
    term = lr["hl"] ** 2 / (4.0 * _LN2)
    return _ann_sqrt(term.rolling(w, min_periods=mp).mean(), ppy)


def _gk(lr: dict[str, pd.Series], w: int, mp: int, ppy: float) -> pd.Series:
    term = 0.5 * lr["hl"] ** 2 - (2.0 * _LN2 - 1.0) * lr["co"] ** 2
    return _ann_sqrt(term.rolling(w, min_periods=mp).mean(), ppy)


def _rs_term(lr: dict[str, pd.Series]) -> pd.Series:
    return lr["hc"] * lr["ho"] + lr["lc"] * lr["lo"]


def _rs(lr: dict[str, pd.Series], w: int, mp: int, ppy: float) -> pd.Series:
    return _ann_sqrt(_rs_term(lr).rolling(w, min_periods=mp).mean(), ppy)


def _yz(lr: dict[str, pd.Series], w: int, mp: int, ppy: float) -> pd.Series:
    k = 0.34 / (1.34 + (w + 1) / (w - 1))
    var_o = lr["oc_prev"].rolling(w, min_periods=mp).var(ddof=1).clip(lower=0.0)
    var_c = lr["co"].rolling(w, min_periods=mp).var(ddof=1).clip(lower=0.0)
    var_rs = _rs_term(lr).rolling(w, min_periods=mp).mean()
    return _ann_sqrt(var_o + k * var_c + (1.0 - k) * var_rs, ppy)


def _semivol(r: pd.Series, w: int, mp: int, ppy: float) -> pd.Series:
    down2 = r.clip(upper=0.0) ** 2
    return _ann_sqrt(down2.rolling(w, min_periods=mp).mean(), ppy)


def _tail(
    r: pd.Series, w: int, mp: int, q: float
) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]]]:
    """Historical VaR and ES per side, from the trailing order statistics of the losses."""
    values = r.to_numpy(dtype=np.float64)
    # long loses on falls, short on rises (+ 0.0 turns -0.0 into 0.0)
    losses = np.column_stack([-values, values]) + 0.0
    n_valid = rolling_count(~np.isnan(values), window=w)
    k = min(w, math.floor(w * (1.0 - q)) + 2)
    top = rolling_top_k(losses, window=w, k=k)  # (n, 2, k), descending
    ok = n_valid >= mp
    nv = n_valid[ok].astype(np.float64)
    top_ok = top[ok]
    top_ok = np.where(np.isfinite(top_ok), top_ok, 0.0)  # never indexed: see below
    # VaR: linear interpolation at level q of the losses = position (n-1)(1-q) from the top.
    pos = (nv - 1.0) * (1.0 - q)
    i = np.floor(pos).astype(np.int64)  # i + 1 <= n - 1 because q > 0
    frac = pos - i
    lo_v = np.take_along_axis(top_ok, i[:, None, None].repeat(2, axis=1), axis=2)[:, :, 0]
    hi_v = np.take_along_axis(top_ok, (i + 1)[:, None, None].repeat(2, axis=1), axis=2)[:, :, 0]
    var = lo_v - frac[:, None] * (lo_v - hi_v)
    # ES (Acerbi-Tasche): mean of the m = n(1-q) largest losses, the last one fractionally.
    m = nv * (1.0 - q)
    f = np.floor(m).astype(np.int64)  # f <= n - 1 because q > 0
    csum = np.concatenate([np.zeros((top_ok.shape[0], 2, 1)), np.cumsum(top_ok, axis=2)], axis=2)
    idx = f[:, None, None].repeat(2, axis=1)
    head = np.take_along_axis(csum, idx, axis=2)[:, :, 0]
    part = np.take_along_axis(top_ok, idx, axis=2)[:, :, 0]
    es = (head + (m - f)[:, None] * part) / m[:, None]
    var_out = {s: np.full(values.shape[0], np.nan) for s in ("long", "short")}
    es_out = {s: np.full(values.shape[0], np.nan) for s in ("long", "short")}
    for j, s in enumerate(("long", "short")):
        var_out[s][ok] = var[:, j]
        es_out[s][ok] = es[:, j]
    return var_out, es_out


def _jumps(r: pd.Series, w: int, mp: int, k: float) -> pd.Series:
    a = r.abs()
    bv = (math.pi / 2.0) * (a * a.shift(1)).rolling(w, min_periods=mp).mean()
    thr = k * bv.clip(lower=0.0).pow(0.5)
    flag = (a > thr).astype(np.float64).where(a.notna() & thr.notna())
    return flag.rolling(w, min_periods=mp).sum()


def _drawdown(close: pd.Series, w: int, mp: int) -> pd.Series:
    logp = np.log(close.to_numpy(dtype=np.float64))
    dd = rolling_max_drawdown_log(logp, window=w)
    n_valid = rolling_count(~np.isnan(logp), window=w)
    frac = np.full(dd.shape[0], np.nan)
    ok = n_valid >= mp
    frac[ok] = -np.expm1(-dd[ok])
    return pd.Series(frac, index=close.index)


def _volvol(vol: pd.Series, w: int, mp: int) -> pd.Series:
    v = vol.astype(np.float64)
    log_v = _log(v.where(v > 0))  # zero or missing vol: missing log vol
    return log_v.rolling(w, min_periods=mp).std(ddof=1)


# --------------------------------------------------------------------------------------------
# Public single-series features
# --------------------------------------------------------------------------------------------
def log_returns(close: pd.Series) -> pd.Series:
    """Log return of each bar, ``r_t = ln(close_t / close_{t-1})``, per bar (not annualised).

    Parameters
    ----------
    close : close prices (> 0, NaN if missing) indexed by bar close time, sorted ascending.

    Returns
    -------
    Series ``ret_1bar`` (float64): NaN at the first row and wherever either close is missing.
    On an index with gaps the return spans the gap.
    """
    who = "log_returns"
    _check_series(close, who=who, what="close")
    _check_positive_prices(close, who=who, what="close")
    logp = _log(close)
    return logp.diff().rename("ret_1bar")


def realized_vol(
    log_returns: pd.Series,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised rolling standard deviation of log returns (close-to-close volatility).

    ``rv_t = sqrt(periods_per_year * sum_i (r_i - mean(r))^2 / (n - 1))`` over the ``window``
    returns ending at t (n of them non-missing).

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    periods_per_year : bars per year (5-minute bars: ``365 * 288``).
    min_periods : fewest non-missing returns for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``rv_{window}``, annualised fraction (0.8 = 80 % a year); nothing is forward-filled.
    """
    who = "realized_vol"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _rv(log_returns.astype(np.float64), window, mp, ppy).rename(f"rv_{window}")


def ewma_vol(
    log_returns: pd.Series,
    *,
    lam: float = 0.94,
    periods_per_year: float,
    min_periods: int = 20,
) -> pd.Series:
    """Annualised RiskMetrics EWMA volatility.

    ``sigma2_t = lam * sigma2_{t-1} + (1 - lam) * r_t^2`` (per bar, zero mean), reported as
    ``sqrt(sigma2_t * periods_per_year)``.

    Initialisation: the recursion starts at the ``min_periods``-th non-missing return, from the
    mean of the first ``min_periods`` squared returns; earlier rows are NaN. So the value at t
    uses returns at or before t only.

    Missing returns (NaN) are skipped: the recursion runs over the non-missing returns, and the
    output is NaN at a missing row (never carried forward).

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    lam : decay in (0, 1); 0.94 is RiskMetrics' (half-life about 11 bars).
    periods_per_year : bars per year (5-minute bars: ``365 * 288``).
    min_periods : number of returns that seed the recursion (>= 1).

    Returns
    -------
    Series ``ewma_vol``, annualised fraction.
    """
    who = "ewma_vol"
    _check_series(log_returns, who=who, what="log_returns")
    if not 0.0 < float(lam) < 1.0:
        raise FairmarginInputError(f"{who}: lam must be in (0, 1), got {lam!r}")
    _check_window(min_periods, who=who, minimum=1, what="min_periods")
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _ewma(log_returns.astype(np.float64), float(lam), ppy, int(min_periods))


def parkinson_vol(
    bars: pd.DataFrame,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised Parkinson (1980) high-low volatility.

    ``sigma2 = mean_i[ln(H_i / L_i)^2] / (4 ln 2)`` per bar over the window, annualised by
    ``periods_per_year``. Assumes a driftless continuous path observed continuously: on bars
    built from discrete trades the observed range is too narrow, so it is biased low.

    Parameters
    ----------
    bars : columns ``high``, ``low`` (> 0, ``low <= high``), indexed by bar close time, sorted.
    window : window length in bars (>= 2).
    periods_per_year : bars per year.
    min_periods : fewest non-missing bars for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``pk_{window}``, annualised fraction.
    """
    who = "parkinson_vol"
    _check_bars(bars, ["high", "low"], who=who)
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _pk(_log_ratios(bars), window, mp, ppy).rename(f"pk_{window}")


def garman_klass_vol(
    bars: pd.DataFrame,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised Garman-Klass (1980) volatility.

    ``sigma2 = mean_i[0.5 ln(H_i/L_i)^2 - (2 ln 2 - 1) ln(C_i/O_i)^2]`` per bar over the window,
    annualised by ``periods_per_year``. Each term is >= 0 on a valid bar.

    Parameters
    ----------
    bars : columns ``open``, ``high``, ``low``, ``close`` (> 0, low <= open, close <= high),
        indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    periods_per_year : bars per year.
    min_periods : fewest non-missing bars for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``gk_{window}``, annualised fraction.
    """
    who = "garman_klass_vol"
    _check_bars(bars, ["open", "high", "low", "close"], who=who)
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _gk(_log_ratios(bars), window, mp, ppy).rename(f"gk_{window}")


def rogers_satchell_vol(
    bars: pd.DataFrame,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised Rogers-Satchell (1991) volatility, unbiased under a drift.

    ``sigma2 = mean_i[ln(H_i/C_i) ln(H_i/O_i) + ln(L_i/C_i) ln(L_i/O_i)]`` per bar over the
    window, annualised by ``periods_per_year``.

    Parameters
    ----------
    bars : columns ``open``, ``high``, ``low``, ``close`` (> 0, low <= open, close <= high),
        indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    periods_per_year : bars per year.
    min_periods : fewest non-missing bars for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``rs_{window}``, annualised fraction.
    """
    who = "rogers_satchell_vol"
    _check_bars(bars, ["open", "high", "low", "close"], who=who)
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _rs(_log_ratios(bars), window, mp, ppy).rename(f"rs_{window}")


def yang_zhang_vol(
    bars: pd.DataFrame,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised Yang-Zhang (2000) volatility.

    ``sigma2 = var(o) + k var(c) + (1 - k) mean(RS)`` per bar over the window, with the
    "overnight" return ``o_i = ln(O_i / C_{i-1})`` (the previous row's close), the open-to-close
    return ``c_i = ln(C_i / O_i)``, sample variances (ddof 1), the Rogers-Satchell term ``RS_i``
    and ``k = 0.34 / (1.34 + (n + 1) / (n - 1))`` with n = ``window``. Annualised by
    ``periods_per_year``. On 24/7 markets ``o_i`` is close to 0.

    Parameters
    ----------
    bars : columns ``open``, ``high``, ``low``, ``close`` (> 0, low <= open, close <= high),
        indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    periods_per_year : bars per year.
    min_periods : fewest non-missing bars for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``yz_{window}``, annualised fraction. NaN at the first row (no previous close).
    """
    who = "yang_zhang_vol"
    _check_bars(bars, ["open", "high", "low", "close"], who=who)
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _yz(_log_ratios(bars), window, mp, ppy).rename(f"yz_{window}")


def downside_semivol(
    log_returns: pd.Series,
    *,
    window: int,
    periods_per_year: float,
    min_periods: int | None = None,
) -> pd.Series:
    """Annualised downside semi-volatility (realised semivariance, not demeaned).

    ``semivol_t = sqrt(periods_per_year * mean_i[min(r_i, 0)^2])`` over the window. For
    symmetric returns it is about ``sigma / sqrt(2)``.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    periods_per_year : bars per year.
    min_periods : fewest non-missing returns for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``semivol_down_{window}``, annualised fraction.
    """
    who = "downside_semivol"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    ppy = _check_periods_per_year(periods_per_year, who=who)
    return _semivol(log_returns.astype(np.float64), window, mp, ppy).rename(
        f"semivol_down_{window}"
    )


def rolling_skew(
    log_returns: pd.Series, *, window: int, min_periods: int | None = None
) -> pd.Series:
    """Rolling sample skewness (adjusted Fisher-Pearson, G1) of log returns.

    ``G1 = sqrt(n (n - 1)) / (n - 2) * m3 / m2^1.5`` with central moments ``m_k`` of the n
    non-missing returns of the window (as scipy's ``skew(bias=False)``). NaN where the window is
    constant. Dimensionless.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 3).
    min_periods : fewest non-missing returns for a value (>= 3); default ``window``.

    Returns
    -------
    Series ``skew_{window}``.
    """
    who = "rolling_skew"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who, minimum=3)
    mp = _resolve_min_periods(min_periods, window, who=who, minimum=3)
    r = log_returns.astype(np.float64)
    return r.rolling(window, min_periods=mp).skew().rename(f"skew_{window}")


def rolling_kurtosis(
    log_returns: pd.Series, *, window: int, min_periods: int | None = None
) -> pd.Series:
    """Rolling sample excess kurtosis (G2, 0 for a normal sample) of log returns.

    ``G2 = (n - 1) / ((n - 2)(n - 3)) * ((n + 1) g2 + 6)`` with ``g2 = m4 / m2^2 - 3`` over the n
    non-missing returns of the window (as scipy's ``kurtosis(bias=False)``). NaN where the window
    is constant. Dimensionless.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 4).
    min_periods : fewest non-missing returns for a value (>= 4); default ``window``.

    Returns
    -------
    Series ``kurt_{window}``.
    """
    who = "rolling_kurtosis"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who, minimum=4)
    mp = _resolve_min_periods(min_periods, window, who=who, minimum=4)
    r = log_returns.astype(np.float64)
    return r.rolling(window, min_periods=mp).kurt().rename(f"kurt_{window}")


def historical_var(
    log_returns: pd.Series,
    *,
    window: int,
    q: float,
    side: Side = "long",
    min_periods: int | None = None,
) -> pd.Series:
    """Historical-simulation value at risk of one bar, as a positive loss.

    The loss of a bar is ``-r`` for ``side="long"`` (the left tail of returns) and ``r`` for
    ``side="short"`` (the right tail). VaR is the q-quantile of the window's n non-missing losses
    with linear interpolation (``numpy.quantile``'s default). It is negative only when even the
    tail of the window is a gain.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    q : coverage level in (0, 1), e.g. 0.99.
    side : ``"long"`` or ``"short"``.
    min_periods : fewest non-missing returns for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``var_{side}_{window}``, log-return units per bar (not annualised).
    """
    who = "historical_var"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    qq = _check_q(q, who=who)
    _check_side(side, who=who)
    var, _ = _tail(log_returns.astype(np.float64), window, mp, qq)
    return pd.Series(var[side], index=log_returns.index, name=f"var_{side}_{window}")


def historical_es(
    log_returns: pd.Series,
    *,
    window: int,
    q: float,
    side: Side = "long",
    min_periods: int | None = None,
) -> pd.Series:
    """Historical-simulation expected shortfall of one bar, as a positive loss.

    Losses as in :func:`historical_var` (long: ``-r``, short: ``r``). With the window's n
    non-missing losses sorted from the largest, ``L_(1) >= L_(2) >= ...``, and ``m = n (1 - q)``,
    the estimator of Acerbi and Tasche (2002):
    ``ES = (L_(1) + ... + L_(floor m) + (m - floor m) L_(floor m + 1)) / m``, i.e. the mean of
    the worst ``m`` losses, the last one counted fractionally (the largest loss when m < 1). It
    is never below the VaR of the same window.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    q : coverage level in (0, 1), e.g. 0.99.
    side : ``"long"`` or ``"short"``.
    min_periods : fewest non-missing returns for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``es_{side}_{window}``, log-return units per bar (not annualised).
    """
    who = "historical_es"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    qq = _check_q(q, who=who)
    _check_side(side, who=who)
    _, es = _tail(log_returns.astype(np.float64), window, mp, qq)
    return pd.Series(es[side], index=log_returns.index, name=f"es_{side}_{window}")


def jump_count(
    log_returns: pd.Series,
    *,
    window: int,
    k: float = 4.0,
    min_periods: int | None = None,
) -> pd.Series:
    """Number of jump bars among the ``window`` bars ending at t.

    Bar i is a jump when ``|r_i| > k * sqrt(BV_i)``, where
    ``BV_i = (pi / 2) * mean_j |r_j| |r_{j-1}|`` is the bipower variation per bar over the
    ``window`` bars j ending at i (robust to the jumps themselves; the first product reaches one
    bar before the window). Each bar is judged with its own trailing window, so the count at t
    uses the ``2 * window`` rows ending at t.

    Parameters
    ----------
    log_returns : per-bar log returns indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2), for both BV and the count.
    k : threshold in units of the bipower volatility per bar (> 0).
    min_periods : fewest non-missing products (for BV) and judged bars (for the count) for a
        value (>= 2); default ``window``.

    Returns
    -------
    Series ``jumps_{window}`` (float64 count; NaN before the windows fill).
    """
    who = "jump_count"
    _check_series(log_returns, who=who, what="log_returns")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    if not (math.isfinite(float(k)) and float(k) > 0):
        raise FairmarginInputError(f"{who}: k must be finite and > 0, got {k!r}")
    r = log_returns.astype(np.float64)
    return _jumps(r, window, mp, float(k)).rename(f"jumps_{window}")


def max_drawdown(close: pd.Series, *, window: int, min_periods: int | None = None) -> pd.Series:
    """Largest peak-to-trough fall within the trailing window, a positive fraction.

    ``dd_t = max over i <= j in the window of (1 - close_j / close_i)``: 0 for a window that
    only rises, 0.25 for a fall from 120 to 90. Missing closes are skipped.

    Parameters
    ----------
    close : close prices (> 0, NaN if missing) indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    min_periods : fewest non-missing closes for a value (>= 2); default ``window``.

    Returns
    -------
    Series ``drawdown_{window}``, fraction in [0, 1).
    """
    who = "max_drawdown"
    _check_series(close, who=who, what="close")
    _check_positive_prices(close, who=who, what="close")
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    return _drawdown(close.astype(np.float64), window, mp).rename(f"drawdown_{window}")


def vol_of_vol(vol: pd.Series, *, window: int, min_periods: int | None = None) -> pd.Series:
    """Rolling standard deviation (ddof 1) of log volatility.

    ``volvol_t = std_i(ln vol_i)`` over the window: a dimensionless measure of how much the
    volatility level moves (0.1 is about 10 % swings), whatever the volatility's annualisation.
    A zero volatility has no log and counts as missing.

    Parameters
    ----------
    vol : volatility (>= 0, NaN if missing) indexed by bar close time, sorted ascending.
    window : window length in bars (>= 2).
    min_periods : fewest non-missing values for a result (>= 2); default ``window``.

    Returns
    -------
    Series ``volvol_{window}``.
    """
    who = "vol_of_vol"
    _check_series(vol, who=who, what="vol")
    v = vol.to_numpy(dtype=np.float64)
    bad = ~np.isnan(v) & ~(np.isfinite(v) & (v >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FairmarginInputError(
            f"{who}: vol must be finite and >= 0 (or NaN), got {float(v[i])!r} at {vol.index[i]}"
        )
    _check_window(window, who=who)
    mp = _resolve_min_periods(min_periods, window, who=who)
    return _volvol(vol, window, mp).rename(f"volvol_{window}")


# --------------------------------------------------------------------------------------------
# Funding and basis
# --------------------------------------------------------------------------------------------
def funding_features(funding_rate: pd.Series) -> pd.DataFrame:
    """Funding-rate level, change and trailing mean of one perpetual swap.

    Parameters
    ----------
    funding_rate : rate per funding period (fraction, 0.0001 = 1 bp), indexed by funding
        timestamp, strictly increasing. A rate is known at its timestamp.

    Returns
    -------
    DataFrame on the same index, float64 columns:

    - ``funding_rate``: the level at that timestamp;
    - ``funding_rate_change``: level minus the previous period's level (NaN at the first);
    - ``funding_rate_mean_3``: mean of the last 3 periods, this one included (NaN before 3, or
      when one of them is missing).
    """
    who = "funding_features"
    _check_series(funding_rate, who=who, what="funding_rate")
    if not funding_rate.index.is_unique:
        raise FairmarginInputError(
            f"{who}: funding_rate index must be strictly increasing (one rate per timestamp), "
            f"got duplicates such as {funding_rate.index[funding_rate.index.duplicated()][0]!r}"
        )
    level = funding_rate.astype(np.float64)
    if np.isinf(level.to_numpy()).any():
        raise FairmarginInputError(f"{who}: funding_rate must be finite or NaN, got inf")
    return pd.DataFrame(
        {
            "funding_rate": level,
            "funding_rate_change": level.diff(),
            "funding_rate_mean_3": level.rolling(3, min_periods=3).mean(),
        },
        index=funding_rate.index,
    )


def cross_venue_basis(close: pd.DataFrame) -> pd.DataFrame:
    """Basis of each venue or contract of ONE underlying against the others, in basis points.

    ``basis_j,t = 1e4 * ln(close_j,t / median_{i != j} close_i,t)``, the median over the other
    columns that have a price at t. Row by row, so the value at t uses prices at t only.

    Parameters
    ----------
    close : close prices (> 0, NaN if missing) indexed by close time (sorted ascending), one
        column per venue or contract (at least 2, unique names).

    Returns
    -------
    DataFrame with the same index and columns, in bp (float64); NaN where the column or all
    the others are missing.
    """
    who = "cross_venue_basis"
    if not isinstance(close, pd.DataFrame):
        raise FairmarginInputError(
            f"{who}: close must be a pandas DataFrame, got {type(close).__name__}"
        )
    require_sorted(close.index, who=f"{who}: close index")
    if close.shape[1] < 2 or not close.columns.is_unique:
        raise FairmarginInputError(
            f"{who}: close must have at least 2 uniquely named columns, "
            f"got {list(map(str, close.columns))}"
        )
    for col in close.columns:
        _check_positive_prices(close[col], who=who, what=f"close[{col!r}]")
    prices = close.astype(np.float64)
    out = {}
    for col in prices.columns:
        others = prices.drop(columns=[col]).median(axis=1, skipna=True)
        out[col] = 1e4 * (_log(prices[col]) - _log(others))
    return pd.DataFrame(out, index=close.index, columns=close.columns)


# --------------------------------------------------------------------------------------------
# The assembler
# --------------------------------------------------------------------------------------------
def _window_bars(
    windows: Mapping[str, str] | Sequence[str], bar_minutes: int, *, who: str
) -> list[tuple[str, int]]:
    if isinstance(windows, str):
        raise FairmarginInputError(
            f"{who}: windows must be a sequence or mapping of durations, got the string "
            f"{windows!r}; write ({windows!r},)"
        )
    pairs = (
        list(windows.items()) if isinstance(windows, Mapping) else [(str(w), w) for w in windows]
    )
    kept: list[tuple[str, int]] = []
    for label, duration in pairs:
        bars = _parse_minutes(duration, who=who) / bar_minutes
        if bars < 2:
            continue  # e.g. 1h on daily bars: not a window at all
        if abs(bars - round(bars)) > 1e-9:
            raise FairmarginInputError(
                f"{who}: window {label!r} ({duration}) must be a whole number of "
                f"{bar_minutes}-minute bars, got {bars:g}"
            )
        kept.append((str(label), round(bars)))
    if not kept:
        raise FairmarginInputError(
            f"{who}: windows must keep at least one window of >= 2 bars at "
            f"bar_minutes={bar_minutes}, got {list(pairs)}"
        )
    kept.sort(key=lambda p: p[1])
    labels = [p[0] for p in kept]
    sizes = [p[1] for p in kept]
    if len(set(labels)) < len(labels) or len(set(sizes)) < len(sizes):
        raise FairmarginInputError(
            f"{who}: windows must have distinct labels and durations, got {kept}"
        )
    return kept


def _check_assembler_bars(bars: pd.DataFrame, *, who: str) -> None:
    if not isinstance(bars, pd.DataFrame):
        raise FairmarginInputError(
            f"{who}: bars must be a pandas DataFrame, got {type(bars).__name__}"
        )
    require_columns(bars, ["open", "high", "low", "close", "volume"], who=who)
    idx = bars.index
    if not isinstance(idx, pd.DatetimeIndex) or idx.tz is None or str(idx.tz) != "UTC":
        raise FairmarginInputError(
            f"{who}: bars index must be a tz-aware UTC DatetimeIndex of bar close times, "
            f"got {type(idx).__name__} with tz {getattr(idx, 'tz', None)!r}"
        )
    if not (idx.is_monotonic_increasing and idx.is_unique):
        raise FairmarginInputError(
            f"{who}: bars index must be strictly increasing (bar close times)"
        )
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    n_missing = np.isnan(ohlc).sum(axis=1)
    partial = (n_missing > 0) & (n_missing < 4)
    if partial.any():
        i = int(np.flatnonzero(partial)[0])
        raise FairmarginInputError(
            f"{who}: a bar must have all of open, high, low, close or none (a missing bar), "
            f"got {ohlc[i].tolist()} at {idx[i]}"
        )
    _check_bars(bars, ["open", "high", "low", "close"], who=who)
    vol = bars["volume"].to_numpy(dtype=np.float64)
    present = n_missing == 0
    bad = present & ~(np.isfinite(vol) & (vol >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FairmarginInputError(
            f"{who}: volume must be finite and >= 0 in every present bar, "
            f"got {float(vol[i])!r} at {idx[i]}"
        )


def return_features(
    bars: pd.DataFrame,
    *,
    bar_minutes: int,
    windows: Mapping[str, str] | Sequence[str] = ("1h", "4h", "1d", "7d"),
    q: float = 0.99,
    min_coverage: float = 0.9,
) -> pd.DataFrame:
    """All return features of ONE contract, one row per bar.

    Parameters
    ----------
    bars : columns ``open``, ``high``, ``low``, ``close``, ``volume`` (prices > 0,
        ``low <= open, close <= high``, volume >= 0 in base units), indexed by bar CLOSE time: a
        tz-aware UTC DatetimeIndex, strictly increasing. The index may have gaps (missing bars
        absent) or hold missing bars as all-NaN rows (a regular grid); windows are counted in
        bars either way, so only on a regular grid is a window of "1d" exactly one day.
    bar_minutes : bar length in minutes (5 for 5-minute bars); sets the annualisation
        ``periods_per_year = 365 * 1440 / bar_minutes`` and the bars per window.
    windows : durations such as ``"30m"``, ``"1h"``, ``"1d"``, ``"1w"`` (units m/min, h, d, w),
        either a sequence (each duration labels its own columns) or a mapping
        ``{label: duration}``. Each must be a whole number of bars; a window shorter than 2 bars
        is skipped (on daily bars the defaults keep only ``"7d"``, 7 bars: ``"1h"``, ``"4h"`` and
        ``"1d"`` are dropped).
    q : coverage level of the historical VaR and ES, in (0, 1).
    min_coverage : share of a window's bars that must be present for a value, in (0, 1];
        ``min_periods = max(2, ceil(min_coverage * window))`` in every windowed feature.

    Returns
    -------
    DataFrame on ``bars.index``, float64 columns. With the kept windows sorted by length, S the
    shortest, L the longest and B the second longest (B = L when only one is kept):

    - ``ret_1bar``: log return of the bar;
    - ``rv_{w}`` for every kept window w: annualised close-to-close volatility;
    - ``ewma_vol``: RiskMetrics EWMA volatility (lam 0.94, seeded from 20 returns), annualised;
    - at B: ``pk_B``, ``gk_B``, ``rs_B``, ``yz_B`` (range estimators, annualised),
      ``semivol_down_B`` (annualised), ``skew_B`` (if B >= 3 bars), ``kurt_B`` (excess, if
      B >= 4 bars), ``jumps_B`` (jump bars at k = 4), ``ret_B`` (log return over the last B bars,
      ``ln(close_t / close_{t-B})``);
    - ``volume_ratio_B``: mean volume per bar over B / mean over L (if B < L);
    - ``rv_ratio_S_B``: ``rv_S / rv_B``, a regime indicator (if S < B);
    - at L: ``var_long_L``, ``var_short_L``, ``es_long_L``, ``es_short_L`` (per-bar losses at
      level q, log units), ``drawdown_L`` (fraction), ``volvol_L`` (std of log ``ewma_vol``).

    With the defaults on 5-minute bars: S = 1h, B = 1d, L = 7d (``rv_4h`` is also produced).
    Every value at t uses bars closing at or before t only.
    """
    who = "return_features"
    _check_assembler_bars(bars, who=who)
    if (
        isinstance(bar_minutes, bool)
        or not isinstance(bar_minutes, int | np.integer)
        or bar_minutes < 1
    ):
        raise FairmarginInputError(
            f"{who}: bar_minutes must be an integer >= 1, got {bar_minutes!r}"
        )
    qq = _check_q(q, who=who)
    if not 0.0 < float(min_coverage) <= 1.0:
        raise FairmarginInputError(f"{who}: min_coverage must be in (0, 1], got {min_coverage!r}")
    kept = _window_bars(windows, int(bar_minutes), who=who)
    ppy = _MINUTES_PER_YEAR / int(bar_minutes)

    def mp(w: int, minimum: int = 2) -> int:
        return min(w, max(minimum, math.ceil(float(min_coverage) * w - 1e-9)))

    close = bars["close"].astype(np.float64)
    present = close.notna()
    volume = bars["volume"].astype(np.float64).where(present)
    logp = _log(close)
    r = logp.diff()
    lr = _log_ratios(bars)

    s_lab, s_w = kept[0]
    b_lab, b_w = kept[-2] if len(kept) > 1 else kept[-1]
    l_lab, l_w = kept[-1]

    cols: dict[str, pd.Series | NDArray[np.float64]] = {"ret_1bar": r}
    rv = {lab: _rv(r, w, mp(w), ppy) for lab, w in kept}
    cols |= {f"rv_{lab}": v for lab, v in rv.items()}
    ewma = _ewma(r, 0.94, ppy, 20)
    cols["ewma_vol"] = ewma
    cols[f"pk_{b_lab}"] = _pk(lr, b_w, mp(b_w), ppy)
    cols[f"gk_{b_lab}"] = _gk(lr, b_w, mp(b_w), ppy)
    cols[f"rs_{b_lab}"] = _rs(lr, b_w, mp(b_w), ppy)
    cols[f"yz_{b_lab}"] = _yz(lr, b_w, mp(b_w), ppy)
    cols[f"semivol_down_{b_lab}"] = _semivol(r, b_w, mp(b_w), ppy)
    if b_w >= 3:
        cols[f"skew_{b_lab}"] = r.rolling(b_w, min_periods=mp(b_w, 3)).skew()
    if b_w >= 4:
        cols[f"kurt_{b_lab}"] = r.rolling(b_w, min_periods=mp(b_w, 4)).kurt()
    cols[f"jumps_{b_lab}"] = _jumps(r, b_w, mp(b_w), 4.0)
    cols[f"ret_{b_lab}"] = logp.diff(b_w)
    if b_w < l_w:
        num = volume.rolling(b_w, min_periods=mp(b_w)).mean()
        den = volume.rolling(l_w, min_periods=mp(l_w)).mean()
        cols[f"volume_ratio_{b_lab}"] = num / den.where(den > 0)
    if s_w < b_w:
        cols[f"rv_ratio_{s_lab}_{b_lab}"] = rv[s_lab] / rv[b_lab].where(rv[b_lab] > 0)
    var, es = _tail(r, l_w, mp(l_w), qq)
    cols[f"var_long_{l_lab}"] = var["long"]
    cols[f"var_short_{l_lab}"] = var["short"]
    cols[f"es_long_{l_lab}"] = es["long"]
    cols[f"es_short_{l_lab}"] = es["short"]
    cols[f"drawdown_{l_lab}"] = _drawdown(close, l_w, mp(l_w))
    cols[f"volvol_{l_lab}"] = _volvol(ewma, l_w, mp(l_w))
    out = pd.DataFrame(
        {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, index=bars.index
    )
    return out
