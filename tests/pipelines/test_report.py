"""The HTML discrepancy report: self-contained, every section, flagged tiers with their drivers,
and backtest series that match the bars."""

import base64
import html
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.flag import flag_tiers, labelled_panel, train_model
from pipelines.report import backtest_series, write_report


@pytest.fixture(scope="module")
def run(small_tables, fast_cfg):
    labelled = labelled_panel(small_tables, fast_cfg)
    model = train_model(labelled, fast_cfg, cutoff=pd.Timestamp(labelled["t"].max()))
    result = flag_tiers(small_tables, fast_cfg, model=model, labelled=labelled)
    return model, labelled, result


def test_the_report_is_one_self_contained_file_with_every_section(run, fast_cfg, tmp_path):
    model, labelled, result = run
    rep = write_report(
        result.flags, tmp_path, cfg=fast_cfg, model=model, labelled=labelled,
        inputs=result.inputs, run_id="abc123",
    )  # fmt: skip
    doc = rep.html.read_text()
    assert rep.html == tmp_path / "report.html"
    for section in ("Summary", "Flagged tiers", "Published vs fair margin by tier",
                    "Implied liquidation horizon", "Backtest: margin vs realised adverse moves",
                    "Feature contributions of the flagged tiers", "abc123"):  # fmt: skip
        assert section in doc
    # nothing is fetched from elsewhere: every image is inline and is the PNG written beside it
    assert not re.search(r"src=['\"](?!data:)", doc)
    inline = re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', doc)
    assert {name for name, _ in inline} == set(rep.images)
    for name, data in inline:
        assert base64.b64decode(data) == rep.images[name].read_bytes()
        assert rep.images[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    venues = set(result.flags["venue"])
    assert {f"report_tiers_{v}.png" for v in venues} <= set(rep.images)
    assert sum(n.startswith("report_backtest_") for n in rep.images) == len(venues)
    flagged = result.flags[result.flags["status"].isin(["under_margined", "over_margined"])]
    assert len(flagged) > 0
    for text in flagged["drivers"]:  # in a table cell: &, < and > escaped, quotes kept
        assert html.escape(text, quote=False) in doc


def test_backtest_moves_are_the_bars_adverse_moves(run, small_tables, fast_cfg):
    model, labelled, _ = run
    venue, symbol = "okx", "BTC/USDT:USDT"
    s = backtest_series(model, labelled, fast_cfg, venue=venue, symbol=symbol, max_points=50)
    assert 0 < len(s) <= 51
    assert (s["margin_long"] > 0).all()
    assert (s["margin_short"] > 0).all()
    h = pd.Timedelta(minutes=float(s["horizon_minutes"].iloc[0]))
    bars = small_tables["ohlcv"]
    bars = bars[(bars["venue"] == venue) & (bars["symbol"] == symbol)]
    tf = pd.Timedelta(minutes=5)
    assert set(bars["timeframe"]) == {"5m"}
    for _, r in s.iloc[[0, len(s) // 2, -1]].iterrows():
        t = pd.Timestamp(r["t"])
        close_t = bars.loc[bars["timestamp"] + tf == t, "close"].iloc[0]
        window = bars[(bars["timestamp"] >= t) & (bars["timestamp"] + tf <= t + h)]
        # METHOD.md, linear contract: long (close_t - min low) / close_t, short (max high -
        # close_t) / close_t, computed here from the raw bars
        assert r["realised_long"] == pytest.approx((close_t - window["low"].min()) / close_t)
        assert r["realised_short"] == pytest.approx((window["high"].max() - close_t) / close_t)
    assert np.isfinite(s[["realised_long", "realised_short"]].to_numpy()).all()
