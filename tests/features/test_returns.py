"""Tests of features/returns.py: golden values by hand, a lognormal path, properties, bad input."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose
from pandas.testing import assert_frame_equal, assert_series_equal
from scipy import stats

from features._checks import FairmarginInputError
from features._rolling import rolling_max_drawdown_log, rolling_top_k
from features.returns import (
    cross_venue_basis,
    downside_semivol,
    ewma_vol,
    funding_features,
    garman_klass_vol,
    historical_es,
    historical_var,
    jump_count,
    log_returns,
    max_drawdown,
    parkinson_vol,
    realized_vol,
    return_features,
    rogers_satchell_vol,
    rolling_kurtosis,
    rolling_skew,
    vol_of_vol,
    yang_zhang_vol,
)

PPY_5M = 365.0 * 288.0


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _bars_from_logs(
    log_open: np.ndarray,
    log_high: np.ndarray,
    log_low: np.ndarray,
    log_close: np.ndarray,
    *,
    bar_minutes: int = 5,
    volume: np.ndarray | None = None,
) -> pd.DataFrame:
    n = len(log_close)
    idx = pd.date_range("2024-01-01", periods=n, freq=f"{bar_minutes}min", tz="UTC")
    idx = idx + pd.Timedelta(minutes=bar_minutes)  # indexed by CLOSE time
    return pd.DataFrame(
        {
            "open": np.exp(log_open),
            "high": np.exp(log_high),
            "low": np.exp(log_low),
            "close": np.exp(log_close),
            "volume": np.ones(n) if volume is None else volume,
        },
        index=idx,
    )


def _gbm_bars(
    rng: np.random.Generator,
    *,
    n_bars: int,
    steps_per_bar: int,
    sigma: float,
    mu: float = 0.0,
    periods_per_year: float = PPY_5M,
    bar_minutes: int = 5,
    log_start: float = math.log(30_000.0),
) -> pd.DataFrame:
    """Bars of a GBM sampled ``steps_per_bar`` times per bar: high/low are the extremes of the
    sampled path (open included), open is the previous close (continuous trading)."""
    dt = 1.0 / (periods_per_year * steps_per_bar)
    inc = (mu - 0.5 * sigma**2) * dt + sigma * math.sqrt(dt) * rng.standard_normal(
        (n_bars, steps_per_bar)
    )
    path = log_start + np.cumsum(inc.ravel()).reshape(n_bars, steps_per_bar)
    log_open = np.concatenate([[log_start], path[:-1, -1]])
    full = np.concatenate([log_open[:, None], path], axis=1)
    volume = rng.gamma(2.0, 5.0, n_bars)
    return _bars_from_logs(
        log_open,
        full.max(axis=1),
        full.min(axis=1),
        path[:, -1],
        bar_minutes=bar_minutes,
        volume=volume,
    )


def _shape_bars(log_opens: list[float], *, up: float, down: float, oc: float) -> pd.DataFrame:
    """Bars with ln(H/O) = up, ln(L/O) = -down, ln(C/O) = oc from the given log opens."""
    lo_ = np.array(log_opens)
    return _bars_from_logs(lo_, lo_ + up, lo_ - down, lo_ + oc)


# ---------------------------------------------------------------------------------------------
# Golden values (hand computation; tolerance 1e-6 relative unless stated)
# ---------------------------------------------------------------------------------------------
def test_log_returns_golden_value():
    close = pd.Series([100.0, 110.0, 99.0])
    # ln(110/100) = 0.0953102, ln(99/110) = ln(0.9) = -0.1053605
    r = log_returns(close)
    assert r.name == "ret_1bar"
    assert math.isnan(r.iloc[0])
    assert r.iloc[1] == pytest.approx(0.0953102, rel=1e-6)
    assert r.iloc[2] == pytest.approx(-0.1053605, rel=1e-6)


def test_realized_vol_golden_value():
    r = pd.Series([0.01, -0.02, 0.015, 0.0, -0.005])
    # mean 0, var = sum(r**2)/4 = 1.875e-4; sqrt(1.875e-4 * 365) = 0.2616056
    rv = realized_vol(r, window=5, periods_per_year=365.0)
    assert rv.name == "rv_5"
    assert rv.iloc[:4].isna().all()
    assert rv.iloc[-1] == pytest.approx(0.2616056, rel=1e-6)


def test_ewma_vol_golden_value():
    r = pd.Series([0.01, -0.02, 0.03])
    # seed at row 1: mean(1e-4, 4e-4) = 2.5e-4 -> sqrt = 0.01581139;
    # row 2: 0.94 * 2.5e-4 + 0.06 * 9e-4 = 2.89e-4 -> sqrt = 0.017 exactly.
    v = ewma_vol(r, lam=0.94, periods_per_year=1.0, min_periods=2)
    assert v.name == "ewma_vol"
    assert math.isnan(v.iloc[0])
    assert v.iloc[1] == pytest.approx(0.01581139, rel=1e-6)
    assert v.iloc[2] == pytest.approx(0.017, rel=1e-12)


def test_ewma_vol_skips_missing_returns_without_filling():
    r = pd.Series([0.01, -0.02, np.nan, 0.03])
    v = ewma_vol(r, lam=0.94, periods_per_year=1.0, min_periods=2)
    # the NaN row stays NaN; the recursion resumes from row 1's state: sqrt(2.89e-4) = 0.017
    assert math.isnan(v.iloc[2])
    assert v.iloc[3] == pytest.approx(0.017, rel=1e-12)


def test_range_estimators_golden_values():
    # two bars of the same shape: ln(H/O)=0.02, ln(L/O)=-0.01, ln(C/O)=0.01, so
    # ln(H/L)=0.03, ln(H/C)=0.01, ln(L/C)=-0.02; the window mean is the per-bar term.
    bars = _shape_bars([0.0, 0.01], up=0.02, down=0.01, oc=0.01)
    kw = {"window": 2, "periods_per_year": 1.0}
    # Parkinson: sqrt(0.03**2 / (4 ln 2)) = 0.03 / 1.6651092 = 0.01801684
    assert parkinson_vol(bars, **kw).iloc[-1] == pytest.approx(0.01801684, rel=1e-6)
    # Garman-Klass: sqrt(0.5 * 9e-4 - (2 ln 2 - 1) * 1e-4) = sqrt(4.1137056e-4) = 0.02028227
    assert garman_klass_vol(bars, **kw).iloc[-1] == pytest.approx(0.02028227, rel=1e-6)
    # Rogers-Satchell: sqrt(0.01 * 0.02 + (-0.02) * (-0.01)) = sqrt(4e-4) = 0.02
    assert rogers_satchell_vol(bars, **kw).iloc[-1] == pytest.approx(0.02, rel=1e-9)
    assert parkinson_vol(bars, **kw).name == "pk_2"


def test_yang_zhang_golden_value():
    # opens jump +0.01 then -0.01 from the previous close; every bar has the shape above.
    lo1 = 0.01 + 0.01  # close of bar 0 (0.01) + gap 0.01
    lo2 = (lo1 + 0.01) - 0.01  # close of bar 1 + gap -0.01
    bars = _shape_bars([0.0, lo1, lo2], up=0.02, down=0.01, oc=0.01)
    # window 2 at row 2: var(o) = var([0.01, -0.01], ddof=1) = 2e-4; var(c) = 0 (both 0.01);
    # RS = 4e-4; k = 0.34 / (1.34 + 3/1) = 0.0783410;
    # sigma2 = 2e-4 + (1 - k) * 4e-4 = 5.686636e-4 -> sqrt = 0.02384667
    yz = yang_zhang_vol(bars, window=2, periods_per_year=1.0)
    assert yz.name == "yz_2"
    assert yz.iloc[:2].isna().all()  # row 0 has no previous close
    assert yz.iloc[2] == pytest.approx(0.02384667, rel=1e-6)


def test_downside_semivol_golden_value():
    r = pd.Series([0.01, -0.02, 0.03, -0.01])
    # (0.02**2 + 0.01**2) / 4 = 1.25e-4 -> sqrt = 0.01118034
    v = downside_semivol(r, window=4, periods_per_year=1.0)
    assert v.name == "semivol_down_4"
    assert v.iloc[-1] == pytest.approx(0.01118034, rel=1e-6)


def test_skew_and_kurtosis_golden_values():
    # [0, 0, 3]: mean 1, m2 = 2, m3 = 2, g1 = 2 / 2**1.5; G1 = g1 * sqrt(3*2) / 1 = sqrt(3)
    assert rolling_skew(pd.Series([0.0, 0.0, 3.0]), window=3).iloc[-1] == pytest.approx(
        math.sqrt(3.0), rel=1e-9
    )
    # [0, 0, 0, 4]: mean 1, m2 = 3, m4 = 21, g2 = 21/9 - 3 = -2/3;
    # G2 = ((n+1) g2 + 6) (n-1) / ((n-2)(n-3)) = (-10/3 + 6) * 3 / 2 = 4
    k = rolling_kurtosis(pd.Series([0.0, 0.0, 0.0, 4.0]), window=4)
    assert k.name == "kurt_4"
    assert k.iloc[-1] == pytest.approx(4.0, rel=1e-9)


def test_skew_and_kurtosis_match_scipy_on_random_windows():
    # independent code path: scipy.stats.skew / kurtosis with bias=False on each window
    r = pd.Series(np.random.default_rng(3).standard_t(4, 60) * 0.01)
    sk = rolling_skew(r, window=20)
    ku = rolling_kurtosis(r, window=20)
    for t in (19, 35, 59):
        win = r.iloc[t - 19 : t + 1].to_numpy()
        assert sk.iloc[t] == pytest.approx(stats.skew(win, bias=False), rel=1e-8)
        assert ku.iloc[t] == pytest.approx(stats.kurtosis(win, bias=False), rel=1e-8)


def test_historical_var_and_es_golden_values():
    r = pd.Series([-0.05, -0.01, 0.0, 0.02, 0.04])
    # long losses -r sorted: [-0.04, -0.02, 0, 0.01, 0.05]; q=0.9 -> position 4*0.9 = 3.6:
    # 0.01 + 0.6 * 0.04 = 0.034. Short losses r: 0.02 + 0.6 * 0.02 = 0.032.
    v_long = historical_var(r, window=5, q=0.9, side="long")
    assert v_long.name == "var_long_5"
    assert v_long.iloc[-1] == pytest.approx(0.034, rel=1e-9)
    assert historical_var(r, window=5, q=0.9, side="short").iloc[-1] == pytest.approx(
        0.032, rel=1e-9
    )
    # ES at q=0.7: m = 5 * 0.3 = 1.5 worst losses. Long: (0.05 + 0.5 * 0.01) / 1.5 = 0.03666667;
    # short: (0.04 + 0.5 * 0.02) / 1.5 = 0.03333333.
    e_long = historical_es(r, window=5, q=0.7, side="long")
    assert e_long.name == "es_long_5"
    assert e_long.iloc[-1] == pytest.approx(0.03666667, rel=1e-6)
    assert historical_es(r, window=5, q=0.7, side="short").iloc[-1] == pytest.approx(
        0.03333333, rel=1e-6
    )
    # m = 0.5 < 1: the largest loss
    assert historical_es(r, window=5, q=0.9, side="long").iloc[-1] == pytest.approx(0.05)
    assert historical_es(r, window=5, q=0.9, side="short").iloc[-1] == pytest.approx(0.04)


def test_tail_risk_matches_brute_force_with_missing_values():
    # independent code path: numpy.quantile and an explicit sort of every window
    rng = np.random.default_rng(11)
    x = rng.standard_t(3, 400) * 0.01
    x[rng.random(400) < 0.1] = np.nan
    r = pd.Series(x)
    w, mp, q = 50, 40, 0.95
    for side, sign in (("long", -1.0), ("short", 1.0)):
        var = historical_var(r, window=w, q=q, side=side, min_periods=mp)
        es = historical_es(r, window=w, q=q, side=side, min_periods=mp)
        for t in range(len(x)):
            win = sign * x[max(0, t - w + 1) : t + 1]
            win = win[~np.isnan(win)]
            if len(win) < mp:
                assert math.isnan(var.iloc[t])
                assert math.isnan(es.iloc[t])
                continue
            assert var.iloc[t] == pytest.approx(np.quantile(win, q), rel=1e-10, abs=1e-15)
            m = len(win) * (1 - q)
            worst = np.sort(win)[::-1]
            f = math.floor(m)
            expected = (worst[:f].sum() + (m - f) * worst[f]) / m
            assert es.iloc[t] == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_jump_count_golden_value():
    # |r| = 0.001 alternating, one jump of 0.05 at row 25; window 10, k = 4.
    # Quiet bars: BV = pi/2 * 1e-6, threshold 4 * sqrt(BV) = 0.0050 > 0.001: no jump.
    # Row 25: BV = pi/2 * (9e-6 + 5e-5) / 10, threshold 0.0122 < 0.05: a jump.
    # Rows 26..34: BV = pi/2 * (8e-6 + 1e-4) / 10, threshold 0.0165 > 0.001: no jump.
    # Flags exist from row 11 (10 products from row 2), counts from row 20.
    r = pd.Series([np.nan] + [0.001 * (-1) ** i for i in range(1, 40)])
    r.iloc[25] = 0.05
    j = jump_count(r, window=10, k=4.0)
    assert j.name == "jumps_10"
    assert j.iloc[:20].isna().all()
    assert (j.iloc[20:25] == 0).all()
    assert (j.iloc[25:35] == 1).all()
    assert (j.iloc[35:] == 0).all()


def test_max_drawdown_golden_value():
    close = pd.Series([100.0, 120.0, 90.0, 110.0, 60.0, 80.0])
    # windows of 3: 120 -> 90 is 0.25; 110 -> 60 is 1 - 60/110 = 0.45454545
    dd = max_drawdown(close, window=3)
    assert dd.name == "drawdown_3"
    assert dd.iloc[:2].isna().all()
    assert_allclose(dd.iloc[2:], [0.25, 0.25, 0.45454545, 0.45454545], rtol=1e-6)
    # whole series: 120 -> 60 is 0.5; a rising window has no drawdown
    assert max_drawdown(close, window=6).iloc[-1] == pytest.approx(0.5)
    assert max_drawdown(close, window=2, min_periods=2).iloc[1] == 0.0


def test_rolling_kernels_match_brute_force():
    # independent code path: explicit loops over every window, with missing values
    rng = np.random.default_rng(5)
    for n in (1, 7, 33, 100):
        for w in (1, 2, 5, 16, 40):
            x = rng.standard_normal((n, 2))
            x[rng.random((n, 2)) < 0.2] = np.nan
            k = min(w, 4)
            top = rolling_top_k(x, window=w, k=k)
            lp = np.cumsum(rng.standard_normal(n))
            lp[rng.random(n) < 0.2] = np.nan
            dd = rolling_max_drawdown_log(lp, window=w)
            for t in range(n):
                for c in range(2):
                    win = x[max(0, t - w + 1) : t + 1, c]
                    win = np.sort(win[~np.isnan(win)])[::-1]
                    expected = np.full(k, -np.inf)
                    expected[: min(k, len(win))] = win[:k]
                    assert np.array_equal(top[t, c], expected)
                pw = lp[max(0, t - w + 1) : t + 1]
                pw = pw[~np.isnan(pw)]
                if len(pw) == 0:
                    assert math.isnan(dd[t])
                else:
                    best = max(pw[i] - pw[j] for i in range(len(pw)) for j in range(i, len(pw)))
                    assert dd[t] == pytest.approx(best, abs=1e-12)


def test_vol_of_vol_golden_value():
    vol = pd.Series(np.exp([0.0, 1.0, 2.0]))
    # log vol = [0, 1, 2]: std (ddof 1) = 1
    vv = vol_of_vol(vol, window=3)
    assert vv.name == "volvol_3"
    assert vv.iloc[-1] == pytest.approx(1.0, rel=1e-12)


def test_funding_features_golden_value():
    idx = pd.date_range("2024-01-01", periods=4, freq="8h", tz="UTC")
    f = funding_features(pd.Series([1e-4, 3e-4, -2e-4, 2e-4], index=idx))
    assert list(f.columns) == ["funding_rate", "funding_rate_change", "funding_rate_mean_3"]
    assert_allclose(f["funding_rate_change"].iloc[1:], [2e-4, -5e-4, 4e-4], rtol=1e-9)
    # (1 + 3 - 2) / 3 e-4 and (3 - 2 + 2) / 3 e-4
    assert f["funding_rate_mean_3"].iloc[:2].isna().all()
    assert_allclose(f["funding_rate_mean_3"].iloc[2:], [2e-4 / 3, 1e-4], rtol=1e-9)


def test_cross_venue_basis_golden_value():
    close = pd.DataFrame(
        {"binance": [100.0, 100.0], "okx": [101.0, np.nan], "bybit": [99.0, 102.0]}
    )
    b = cross_venue_basis(close)
    # row 0: binance vs median(101, 99) = 100 -> 0 bp; okx vs median(100, 99) = 99.5;
    # bybit vs median(100, 101) = 100.5. Row 1: okx missing; binance vs 102, bybit vs 100.
    assert b.loc[0, "binance"] == pytest.approx(0.0, abs=1e-9)
    assert b.loc[0, "okx"] == pytest.approx(1e4 * math.log(101 / 99.5), rel=1e-12)
    assert b.loc[0, "bybit"] == pytest.approx(1e4 * math.log(99 / 100.5), rel=1e-12)
    assert math.isnan(b.loc[1, "okx"])
    assert b.loc[1, "binance"] == pytest.approx(1e4 * math.log(100 / 102), rel=1e-12)
    assert b.loc[1, "bybit"] == pytest.approx(1e4 * math.log(102 / 100), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# A known lognormal path
# ---------------------------------------------------------------------------------------------
def test_estimators_recover_gbm_sigma():
    sigma, n, m = 0.8, 5000, 600
    bars = _gbm_bars(
        np.random.default_rng(20261128), n_bars=n, steps_per_bar=m, sigma=sigma, mu=0.3
    )
    r = log_returns(bars["close"])
    w = n - 1  # one window over the whole sample (row 0 has no return / previous close)
    kw = {"window": w, "periods_per_year": PPY_5M}
    # Close-to-close: Var(sigma2_hat) = 2 sigma^4 / (n - 1), so the relative standard error of
    # sigma_hat is sqrt(1 / (2 (n - 1))) = 0.010; 4 standard errors.
    tol_cc = 4.0 * math.sqrt(1.0 / (2.0 * (n - 1)))
    rv = realized_vol(r, **kw).iloc[-1]
    assert abs(rv / sigma - 1) < tol_cc
    # EWMA: its time average is a near-uniform average of r^2, same standard error.
    ew = ewma_vol(r, periods_per_year=PPY_5M).iloc[100:]
    assert abs(math.sqrt((ew**2).mean()) / sigma - 1) < tol_cc
    # Range estimators have variance <= 0.41 sigma^4 / n (Parkinson 0.407, GK 0.27, RS 0.33):
    # relative standard error of sigma_hat <= 0.5 sqrt(0.41 / n) = 0.0045.
    tol_range = 4.0 * 0.5 * math.sqrt(0.41 / n)
    # Discretisation: each sampled extreme of m points misses the continuous one by about
    # delta = beta sigma sqrt(bar / m), beta = -zeta(1/2) / sqrt(2 pi) = 0.5826 (Broadie,
    # Glasserman and Kou 1997). With E[ln H/O] = E[ln H/C] = E[ln O/L] = E[ln C/L] =
    # sqrt(2/pi) sigma sqrt(bar) and E[ln H/L] twice that, the first-order relative bias of
    # sigma_hat is -c / sqrt(m) with (half the variance's):
    #   Parkinson  c = 0.5 * 4 beta E[ln H/L] / (4 ln 2)              = 0.671
    #   GK         c = 0.5 * 2 beta E[ln H/L]   (from 0.5 ln(H/L)^2)  = 0.930
    #   RS         c = 0.5 * 4 beta sqrt(2/pi)                        = 0.930
    #   YZ         c = (1 - k) * c_RS, k = 0.34 / (1.34 + (w+1)/(w-1)) = 0.795
    beta, e_ext = 0.5826, math.sqrt(2.0 / math.pi)
    c_rs = 0.5 * 4.0 * beta * e_ext
    k_yz = 0.34 / (1.34 + (w + 1) / (w - 1))
    bias = {
        parkinson_vol: 0.5 * 4.0 * beta * 2.0 * e_ext / (4.0 * math.log(2.0)),
        garman_klass_vol: 0.5 * 2.0 * beta * 2.0 * e_ext,
        rogers_satchell_vol: c_rs,
        yang_zhang_vol: (1.0 - k_yz) * c_rs,
    }
    for fn, c in bias.items():
        est = fn(bars, **kw).iloc[-1]
        assert est / sigma == pytest.approx(1.0 - c / math.sqrt(m), abs=tol_range), fn.__name__
    # The bias is real: Parkinson falls short of sigma by more than its noise.
    assert parkinson_vol(bars, **kw).iloc[-1] < sigma * (1 - tol_range)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
bp_returns = arrays(
    np.float64,
    st.integers(30, 200),  # whole basis points: no subnormals
    elements=st.integers(-2000, 2000).map(lambda bp: bp / 10_000),
)


@settings(max_examples=40, deadline=None)
@given(r=bp_returns, k=st.floats(0.1, 10.0), data=st.data())
def test_vols_scale_with_returns(r, k, data):
    n = len(r)
    s = pd.Series(r)
    # pandas' online rolling sums leave ~eps*scale**2 where a variance is 0, i.e.
    # ~sqrt(eps)*scale after the square root, so atol scales with the data.
    atol = 1e-6 * k * (np.abs(r).max() + 0.2) * math.sqrt(365)
    for fn in (realized_vol, downside_semivol):
        assert_allclose(
            fn(s * k, window=20, periods_per_year=365.0),
            k * fn(s, window=20, periods_per_year=365.0),
            rtol=1e-9,
            atol=atol,
        )
    assert_allclose(
        ewma_vol(s * k, periods_per_year=365.0, min_periods=5),
        k * ewma_vol(s, periods_per_year=365.0, min_periods=5),
        rtol=1e-9,
    )
    # order statistics scale exactly (up to one rounding)
    for fn_tail in (historical_var, historical_es):
        for side in ("long", "short"):
            assert_allclose(
                fn_tail(s * k, window=20, q=0.95, side=side),
                k * fn_tail(s, window=20, q=0.95, side=side),
                rtol=1e-12,
                atol=1e-15,
            )
    # range estimators: scale every log price (gaps and wicks drawn in whole bp)
    bp = st.integers(0, 300).map(lambda b: b / 10_000)
    gaps = np.array(data.draw(st.lists(bp, min_size=n, max_size=n))) - 0.01
    up = np.array(data.draw(st.lists(bp, min_size=n, max_size=n)))
    down = np.array(data.draw(st.lists(bp, min_size=n, max_size=n)))
    log_close = np.cumsum(r + gaps)
    log_open = log_close - r
    log_high = np.maximum(log_open, log_close) + up
    log_low = np.minimum(log_open, log_close) - down
    bars = _bars_from_logs(log_open, log_high, log_low, log_close)
    scaled = _bars_from_logs(k * log_open, k * log_high, k * log_low, k * log_close)
    atol_range = 1e-6 * k * (np.abs(r).max() + 0.06) * math.sqrt(365)
    for fn in (parkinson_vol, garman_klass_vol, rogers_satchell_vol, yang_zhang_vol):
        assert_allclose(
            fn(scaled, window=20, periods_per_year=365.0),
            k * fn(bars, window=20, periods_per_year=365.0),
            rtol=1e-7,
            atol=atol_range,
            err_msg=fn.__name__,
        )


@settings(max_examples=40, deadline=None)
@given(
    r=bp_returns,
    window=st.integers(2, 30),
    q=st.floats(0.5, 0.999),
    side=st.sampled_from(["long", "short"]),
)
def test_es_is_never_below_var(r, window, q, side):
    s = pd.Series(r)
    var = historical_var(s, window=window, q=q, side=side)
    es = historical_es(s, window=window, q=q, side=side)
    ok = var.notna()
    assert ok.sum() == len(r) - window + 1
    assert (es[ok] >= var[ok] - 1e-12).all()


# Point-in-time: a fixed base contract on an hourly grid, with two missing bars.
_PIT_N = 160
_PIT_WINDOWS = ("2h", "6h", "1d", "3d")


def _pit_base() -> pd.DataFrame:
    bars = _gbm_bars(
        np.random.default_rng(7),
        n_bars=_PIT_N,
        steps_per_bar=8,
        sigma=0.8,
        periods_per_year=365.0 * 24,
        bar_minutes=60,
    )
    bars.iloc[[40, 95]] = np.nan  # missing bars on a regular grid
    return bars


_PIT_BARS = _pit_base()
_PIT_FEATURES = return_features(_PIT_BARS, bar_minutes=60, windows=_PIT_WINDOWS, q=0.9)


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(0, _PIT_N - 2),
    seed=st.integers(0, 2**32 - 1),
    level=st.floats(-4.0, 4.0),
    vol_mult=st.floats(0.1, 20.0),
    n_missing=st.integers(0, 3),
)
def test_point_in_time_later_bars_never_move_row_t(t, seed, level, vol_mult, n_missing):
    rng = np.random.default_rng(seed)
    n_after = _PIT_N - t - 1
    later = _gbm_bars(
        rng,
        n_bars=n_after,
        steps_per_bar=8,
        sigma=0.8 * vol_mult,
        periods_per_year=365.0 * 24,
        bar_minutes=60,
        log_start=math.log(30_000.0) + level,
    )
    bars = _PIT_BARS.copy()
    bars.iloc[t + 1 :] = later.to_numpy()
    if n_missing:
        drop = rng.choice(np.arange(t + 1, _PIT_N), size=min(n_missing, n_after), replace=False)
        bars.iloc[drop] = np.nan
    after = return_features(bars, bar_minutes=60, windows=_PIT_WINDOWS, q=0.9)
    assert_frame_equal(after.iloc[: t + 1], _PIT_FEATURES.iloc[: t + 1], check_exact=True)
    # the perturbation did reach the features after t
    assert not after.iloc[t + 1 :].equals(_PIT_FEATURES.iloc[t + 1 :])


# ---------------------------------------------------------------------------------------------
# The assembler
# ---------------------------------------------------------------------------------------------
def test_return_features_columns_on_5_minute_bars():
    bars = _gbm_bars(np.random.default_rng(1), n_bars=2100, steps_per_bar=4, sigma=0.8)
    f = return_features(bars, bar_minutes=5)
    assert list(f.columns) == [
        "ret_1bar",
        "rv_1h",
        "rv_4h",
        "rv_1d",
        "rv_7d",
        "ewma_vol",
        "pk_1d",
        "gk_1d",
        "rs_1d",
        "yz_1d",
        "semivol_down_1d",
        "skew_1d",
        "kurt_1d",
        "jumps_1d",
        "ret_1d",
        "volume_ratio_1d",
        "rv_ratio_1h_1d",
        "var_long_7d",
        "var_short_7d",
        "es_long_7d",
        "es_short_7d",
        "drawdown_7d",
        "volvol_7d",
    ]
    assert (f.dtypes == np.float64).all()
    assert f.index.equals(bars.index)
    assert f.iloc[-1].notna().all()


def test_return_features_agree_with_single_functions_and_skip_missing_bars():
    bars = _gbm_bars(np.random.default_rng(2), n_bars=2300, steps_per_bar=4, sigma=0.8)
    bars.iloc[[500, 1800, 1801]] = np.nan  # missing bars on the regular grid
    f = return_features(bars, bar_minutes=5, min_coverage=0.9)
    r = log_returns(bars["close"])
    ppy = PPY_5M
    # min_periods = ceil(0.9 * window): 12 -> 11, 288 -> 260, 2016 -> 1815
    assert_series_equal(
        f["rv_1h"],
        realized_vol(r, window=12, periods_per_year=ppy, min_periods=11),
        check_names=False,
    )
    assert_series_equal(
        f["pk_1d"],
        parkinson_vol(bars, window=288, periods_per_year=ppy, min_periods=260),
        check_names=False,
    )
    assert_series_equal(
        f["yz_1d"],
        yang_zhang_vol(bars, window=288, periods_per_year=ppy, min_periods=260),
        check_names=False,
    )
    assert_series_equal(
        f["kurt_1d"], rolling_kurtosis(r, window=288, min_periods=260), check_names=False
    )
    assert_series_equal(
        f["jumps_1d"], jump_count(r, window=288, min_periods=260), check_names=False
    )
    assert_series_equal(
        f["es_short_7d"],
        historical_es(r, window=2016, q=0.99, side="short", min_periods=1815),
        check_names=False,
    )
    assert_series_equal(
        f["drawdown_7d"],
        max_drawdown(bars["close"], window=2016, min_periods=1815),
        check_names=False,
    )
    ew = ewma_vol(r, periods_per_year=ppy)
    assert_series_equal(f["ewma_vol"], ew, check_names=False)
    assert_series_equal(
        f["volvol_7d"], vol_of_vol(ew, window=2016, min_periods=1815), check_names=False
    )
    # a missing bar: its own return and the next are missing, never filled
    assert f[["ret_1bar", "ewma_vol"]].iloc[[500, 501]].isna().all().all()
    assert f["rv_1d"].iloc[[500, 501]].notna().all()  # 286 of 288 returns present
    # ratios by hand from the frame's own columns
    c = bars["close"]
    assert f["ret_1d"].iloc[-1] == pytest.approx(math.log(c.iloc[-1] / c.iloc[-289]), rel=1e-9)
    v = bars["volume"]
    ratio = v.iloc[-288:].mean() / v.iloc[-2016:].mean()  # the last 2016 rows lack 2 bars
    assert f["volume_ratio_1d"].iloc[-1] == pytest.approx(ratio, rel=1e-9)
    assert f["rv_ratio_1h_1d"].iloc[-1] == pytest.approx(
        f["rv_1h"].iloc[-1] / f["rv_1d"].iloc[-1], rel=1e-12
    )


def test_return_features_on_daily_bars_keeps_only_windows_of_two_bars_or_more():
    bars = _gbm_bars(
        np.random.default_rng(3),
        n_bars=60,
        steps_per_bar=24,
        sigma=0.8,
        periods_per_year=365.0,
        bar_minutes=1440,
    )
    f = return_features(bars, bar_minutes=1440)
    # 1h, 4h and 1d are under 2 daily bars; only 7d (7 bars) is kept: S = B = L = 7d
    assert list(f.columns) == [
        "ret_1bar",
        "rv_7d",
        "ewma_vol",
        "pk_7d",
        "gk_7d",
        "rs_7d",
        "yz_7d",
        "semivol_down_7d",
        "skew_7d",
        "kurt_7d",
        "jumps_7d",
        "ret_7d",
        "var_long_7d",
        "var_short_7d",
        "es_long_7d",
        "es_short_7d",
        "drawdown_7d",
        "volvol_7d",
    ]
    r = log_returns(bars["close"])
    assert_series_equal(
        f["rv_7d"], realized_vol(r, window=7, periods_per_year=365.0), check_names=False
    )


def test_return_features_mapping_labels_name_the_columns():
    bars = _gbm_bars(
        np.random.default_rng(4),
        n_bars=400,
        steps_per_bar=4,
        sigma=0.8,
        bar_minutes=30,
        periods_per_year=365.0 * 48,
    )
    f = return_features(bars, bar_minutes=30, windows={"short": "1h", "day": "1d", "week": "7d"})
    assert {"rv_short", "rv_day", "rv_week", "pk_day", "rv_ratio_short_day"} <= set(f.columns)
    assert {"var_long_week", "volume_ratio_day", "drawdown_week"} <= set(f.columns)
    r = log_returns(bars["close"])
    ppy = 365.0 * 48
    assert_series_equal(
        f["rv_day"],
        realized_vol(r, window=48, periods_per_year=ppy, min_periods=44),
        check_names=False,
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
_R = pd.Series([0.01, -0.02, 0.015, 0.0, -0.005])


def _small_bars() -> pd.DataFrame:
    return _gbm_bars(np.random.default_rng(0), n_bars=30, steps_per_bar=4, sigma=0.8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: realized_vol(_R, window=1, periods_per_year=365.0),
            r"realized_vol: window must be an integer >= 2 \(bars\), got 1",
        ),
        (
            lambda: realized_vol(_R, window=2.5, periods_per_year=365.0),
            r"realized_vol: window must be an integer >= 2 \(bars\), got 2.5",
        ),
        (
            lambda: realized_vol(_R.iloc[::-1], window=2, periods_per_year=365.0),
            r"realized_vol: log_returns index: must be sorted by time",
        ),
        (
            lambda: realized_vol(_R, window=3, periods_per_year=0.0),
            r"realized_vol: periods_per_year must be finite and > 0, got 0.0",
        ),
        (
            lambda: realized_vol(_R, window=3, periods_per_year=365.0, min_periods=4),
            r"realized_vol: min_periods must be an integer in \[2, window=3\], got 4",
        ),
        (
            lambda: realized_vol(_R.to_numpy(), window=3, periods_per_year=365.0),
            r"realized_vol: log_returns must be a pandas Series, got ndarray",
        ),
        (
            lambda: ewma_vol(_R, lam=1.0, periods_per_year=365.0),
            r"ewma_vol: lam must be in \(0, 1\), got 1.0",
        ),
        (
            lambda: ewma_vol(_R, periods_per_year=365.0, min_periods=0),
            r"ewma_vol: min_periods must be an integer >= 1, got 0",
        ),
        (
            lambda: rolling_skew(_R, window=2),
            r"rolling_skew: window must be an integer >= 3 \(bars\), got 2",
        ),
        (
            lambda: rolling_kurtosis(_R, window=3),
            r"rolling_kurtosis: window must be an integer >= 4 \(bars\), got 3",
        ),
        (
            lambda: historical_var(_R, window=3, q=1.0),
            r"historical_var: q must be in \(0, 1\), got 1.0",
        ),
        (
            lambda: historical_es(_R, window=3, q=0.9, side="both"),
            r"historical_es: side must be 'long' or 'short', got 'both'",
        ),
        (
            lambda: jump_count(_R, window=3, k=0.0),
            r"jump_count: k must be finite and > 0, got 0.0",
        ),
        (
            lambda: log_returns(pd.Series([100.0, 0.0, 101.0])),
            r"log_returns: close must be finite and > 0 \(or NaN if missing\), got 0.0",
        ),
        (
            lambda: max_drawdown(pd.Series([100.0, -1.0]), window=2),
            r"max_drawdown: close must be finite and > 0 \(or NaN if missing\), got -1.0",
        ),
        (
            lambda: vol_of_vol(pd.Series([0.5, -0.1, 0.4]), window=2),
            r"vol_of_vol: vol must be finite and >= 0 \(or NaN\), got -0.1",
        ),
        (
            lambda: parkinson_vol(_small_bars()[["high"]], window=3, periods_per_year=365.0),
            r"parkinson_vol: missing columns \['low'\]; got \['high'\]",
        ),
        (
            lambda: garman_klass_vol(
                _small_bars().assign(close=lambda b: b["high"] * 1.01),
                window=3,
                periods_per_year=365.0,
            ),
            r"garman_klass_vol: every bar must have close <= high, got",
        ),
        (
            lambda: funding_features(pd.Series([1e-4, 2e-4], index=[1, 1])),
            r"funding_features: funding_rate index must be strictly increasing",
        ),
        (
            lambda: cross_venue_basis(pd.DataFrame({"a": [1.0]})),
            r"cross_venue_basis: close must have at least 2 uniquely named columns, got \['a'\]",
        ),
        (
            lambda: cross_venue_basis(pd.DataFrame({"a": [1.0], "b": [0.0]})),
            r"cross_venue_basis: close\['b'\] must be finite and > 0",
        ),
    ],
)
def test_single_functions_reject_bad_input(call, match):
    with pytest.raises(FairmarginInputError, match=match):
        call()


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (
            lambda b: b.tz_localize(None),
            {},
            r"return_features: bars index must be a tz-aware UTC DatetimeIndex",
        ),
        (
            lambda b: b.tz_convert("Europe/Paris"),
            {},
            r"return_features: bars index must be a tz-aware UTC DatetimeIndex",
        ),
        (
            lambda b: b.iloc[[0, 0, 1]],
            {},
            r"return_features: bars index must be strictly increasing",
        ),
        (lambda b: b.iloc[::-1], {}, r"return_features: bars index must be strictly increasing"),
        (lambda b: b.drop(columns="volume"), {}, r"return_features: missing columns \['volume'\]"),
        (
            lambda b: b.assign(high=np.where(np.arange(len(b)) == 3, np.nan, b["high"])),
            {},
            r"return_features: a bar must have all of open, high, low, close or none",
        ),
        (
            lambda b: b.assign(low=b["high"] * 1.001),
            {},
            r"return_features: every bar must have low <= open",
        ),
        (
            lambda b: b.assign(volume=-1.0),
            {},
            r"return_features: volume must be finite and >= 0 in every present bar, got -1.0",
        ),
        (
            lambda b: b,
            {"bar_minutes": 7},
            r"return_features: window '1h' \(1h\) must be a whole number of 7-minute bars, "
            r"got 8.57143",
        ),
        (
            lambda b: b,
            {"bar_minutes": 0},
            r"return_features: bar_minutes must be an integer >= 1, got 0",
        ),
        (
            lambda b: b,
            {"windows": "1d"},
            r"return_features: windows must be a sequence or mapping of durations",
        ),
        (
            lambda b: b,
            {"windows": ("1h", "1y")},
            r"return_features: window durations must look like '30m', '1h', '1d' or '1w'",
        ),
        (
            lambda b: b,
            {"windows": ("1h", "60m")},
            r"return_features: windows must have distinct labels and durations",
        ),
        (
            lambda b: b,
            {"bar_minutes": 10080, "windows": ("1h", "1d")},
            r"return_features: windows must keep at least one window of >= 2 bars at "
            r"bar_minutes=10080",
        ),
        (lambda b: b, {"q": 0.0}, r"return_features: q must be in \(0, 1\), got 0.0"),
        (
            lambda b: b,
            {"min_coverage": 0.0},
            r"return_features: min_coverage must be in \(0, 1\], got 0.0",
        ),
    ],
)
def test_return_features_rejects_bad_input(mutate, kwargs, match):
    args = {"bar_minutes": 5, **kwargs}
    with pytest.raises(FairmarginInputError, match=match):
        return_features(mutate(_small_bars()), **args)
