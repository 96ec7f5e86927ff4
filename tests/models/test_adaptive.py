"""Adaptive conformal wrapper: the update on hand-computed cases, recovery after a volatility
break that the wrapped model misses, no look-ahead, and the stored-forecast path."""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from models.adaptive import (
    AdaptiveConformal,
    aci_path,
    adapt_forecasts,
    adaptive_factory,
    volatility_group,
)
from models.fair import QuantileGrid, add_labels
from models.walkforward import walk_forward, walk_forward_splits

HS = (60, 240)
Q = 0.99
SUB = 10  # intrabar steps: high/low come from a path
START = pd.Timestamp("2024-01-01 01:00", tz="UTC")


def _panel(n_pre=1500, n_post=1200, symbols=("A", "B", "C"), seed=0):
    """Hourly bars of a few coins whose volatility doubles after ``n_pre`` bars."""
    rng = np.random.default_rng(seed)
    sig = np.r_[np.full(n_pre, 0.01), np.full(n_post, 0.02)]
    n = sig.size
    frames = []
    for sym in symbols:
        steps = rng.standard_normal((n, SUB)) * (sig / np.sqrt(SUB))[:, None]
        p = 100.0 * np.exp(np.cumsum(steps.ravel()).reshape(n, SUB))
        close = p[:, -1]
        r = pd.Series(np.diff(np.log(close), prepend=np.log(100.0)))
        frames.append(
            pd.DataFrame(
                {
                    "venue": "sim",
                    "symbol": sym,
                    "t": pd.date_range(START, periods=n, freq="1h"),
                    "linear": True,
                    "bar_minutes": 60.0,
                    "high": p.max(axis=1),
                    "low": p.min(axis=1),
                    "close": close,
                    "sigma_ann": (r.rolling(48).std() * np.sqrt(24 * 365)).to_numpy(),
                }
            )
        )
    return add_labels(pd.concat(frames, ignore_index=True), horizons_minutes=HS)


@dataclass
class Static:
    """A wrapped model that never adapts: the pooled empirical q-quantile of the labels
    before ``until`` (known at every cutoff after it), the same at every row."""

    until: pd.Timestamp
    horizons_: tuple[int, ...] = ()
    q_: dict = field(default_factory=dict)

    def fit(self, labelled, *, cutoff):
        assert cutoff >= self.until
        for h in HS:
            known = labelled["t"] + pd.Timedelta(minutes=h) <= self.until
            for s in ("long", "short"):
                self.q_[s, h] = float(np.nanquantile(labelled.loc[known, f"y_{s}_{h}"], Q))
        self.horizons_ = HS
        return self

    def quantile_grid(self, rows):
        n = len(rows)
        q = {s: np.tile([self.q_[s, h] for h in HS], (n, 1)) for s in ("long", "short")}
        return QuantileGrid(
            horizons=np.asarray(HS, dtype=float),
            quantile=q,
            lower={s: 0.9 * v for s, v in q.items()},
            upper={s: 1.1 * v for s, v in q.items()},
            scale=np.ones((n, len(HS))),
        )


def _features(panel):
    return panel.drop(columns=[c for c in panel if c.startswith("y_")])


@pytest.fixture(scope="module")
def panel():
    return _panel()


BREAK = START + pd.Timedelta(hours=1500)


def test_aci_path_hand_computed():
    # target 0.1, gamma 0.5, one-unit horizon; by hand:
    # t=0: theta 0; t=1: entry 0 (2 > 1 x e^0) err 1 -> 0.45; t=2: entry 1 (0 > e^0.45) no
    # -> 0.40; t=3: entry 2 (1.2 > e^0.40 = 1.49) no: judged against the issued, adapted
    # forecast -> 0.35; t=10: entry 3 (2 > e^0.35 = 1.42) err 1 -> 0.80
    issue = np.array([0, 1, 2, 3], dtype=np.int64)
    theta_issue, theta_q = aci_path(
        issue,
        issue + 1,
        np.ones(4),
        np.array([2.0, 0.0, 1.2, 2.0]),
        np.array([10, 2, 0], dtype=np.int64),
        target=0.1,
        gamma=0.5,
        bounds=(-5.0, 5.0),
    )
    np.testing.assert_allclose(theta_issue, [0.0, 0.45, 0.40, 0.35], atol=1e-12)
    np.testing.assert_allclose(theta_q, [0.80, 0.40, 0.0], atol=1e-12)


