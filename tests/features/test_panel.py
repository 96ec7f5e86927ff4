"""Point-in-time assembly (METHOD.md, Time): a row that becomes known after t never moves a
feature at t, and stale inputs become missing instead of being carried forward."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features._checks import FairmarginInputError
from features.panel import PanelSpec, build_panel, timeframe_minutes
from pipelines.simulator import SimConfig, simulate_market


@pytest.fixture(scope="module")
def tables():
    sim = simulate_market(SimConfig(seed=5, days=9, mc_paths=500))
    # two venues' contracts (so the cross-venue basis is defined) and the option surface
    keep = {"binanceusdm", "okx", "deribit"}
    out = {}
    for name, df in sim.items():
        if name == "truth":
            continue
        out[name] = df[df["venue"].isin(keep)].reset_index(drop=True) if "venue" in df else df
    return out


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(day=st.floats(2.0, 8.0), k=st.floats(0.5, 3.0), seed=st.integers(0, 10_000))
def test_rows_known_after_t_never_move_features_at_t(tables, day, k, seed):
    start = tables["ohlcv"]["timestamp"].min()
    t = (start + pd.Timedelta(days=day)).floor("5min")
    rng = np.random.default_rng(seed)
    base = build_panel(tables)
    changed = {}
    ohlcv = tables["ohlcv"].copy()
    close_at = ohlcv["timestamp"] + pd.to_timedelta(
        ohlcv["timeframe"].map(timeframe_minutes), "min"
    )
    later = close_at > t  # a bar is known at its close
    noise = rng.uniform(0.5, 1.5, later.sum())
    for col in ("open", "high", "low", "close"):
        ohlcv.loc[later, col] = ohlcv.loc[later, col] * k * noise
    ohlcv.loc[later, "volume"] *= 10 * k
    changed["ohlcv"] = ohlcv
    books = tables["order_books"].copy()
    books.loc[books["timestamp"] > t, "amount"] *= k * 7
    books.loc[books["timestamp"] > t, "price"] *= k
    changed["order_books"] = books
    quotes = tables["option_quotes"].copy()
    quotes.loc[quotes["timestamp"] > t, "mark_iv"] *= k
    changed["option_quotes"] = quotes
    funding = tables["funding_rates"].copy()
    funding.loc[funding["timestamp"] > t, "funding_rate"] += k / 100
    changed["funding_rates"] = funding
    moved = build_panel({**tables, **changed})
    a = base[base["t"] <= t].reset_index(drop=True)
    b = moved[moved["t"] <= t].reset_index(drop=True)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    # and the check has teeth: something after t did change
    assert not base[base["t"] > t]["close"].equals(moved[moved["t"] > t]["close"])


def test_until_drops_what_is_not_yet_known(tables):
    t = tables["ohlcv"]["timestamp"].min() + pd.Timedelta(days=4)
    full = build_panel(tables)
    cut = build_panel(tables, until=t)
    assert cut["t"].max() <= t
    pd.testing.assert_frame_equal(
        full[full["t"] <= t].reset_index(drop=True), cut.reset_index(drop=True)
    )


def test_a_stale_book_becomes_missing(tables):
    books = tables["order_books"]
    cutoff = books["timestamp"].min() + pd.Timedelta(days=3)
    thin = {**tables, "order_books": books[books["timestamp"] <= cutoff]}
    panel = build_panel(thin, spec=PanelSpec(book_tolerance_minutes=120))
    late = panel["t"] > cutoff + pd.Timedelta(minutes=120)
    fresh = (panel["t"] >= cutoff - pd.Timedelta(minutes=30)) & (panel["t"] <= cutoff)
    assert panel.loc[late, "spread_bp"].isna().all()
    assert panel.loc[fresh, "spread_bp"].notna().all()


def test_ohlcv_without_a_contract_is_an_error(tables):
    contracts = tables["contracts"][tables["contracts"]["symbol"] != "BTC/USDT:USDT"]
    with pytest.raises(
        FairmarginInputError, match=r"ohlcv: \(binanceusdm, BTC/USDT:USDT\) has bars"
    ):
        build_panel({**tables, "contracts": contracts})


def test_timeframe_parsing():
    assert [timeframe_minutes(x) for x in ("1m", "5m", "1h", "1d", "1w")] == [
        1,
        5,
        60,
        1440,
        10080,
    ]
    with pytest.raises(FairmarginInputError, match="timeframe must look like"):
        timeframe_minutes("5x")
