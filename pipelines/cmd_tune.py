"""``fairmargin tune EXPERIMENT.toml BUNDLE``: Optuna search of the model's parameters on folds
before the first test month; writes the best as a new experiment TOML (see pipelines.tune)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from features._checks import FairmarginInputError

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="tune the model with Optuna; write the best as an experiment")
    p.add_argument("experiment", help="experiment TOML to start from ([tune] section)")
    p.add_argument("bundle")
    p.add_argument(
        "--storage",
        help="Optuna RDB URL shared by workers, e.g. postgresql+psycopg://user@host/db "
        "(default: sqlite:///optuna.db in the working folder)",
    )
    p.add_argument("--n-trials", type=int, help="trials to run now (default: tune.n_trials)")
    p.add_argument("--study", help="study name (default: fairmargin-<experiment name>)")
    p.add_argument("--out", help="TOML to write (default: <experiment name>-tuned.toml here)")
    p.add_argument("--quarantine", action="store_true", help="set bad rows aside and go on")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    import mlflow

    from pipelines.bundle import bundle_fingerprint
    from pipelines.cliutil import Clock, bundle_tables, config_from_args, read_for_cli
    from pipelines.flag import labelled_panel
    from pipelines.tracking import log_bundle_input, mlflow_run
    from pipelines.tune import run_study, to_toml

    clock = Clock()
    cfg = config_from_args(args)
    n_trials = cfg.tune.n_trials if args.n_trials is None else args.n_trials
    if n_trials < 1:
        raise FairmarginInputError(f"--n-trials must be >= 1, got {n_trials}")
    storage = args.storage or f"sqlite:///{Path.cwd() / 'optuna.db'}"
    if not re.match(r"^[a-z][a-z0-9+]*://", storage):
        raise FairmarginInputError(
            f"--storage must be an RDB URL like sqlite:///path.db, got {storage!r}"
        )
    study_name = args.study or f"fairmargin-{cfg.name}"
    out_name = f"{cfg.name}-tuned"
    out = Path(args.out) if args.out else Path.cwd() / f"{out_name}.toml"
    bundle = read_for_cli(args.bundle, quarantine=args.quarantine, clock=clock)
    tables = bundle_tables(bundle)
    with mlflow_run(f"tune {Path(args.bundle).name}", cfg, kind="tune") as run_id:
        log_bundle_input(Path(args.bundle), tables, bundle_fingerprint(args.bundle))
        labelled = labelled_panel(tables, cfg)
        clock(f"features and labels: {len(labelled):,} panel rows")
        res = run_study(
            labelled,
            cfg,
            storage=storage,
            study_name=study_name,
            n_trials=n_trials,
            out_name=out_name,
        )
        best = res.best
        mlflow.log_metrics(
            {
                "best_pinball_loss": float(best.value),
                "best_exception_rate": float(best.user_attrs.get("exception_rate", float("nan"))),
            }
        )
        mlflow.log_params({f"best.{k}": str(v) for k, v in best.params.items()})
        text = to_toml(
            res.cfg,
            header=(
                f"tuned by fairmargin tune from {args.experiment} on {args.bundle}\n"
                f"study {study_name} in {storage}, trial {best.number}: pinball loss "
                f"{best.value:.5g}, exception rate {best.user_attrs.get('exception_rate')}\n"
                f"MLflow run {run_id}"
            ),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
        mlflow.log_artifact(str(out))
    clock(f"{len(res.study.trials)} trials in study {study_name}; best trial {best.number}")
    print(f"best trial {best.number}: pinball loss {best.value:.5g}; wrote {out}")
    return 0
