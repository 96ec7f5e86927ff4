from pathlib import Path

import pytest

from features._checks import FairmarginInputError
from pipelines.config import (
    ExperimentConfig,
    default_experiment_path,
    flatten,
    load_experiment,
    load_experiment_dict,
    with_overrides,
)

EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_parses(path):
    cfg = load_experiment(path)
    assert isinstance(cfg, ExperimentConfig)


def test_default_holds_method_defaults():
    cfg = load_experiment(default_experiment_path())
    assert (cfg.coverage, cfg.base_latency_minutes, cfg.participation, cfg.materiality) == (
        0.99,
        15.0,
        0.10,
        0.25,
    )
    assert cfg.single_tier_notional == 1e6
    assert cfg.beyond_depth_multiplier == 1.5


def test_unknown_key_is_an_error_naming_the_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\ncoverge = 0.99\n')
    with pytest.raises(FairmarginInputError, match=r"x.toml: unknown keys \['coverge'\]"):
        load_experiment(p)
    p.write_text("[model]\nn_trees = 3\n")
    with pytest.raises(FairmarginInputError, match=r"\[model\]: unknown keys \['n_trees'\]"):
        load_experiment(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("coverage = 1.2\n", r"coverage must be in \(0.5, 1\), got 1.2"),
        ("[data]\nhorizons_minutes = [60, 15]\n", "increasing"),
        ("[model]\nfit_level = 0.3\n", r"model.fit_level must be 0 .* got 0.3"),
        (
            "coverage = 0.95\n[model]\nfit_level = 0.99\n",
            r"fit_level \(0.99\) must not exceed coverage",
        ),
    ],
)
def test_bad_values_are_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(FairmarginInputError, match=match):
        load_experiment(p)


def test_overrides_and_round_trip():
    cfg = load_experiment(default_experiment_path())
    new = with_overrides(cfg, coverage=0.975, participation=None, **{"model.n_estimators": 7})
    assert (new.coverage, new.participation, new.model.n_estimators) == (0.975, 0.10, 7)
    flat = flatten(new)
    assert flat["model.n_estimators"] == 7
    assert flat["data.horizons_minutes"] == list(cfg.data.horizons_minutes)
    from dataclasses import asdict

    assert load_experiment_dict(asdict(new)) == new
