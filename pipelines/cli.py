"""The ``fairmargin`` command line.

Errors of fairmargin's own (bad input, a model that does not fit the question) print one line and
exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginError, FairmarginInputError
from pipelines.cliutil import (
    Clock,
    add_model_options,
    bundle_tables,
    config_from_args,
    load_model_for,
    parse_as_of,
    print_flags,
    read_for_cli,
    write_tables_atomic,
)
from pipelines.config import ExperimentConfig

__all__ = ["command_modules", "main"]


def command_modules() -> list[str]:
    """Modules ``pipelines.cmd_*``: each adds its sub-commands with ``register(subparsers)``."""
    import pipelines

    return sorted(
        f"pipelines.{m.name}"
        for m in pkgutil.iter_modules(pipelines.__path__)
        if m.name.startswith("cmd_")
    )


log = logging.getLogger("fairmargin")


def _judge_and_log(
    tables: dict[str, pd.DataFrame | None],
    cfg: ExperimentConfig,
    out: Path,
    *,
    as_of: Any,
    model: Any,
    model_version: str,
    labelled: pd.DataFrame | None,
    clock: Clock,
) -> Any:
    """Flag, score against truth when present, write outputs (flags and the HTML report with
    its PNGs) and log them to the active run."""
    import time

    import mlflow

    from models.detection import detection_scores
    from pipelines.flag import flag_tiers, labelled_panel
    from pipelines.report import models_for, write_report

    if labelled is None:  # the report's backtest charts read the realised moves too
        t0 = time.perf_counter()
        labelled = labelled_panel(tables, cfg)
        clock(f"features and labels: {len(labelled):,} rows in {time.perf_counter() - t0:.1f} s")
    result = flag_tiers(
        tables,
        cfg,
        as_of=as_of,
        model=model,
        model_version=model_version,
        labelled=labelled,
        progress=clock,
    )
    metrics = {k: v for k, v in result.metrics.items() if np.isfinite(v)}
    counts = result.flags["status"].value_counts()
    for status in ("under_margined", "over_margined", "in_line", "insufficient_data"):
        metrics[f"n_{status}"] = float(counts.get(status, 0))
    truth = tables.get("truth")
    if truth is not None:
        scores = detection_scores(result.flags, truth)
        metrics.update({f"detection_{k}": v for k, v in scores.items() if np.isfinite(v)})
        clock(
            "against truth: "
            + " ".join(
                f"{k}={scores[k]:.3f}"
                for k in (
                    "recall",
                    "precision",
                    "inline_false_flag_rate",
                    "median_abs_rel_error",
                    "interval_coverage",
                )
            )
        )
    mlflow.log_metrics(metrics)
    for path in write_tables_atomic(result.flags, out, "flags"):
        mlflow.log_artifact(str(path), artifact_path="flags")
    run = mlflow.active_run()
    report = write_report(
        result.flags,
        out,
        cfg=cfg,
        model=model if model is not None else models_for(result.flags, result.models),
        labelled=labelled,
        inputs=result.inputs,
        run_id=run.info.run_id if run is not None else "",
    )
    mlflow.log_artifact(str(report.html), artifact_path="report")
    for png in report.images.values():
        mlflow.log_artifact(str(png), artifact_path="report")
    clock(f"report in {report.html}")
    return result


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipelines.bundle import write_bundle
    from pipelines.simulator import SimConfig, simulate_market

    clock = Clock()
    cfg = SimConfig(seed=args.seed, days=args.days)
    tables = simulate_market(cfg)
    path = write_bundle(tables, args.out, overwrite=args.overwrite)
    rows = ", ".join(f"{k} {len(v):,}" for k, v in tables.items())
    clock(f"simulated {args.days} days (seed {args.seed}) into {path}: {rows}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipelines.bundle import read_bundle, write_quarantine

    bundle = read_bundle(args.bundle, quarantine=args.quarantine)
    for name, df in bundle_tables(bundle).items():
        if df is not None:
            print(f"{name}: {len(df):,} rows")
    if len(bundle.quarantine):
        out = Path(args.out or args.bundle)
        path = write_quarantine(bundle.quarantine, out)
        print(f"{len(bundle.quarantine):,} bad rows set aside in {path}")
    print(f"{args.bundle}: follows the data contract")
    return 0


def cmd_flag(args: argparse.Namespace) -> int:
    from pipelines.bundle import bundle_fingerprint, write_quarantine
    from pipelines.tracking import log_bundle_input, mlflow_run

    clock = Clock()
    cfg = config_from_args(args)
    model = None
    version = ""
    if args.model:
        model = load_model_for(args.model, cfg)
        version = args.model
        clock(f"loaded {args.model} (trained at {model.cutoff_})")
    bundle = read_for_cli(args.bundle, quarantine=args.quarantine, clock=clock)
    out = Path(args.out)
    with mlflow_run(f"flag {Path(args.bundle).name}", cfg, kind="flag") as run_id:
        log_bundle_input(Path(args.bundle), bundle_tables(bundle), bundle_fingerprint(args.bundle))
        if len(bundle.quarantine):
            qpath = write_quarantine(bundle.quarantine, out)
            if qpath is not None:
                import mlflow

                mlflow.log_artifact(str(qpath))
        result = _judge_and_log(
            bundle_tables(bundle),
            cfg,
            out,
            as_of=parse_as_of(args.as_of),
            model=model,
            model_version=version,
            labelled=None,
            clock=clock,
        )
    print_flags(result.flags)
    clock(f"flags in {out / 'flags.parquet'} and {out / 'flags.csv'}; MLflow run {run_id}")
    return 0


def _train(
    bundle_path: str,
    cfg: ExperimentConfig,
    out: Path,
    *,
    quarantine: bool,
    register: bool,
    promote: bool,
    clock: Clock,
) -> tuple[Any, str, str]:
    """Train at the bundle's end, log and register the model, flag the latest schedules."""
    import mlflow

    from pipelines.bundle import bundle_fingerprint
    from pipelines.flag import labelled_panel, train_model
    from pipelines.tracking import log_bundle_input, log_model, mlflow_run

    bundle = read_for_cli(bundle_path, quarantine=quarantine, clock=clock)
    tables = bundle_tables(bundle)
    with mlflow_run(f"train {Path(bundle_path).name}", cfg, kind="train") as run_id:
        log_bundle_input(Path(bundle_path), tables, bundle_fingerprint(bundle_path))
        labelled = labelled_panel(tables, cfg)
        clock(f"features and labels: {len(labelled):,} panel rows")
        cutoff = pd.Timestamp(labelled["t"].max())
        model = train_model(labelled, cfg, cutoff=cutoff)
        clock(f"trained both sides at {cutoff:%Y-%m-%d %H:%M} on horizons {model.horizons_}")
        mlflow.log_metrics({k: v for k, v in model.metrics_.items() if np.isfinite(v)})
        result = _judge_and_log(
            tables,
            cfg,
            out,
            as_of="latest",
            model=model,
            model_version=f"runs:/{run_id}/model",
            labelled=labelled,
            clock=clock,
        )
        if result.inputs is None or result.inputs.empty:
            raise FairmarginInputError("train: no tier could be judged; nothing to log")

        def challenge(champion_uri: str) -> tuple[bool, dict[str, float]]:
            # the champion's config and this one, trained at the same cutoff and backtested
            # on the same window of this bundle
            from pipelines.tracking import load_registered
            from pipelines.tune import backtest_configs, challenger_wins

            _, champion_cfg = load_registered(champion_uri)
            res = backtest_configs(
                labelled,
                {"challenger": cfg, "champion": champion_cfg},
                test_days=cfg.champion.test_days,
            )
            clock(
                "champion/challenger: "
                + "; ".join(
                    f"{k} margin {v['average_margin']:.4f} exceptions {v['exception_rate']:.2%}"
                    for k, v in res.items()
                )
            )
            metrics = {f"{k}_{m}": v for k, r in res.items() for m, v in r.items()}
            return challenger_wins(res["challenger"], res["champion"]), metrics

        uri, _version = log_model(
            model, cfg, result.inputs, register=register, promote=promote, challenge=challenge
        )
        clock(f"logged model {uri}")
    return result, run_id, uri


