"""A small simulated bundle and a fast config, shared by the pipeline tests."""

from dataclasses import replace

import pytest

from pipelines.bundle import write_bundle
from pipelines.config import default_experiment_path, load_experiment, with_overrides
from pipelines.simulator import SimConfig, simulate_market


@pytest.fixture(scope="session")
def small_tables():
    """21 days, 5-minute bars, every venue and table: enough for 14 days of history."""
    return simulate_market(SimConfig(seed=3, days=21, mc_paths=2000))


@pytest.fixture(scope="session")
def small_bundle(small_tables, tmp_path_factory):
    return write_bundle(small_tables, tmp_path_factory.mktemp("sim") / "bundle")


@pytest.fixture(scope="session")
def fast_cfg():
    cfg = load_experiment(default_experiment_path())
    cfg = with_overrides(
        cfg,
        **{
            "model.n_estimators": 40,
            "model.min_child_samples": 100,
            "data.sample_every_minutes": 60,
            "data.horizons_minutes": (15, 60, 240, 1440),
            "data.min_history_days": 7.0,
        },
    )
    return replace(cfg, name="fast-test")


FAST_TOML = """
name = "fast-test"
[data]
horizons_minutes = [15, 60, 240, 1440]
sample_every_minutes = 60
min_history_days = 7.0
[model]
n_estimators = 40
min_child_samples = 100
"""


@pytest.fixture(scope="session")
def fast_toml(tmp_path_factory):
    """The fast config as an experiment file, for the CLI (few trees, a short grid)."""
    path = tmp_path_factory.mktemp("exp") / "fast.toml"
    path.write_text(FAST_TOML)
    return path


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
