"""The cross-venue benchmark: hand-made schedules for the comparison rules, and one run on the
21-day simulated market (scored against its truth) for the end-to-end behaviour."""

import re

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.benchmark import (
    BENCHMARK_COLUMNS,
    POSITION_COLUMNS,
    RANKING_COLUMNS,
    BenchmarkConfig,
    Position,
    _bars_cover,
    benchmark,
    comparison_schedules,
    parse_position,
    published_rate_at,
    underlying_of,
    venue_ranking,
)
from pipelines.cli import main

T = pd.Timestamp


def _tiers(rows):
    """rows: (venue, symbol, as_of, [(max_notional, rate), ...])"""
    out = []
    for venue, symbol, as_of, tiers in rows:
        lo = 0.0
        for i, (hi, rate) in enumerate(tiers, start=1):
            out.append(
                {
                    "venue": venue, "symbol": symbol, "as_of": T(as_of, tz="UTC"), "tier": i,
                    "min_notional": lo, "max_notional": hi, "maintenance_margin_rate": rate / 2,
                    "max_leverage": 1 / rate, "initial_margin_rate": rate,
                }
            )  # fmt: skip
            lo = hi
    return pd.DataFrame(out)


def test_underlying_of():
    got = underlying_of(pd.Series(["BTC", "1000PEPE", "XBT", "eth", "1000000MOG", "A8"]))
    assert got.tolist() == ["BTC", "PEPE", "BTC", "ETH", "MOG", "A8"]


def test_parse_position():
    assert parse_position("1000000:long") == Position(1e6, "long")
    assert parse_position("1e6") == Position(1e6, "both")
    assert parse_position("250_000:short") == Position(2.5e5, "short")
    with pytest.raises(FairmarginInputError, match=r"--position must be NOTIONAL.*got 'abc'"):
        parse_position("abc")
    with pytest.raises(FairmarginInputError, match="notional must be a finite number > 0, got -5"):
        parse_position("-5")
    with pytest.raises(FairmarginInputError, match="side must be long, short or both, got 'up'"):
        parse_position("100:up")


def test_published_rate_at_picks_the_covering_tier():
    t = _tiers([("v", "X/USDT:USDT", "2024-01-01", [(1e5, 0.01), (1e6, 0.02), (5e6, 0.05)])])
    # min < N <= max: 1e5 is tier 1, 1e5 + 1 tier 2; 6e6 is beyond the last tier
    assert published_rate_at(t, 1e5)["tier"].tolist() == [1]
    assert published_rate_at(t, 1e5 + 1)["published_initial_margin_rate"].tolist() == [0.02]
    assert published_rate_at(t, 6e6).empty
    # a null initial rate falls back to 1 / max_leverage (DATA_CONTRACT)
    t.loc[2, "initial_margin_rate"] = np.nan
    t.loc[2, "max_leverage"] = 25.0
    assert published_rate_at(t, 4e6)["published_initial_margin_rate"].tolist() == [0.04]


def _with_underlying(tiers, base, expiry=None):
    return tiers.assign(underlying=base, expiry=pd.NaT if expiry is None else T(expiry, tz="UTC"))


