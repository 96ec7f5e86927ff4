"""Optuna tuning of the fair-margin model (``fairmargin tune``).

Each trial draws LightGBM and calibration parameters (:func:`lgbm_space`), fits the model on
walk-forward folds that all end before the first test month (no trial ever sees the test
period) and scores the calibrated quantile forecasts of the validation folds by pinball loss in
volatility units (minimised), with coverage as a constraint: a trial is feasible when its
exception rate is at most ``1 - q + tune.coverage_slack``. The sampler is a seeded TPE with that
constraint; a median pruner stops poor trials after each fold. Every trial is a nested MLflow
run under the tuning run. The best feasible trial's parameters are written as a new experiment
TOML. The study lives in an Optuna RDB storage: SQLite by default, any SQLAlchemy URL (e.g.
``postgresql+psycopg://...``) so that workers on several machines share one study.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from models.fair import FairMarginModel
from models.labels import SIDES
from models.walkforward import Split, training_view
from pipelines.config import ExperimentConfig, load_experiment_dict
from pipelines.flag import train_model

__all__ = [
    "TuneResult",
    "backtest_configs",
    "best_config",
    "challenger_wins",
    "lgbm_space",
    "make_objective",
    "run_study",
    "to_toml",
    "tune_folds",
]

log = logging.getLogger(__name__)


def lgbm_space(trial: Any, cfg: ExperimentConfig) -> dict[str, Any]:
    """The search space: ``{"model.<key>": value, "calibration.<key>": value}``. ``fit_level``
    is the coverage itself (0) or the level five times as many rows exceed, ``1 - 5 (1 - q)``
    (0.95 at q = 0.99), when that is above 0.5."""
    t = cfg.tune
    lower = round(1.0 - 5.0 * (1.0 - cfg.coverage), 6)
    levels = [0.0, lower] if lower > 0.5 else [0.0]
    return {
        "model.n_estimators": trial.suggest_int("n_estimators", t.min_trees, t.max_trees),
        "model.learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "model.num_leaves": trial.suggest_int("num_leaves", 4, 63, log=True),
        "model.min_child_samples": trial.suggest_int("min_child_samples", 20, 500, log=True),
        "model.subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "model.colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "model.reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        "calibration.window_fraction": trial.suggest_float("window_fraction", 0.15, 0.5),
        "model.fit_level": float(trial.suggest_categorical("fit_level", levels)),
    }


def apply_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with dotted ``section.key`` values replaced."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, sub = key.split(".", 1)
        nested.setdefault(section, {})[sub] = value
    return replace(cfg, **{s: replace(getattr(cfg, s), **v) for s, v in nested.items()})


def test_start(labelled: pd.DataFrame, cfg: ExperimentConfig) -> pd.Timestamp:
    """The first test time: ``tune.test_start`` or two thirds into the history (a day start)."""
    if cfg.tune.test_start:
        ts = pd.Timestamp(cfg.tune.test_start)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    t0, t1 = pd.Timestamp(labelled["t"].min()), pd.Timestamp(labelled["t"].max())
    return (t0 + (t1 - t0) * 2 / 3).floor("D")


def tune_folds(
    first_test: pd.Timestamp, *, n_folds: int, fold_days: float, gap: pd.Timedelta
) -> list[Split]:
    """``n_folds`` consecutive validation windows of ``fold_days``, the last one ending at
    ``first_test - gap`` (so its labels close by ``first_test``); each fold is trained
    ``gap`` before its window."""
    if gap <= pd.Timedelta(0):
        raise FairmarginInputError(f"tune_folds: gap must be > 0, got {gap}")
    end = pd.Timestamp(first_test) - gap
    width = pd.Timedelta(days=fold_days)
    folds = []
    for k in range(n_folds, 0, -1):
        start = end - k * width
        folds.append(Split(cutoff=start - gap, test_start=start, test_end=start + width))
    return folds


def fold_scores(
    labelled: pd.DataFrame, cfg: ExperimentConfig, fold: Split
) -> tuple[float, float, int]:
    """Fit at the fold's cutoff; (pinball loss in volatility units, exception rate, n) of the
    calibrated quantiles over the fold's window, both sides and every kept horizon."""
    hs = cfg.data.horizons_minutes
    model = train_model(
        training_view(labelled, fold.cutoff, horizons_minutes=hs), cfg, cutoff=fold.cutoff
    )
    t = labelled["t"]
    every = pd.Timedelta(minutes=cfg.data.sample_every_minutes)
    on_grid = ((t - t.min()) % every) == pd.Timedelta(0)
    rows = labelled[(t >= fold.test_start) & (t < fold.test_end) & on_grid]
    if rows.empty:
        raise FairmarginInputError(f"tune: no panel row in the fold {fold.test_start}")
    grid = model.quantile_grid(rows.drop(columns=[c for c in rows if c.startswith("y_")]))
    q = cfg.coverage
    losses, exc = [], []
    for j, h in enumerate(grid.horizons):
        for side in SIDES:
            f = grid.quantile[side][:, j]
            y = rows[f"y_{side}_{int(h)}"].to_numpy(dtype=np.float64)
            s = grid.scale[:, j]
            ok = np.isfinite(f) & np.isfinite(y) & np.isfinite(s) & (s > 0)
            d = (y[ok] - f[ok]) / s[ok]
            losses.append(np.maximum(q * d, (q - 1) * d))
            exc.append(d > 0)
    loss, e = np.concatenate(losses), np.concatenate(exc)
    if loss.size == 0:
        raise FairmarginInputError(f"tune: no labelled forecast in the fold {fold.test_start}")
    return float(loss.mean()), float(e.mean()), int(loss.size)


