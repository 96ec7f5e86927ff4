import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from models.labels import adverse_move, adverse_moves


def _bars(high, low, close):
    idx = pd.date_range("2026-01-01 00:05", periods=len(close), freq="5min", tz="UTC")
    return pd.DataFrame({"high": high, "low": low, "close": close}, index=idx)


def test_adverse_moves_golden_linear():
    bars = _bars(
        high=[101.0, 103.0, 102.0, 104.0],
        low=[99.0, 98.0, 97.0, 100.0],
        close=[100.0, 102.0, 98.0, 101.0],
    )
    lab = adverse_moves(bars, horizons_bars=[1, 2])
    # t0 (close 100): next bar low 98, high 103 -> long 2 %, short 3 %
    assert lab["long_1"].iloc[0] == pytest.approx(0.02)
    assert lab["short_1"].iloc[0] == pytest.approx(0.03)
    # t0, two bars: min low 97, max high 103
    assert lab["long_2"].iloc[0] == pytest.approx(0.03)
    assert lab["short_2"].iloc[0] == pytest.approx(0.03)
    # t1 (close 102), one bar: low 97 -> (102-97)/102; high 102 -> 0
    assert lab["long_1"].iloc[1] == pytest.approx(5 / 102)
    assert lab["short_1"].iloc[1] == pytest.approx(0.0)
    # the future is unknown at the end
    assert lab["long_1"].iloc[-1:].isna().all()
    assert lab["long_2"].iloc[-2:].isna().all()


def test_adverse_moves_inverse_contract():
    bars = _bars(high=[101.0, 110.0], low=[99.0, 80.0], close=[100.0, 100.0])
    lab = adverse_moves(bars, horizons_bars=[1], linear=False)
    # inverse long: close/min low - 1 = 100/80 - 1; short: 1 - close/max high = 1 - 100/110
    assert lab["long_1"].iloc[0] == pytest.approx(0.25)
    assert lab["short_1"].iloc[0] == pytest.approx(1 - 100 / 110)


def test_missing_bar_gives_nan_not_a_shorter_window():
    bars = _bars(
        high=[101.0, np.nan, 102.0], low=[99.0, np.nan, 97.0], close=[100.0, np.nan, 98.0]
    )
    lab = adverse_moves(bars, horizons_bars=[2])
    assert np.isnan(lab["long_2"].iloc[0])


def test_bad_horizon_and_side():
    bars = _bars(high=[1.0], low=[1.0], close=[1.0])
    with pytest.raises(FairmarginInputError, match="whole bars >= 1"):
        adverse_moves(bars, horizons_bars=[0])
    with pytest.raises(FairmarginInputError, match="side must be 'long' or 'short'"):
        adverse_move(1.0, 1.0, side="up", linear=True)