def cmd_train(args: argparse.Namespace) -> int:
    clock = Clock()
    cfg = config_from_args(args)
    result, run_id, uri = _train(
        args.bundle,
        cfg,
        Path(args.out),
        quarantine=args.quarantine,
        register=not args.no_register,
        promote=args.promote,
        clock=clock,
    )
    print_flags(result.flags)
    clock(f"model {uri}; MLflow run {run_id}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.bundle import write_bundle
    from pipelines.simulator import SimConfig, simulate_market
    from pipelines.tracking import configure_tracking

    clock = Clock()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fairmargin-demo-"))
    bundle_path = root / "bundle"
    tables = simulate_market(SimConfig(seed=args.seed, days=args.days))
    write_bundle(tables, bundle_path, overwrite=True)
    clock(
        f"simulated {args.days} days of {tables['contracts']['venue'].nunique()} venues "
        f"into {bundle_path}"
    )
    cfg = config_from_args(args)
    result, run_id, uri = _train(
        str(bundle_path),
        cfg,
        root / "flags",
        quarantine=False,
        register=True,
        promote=False,
        clock=clock,
    )
    print_flags(result.flags)
    tracking = configure_tracking()
    print(f"\nflags: {root / 'flags' / 'flags.csv'}")
    print(f"MLflow run {run_id} in {tracking}; model {uri}")
    if tracking.startswith("sqlite:///"):
        print(f"see it with: mlflow ui --backend-store-uri {tracking}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairmargin",
        description="Benchmark published initial margin against fair margin.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated market bundle with its truth")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("validate", help="check a bundle against the data contract")
    p.add_argument("bundle")
    p.add_argument("--quarantine", action="store_true", help="set bad rows aside and go on")
    p.add_argument("--out", help="where quarantine.parquet goes (default: the bundle)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("flag", help="flag under- and over-margined tiers of a bundle")
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="folder for flags.parquet and flags.csv")
    p.add_argument("--as-of", default="latest", help="'latest' (default), 'all', or a UTC time")
    p.add_argument("--model", help="MLflow model URI; default: fit on the bundle's own history")
    p.add_argument("--quarantine", action="store_true", help="set bad rows aside and go on")
    add_model_options(p)
    p.set_defaults(func=cmd_flag)

    p = sub.add_parser("train", help="train, log and register the fair-margin model")
    p.add_argument("experiment", help="experiment TOML")
    p.add_argument("bundle")
    p.add_argument("--out", default="fairmargin-train", help="folder for the flags it makes")
    p.add_argument("--quarantine", action="store_true")
    p.add_argument("--no-register", action="store_true", help="log the model without registering")
    p.add_argument("--promote", action="store_true", help="make this version the champion")
    for flag, help_ in (
        ("--coverage", "q"),
        ("--base-latency", "minutes"),
        ("--participation", "share"),
        ("--materiality", "threshold"),
    ):
        p.add_argument(flag, type=float, help=help_)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="simulate, train, flag and track, on the embedded default")
    p.add_argument("--out", help="folder for the bundle and flags (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=90)
    add_model_options(p)
    p.set_defaults(func=cmd_demo)

    # further commands live in their own modules, each with register(subparsers)
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # MLflow logs database set-up and registry chatter at INFO: keep the terminal for our lines
    logging.getLogger("mlflow").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except FairmarginError as exc:
        if args.debug:
            raise
        print(f"fairmargin {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
