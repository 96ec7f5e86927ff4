"""fairmargin tune (Optuna, nested MLflow runs, a TOML that parses) and the champion/challenger
rule of the model registry, on the small simulated bundle with temporary SQLite stores."""

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from features._checks import FairmarginInputError
from pipelines.cli import main
from pipelines.config import default_experiment_path, load_experiment
from pipelines.tracking import EXPERIMENT, MODEL_NAME, load_registered, log_model
from pipelines.tune import challenger_wins, to_toml, tune_folds

FAST_TOML = """
name = "fast-tune"
[data]
horizons_minutes = [15, 60, 240, 1440]
sample_every_minutes = 60
min_history_days = 7.0
[model]
n_estimators = 30
min_child_samples = 100
[tune]
n_trials = 5
n_folds = 1
fold_days = 1
min_trees = 10
max_trees = 25
[champion]
test_days = 3
"""


@pytest.fixture
def fast_toml(tmp_path):
    p = tmp_path / "fast.toml"
    p.write_text(FAST_TOML)
    return p


def test_tune_two_trials_writes_an_experiment_that_parses(
    small_bundle, fast_toml, tmp_path, mlflow_uri, capsys
):
    out = tmp_path / "tuned.toml"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["tune", str(fast_toml), str(small_bundle), "--n-trials", "2"]
    assert main([*args, "--storage", storage, "--study", "s1", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    cfg = load_experiment(out)
    assert cfg.name == "fast-tune-tuned"
    assert 10 <= cfg.model.n_estimators <= 25  # from the search space, not the start config
    assert 0.15 <= cfg.calibration.window_fraction <= 0.5
    assert cfg.model.fit_level in (0.0, 0.95)
    assert cfg.data.horizons_minutes == (15, 60, 240, 1440)  # untouched keys carried over
    study = optuna.load_study(study_name="s1", storage=storage)
    assert len(study.trials) == 2
    # seeded: the first trial's parameters are the TPE sampler's first draw with seed 0
    first = optuna.samplers.TPESampler(seed=0)
    replay = optuna.create_study(sampler=first)
    t = replay.ask()
    assert t.suggest_int("n_estimators", 10, 25) == study.trials[0].params["n_estimators"]
    # each trial is a run nested under the tuning run
    mlflow.set_tracking_uri(mlflow_uri)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get("fairmargin.kind") == "tune"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2
    assert all("pinball_loss" in r.data.metrics for r in children)


def test_tune_folds_end_before_the_first_test_month():
    first = pd.Timestamp("2024-06-01", tz="UTC")
    gap = pd.Timedelta(days=1)
    folds = tune_folds(first, n_folds=3, fold_days=7, gap=gap)
    assert [f.test_end for f in folds[:-1]] == [f.test_start for f in folds[1:]]
    assert folds[-1].test_end + gap == first  # the last fold's labels close by first
    assert all(f.cutoff == f.test_start - gap for f in folds)
    with pytest.raises(FairmarginInputError, match="gap must be > 0"):
        tune_folds(first, n_folds=1, fold_days=1, gap=pd.Timedelta(0))


def test_bad_storage_is_one_line(small_bundle, fast_toml, capsys):
    args = ["tune", str(fast_toml), str(small_bundle), "--storage", "optuna.db"]
    assert main(args) == 2
    assert "--storage must be an RDB URL" in capsys.readouterr().err


def test_written_toml_round_trips():
    cfg = load_experiment(default_experiment_path())
    text = to_toml(cfg, header="x")
    path = default_experiment_path().parent / "__never_written__.toml"
    assert not path.exists()
    import tomllib

    from pipelines.config import load_experiment_dict

    assert load_experiment_dict(tomllib.loads(text)) == cfg


@pytest.mark.parametrize(
    ("challenger", "champion", "wins"),
    [
        ({"passes": 1, "average_margin": 0.05}, {"passes": 1, "average_margin": 0.06}, True),
        ({"passes": 1, "average_margin": 0.06}, {"passes": 1, "average_margin": 0.06}, False),
        ({"passes": 1, "average_margin": 0.09}, {"passes": 0, "average_margin": 0.02}, True),
        ({"passes": 0, "average_margin": 0.01}, {"passes": 1, "average_margin": 0.09}, False),
        ({"passes": 0, "exception_rate": 0.02}, {"passes": 0, "exception_rate": 0.03}, True),
    ],
)
def test_challenger_rule(challenger, champion, wins):
    assert challenger_wins(challenger, champion) is wins


def test_champion_moves_only_when_beaten_or_forced(small_bundle, fast_toml, tmp_path, mlflow_uri):
    # version 1: the first one is champion whatever the comparison
    assert main(["train", str(fast_toml), str(small_bundle), "--out", str(tmp_path / "t")]) == 0
    mlflow.set_tracking_uri(mlflow_uri)
    client = MlflowClient()

    def champion():
        return str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)

    assert champion() == "1"
    model, cfg = load_registered(f"models:/{MODEL_NAME}/1")
    from pipelines.cliutil import bundle_tables, read_for_cli
    from pipelines.flag import flag_tiers

    tables = bundle_tables(read_for_cli(str(small_bundle), quarantine=False, clock=print))
    example = flag_tiers(tables, cfg, as_of="latest", model=model).inputs
    seen = []

    def loses(uri):
        seen.append(uri)
        return False, {"challenger_average_margin": 0.1, "champion_average_margin": 0.09}

    def beats(uri):
        seen.append(uri)
        return True, {"challenger_average_margin": 0.08, "champion_average_margin": 0.09}

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        log_model(model, cfg, example, challenge=loses)  # version 2 loses
    assert champion() == "1"
    assert seen == [f"models:/{MODEL_NAME}/1"]
    logged = client.get_run(run.info.run_id).data
    assert logged.metrics["champion_average_margin"] == 0.09  # the comparison is logged
    assert "kept version 1" in logged.tags["fairmargin.champion_decision"]
    with mlflow.start_run():
        log_model(model, cfg, example, challenge=beats)  # version 3 beats it
    assert champion() == "3"
    with mlflow.start_run():
        log_model(model, cfg, example, challenge=loses, promote=True)  # 4 is forced
    assert champion() == "4"
    assert len(seen) == 2  # --promote does not even compare


def test_a_best_trial_stored_before_fit_level_joined_the_space_replays_at_coverage():
    from pipelines.tune import _FixedTrial, lgbm_space

    cfg = load_experiment(default_experiment_path())
    old = {
        "n_estimators": 50,
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_child_samples": 100,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "window_fraction": 0.3,
    }
    assert lgbm_space(_FixedTrial(old), cfg)["model.fit_level"] == 0.0
    assert lgbm_space(_FixedTrial({**old, "fit_level": 0.95}), cfg)["model.fit_level"] == 0.95