def make_objective(
    labelled: pd.DataFrame,
    cfg: ExperimentConfig,
    folds: Sequence[Split],
    *,
    space: Callable[[Any, ExperimentConfig], dict[str, Any]] = lgbm_space,
) -> Callable[[Any], float]:
    """The Optuna objective around :func:`fold_scores`: mean pinball loss over folds, pruned
    after each fold; ``user_attrs["constraint"]`` holds the coverage violation (<= 0 feasible).
    Each trial is a nested MLflow run."""
    import mlflow
    import optuna

    limit = 1.0 - cfg.coverage + cfg.tune.coverage_slack

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("constraint", (1.0,))  # infeasible until measured (pruned trials)
        params = space(trial, cfg)
        trial_cfg = apply_params(cfg, params)
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            losses, rates, weights = [], [], []
            for k, fold in enumerate(folds):
                loss, rate, n = fold_scores(labelled, trial_cfg, fold)
                losses.append(loss)
                rates.append(rate)
                weights.append(n)
                running = float(np.average(losses, weights=weights))
                mlflow.log_metric("pinball_loss", running, step=k)
                trial.report(running, k)
                if trial.should_prune():
                    mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned()
            rate = float(np.average(rates, weights=weights))
            value = float(np.average(losses, weights=weights))
            trial.set_user_attr("exception_rate", rate)
            trial.set_user_attr("constraint", (rate - limit,))
            trial.set_constraint("coverage", rate - limit)
            mlflow.log_metrics({"exception_rate": rate, "coverage_violation": rate - limit})
            mlflow.set_tag("state", "complete")
        return value

    return objective


def best_config(study: Any, cfg: ExperimentConfig, *, name: str) -> tuple[ExperimentConfig, Any]:
    """The config of the best feasible complete trial (else the least infeasible one)."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise FairmarginInputError("tune: no trial completed; nothing to write")
    feasible = [t for t in done if t.user_attrs.get("constraint", (1.0,))[0] <= 0]
    if feasible:
        best = min(feasible, key=lambda t: t.value)
    else:
        best = min(done, key=lambda t: (t.user_attrs["constraint"][0], t.value))
        log.warning("tune: no trial met the coverage constraint; writing the least infeasible")
    fixed = _FixedTrial(best.params)
    out = apply_params(cfg, lgbm_space(fixed, cfg))
    return replace(out, name=name), best


class _FixedTrial:
    """Replays stored params through :func:`lgbm_space` (keeps the key mapping in one place)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_int(self, name: str, *_: Any, **__: Any) -> int:
        return int(self.params[name])

    def suggest_float(self, name: str, *_: Any, **__: Any) -> float:
        return float(self.params[name])

    def suggest_categorical(self, name: str, choices: Sequence[Any], *_: Any, **__: Any) -> Any:
        # a trial stored before the parameter joined the space ran with its first choice
        return self.params.get(name, choices[0])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise FairmarginInputError(f"to_toml: value must be a TOML scalar or list, got {v!r}")


def to_toml(cfg: ExperimentConfig, *, header: str = "") -> str:
    """The whole config as an experiment TOML (top-level keys, then one table per section)."""
    raw = asdict(cfg)
    lines = [f"# {line}" for line in header.splitlines()]
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in raw.items() if k not in sections]
    for name, values in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    text = "\n".join(lines) + "\n"
    import tomllib

    load_experiment_dict(tomllib.loads(text), where="to_toml")  # it must read back
    return text


class TuneResult:
    """What :func:`run_study` returns: the study, the best config and trial."""

    def __init__(self, study: Any, cfg: ExperimentConfig, best: Any) -> None:
        self.study = study
        self.cfg = cfg
        self.best = best


