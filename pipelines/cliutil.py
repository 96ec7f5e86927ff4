"""Shared pieces of the command line: progress lines, config from flags, bundle reading,
atomic table output and the flags printout. Command modules register their sub-commands with
``register(subparsers)`` and use these."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from features._checks import FairmarginInputError
from pipelines.config import (
    ExperimentConfig,
    default_experiment_path,
    load_experiment,
    with_overrides,
)

__all__ = [
    "TABLE_NAMES",
    "Clock",
    "add_model_options",
    "bundle_tables",
    "config_from_args",
    "parse_as_of",
    "print_flags",
    "read_for_cli",
    "write_tables_atomic",
]

TABLE_NAMES = (
    "contracts",
    "margin_tiers",
    "ohlcv",
    "order_books",
    "option_quotes",
    "funding_rates",
    "truth",
)


class Clock:
    """Per-step progress lines with timings, on stderr."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {msg}", file=sys.stderr, flush=True)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    path = getattr(args, "experiment", None) or default_experiment_path()
    cfg = load_experiment(path)
    return with_overrides(
        cfg,
        coverage=getattr(args, "coverage", None),
        base_latency_minutes=getattr(args, "base_latency", None),
        participation=getattr(args, "participation", None),
        materiality=getattr(args, "materiality", None),
    )


def parse_as_of(text: str) -> str | pd.Timestamp:
    if text in ("latest", "all"):
        return text
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise FairmarginInputError(
            f"--as-of must be 'latest', 'all' or a UTC time, got {text!r}"
        ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def print_flags(flags: pd.DataFrame, *, limit: int = 40) -> None:
    counts = flags["status"].value_counts().to_dict()
    print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    flagged = flags[flags["status"].isin(["under_margined", "over_margined"])]
    if flagged.empty:
        print("no tier is materially under- or over-margined")
        return
    flagged = flagged.sort_values("score", ascending=False).head(limit)
    view = pd.DataFrame(
        {
            "venue": flagged["venue"],
            "symbol": flagged["symbol"],
            "tier": flagged["tier"],
            "notional": flagged["evaluated_notional"].map(lambda v: f"{v:,.0f}"),
            "published": flagged["published_initial_margin_rate"].map(lambda v: f"{v:.2%}"),
            "fair": flagged["fair_initial_margin_rate"].map(lambda v: f"{v:.2%}"),
            "interval": [
                f"[{lo:.2%}, {hi:.2%}]"
                for lo, hi in zip(flagged["fair_lower"], flagged["fair_upper"], strict=True)
            ],
            "deviation": flagged["deviation"].map(lambda v: f"{v:+.0%}"),
            "status": flagged["status"],
            "score": flagged["score"].map(lambda v: f"{v:.1f}"),
            "H_min": flagged["horizon_minutes"].map(lambda v: f"{v:,.0f}"),
            "implied_H_min": [
                f"{h:,.0f}{'<' if c == 'below' else '>' if c == 'above' else ''}"
                for h, c in zip(
                    flagged["implied_horizon_minutes"],
                    flagged["implied_horizon_censored"],
                    strict=True,
                )
            ],
        }
    )
    print(view.to_string(index=False))


def write_tables_atomic(frame: pd.DataFrame, out: Path, stem: str) -> list[Path]:
    """Write ``out/<stem>.parquet`` and ``.csv`` so that a failure leaves neither half-written."""
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / f"{stem}.parquet", out / f"{stem}.csv"]
    tmps = [t.with_name(f".{t.name}.tmp") for t in targets]
    try:
        frame.to_parquet(tmps[0], index=False)
        frame.to_csv(tmps[1], index=False)
        for tmp, target in zip(tmps, targets, strict=True):
            tmp.replace(target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return targets


def load_model_for(uri: str, cfg: ExperimentConfig) -> Any:
    """The registered model at ``uri`` (``FairMarginModel``), refused when it was trained at
    another coverage than ``cfg`` asks for."""
    import numpy as np

    from pipelines.tracking import load_registered

    model, _trained = load_registered(uri)
    if not np.isclose(model.coverage, cfg.coverage):
        raise FairmarginInputError(
            f"--model {uri} was trained at coverage {model.coverage}, asked for {cfg.coverage}"
        )
    return model


def read_for_cli(path: str, *, quarantine: bool, clock: Clock) -> Any:
    from pipelines.bundle import read_bundle

    bundle = read_bundle(path, quarantine=quarantine)
    if len(bundle.quarantine):
        clock(f"quarantined {len(bundle.quarantine):,} bad rows (reasons in quarantine.parquet)")
    return bundle


def bundle_tables(bundle: Any) -> dict[str, pd.DataFrame | None]:
    names = (
        "contracts",
        "margin_tiers",
        "ohlcv",
        "order_books",
        "option_quotes",
        "funding_rates",
        "truth",
    )
    return {name: bundle.table(name) for name in names}


def add_model_options(p: argparse.ArgumentParser, *, experiment: bool = True) -> None:
    """--experiment and the METHOD.md keys that every judging command takes."""
    if experiment:
        p.add_argument("--experiment", help="experiment TOML (default: experiments/default.toml)")
    p.add_argument("--coverage", type=float, help="q, the share of adverse moves covered")
    p.add_argument("--base-latency", type=float, help="minutes before liquidation starts")
    p.add_argument(
        "--participation", type=float, help="share of traded volume a liquidation takes"
    )
    p.add_argument("--materiality", type=float, help="|published / fair - 1| needed to flag")
