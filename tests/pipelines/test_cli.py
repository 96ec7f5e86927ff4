"""The command line end to end on a small simulated bundle, with MLflow in a temporary SQLite."""

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.tracking import EXPERIMENT, MODEL_NAME


@pytest.fixture(autouse=True)
def _tracking(mlflow_uri):
    """Every test here tracks into its own temporary SQLite store."""
    return mlflow_uri


def _runs(uri):
    mlflow.set_tracking_uri(uri)
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT)
    return MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time"])


def test_flag_writes_outputs_and_tracks_the_run(
    small_bundle, fast_toml, tmp_path, mlflow_uri, capsys
):
    out = tmp_path / "flags"
    assert (
        main(["flag", str(small_bundle), "--out", str(out), "--experiment", str(fast_toml)]) == 0
    )
    printed = capsys.readouterr().out
    assert "status:" in printed
    pq, csv = pd.read_parquet(out / "flags.parquet"), pd.read_csv(out / "flags.csv")
    assert len(pq) == len(csv) > 0
    assert list(pq.columns) == list(csv.columns)
    (run,) = _runs(mlflow_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["coverage"] == "0.99"
    assert run.data.params["model.n_estimators"] == "40"
    for key in ("pinball_loss_long", "exceedance_rate_short", "detection_recall",
                "detection_precision", "n_under_margined"):  # fmt: skip
        assert key in run.data.metrics
    assert run.inputs.dataset_inputs[0].dataset.name == "bundle"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "flags")}
    assert artifacts == {"flags/flags.csv", "flags/flags.parquet"}


def test_a_failed_run_is_failed_in_mlflow_and_leaves_no_flags(
    small_bundle, fast_toml, tmp_path, mlflow_uri, monkeypatch
):
    import pipelines.flag

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipelines.flag, "train_model", boom)
    out = tmp_path / "flags"
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["flag", str(small_bundle), "--out", str(out), "--experiment", str(fast_toml)])
    assert not (out / "flags.parquet").exists()
    assert not (out / "flags.csv").exists()
    assert not list(out.glob("*.tmp")) if out.exists() else True
    (run,) = _runs(mlflow_uri)
    assert run.info.status == "FAILED"


def _broken_bundle(src: Path, dst: Path) -> Path:
    """A copy with a crossed book, a negative price, overlapping tiers and a conflicting
    duplicate key (each in one place)."""
    shutil.copytree(src, dst)
    books = pd.read_parquet(dst / "order_books.parquet")
    first = books.iloc[0]
    snap = (
        (books["venue"] == first["venue"])
        & (books["symbol"] == first["symbol"])
        & (books["timestamp"] == first["timestamp"])
    )
    best_ask = books.loc[snap & (books["side"] == "ask") & (books["level"] == 0), "price"].iloc[0]
    books.loc[snap & (books["side"] == "bid") & (books["level"] == 0), "price"] = best_ask * 1.01
    books.to_parquet(dst / "order_books.parquet", index=False)
    ohlcv = pd.read_parquet(dst / "ohlcv.parquet")
    ohlcv.loc[10, "low"] = -1.0
    ohlcv.to_parquet(dst / "ohlcv.parquet", index=False)
    tiers = pd.read_parquet(dst / "margin_tiers.parquet")
    i = tiers.index[tiers["tier"] == 2][0]
    tiers.loc[i, "min_notional"] = tiers.loc[i, "min_notional"] * 0.5  # overlaps tier 1
    dup = tiers.iloc[[0]].assign(max_leverage=tiers.iloc[0]["max_leverage"] + 1)
    pd.concat([tiers, dup]).to_parquet(dst / "margin_tiers.parquet", index=False)
    return dst


def test_bad_rows_stop_the_run_or_are_quarantined(small_bundle, fast_toml, tmp_path, capsys):
    bad = _broken_bundle(small_bundle, tmp_path / "bad")
    out = tmp_path / "flags"
    args = ["flag", str(bad), "--out", str(out), "--experiment", str(fast_toml)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "row" in err
    assert any(t in err for t in ("order_books", "ohlcv", "margin_tiers"))
    assert not (out / "flags.parquet").exists()

    assert main([*args, "--quarantine"]) == 0
    q = pd.read_parquet(out / "quarantine.parquet")
    assert {"order_books", "ohlcv", "margin_tiers"} <= set(q["table"])
    assert q["rule"].str.len().gt(0).all()
    assert q["rule"].str.contains("bid").any()  # the crossed book
    flags = pd.read_parquet(out / "flags.parquet")
    assert len(flags) > 0


def test_a_missing_column_stops_even_with_quarantine(small_bundle, tmp_path, capsys):
    bad = tmp_path / "nocol"
    shutil.copytree(small_bundle, bad)
    ohlcv = pd.read_parquet(bad / "ohlcv.parquet").drop(columns=["close"])
    ohlcv.to_parquet(bad / "ohlcv.parquet", index=False)
    assert main(["validate", str(bad), "--quarantine"]) == 2
    err = capsys.readouterr().err
    assert "ohlcv" in err
    assert "close" in err


def test_train_registers_champion_and_flag_uses_it(small_bundle, fast_toml, tmp_path, capsys):
    assert main(["train", str(fast_toml), str(small_bundle), "--out", str(tmp_path / "t1")]) == 0
    assert main(["train", str(fast_toml), str(small_bundle), "--out", str(tmp_path / "t2")]) == 0
    client = MlflowClient()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))
    assert versions == [1, 2]
    # the first registered version takes the champion alias; a later one does not by default
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"

    out = tmp_path / "flags"
    uri = f"models:/{MODEL_NAME}@champion"
    args = ["flag", str(small_bundle), "--out", str(out), "--model", uri]
    assert main([*args, "--experiment", str(fast_toml)]) == 0
    served = pd.read_parquet(out / "flags.parquet")
    trained = pd.read_parquet(tmp_path / "t1" / "flags.parquet")
    cols = ["fair_initial_margin_rate", "fair_lower", "fair_upper", "status", "drivers"]
    pd.testing.assert_frame_equal(served[cols], trained[cols])
    assert (served["model_version"] == uri).all()

    capsys.readouterr()
    assert main([*args, "--coverage", "0.95"]) == 2
    assert "trained at coverage 0.99, asked for 0.95" in capsys.readouterr().err


def test_an_unknown_model_uri_is_one_clear_line(small_bundle, tmp_path, capsys):
    code = main(["flag", str(small_bundle), "--out", str(tmp_path), "--model", "models:/nope/7"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("fairmargin flag: --model models:/nope/7: cannot load it")