def test_aci_path_clips_and_ignores_unknown_labels():
    issue = np.arange(50, dtype=np.int64)
    real = np.full(50, 100.0)
    real[10] = np.nan  # never known: no update
    _, th = aci_path(issue, issue + 1, np.ones(50), real, np.array([100, 11]),
                     target=0.01, gamma=0.1, bounds=(-0.3, 0.3))  # fmt: skip
    # every known entry is an exception: +0.099 each, clipped at 0.3
    assert th[0] == pytest.approx(0.3)
    # at t=11, entries 0..9 are known (10 is unknown): min(10 x 0.099, 0.3)
    assert th[1] == pytest.approx(0.3)
    _, th1 = aci_path(issue[:3], issue[:3] + 1, np.ones(3), real[:3], np.array([2]),
                      target=0.01, gamma=0.1, bounds=(-1.0, 1.0))  # fmt: skip
    assert th1[0] == pytest.approx(2 * 0.099)


def test_overlapping_windows_count_by_their_share():
    # weight 0.25 (a 4-bar window on 1-bar steps): each exception moves theta a quarter as far
    issue = np.arange(3, dtype=np.int64)
    kw = {"target": 0.1, "gamma": 0.4, "bounds": (-5.0, 5.0)}
    real = np.array([2.0, 2.0, 0.0])
    _, full = aci_path(issue, issue + 1, np.ones(3), real, np.array([9]), **kw)
    _, part = aci_path(
        issue, issue + 1, np.ones(3), real, np.array([9]), weight=np.full(3, 0.25), **kw
    )
    # by hand: 0.4 x (0.9 + 0.9 - 0.1) = 0.68 (each exception judged against its issued factor:
    # entry 1 at theta 0.36 still exceeded, 2 > e^0.36); a quarter of it, 0.17
    assert full[0] == pytest.approx(0.68)
    assert part[0] == pytest.approx(0.17)


def test_volatility_group_is_a_trailing_percentile():
    rows = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "s",
            "bar_minutes": 1440.0,
            "sigma_ann": np.r_[np.arange(1.0, 31.0), [0.5, 100.0, 15.5]],
        }
    )
    g = volatility_group(rows, n_groups=3, lookback_days=1000.0)
    # the first 29 rows have no percentile (fewer than 30 values): middle group
    assert (g[:29] == 1).all()
    # row 29 (value 30) is the largest of 30: top; 0.5 the smallest of 31: bottom;
    # 100 the largest: top; 15.5 ranks 17th of 33 (pct 0.515): middle
    assert list(g[29:]) == [2, 0, 2, 1]
    assert (volatility_group(rows, n_groups=1, lookback_days=10.0) == 0).all()


def _exception_rate(grid, panel, mask, h=60, side="long"):
    j = HS.index(h)
    f = grid.quantile[side][mask, j]
    y = panel[f"y_{side}_{h}"].to_numpy()[mask]
    ok = np.isfinite(y)
    return float(np.mean(y[ok] > f[ok]))


def test_coverage_recovers_after_a_volatility_break(panel):
    feats = _features(panel)
    t = panel["t"]
    base = Static(until=BREAK).fit(panel, cutoff=BREAK)
    wrapped = AdaptiveConformal(base_factory=lambda: Static(until=BREAK), gamma=0.05)
    wrapped.fit(panel, cutoff=BREAK)
    g_base, g_aci = base.quantile_grid(feats), wrapped.quantile_grid(feats)
    # after 300 hours (900 observations of 3 coins) past the break
    later = (t >= BREAK + pd.Timedelta(hours=300)).to_numpy()
    before = (t < BREAK).to_numpy()
    for side in ("long", "short"):
        assert _exception_rate(g_base, panel, before, side=side) < 0.02
        assert _exception_rate(g_base, panel, later, side=side) > 0.05  # stays broken
        assert _exception_rate(g_aci, panel, later, side=side) < 0.02  # recovered
    # nothing happened before the cutoff: the factor is 1 there
    np.testing.assert_allclose(g_aci.quantile["long"][before], g_base.quantile["long"][before])


@pytest.mark.parametrize("hours", [1510, 1700])
def test_no_look_ahead(panel, hours):
    t0 = START + pd.Timedelta(hours=hours)
    feats = _features(panel)
    after = (feats["t"] > t0).to_numpy()
    rng = np.random.default_rng(1)
    moved = feats.copy()
    k = rng.uniform(0.5, 2.0, after.sum())
    for c in ("high", "low", "close"):
        moved.loc[after, c] = moved.loc[after, c] * k
    moved.loc[after, "sigma_ann"] = rng.uniform(0.1, 5.0, after.sum())
    grids = []
    for rows in (feats, moved):
        m = AdaptiveConformal(base_factory=lambda: Static(until=BREAK), gamma=0.05, n_groups=3)
        grids.append(m.fit(panel, cutoff=BREAK).quantile_grid(rows))
    for s in ("long", "short"):
        a, b = grids[0].quantile[s][~after], grids[1].quantile[s][~after]
        np.testing.assert_array_equal(a, b)
        # and the changed future does move the later forecasts (the test can fail)
        assert not np.array_equal(grids[0].quantile[s][after], grids[1].quantile[s][after])


