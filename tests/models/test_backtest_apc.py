"""APC overlays as switches on a margin path: each switch changes what it should, by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from features._checks import FairmarginInputError
from models.backtest import apc_multiplier_at, apc_overlay

IDX = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")


def _s(values):
    return pd.Series(np.asarray(values, dtype=float), index=IDX)


def test_all_switches_off_leave_the_margin():
    m = _s([0.1, 0.2, 0.3])
    assert_allclose(apc_overlay(m, _s([1.0, 2.0, 3.0])), m)


def test_buffer_alone_scales_by_one_plus_buffer():
    m = _s([0.1, 0.2, 0.3])
    assert_allclose(apc_overlay(m, _s([1.0, 5.0, 1.0]), buffer=0.25), [0.125, 0.25, 0.375])


def test_stressed_weight_uses_the_highest_volatility_known():
    m = _s([0.1, 0.2, 0.1])
    # sigma 1, 2, 1: highest known 1, 2, 2; stressed margin m x (1, 1, 2) = 0.1, 0.2, 0.2;
    # 0.75 m + 0.25 stressed = 0.1, 0.2, 0.125
    assert_allclose(apc_overlay(m, _s([1.0, 2.0, 1.0]), stressed_weight=0.25), [0.1, 0.2, 0.125])


def test_floor_uses_the_trailing_rms_volatility():
    m = _s([0.1, 0.3, 0.1])
    sig = _s([1.0, 3.0, 1.0])
    # rms over the history: 1, sqrt(5), sqrt(11/3); floors m x rms / sigma:
    # 0.1, 0.3 x sqrt(5) / 3 = 0.2236 (below 0.3), 0.1 x sqrt(11/3) = 0.19149
    assert_allclose(
        apc_overlay(m, sig, floor_years=10.0), [0.1, 0.3, 0.1 * math.sqrt(11 / 3)], rtol=1e-12
    )
    # a one-day window holds only the current day: no floor above the margin
    assert_allclose(apc_overlay(m, sig, floor_years=1 / 365.25), m)


def test_switches_compose_in_order_and_scale_with_margin():
    sig = _s([1.0, 2.0, 1.0])
    m = _s([0.1, 0.2, 0.1])
    kw = {"buffer": 0.25, "stressed_weight": 0.25, "floor_years": 10.0}
    got = apc_overlay(m, sig, **kw)
    # stressed: 0.1, 0.2, 0.125; floor rms 1, sqrt(2.5), sqrt(2): 0.1, 0.2 x 0.79 (no), 0.1414;
    # buffer x 1.25
    assert_allclose(got, np.array([0.1, 0.2, 0.1 * math.sqrt(2)]) * 1.25, rtol=1e-12)
    panel = pd.DataFrame({"venue": "v", "symbol": "s", "t": IDX, "sigma_ann": sig.to_numpy()})
    keys = pd.DataFrame(
        {
            "venue": ["v", "v", "w"],
            "symbol": ["s", "s", "s"],
            "as_of": [IDX[2] + pd.Timedelta(hours=5), IDX[0] - pd.Timedelta(days=1), IDX[2]],
        }
    )
    k = apc_multiplier_at(panel, keys, **kw)
    # the last row at or before as_of; none before it, or an unknown contract: 1
    assert_allclose(k, [got.iloc[2] / 0.1, 1.0, 1.0], rtol=1e-12)
    assert_allclose(apc_multiplier_at(panel, keys), [1.0, 1.0, 1.0])


def test_unknown_volatility_leaves_the_margin():
    m = _s([0.1, 0.2, 0.3])
    sig = _s([np.nan, 0.0, np.nan])
    assert_allclose(apc_overlay(m, sig, stressed_weight=0.5, floor_years=1.0), m)


def test_bad_switches_are_refused():
    m = _s([0.1, 0.2, 0.3])
    with pytest.raises(
        FairmarginInputError, match=r"apc_overlay: floor_years must be a float >= 0, got -1"
    ):
        apc_overlay(m, m, floor_years=-1.0)
    with pytest.raises(
        FairmarginInputError, match=r"apc_stressed_weight: weight must be in \[0, 1\], got 2"
    ):
        apc_overlay(m, m, stressed_weight=2.0)
    with pytest.raises(
        FairmarginInputError, match=r"apc_overlay: margin and sigma must share the same index"
    ):
        apc_overlay(m, m.iloc[:2])
    with pytest.raises(FairmarginInputError, match=r"apc_multiplier_at: keys must have columns"):
        apc_multiplier_at(
            pd.DataFrame(columns=["venue", "symbol", "t", "sigma_ann"]), pd.DataFrame()
        )
