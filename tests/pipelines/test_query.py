"""``fairmargin query`` against the registry's champion: flags-row answers, CSV batches, one-line
errors, and the report a train run writes and logs."""

import json
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.tracking import EXPERIMENT


@pytest.fixture(scope="module")
def trained(small_bundle, fast_toml, tmp_path_factory):
    """Train once (CLI), register the champion in a module-wide SQLite store."""
    root = tmp_path_factory.mktemp("query")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        assert main(["train", str(fast_toml), str(small_bundle), "--out", str(root / "t")]) == 0
        yield root, pd.read_parquet(root / "t" / "flags.parquet")


@pytest.fixture
def store(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained[0]}/mlflow.db")
    return trained


def _query(capsys, *args):
    capsys.readouterr()
    code = main(["query", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_query_at_a_tiers_notional_equals_its_flags_row(store, small_bundle, capsys):
    flags = store[1]
    row = flags[flags["status"] == "under_margined"].iloc[0]
    code, out, _ = _query(
        capsys, "--bundle", str(small_bundle), "--venue", row["venue"], "--symbol",
        row["symbol"], "--notional", repr(float(row["evaluated_notional"])), "--as-of",
        row["as_of"].isoformat(),
    )  # fmt: skip
    assert code == 0
    got = json.loads(out)
    for c in flags.columns:
        if c == "model_version":
            assert got[c] == "models:/fair-margin@champion"
        elif c == "as_of":
            assert pd.Timestamp(got[c]) == row[c]
        elif isinstance(row[c], float):
            got[c] = float(got[c]) if isinstance(got[c], str) else got[c]  # "inf"
            assert got[c] == pytest.approx(row[c], rel=1e-12, nan_ok=True), c
        else:
            assert got[c] == row[c], c
    assert got["side"] == "both"


def test_positions_csv_answers_many(store, small_bundle, tmp_path, capsys):
    flags = store[1]
    pos = flags[["venue", "symbol", "evaluated_notional"]].rename(
        columns={"evaluated_notional": "notional"}
    )
    pos = pos.assign(side=["both", "long", "short"] * (len(pos) // 3) + ["both"] * (len(pos) % 3))
    path = tmp_path / "positions.csv"
    pos.to_csv(path, index=False)
    out = tmp_path / "answers.csv"
    code, _, _ = _query(capsys, "--bundle", str(small_bundle), "--positions", str(path),
                        "--out", str(out))  # fmt: skip
    assert code == 0
    got = pd.read_csv(out)
    assert len(got) == len(pos)
    both = (got["side"] == "both").to_numpy()
    pd.testing.assert_series_equal(
        got.loc[both, "fair_initial_margin_rate"].reset_index(drop=True),
        flags.loc[both, "fair_initial_margin_rate"].reset_index(drop=True),
        rtol=1e-12,
    )
    for side in ("long", "short"):
        m = (got["side"] == side).to_numpy()
        assert (got.loc[m, "binding_side"] == side).all()
        pd.testing.assert_series_equal(
            got.loc[m, "fair_initial_margin_rate"].reset_index(drop=True),
            flags.loc[m, f"fair_{side}_rate"].reset_index(drop=True),
            rtol=1e-12,
            check_names=False,
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--venue", "nowhere"], "venue must be one of the bundle's"),
        (["--symbol", "DOGE/USDT:USDT"], "symbol must be a swap or future of okx"),
        (["--notional", "-5"], "--notional must be a positive number, got -5.0"),
        (["--as-of", "2001-01-01"], "as_of must be at or after the first bar close"),
        (["--model", "models:/nope/3"], "--model models:/nope/3: cannot load it"),
        (
            ["--coverage", "0.95"],
            "--coverage 0.95: model models:/fair-margin@champion was trained at coverage 0.99",
        ),
    ],
)
@pytest.mark.usefixtures("store")
def test_bad_queries_are_one_line_and_exit_2(small_bundle, capsys, args, message):
    base = {"--venue": "okx", "--symbol": "BTC/USDT:USDT", "--notional": "1e6"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    code, out, err = _query(capsys, "--bundle", str(small_bundle), *flat)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fairmargin query: ")
    assert message in lines[0]


@pytest.mark.usefixtures("store")
def test_live_fails_fast_with_one_line_when_the_venue_is_unreachable(capsys, monkeypatch):
    from pipelines.importers import ccxt_live

    real = ccxt_live.connect
    # a proxy on a closed local port: unreachable for sure, and the test never leaves the host
    monkeypatch.setattr(
        ccxt_live,
        "connect",
        lambda venue, **kw: real(venue, config={"httpsProxy": "http://127.0.0.1:9"}, **kw),
    )
    t0 = time.perf_counter()
    code, _, err = _query(capsys, "--live", "--venue", "okx", "--symbol", "BTC/USDT:USDT",
                          "--notional", "1e6")  # fmt: skip
    assert code == 2
    assert time.perf_counter() - t0 < 10
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "okx load_markets: exchange unreachable" in lines[0]


def test_the_train_run_writes_and_logs_the_report(store):
    root = store[0]
    html = (root / "t" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("data:image/png;base64,") >= 4
    for section in ("Summary", "Published vs fair margin by tier", "Implied liquidation horizon",
                    "Backtest", "Feature contributions of the flagged tiers"):  # fmt: skip
        assert section in html
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in logged
    assert "report/report_implied_horizon.png" in logged
    assert sum(p.endswith(".png") for p in logged) >= 4