def test_comparison_uses_each_venues_latest_schedule_and_drops_expired():
    a = _tiers([("a", "X/USDT:USDT", "2024-01-01", [(np.inf, 0.01)]),
                ("a", "X/USDT:USDT", "2024-01-03", [(np.inf, 0.02)])])  # fmt: skip
    b = _tiers([("b", "X/USDC:USDC", "2024-01-02", [(np.inf, 0.03)])])
    fut = _tiers([("b", "X/USDC:USDC-240102", "2024-01-01", [(np.inf, 0.05)])])
    tiers = pd.concat(
        [_with_underlying(a, "X"), _with_underlying(b, "X"),
         _with_underlying(fut, "X", expiry="2024-01-02")],
        ignore_index=True,
    )  # fmt: skip
    comp = comparison_schedules(tiers, BenchmarkConfig(as_of="all"))
    got = {
        (str(r.comparison_as_of.date()), r.venue, r.symbol): str(r.schedule_as_of.date())
        for r in comp.itertuples()
    }
    assert got == {
        ("2024-01-01", "a", "X/USDT:USDT"): "2024-01-01",
        ("2024-01-01", "b", "X/USDC:USDC-240102"): "2024-01-01",
        # on 2024-01-02 the future has expired (expiry <= as_of): left out
        ("2024-01-02", "a", "X/USDT:USDT"): "2024-01-01",
        ("2024-01-02", "b", "X/USDC:USDC"): "2024-01-02",
        ("2024-01-03", "a", "X/USDT:USDT"): "2024-01-03",
        ("2024-01-03", "b", "X/USDC:USDC"): "2024-01-02",
    }
    latest = comparison_schedules(tiers, BenchmarkConfig())
    assert set(latest["comparison_as_of"]) == {T("2024-01-03", tz="UTC")}
    with pytest.raises(FairmarginInputError, match=r"--underlying must name .* got \['Y'\]"):
        comparison_schedules(tiers, BenchmarkConfig(underlyings=("Y",)))


def _frame(rows):
    cols = ["underlying", "venue", "pricing", "published_initial_margin_rate",
            "fair_initial_margin_rate"]  # fmt: skip
    f = pd.DataFrame(rows, columns=cols)
    f["as_of"] = T("2024-01-01", tz="UTC")
    f["peer_residual"] = 0.0
    f["comparison"] = np.where(f.groupby("underlying")["venue"].transform("nunique") > 1,
                               "same_date", "alone")  # fmt: skip
    return f


def test_ranking_orders_by_mean_log_deviation_and_reports_lone_venues():
    f = _frame([
        ("X", "a", "priced", 0.01, 0.02),      # log 0.5
        ("X", "a", "priced", 0.02, 0.02),      # log 1 -> mean log 0.5 / 2 = -0.3466
        ("X", "b", "priced", 0.03, 0.02),      # mean log 1.5 = +0.405
        ("X", "c", "priced", 0.02, 0.02),      # 0
        ("X", "d", "unpriced", 0.02, np.nan),  # no fair: listed, not ranked
        ("Y", "a", "priced", 0.02, 0.01),      # alone
    ])  # fmt: skip
    r = venue_ranking(f).set_index(["underlying", "venue"])
    assert list(venue_ranking(f).columns) == RANKING_COLUMNS
    assert r.loc[("X", "a"), "mean_log_deviation"] == pytest.approx(np.log(0.5) / 2)
    assert [r.loc[("X", v), "rank"] for v in "acb"] == [1, 2, 3]
    assert pd.isna(r.loc[("X", "d"), "rank"])
    assert r.loc[("X", "d"), "note"].startswith("unpriced")
    assert pd.isna(r.loc[("Y", "a"), "rank"])
    assert r.loc[("Y", "a"), "note"].startswith("alone")


def test_ranking_falls_back_to_daily_bars_and_says_so():
    f = _frame([
        ("X", "a", "priced", 0.01, 0.02),
        ("X", "b", "daily_only", 0.03, 0.02),
        ("X", "c", "daily_only", 0.02, 0.02),
    ])  # fmt: skip
    r = venue_ranking(f).set_index("venue")
    assert r["rank"].tolist() == [1, 3, 2]
    assert r["basis"].tolist() == ["priced", "daily_only", "daily_only"]


def test_bars_cover_tells_intraday_from_daily(fast_cfg):
    days = pd.date_range("2024-01-01", periods=30, freq="D", tz="UTC")
    hours = pd.date_range("2024-01-01", periods=30 * 24, freq="h", tz="UTC")

    def bars(symbol, tf, ts):
        prices = {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}
        return pd.DataFrame(
            {"venue": "v", "symbol": symbol, "timeframe": tf, "timestamp": ts, **prices}
        )

    ohlcv = pd.concat([bars("I", "1h", hours), bars("D", "1d", days)], ignore_index=True)
    keys = pd.DataFrame({"venue": "v", "symbol": ["I", "D", "I", "N"],
                         "schedule_as_of": T("2024-01-29", tz="UTC")})  # fmt: skip
    keys.loc[2, "schedule_as_of"] = T("2024-03-01", tz="UTC")  # bars end a month before
    intraday = _bars_cover(ohlcv, keys, intraday=True, ecfg=fast_cfg)
    daily = _bars_cover(ohlcv, keys, intraday=False, ecfg=fast_cfg)
    assert intraday.tolist() == [True, False, False, False]
    assert daily.tolist() == [False, True, False, False]