def run_study(
    labelled: pd.DataFrame,
    cfg: ExperimentConfig,
    *,
    storage: str,
    study_name: str,
    n_trials: int,
    out_name: str,
) -> TuneResult:
    """Create or resume the study in ``storage`` and run ``n_trials`` more trials (inside an
    active MLflow run: trials nest under it)."""
    import optuna

    gap = pd.Timedelta(minutes=max(cfg.data.horizons_minutes))
    first = test_start(labelled, cfg)
    folds = tune_folds(first, n_folds=cfg.tune.n_folds, fold_days=cfg.tune.fold_days, gap=gap)
    if folds[0].cutoff <= pd.Timestamp(labelled["t"].min()):
        raise FairmarginInputError(
            f"tune: the folds need history before {folds[0].cutoff}; the bundle starts at "
            f"{labelled['t'].min()} (fewer tune.n_folds, shorter tune.fold_days or a later "
            "tune.test_start)"
        )
    log.info("tune: %d folds before %s, first trained at %s", len(folds), first, folds[0].cutoff)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.random_state,
        n_startup_trials=min(10, max(n_trials // 2, 1)),
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="minimize",
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        load_if_exists=True,
    )
    study.optimize(make_objective(labelled, cfg, folds), n_trials=n_trials)
    best_cfg, best = best_config(study, cfg, name=out_name)
    return TuneResult(study, best_cfg, best)


# --------------------------------------------------------------------------------------------
# Champion / challenger
# --------------------------------------------------------------------------------------------
def backtest_configs(
    labelled: pd.DataFrame, configs: dict[str, ExperimentConfig], *, test_days: float
) -> dict[str, dict[str, float]]:
    """Train each config at the same cutoff and backtest it on the same window: the last
    ``test_days`` of ``labelled``, trained ``max H`` before it. Per config: exceptions, n,
    exception_rate, kupiec_p, passes (rate <= 1 - q or Kupiec p > 0.05), average_margin and
    pinball_loss (volatility units) over both sides and the horizons every model kept."""
    from models.backtest import kupiec_pof

    if not configs:
        raise FairmarginInputError("backtest_configs: configs must hold at least one config")
    t_max = pd.Timestamp(labelled["t"].max())
    start = t_max - pd.Timedelta(days=test_days)
    gap = pd.Timedelta(minutes=max(max(c.data.horizons_minutes) for c in configs.values()))
    cutoff = start - gap
    if cutoff <= pd.Timestamp(labelled["t"].min()):
        raise FairmarginInputError(
            f"backtest_configs: champion.test_days {test_days} leaves no history before the "
            f"window (cutoff {cutoff})"
        )
    models: dict[str, FairMarginModel] = {}
    trained: list[tuple[ExperimentConfig, FairMarginModel]] = []
    for name, cfg in configs.items():
        same = [m for c, m in trained if c == cfg]  # an identical config gives the same model
        if same:
            models[name] = same[0]
            continue
        hs = cfg.data.horizons_minutes
        models[name] = train_model(
            training_view(labelled, cutoff, horizons_minutes=hs), cfg, cutoff=cutoff
        )
        trained.append((cfg, models[name]))
    common = sorted(set.intersection(*(set(m.horizons_) for m in models.values())))
    if not common:
        raise FairmarginInputError(
            "backtest_configs: the models must share a grid horizon to be compared, got "
            f"{ {k: m.horizons_ for k, m in models.items()} }"
        )
    rows = labelled[labelled["t"] > start]
    feats = rows.drop(columns=[c for c in rows.columns if str(c).startswith("y_")])
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        q = configs[name].coverage
        grid = model.quantile_grid(feats)
        exc, margin, loss = [], [], []
        for h in common:
            j = list(grid.horizons).index(float(h))
            for side in SIDES:
                f = grid.quantile[side][:, j]
                y = rows[f"y_{side}_{h}"].to_numpy(dtype=np.float64)
                s = grid.scale[:, j]
                ok = np.isfinite(f) & np.isfinite(y) & (s > 0)
                d = (y[ok] - f[ok]) / s[ok]
                exc.append(d > 0)
                loss.append(np.maximum(q * d, (q - 1) * d))
                margin.append(f[np.isfinite(f)])
        e = np.concatenate(exc)
        n, x = int(e.size), int(e.sum())
        if n == 0:
            raise FairmarginInputError("backtest_configs: no realised label in the window")
        rate = x / n
        p = kupiec_pof(n, x, coverage=q).p_value
        out[name] = {
            "exceptions": float(x),
            "n": float(n),
            "exception_rate": rate,
            "kupiec_p": p,
            "passes": float(rate <= 1 - q or p > 0.05),
            "average_margin": float(np.concatenate(margin).mean()),
            "pinball_loss": float(np.concatenate(loss).mean()),
        }
    return out


def challenger_wins(challenger: dict[str, float], champion: dict[str, float]) -> bool:
    """A challenger wins when it passes coverage and the champion does not, or both pass and
    it needs strictly less average margin; when neither passes, when it has strictly fewer
    exceptions. Ties keep the champion."""
    ch_ok, cp_ok = bool(challenger["passes"]), bool(champion["passes"])
    if ch_ok != cp_ok:
        return ch_ok
    if ch_ok:
        return challenger["average_margin"] < champion["average_margin"]
    return challenger["exception_rate"] < champion["exception_rate"]