@pytest.mark.parametrize("n_groups", [1, 3])
def test_adapt_forecasts_equals_wrapper(panel, n_groups):
    feats = _features(panel)
    wrapped = AdaptiveConformal(
        base_factory=lambda: Static(until=BREAK), gamma=0.05, n_groups=n_groups
    ).fit(panel, cutoff=BREAK)
    g_aci = wrapped.quantile_grid(feats)
    test = (feats["t"] > BREAK).to_numpy()
    base = Static(until=BREAK).fit(panel, cutoff=BREAK).quantile_grid(feats[test])
    h = HS[0]  # the first horizon: no running maximum over horizons
    fc = pd.DataFrame(
        {
            "t": feats["t"][test].to_numpy(),
            "h": h,
            "bar_minutes": 60.0,
            "forecast_long": base.quantile["long"][:, 0],
            "forecast_short": base.quantile["short"][:, 0],
            "realised_long": panel[f"y_long_{h}"][test].to_numpy(),
            "realised_short": panel[f"y_short_{h}"][test].to_numpy(),
        }
    )
    groups = volatility_group(feats, n_groups=n_groups, lookback_days=365.0)[test]
    out = adapt_forecasts(fc, coverage=Q, gamma=0.05, groups=groups)
    for s in ("long", "short"):
        np.testing.assert_allclose(out[f"forecast_{s}"], g_aci.quantile[s][test, 0], rtol=1e-12)
    assert not np.allclose(out["forecast_long"], fc["forecast_long"])


def test_walk_forward_carries_the_record_across_splits(panel):
    """Retrained every week with one shared wrapper, the forecasts equal one pass fitted at
    the first cutoff: each split learns from the forecasts of the earlier ones."""
    splits = walk_forward_splits(
        first_test=BREAK + pd.Timedelta(hours=4),
        end=panel["t"].max(),
        gap=pd.Timedelta(hours=4),
        freq="7D",
    )
    assert len(splits) >= 6
    fc = walk_forward(
        adaptive_factory(lambda: Static(until=BREAK), coverage=Q, gamma=0.05),
        panel,
        splits=splits,
        horizons_minutes=HS,
        needs_history=True,
    )
    one = AdaptiveConformal(base_factory=lambda: Static(until=BREAK), gamma=0.05)
    grid = one.fit(panel, cutoff=splits[0].cutoff).quantile_grid(_features(panel))
    key = panel[["symbol", "t"]].assign(pos=np.arange(len(panel)))
    got = fc[fc["h"] == 60].merge(key, on=["symbol", "t"])
    np.testing.assert_allclose(
        got["forecast_long"], grid.quantile["long"][got["pos"].to_numpy(), 0], rtol=1e-12
    )
    assert got["forecast_long"].iloc[-1] > 1.5 * got["forecast_long"].iloc[0]


def test_bad_parameters_are_refused(panel):
    with pytest.raises(FairmarginInputError, match="gamma must be a finite float >= 0, got -1"):
        AdaptiveConformal(base_factory=lambda: Static(until=BREAK), gamma=-1).fit(
            panel, cutoff=BREAK
        )
    with pytest.raises(FairmarginInputError, match="n_groups must be an int >= 1, got 0"):
        adaptive_factory(lambda: Static(until=BREAK), n_groups=0)
    with pytest.raises(FairmarginInputError, match="quantile_grid: not fitted"):
        AdaptiveConformal(base_factory=lambda: Static(until=BREAK)).quantile_grid(panel)
    with pytest.raises(
        FairmarginInputError, match=r"adapt_forecasts: missing columns \['bar_minutes'"
    ):
        adapt_forecasts(
            pd.DataFrame(
                columns=[
                    "t",
                    "h",
                    "forecast_long",
                    "forecast_short",
                    "realised_long",
                    "realised_short",
                ]
            ),
            coverage=Q,
            gamma=0.1,
        )
    with pytest.raises(FairmarginInputError, match="groups must have one value per row"):
        adapt_forecasts(
            pd.DataFrame(
                {
                    "t": [BREAK],
                    "h": [60],
                    "bar_minutes": [60.0],
                    "forecast_long": [1.0],
                    "forecast_short": [1.0],
                    "realised_long": [1.0],
                    "realised_short": [1.0],
                }
            ),
            coverage=Q,
            gamma=0.1,
            groups=np.zeros(3, dtype=np.int64),
        )