@pytest.fixture(scope="module")
def sim_result(small_tables, fast_cfg):
    positions = (Position(1e6, "long"), Position(1e6, "both"), Position(1e9, "both"))
    bcfg = BenchmarkConfig(positions=positions)
    return benchmark(small_tables, fast_cfg, bcfg)


def test_benchmark_on_simulated_market(sim_result, small_tables):
    f = sim_result.frame
    assert list(f.columns) == BENCHMARK_COLUMNS
    assert (f["schedule_as_of"] <= f["as_of"]).all()
    assert set(f["pricing"]) == {"priced"}
    # n_venues: the venues with a contract of the underlying (simulator: SOL not on dydx)
    c = small_tables["contracts"]
    c = c[c["type"].isin(["swap", "future"])]
    expect = c.groupby("base")["venue"].nunique()
    assert (f["n_venues"] == f["underlying"].map(expect)).all()
    # every tier of every latest schedule, once
    mt = small_tables["margin_tiers"]
    latest = mt[mt["as_of"] == mt.groupby(["venue", "symbol"])["as_of"].transform("max")]
    assert len(f) == len(latest)
    assert np.isfinite(f["peer_expected_rate"]).all()
    assert np.allclose(
        f["peer_residual"], f["published_initial_margin_rate"] / f["peer_expected_rate"] - 1
    )


def test_agrees_with_truth(sim_result):
    m = sim_result.metrics
    # measured on this 21-day bundle with 40 trees: Spearman 0.43 over 3 underlyings, median
    # implied-horizon error 0.20; the issue's 0.8 needs the 90-day bundle of
    # benchmarks/cross_venue_study.py --simulated (too slow for a test). Here: better than chance
    # and implied horizons typically within 25 %.
    assert m["ranking_n_underlyings"] == 3
    assert m["ranking_spearman_mean"] > 0.0
    assert m["implied_horizon_median_rel_error"] < 0.25
    assert m["implied_horizon_within_25pct"] > 0.5


def test_position_view(sim_result):
    p = sim_result.positions
    assert list(p.columns) == POSITION_COLUMNS
    one = p[(p["notional"] == 1e6) & (p["side"] == "long")]
    ok = one[one["note"] == ""]
    assert len(ok) >= 10
    assert np.allclose(ok["initial_margin"], ok["published_initial_margin_rate"] * 1e6)
    assert np.allclose(ok["capital_difference"], ok["initial_margin"] - ok["fair_margin"])
    # at a tier's evaluated notional, fair (side both) equals that tier's fair in the frame:
    # the position view judges a one-tier schedule at N, the frame the schedule's own tiers
    both = p[(p["notional"] == 1e6) & (p["side"] == "both")]
    f = sim_result.frame
    m = f[f["evaluated_notional"] == 1e6].merge(both, on=["venue", "symbol"])
    assert len(m) >= 3
    assert np.allclose(m["fair_initial_margin_rate_x"], m["fair_initial_margin_rate_y"])
    # the long side alone never needs more than the larger of the two sides
    lb = one.merge(both, on=["venue", "symbol"])
    assert (lb["fair_margin_x"] <= lb["fair_margin_y"] + 1e-9).all()
    # every simulated schedule ends in an open tier (max_notional inf): 1e9 is allowed and
    # falls in each schedule's last tier
    big = p[p["notional"] == 1e9].set_index(["venue", "symbol"])
    last = f.groupby(["venue", "symbol"])["tier"].max()
    assert (big["tier"] == last.reindex(big.index)).all()
    assert big["initial_margin"].notna().all()


