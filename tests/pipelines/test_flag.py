"""The flag step on a simulated bundle: the contract's columns, its rules, and the truth."""

import numpy as np
import pandas as pd
import pytest

from models.detection import detection_scores
from pipelines.flag import flag_tiers, select_schedules

# DATA_CONTRACT.md, "Output: flags", in its order
CONTRACT_COLUMNS = [
    "venue",
    "symbol",
    "tier",
    "as_of",
    "min_notional",
    "max_notional",
    "evaluated_notional",
    "published_initial_margin_rate",
    "fair_initial_margin_rate",
    "fair_long_rate",
    "fair_short_rate",
    "fair_lower",
    "fair_upper",
    "deviation",
    "status",
    "score",
    "binding_side",
    "horizon_minutes",
    "implied_horizon_minutes",
    "implied_horizon_censored",
    "liquidation_cost",
    "liquidation_cost_source",
    "drivers",
    "coverage",
    "base_latency_minutes",
    "participation",
    "model_version",
]


@pytest.fixture(scope="module")
def flagged(small_tables, fast_cfg):
    tables = {k: v for k, v in small_tables.items() if k != "truth"}
    return flag_tiers(tables, fast_cfg)


def test_flags_have_the_contract_columns_and_rules(flagged, small_tables, fast_cfg):
    f = flagged.flags
    assert list(f.columns) == CONTRACT_COLUMNS
    latest = select_schedules(small_tables["margin_tiers"], "latest")
    assert len(f) == len(latest)
    assert not f.duplicated(["venue", "symbol", "as_of", "tier"]).any()
    assert set(f["status"]) <= {"under_margined", "over_margined", "in_line", "insufficient_data"}
    ok = f[f["status"] != "insufficient_data"]
    assert len(ok) >= 0.9 * len(f)
    assert (ok["score"] >= 0).all()
    assert (ok["fair_lower"] <= ok["fair_initial_margin_rate"] + 1e-12).all()
    assert (ok["fair_initial_margin_rate"] <= ok["fair_upper"] + 1e-12).all()
    fair = np.maximum(ok["fair_long_rate"], ok["fair_short_rate"])
    np.testing.assert_allclose(ok["fair_initial_margin_rate"], fair)
    np.testing.assert_allclose(
        ok["deviation"], ok["published_initial_margin_rate"] / ok["fair_initial_margin_rate"] - 1
    )
    side = np.where(ok["fair_long_rate"] >= ok["fair_short_rate"], "long", "short")
    assert (ok["binding_side"] == side).all()
    assert set(ok["implied_horizon_censored"]) <= {"", "below", "above"}
    assert set(ok["liquidation_cost_source"]) <= {"book", "impact_estimate"}
    assert (ok["liquidation_cost_source"] == "book").mean() > 0.9  # the simulator has books
    assert (ok["drivers"].str.len() > 0).all()
    assert (f["coverage"] == fast_cfg.coverage).all()
    assert (f["participation"] == fast_cfg.participation).all()
    assert f["model_version"].str.startswith("fit-on-bundle@").all()


def test_status_follows_the_method_rules(flagged, fast_cfg):
    f = flagged.flags
    m = fast_cfg.materiality
    under = f["status"] == "under_margined"
    over = f["status"] == "over_margined"
    pub = f["published_initial_margin_rate"]
    assert ((pub < f["fair_lower"]) & (f["deviation"] < -m))[under].all()
    assert ((pub > f["fair_upper"]) & (f["deviation"] > m))[over].all()
    inline = f["status"] == "in_line"
    should_flag = ((pub < f["fair_lower"]) & (f["deviation"] < -m)) | (
        (pub > f["fair_upper"]) & (f["deviation"] > m)
    )
    assert not should_flag[inline].any()


def test_finds_planted_tiers_on_a_short_history(flagged, small_tables):
    # 21 days is a hard case (the demo's 90 days is scored by benchmarks/detection.py); the flags
    # must still find most planted tiers in the right direction and be mostly right
    scores = detection_scores(flagged.flags, small_tables["truth"])
    assert scores["recall"] >= 0.6
    assert scores["precision"] >= 0.6
    assert scores["median_abs_rel_error"] <= 0.35


def test_horizon_grows_with_notional_and_is_capped_at_expiry(flagged, small_tables):
    f = flagged.flags
    for _, g in f.groupby(["venue", "symbol"]):
        g = g.sort_values("tier")
        assert g["horizon_minutes"].is_monotonic_increasing
    futures = small_tables["contracts"].query("type == 'future'")
    fut = f.merge(futures[["venue", "symbol", "expiry"]], on=["venue", "symbol"])
    to_expiry = (fut["expiry"] - fut["as_of"]).dt.total_seconds() / 60
    assert (fut["horizon_minutes"] <= to_expiry + 1e-6).all()


def test_nothing_after_as_of_is_used(small_tables, fast_cfg):
    """Judging an earlier schedule date: scrambling every bar after it changes nothing."""
    tiers = small_tables["margin_tiers"]
    as_of = sorted(tiers["as_of"].unique())[-2]
    tables = {k: v for k, v in small_tables.items() if k != "truth"}
    a = flag_tiers(tables, fast_cfg, as_of=pd.Timestamp(as_of)).flags
    ohlcv = tables["ohlcv"].copy()
    later = ohlcv["timestamp"] >= as_of
    for col in ("open", "high", "low", "close"):
        ohlcv.loc[later, col] = ohlcv.loc[later, col] * 1.5
    books = tables["order_books"].copy()
    books.loc[books["timestamp"] > as_of, "amount"] *= 0.01
    b = flag_tiers({**tables, "ohlcv": ohlcv, "order_books": books}, fast_cfg,
                   as_of=pd.Timestamp(as_of)).flags  # fmt: skip
    pd.testing.assert_frame_equal(a, b)
