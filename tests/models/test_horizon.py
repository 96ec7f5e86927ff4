import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from features._checks import FairmarginInputError
from models.horizon import (
    evaluated_notional,
    implied_horizon,
    interpolate_power_law,
    liquidation_horizon_minutes,
    running_max,
)

GRID = np.array([15.0, 60.0, 240.0, 1440.0])


def _tiers(bounds):
    rows = []
    for venue, symbol, lims in bounds:
        for i, (lo, hi) in enumerate(lims, start=1):
            rows.append(
                {
                    "venue": venue,
                    "symbol": symbol,
                    "as_of": pd.Timestamp("2026-01-01", tz="UTC"),
                    "tier": i,
                    "min_notional": lo,
                    "max_notional": hi,
                }
            )
    return pd.DataFrame(rows)


def test_evaluated_notional_rules():
    tiers = _tiers(
        [
            ("a", "X", [(0, 5e4), (5e4, 2.5e5), (2.5e5, np.inf)]),
            ("b", "Y", [(0, 1e5), (1e5, 5e6)]),
            ("c", "Z", [(0, np.inf)]),
        ]
    )
    got = evaluated_notional(tiers, single_tier_notional=1e6, last_tier_cap_multiple=10)
    # upper bounds; last tier min(max, 10 x min); single tier 1e6
    assert got.tolist() == [5e4, 2.5e5, 2.5e6, 1e5, 1e6, 1e6]


def test_liquidation_horizon_formula_and_expiry_cap():
    h = liquidation_horizon_minutes(
        [1e6, 1e6, 1e6],
        [1e5, 1e5, 0.0],
        base_latency_minutes=15,
        participation=0.1,
        minutes_to_expiry=[np.nan, 60.0, np.nan],
    )
    # 15 + 1e6 / (0.1 * 1e5) = 115; capped at 60 minutes to expiry; no volume -> unknown
    assert h[0] == pytest.approx(115.0)
    assert h[1] == pytest.approx(60.0)
    assert np.isnan(h[2])
    with pytest.raises(FairmarginInputError, match=r"participation must be in \(0, 1\]"):
        liquidation_horizon_minutes([1.0], [1.0], base_latency_minutes=15, participation=0)


def test_power_law_is_exact_on_a_power_law():
    q = 0.01 * (GRID / 15.0) ** 0.5
    h = np.array([15.0, 30.0, 100.0, 1000.0, 5.0, 5000.0])
    got = interpolate_power_law(GRID, np.tile(q, (h.size, 1)), h)
    assert_allclose(got, 0.01 * (h / 15.0) ** 0.5, rtol=1e-12)


def test_power_law_interpolates_in_log_log_between_neighbours():
    q = np.array([[0.01, 0.04, 0.05, 0.10]])
    # between 15 (0.01) and 60 (0.04): slope log(4)/log(4) = 1 -> linear in H: 30 -> 0.02
    assert interpolate_power_law(GRID, q, [30.0])[0] == pytest.approx(0.02)


def test_running_max_makes_grid_monotone():
    assert running_max(np.array([[0.02, 0.01, 0.03]])).tolist() == [[0.02, 0.02, 0.03]]


@settings(max_examples=60, deadline=None)
@given(
    b=st.floats(0.2, 0.9),
    q0=st.floats(0.002, 0.05),
    cost=st.floats(0.0, 0.01),
    h=st.floats(15.0, 1440.0),
)
def test_implied_horizon_inverts_the_fair_curve(b, q0, cost, h):
    q = q0 * (GRID / 15.0) ** b
    rate = q0 * (h / 15.0) ** b + cost
    got, cens = implied_horizon(GRID, q[None, :], q[None, :] * 0.5, [cost], [cost], [rate])
    assert got[0] == pytest.approx(h, rel=1e-9)
    assert cens[0] == ""


def test_implied_horizon_censoring():
    q = 0.01 * (GRID / 15.0) ** 0.5
    # far above the grid's top -> reported at the top, 'above'; below the first point -> 'below'
    h, c = implied_horizon(
        GRID,
        q[None, :].repeat(3, 0),
        q[None, :].repeat(3, 0),
        [0.0, 0.0, 0.02],
        [0.0, 0.0, 0.02],
        [1.0, 0.005, 0.01],
    )
    assert (h[0], c[0]) == (1440.0, "above")
    # below: extrapolated with the two shortest points' power law: 0.005 = 0.01 (H/15)^0.5
    assert h[1] == pytest.approx(15.0 * 0.25)
    assert c[1] == "below"
    # the rate does not even cover the liquidation cost: 0 minutes, below
    assert (h[2], c[2]) == (0.0, "below")