def test_unpriced_venue_still_compared(sim_result, small_tables, fast_cfg):
    """Without bars for dydx, its tiers are unpriced: in the frame and peer view, not ranked."""
    model = next(iter(sim_result.models.values()))
    tables = dict(small_tables)
    tables["ohlcv"] = small_tables["ohlcv"][small_tables["ohlcv"]["venue"] != "dydx"]
    res = benchmark(tables, fast_cfg, BenchmarkConfig(underlyings=("BTC",)), model=model)
    d = res.frame[res.frame["venue"] == "dydx"]
    assert len(d)
    assert (d["pricing"] == "unpriced").all()
    assert d["fair_initial_margin_rate"].isna().all()
    assert np.isfinite(d["peer_expected_rate"]).all()
    r = res.ranking.set_index("venue")
    assert pd.isna(r.loc["dydx", "rank"])
    assert r.loc["dydx", "note"].startswith("unpriced")
    assert sorted(r["rank"].dropna().astype(int)) == [1, 2, 3]  # the three priced venues


@pytest.mark.usefixtures("mlflow_uri")
def test_write_and_log(sim_result, tmp_path, fast_cfg):
    import mlflow

    from pipelines.cmd_benchmark import format_positions, format_ranking, write_and_log
    from pipelines.tracking import mlflow_run

    with mlflow_run("bench", fast_cfg, kind="benchmark") as run_id:
        paths = write_and_log(sim_result, tmp_path)
    names = {p.name for p in paths}
    assert {"benchmark.parquet", "benchmark.csv", "venue_ranking.csv", "positions.csv",
            "benchmark.html"} <= names  # fmt: skip
    assert any(n.endswith("_rates.png") for n in names)
    back = pd.read_parquet(tmp_path / "benchmark.parquet")
    assert list(back.columns) == BENCHMARK_COLUMNS
    ranking = pd.read_csv(tmp_path / "venue_ranking.csv")
    assert list(ranking.columns) == RANKING_COLUMNS
    run = mlflow.get_run(run_id)
    assert run.data.metrics["n_rows"] == len(sim_result.frame)
    html = (tmp_path / "report" / "benchmark.html").read_text()
    assert "Cross-venue margin benchmark" in html
    assert "<img" in html
    assert "BTC" in format_ranking(sim_result.ranking)
    assert "1,000,000 long" in format_positions(sim_result.positions)


@pytest.mark.usefixtures("mlflow_uri")
def test_cli_bad_input(small_bundle, tmp_path, capsys):
    assert main(["benchmark", str(small_bundle), "--out", str(tmp_path), "--position", "x"]) == 2
    assert "--position must be NOTIONAL" in capsys.readouterr().err
    code = main(["benchmark", str(small_bundle), "--out", str(tmp_path), "--underlying", "DOGE"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fairmargin benchmark: --underlying must name")


def test_cli_end_to_end(small_bundle, fast_toml, tmp_path, mlflow_uri, capsys):
    import mlflow
    from mlflow import MlflowClient

    out = tmp_path / "out"
    args = ["benchmark", str(small_bundle), "--out", str(out), "--experiment", str(fast_toml),
            "--underlying", "sol", "--position", "1000000:long"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "1,000,000 long" in printed
    # the simulator's bundle carries its truth: the agreement is printed beside the progress
    assert re.search(
        r"against truth: ranking_spearman_mean=\S+ implied_horizon_within_25pct=", captured.err
    )
    assert "dydx" not in printed  # the simulator lists no SOL contract on dydx
    frame = pd.read_parquet(out / "benchmark.parquet")
    assert set(frame["underlying"]) == {"SOL"}
    assert (out / "venue_ranking.csv").exists()
    mlflow.set_tracking_uri(mlflow_uri)
    run = MlflowClient().search_runs([mlflow.get_experiment_by_name("fairmargin").experiment_id])[
        0
    ]
    assert run.info.status == "FINISHED"
    assert run.data.tags["fairmargin.kind"] == "benchmark"
    logged = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "benchmark")}
    assert "benchmark/venue_ranking.csv" in logged
