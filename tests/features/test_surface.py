"""Tests of features.surface: a known SVI surface, interpolation rules, bad input, real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy import optimize
from scipy.stats import norm

from features import surface
from features._checks import FairmarginInputError
from features.surface import (
    SmileFit,
    fit_smile,
    implied_minus_realised,
    surface_features,
)

DERIBIT = Path(
    "/work/shared/data/options/deribit_ow1display/deribit_btc_option_book_summary_2024-03-12.csv"
)
T0 = pd.Timestamp("2024-03-12 08:00", tz="UTC")
F = 50_000.0
# Raw SVI shape in "per sqrt(year)" units, scaled per expiry; `a` is set per expiry so that
# w(0) = atm^2 T exactly.
SHAPE = {"b": 0.1, "rho": -0.3, "m": 0.02, "sigma": 0.15}


def svi_params(days: float, atm: float) -> tuple[float, float, float, float, float]:
    t = days / 365.0
    b, rho = SHAPE["b"] * math.sqrt(t), SHAPE["rho"]
    m, sig = SHAPE["m"] * math.sqrt(t), SHAPE["sigma"] * math.sqrt(t)
    a = atm**2 * t - b * (rho * (-m) + math.sqrt(m * m + sig * sig))
    return a, b, rho, m, sig


def svi_w(k, p):
    a, b, rho, m, sig = p
    return a + b * (rho * (k - m) + np.sqrt((k - m) ** 2 + sig**2))


def quotes(atm_by_days, *, z=None, ts=T0, underlying="BTC", types=("call", "put"), fwd=F):
    """Quotes on the known SVI smile of each expiry; strikes at k = z * atm * sqrt(T)."""
    z = np.linspace(-3.5, 3.5, 141) if z is None else np.asarray(z)
    rows = []
    for days, atm in atm_by_days.items():
        t = days / 365.0
        p = svi_params(days, atm)
        k = z * atm * math.sqrt(t)
        iv = np.sqrt(svi_w(k, p) / t)
        for kk, v in zip(k, iv, strict=True):
            for typ in types:
                rows.append(
                    {
                        "venue": "deribit",
                        "underlying": underlying,
                        "symbol": f"{underlying}-{days}-{kk:.6f}-{typ}",
                        "timestamp": ts,
                        "expiry": ts + pd.Timedelta(days=days),
                        "strike": fwd * math.exp(kk),
                        "option_type": typ,
                        "mark_iv": v,
                        "underlying_price": fwd,
                    }
                )
    return pd.DataFrame(rows)


def smile_25d(days: float, atm: float, *, call: bool) -> float:
    """The 25-delta vol implied by the known smile: root of N(d1(k)) = 0.25 (0.75 for the put,
    whose delta N(d1) - 1 = -0.25), d1 = (-k + w(k) / 2) / sqrt(w(k)), zero rates."""
    p = svi_params(days, atm)
    t = days / 365.0

    def gap(k: float) -> float:
        w = float(svi_w(k, p))
        return float(norm.cdf((-k + w / 2) / math.sqrt(w))) - (0.25 if call else 0.75)

    k = optimize.brentq(gap, 0.0, 3.0) if call else optimize.brentq(gap, -3.0, 0.0)
    return math.sqrt(float(svi_w(k, p)) / t)


ATM = {7: 0.60, 30: 0.55, 90: 0.50}


def test_atm_at_listed_tenors_recovers_known_values():
    f = surface_features(quotes(ATM))
    assert len(f) == 1
    row = f.iloc[0]
    for days, atm in ATM.items():  # a strike sits on each forward: exact up to rounding
        assert row[f"atm_iv_{days}d"] == pytest.approx(atm, abs=1e-12)
    assert row["term_slope"] == pytest.approx(0.50 - 0.60, abs=1e-12)
    assert row["n_quotes"] == 3 * 141 * 2
    assert row["n_expiries"] == 3


def test_atm_between_strikes_is_within_the_interpolation_bound():
    z = np.linspace(-3.5, 3.5, 141) + 0.025  # no strike on the forward; dz = 0.05
    row = surface_features(quotes(ATM, z=z)).iloc[0]
    for days, atm in ATM.items():
        t = days / 365.0
        _, b, _, _, sig = svi_params(days, atm)
        h = 0.05 * atm * math.sqrt(t)  # strike spacing in k
        # Linear interpolation error <= max|w''| h^2 / 8 with w'' <= b / sigma for raw SVI;
        # in vol: dw / (2 iv T).
        bound = (b / sig) * h * h / 8 / (2 * atm * t)
        assert abs(row[f"atm_iv_{days}d"] - atm) <= bound * 1.01


def test_term_interpolation_is_linear_in_total_variance_and_flat_outside():
    listed = {5: 0.70, 20: 0.60, 60: 0.55, 120: 0.50}
    f = surface_features(quotes(listed), tenors_days=(3, 7, 30, 90, 200))
    row = f.iloc[0]

    def by_hand(tau: float, t1: float, v1: float, t2: float, v2: float) -> float:
        w1, w2 = v1**2 * t1, v2**2 * t2
        return math.sqrt((w1 + (w2 - w1) * (tau - t1) / (t2 - t1)) / tau)

    assert row["atm_iv_7d"] == pytest.approx(by_hand(7, 5, 0.70, 20, 0.60), abs=1e-12)
    assert row["atm_iv_30d"] == pytest.approx(by_hand(30, 20, 0.60, 60, 0.55), abs=1e-12)
    assert row["atm_iv_90d"] == pytest.approx(by_hand(90, 60, 0.55, 120, 0.50), abs=1e-12)
    assert row["atm_iv_3d"] == pytest.approx(0.70, abs=1e-12)  # flat before the first expiry
    assert row["atm_iv_200d"] == pytest.approx(0.50, abs=1e-12)  # flat after the last
    assert row["term_slope"] == pytest.approx(0.50 - 0.70, abs=1e-12)


def test_risk_reversal_and_butterfly_match_the_known_smile():
    row = surface_features(quotes(ATM)).iloc[0]
    call, put = smile_25d(30, 0.55, call=True), smile_25d(30, 0.55, call=False)
    # Linear interpolation in delta between strikes 0.05 sd apart: error ~1e-5 in vol.
    assert row["rr25_30d"] == pytest.approx(call - put, abs=1e-4)
    assert row["bf25_30d"] == pytest.approx((call + put) / 2 - 0.55, abs=1e-4)
    assert row["rr25_30d"] < 0  # rho < 0: puts richer


def test_only_calls_or_only_puts_give_the_same_skew():
    both = surface_features(quotes(ATM)).iloc[0]
    for types in (("call",), ("put",)):
        one = surface_features(quotes(ATM, types=types)).iloc[0]
        assert one["rr25_30d"] == pytest.approx(both["rr25_30d"], abs=1e-10)
        assert one["atm_iv_30d"] == pytest.approx(both["atm_iv_30d"], abs=1e-12)


def test_the_out_of_the_money_quote_is_used_at_each_strike():
    q = quotes(ATM)
    otm = quotes(ATM)
    k = np.log(q["strike"] / F)
    itm = np.where(q["option_type"] == "call", k < 0, k >= 0)
    q.loc[itm, "mark_iv"] += 0.2  # stale in-the-money marks: must be ignored
    otm = otm[~itm]
    pd.testing.assert_frame_equal(
        surface_features(q).drop(columns="n_quotes"),
        surface_features(otm).drop(columns="n_quotes"),
    )


def test_delta_column_is_used_when_present():
    q = quotes({30: 0.55})
    t = 30 / 365.0
    k = np.log(q["strike"] / F)
    # A venue delta computed with a flat 80 % vol (not the smile's): the 25-delta strikes
    # move to k = +/-0.674 * 0.8 sqrt(T) + 0.8^2 T / 2.
    d1 = (-k + 0.8**2 * t / 2) / (0.8 * math.sqrt(t))
    q["delta"] = np.where(q["option_type"] == "call", norm.cdf(d1), norm.cdf(d1) - 1)
    row = surface_features(q, tenors_days=(30,)).iloc[0]
    p = svi_params(30, 0.55)
    z = norm.ppf(0.75)
    kc, kp = z * 0.8 * math.sqrt(t) + 0.32 * t, -z * 0.8 * math.sqrt(t) + 0.32 * t
    call, put = (math.sqrt(float(svi_w(x, p)) / t) for x in (kc, kp))
    assert row["rr25_30d"] == pytest.approx(call - put, abs=1e-4)


def test_moneyness_fallback_when_delta_never_crosses_25():
    q = quotes({30: 0.55})
    q["delta"] = np.where(q["option_type"] == "call", 0.5, -0.5)  # degenerate venue deltas
    row = surface_features(q, tenors_days=(30,)).iloc[0]
    t, atm = 30 / 365.0, 0.55
    p = svi_params(30, atm)
    z = norm.ppf(0.75)
    # Flat-smile equivalent of 25 delta: k = +/-0.674 atm sqrt(T) + atm^2 T / 2.
    kc, kp = z * atm * math.sqrt(t) + atm**2 * t / 2, -z * atm * math.sqrt(t) + atm**2 * t / 2
    call, put = (math.sqrt(float(svi_w(x, p)) / t) for x in (kc, kp))
    assert row["rr25_30d"] == pytest.approx(call - put, abs=1e-4)


def test_svi_fit_recovers_the_smile_exactly():
    row = surface_features(quotes(ATM), smile_fit="svi").iloc[0]
    assert row["smile_rmse_volpt"] < 1e-4
    p = svi_params(30, 0.55)
    k = np.linspace(-0.3, 0.3, 41)
    fit = fit_smile(k, svi_w(k, p), model="svi", expiry_years=30 / 365)
    assert isinstance(fit, SmileFit)
    assert fit.param_names == ("a", "b", "rho", "m", "sigma")
    assert fit.rmse_total_variance < 1e-10
    assert fit.rmse_vol_points < 1e-6
    assert_allclose(fit.params, p, atol=1e-5)
    assert_allclose(fit.total_variance(k), svi_w(k, p), atol=1e-10)


def test_quadratic_fit_is_exact_on_a_quadratic_smile_and_not_on_svi():
    k = np.linspace(-0.4, 0.4, 21)
    w = 0.02 - 0.01 * k + 0.05 * k * k
    fit = fit_smile(k, w, model="quadratic", expiry_years=0.1)
    assert_allclose(fit.params, (0.02, -0.01, 0.05), atol=1e-12)
    assert fit.rmse_vol_points < 1e-9
    assert math.isnan(fit_smile(k, w, model="quadratic").rmse_vol_points)  # no T given
    # Quotes from a quadratic smile give ~0 rmse in surface_features too.
    t = 30 / 365.0
    z = np.linspace(-3, 3, 61)
    kk = z * 0.55 * math.sqrt(t)
    ww = 0.55**2 * t + 0.01 * kk + 0.3 * kk * kk
    q = quotes({30: 0.55}, z=z, types=("call",))
    q["mark_iv"] = np.sqrt(ww / t)
    row = surface_features(q, tenors_days=(30,)).iloc[0]
    assert row["smile_rmse_volpt"] < 1e-9
    assert surface_features(quotes(ATM)).iloc[0]["smile_rmse_volpt"] > 0.01  # SVI != quadratic


def test_snapshots_and_underlyings_are_separated_and_row_order_is_free():
    a = quotes(ATM)
    b = quotes({7: 0.9, 30: 0.8, 90: 0.7}, ts=T0 + pd.Timedelta("1h"))
    c = quotes({7: 0.4, 30: 0.45, 90: 0.5}, underlying="ETH", fwd=3000.0)
    both = pd.concat([a, b, c], ignore_index=True).sample(frac=1.0, random_state=3)
    f = surface_features(both)
    assert list(zip(f["underlying"], f["timestamp"], strict=True)) == [
        ("BTC", T0),
        ("BTC", T0 + pd.Timedelta("1h")),
        ("ETH", T0),
    ]
    assert_allclose(f["atm_iv_30d"], [0.55, 0.8, 0.45], atol=1e-12)
    alone = surface_features(b).iloc[0]
    assert f.iloc[1]["rr25_30d"] == pytest.approx(alone["rr25_30d"], abs=1e-12)
    assert f.iloc[1]["smile_rmse_volpt"] == pytest.approx(alone["smile_rmse_volpt"], rel=1e-9)


def test_general_sort_path_matches_the_packed_one(monkeypatch):
    a = quotes(ATM)
    b = quotes({7: 0.9, 30: 0.8, 90: 0.7}, ts=T0 + pd.Timedelta("1h"))
    c = quotes({7: 0.4, 30: 0.45, 90: 0.5}, underlying="ETH", fwd=3000.0)
    both = pd.concat([a, b, c], ignore_index=True).sample(frac=1.0, random_state=4)
    packed = surface_features(both)
    monkeypatch.setattr(surface, "_PACK_LIMIT", 1)  # force the lexsort path
    general = surface_features(both)
    pd.testing.assert_frame_equal(general, packed)


def test_expiries_too_close_are_ignored_but_counted():
    q = quotes(ATM)
    near = quotes({0.5: 3.0})  # 12 hours out, absurd vol: must not move the 7-day ATM
    f = surface_features(pd.concat([q, near], ignore_index=True)).iloc[0]
    assert f["atm_iv_7d"] == pytest.approx(0.60, abs=1e-12)
    assert f["n_quotes"] == len(q) + len(near)
    assert f["n_expiries"] == 3


# ------------------------------------------------------------------------------ bad input


def test_percent_iv_is_rejected():
    q = quotes({30: 0.55})
    q["mark_iv"] *= 100
    with pytest.raises(FairmarginInputError, match=r"mark_iv must be an annualised fraction"):
        surface_features(q)


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("strike", -1.0, r"row 5: strike must be finite and > 0, got -1.0"),
        ("option_type", "C", r"option_type must be 'call' or 'put', got 'C'"),
        ("underlying_price", np.nan, r"underlying_price must be finite and > 0, got nan"),
    ],
)
def test_bad_values_are_rejected(column, value, pattern):
    q = quotes({30: 0.55})
    q.loc[5, column] = value
    with pytest.raises(FairmarginInputError, match=pattern):
        surface_features(q)


def test_bad_tables_and_arguments_are_rejected():
    q = quotes({30: 0.55})
    with pytest.raises(FairmarginInputError, match=r"missing columns \['underlying_price'\]"):
        surface_features(q.drop(columns="underlying_price"))
    with pytest.raises(FairmarginInputError, match=r"must be unique, got a duplicate"):
        surface_features(pd.concat([q, q.iloc[:1]], ignore_index=True))
    with pytest.raises(FairmarginInputError, match=r"expiry must be datetime64"):
        surface_features(q.assign(expiry=q["expiry"].astype(str)))
    with pytest.raises(FairmarginInputError, match=r"tenors_days must be a non-empty"):
        surface_features(q, tenors_days=())
    with pytest.raises(FairmarginInputError, match=r"smile_fit must be 'quadratic', 'svi'"):
        surface_features(q, smile_fit="spline")  # type: ignore[arg-type]
    with pytest.raises(FairmarginInputError, match=r"a svi fit needs >= 7 points"):
        fit_smile([0.0, 0.1, 0.2], [0.1, 0.1, 0.1])
    with pytest.raises(FairmarginInputError, match=r"must have the same length, got 3 and 2"):
        fit_smile([0.0, 0.1, 0.2], [0.1, 0.1], model="quadratic")


def test_implied_minus_realised():
    iv = pd.Series([0.60, 0.55, 0.50], index=[1, 2, 3])
    rv = pd.Series([0.45, 0.70], index=[1, 3])
    out = implied_minus_realised(iv, rv)
    assert out.name == "iv_minus_rv"
    assert out.iloc[0] == pytest.approx(0.15, abs=1e-15)  # 0.60 - 0.45
    assert math.isnan(out.iloc[1])  # no realised vol at label 2
    assert out.iloc[2] == pytest.approx(-0.20, abs=1e-15)
    with pytest.raises(FairmarginInputError, match=r"realised_vol must be >= 0, got -0.1"):
        implied_minus_realised(iv, pd.Series([-0.1], index=[1]))


# ------------------------------------------------------------------------------ real data


def deribit_quotes(path: Path) -> pd.DataFrame:
    """Deribit book summary -> option_quotes. BTC-29MAR24-70000-C: expiry 2024-03-29 08:00
    UTC, strike 70000, call; mark_iv in percent; underlying_price is the expiry's forward.
    The file was written over 19 ms: its timestamps are floored to the second (one snapshot).
    """
    raw = pd.read_csv(path)
    parts = raw["instrument_name"].str.split("-", expand=True)
    return pd.DataFrame(
        {
            "venue": "deribit",
            "underlying": parts[0],
            "symbol": raw["instrument_name"],
            "timestamp": pd.to_datetime(raw["creation_timestamp"], unit="ms", utc=True).dt.floor(
                "s"
            ),
            "expiry": pd.to_datetime(parts[1], format="%d%b%y", utc=True) + pd.Timedelta("8h"),
            "strike": parts[2].astype(float),
            "option_type": parts[3].map({"C": "call", "P": "put"}),
            "mark_iv": raw["mark_iv"] / 100.0,
            "underlying_price": raw["underlying_price"],
        }
    )


def test_deribit_btc_march_2024_is_plausible():
    q = deribit_quotes(DERIBIT)
    f = surface_features(q)
    assert len(f) == 1
    row = f.iloc[0]
    for d in (7, 30, 90):
        assert 0.4 <= row[f"atm_iv_{d}d"] <= 1.2  # BTC ATM vol, March 2024
    assert abs(row["term_slope"]) < 0.5
    assert -0.2 < row["rr25_30d"] < 0.2  # calls were bid in March 2024: a positive RR
    assert -0.05 < row["bf25_30d"] < 0.2
    assert 0 < row["smile_rmse_volpt"] < 15  # noisy marks, but a smile nonetheless
    assert row["n_quotes"] == len(q)
    assert 8 <= row["n_expiries"] <= 12  # 12 listed; the same-day expiry is < 1 day away
