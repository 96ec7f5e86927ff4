"""``fairmargin benchmark``: the cross-venue margin benchmark of a bundle (pipelines.benchmark)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.benchmark import (
    BenchmarkConfig,
    BenchmarkResult,
    benchmark,
    parse_position,
)
from pipelines.cliutil import (
    Clock,
    add_model_options,
    bundle_tables,
    config_from_args,
    load_model_for,
    parse_as_of,
    read_for_cli,
    write_tables_atomic,
)

__all__ = ["format_positions", "format_ranking", "register", "write_and_log"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "benchmark", help="compare published margin across venues: fair, peers, positions"
    )
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="folder for benchmark.parquet/.csv and ranking")
    p.add_argument(
        "--underlying", action="append", default=[], help="underlying to keep (repeatable)"
    )
    p.add_argument(
        "--position",
        action="append",
        default=[],
        help="NOTIONAL[:long|short|both] in the quote currency, e.g. 1000000:long (repeatable)",
    )
    p.add_argument(
        "--as-of", default="latest", help="'latest' (default), 'all' or a UTC comparison time"
    )
    p.add_argument("--model", help="MLflow model URI; default: fit on the bundle's own history")
    p.add_argument("--quarantine", action="store_true", help="set bad rows aside and go on")
    add_model_options(p)
    p.set_defaults(func=cmd_benchmark)


def format_ranking(ranking: pd.DataFrame) -> str:
    """The venue ranking as a short text table."""
    view = ranking.assign(
        as_of=ranking["as_of"].dt.strftime("%Y-%m-%d %H:%M"),
        vs_fair=[
            f"{np.expm1(v):+.0%}" if np.isfinite(v) else "-" for v in ranking["mean_log_deviation"]
        ],
        vs_peers=[
            f"{np.expm1(v):+.0%}" if np.isfinite(v) else "-"
            for v in ranking["mean_peer_log_residual"]
        ],
        rank=ranking["rank"].astype(str).replace("<NA>", "-"),
    )
    cols = ["underlying", "as_of", "venue", "rank", "vs_fair", "vs_peers", "basis", "note"]
    return view[cols].to_string(index=False)


def format_positions(positions: pd.DataFrame) -> str:
    """The position view as a table a trader reads in seconds."""
    if positions.empty:
        return ""

    def money(v: float) -> str:
        return f"{v:,.0f}" if np.isfinite(v) else "-"

    view = pd.DataFrame(
        {
            "position": [
                f"{n:,.0f} {s}"
                for n, s in zip(positions["notional"], positions["side"], strict=True)
            ],
            "underlying": positions["underlying"],
            "venue": positions["venue"],
            "symbol": positions["symbol"],
            "IM": positions["initial_margin"].map(money),
            "IM_rate": positions["published_initial_margin_rate"].map(
                lambda v: f"{v:.2%}" if np.isfinite(v) else "-"
            ),
            "fair": positions["fair_margin"].map(money),
            "excess_capital": positions["capital_difference"].map(
                lambda v: f"{v:+,.0f}" if np.isfinite(v) else "-"
            ),
            "note": positions["note"],
        }
    )
    return view.to_string(index=False)


def write_and_log(result: BenchmarkResult, out: Path) -> list[Path]:
    """Write the outputs into ``out`` and log them (and metrics) to the active MLflow run."""
    import mlflow

    paths = write_tables_atomic(result.frame, out, "benchmark")
    out.mkdir(parents=True, exist_ok=True)
    ranking = out / "venue_ranking.csv"
    result.ranking.to_csv(ranking, index=False)
    paths.append(ranking)
    if len(result.positions):
        pos = out / "positions.csv"
        result.positions.to_csv(pos, index=False)
        paths.append(pos)
    try:
        from pipelines.benchmark_report import benchmark_section

        html, pngs = benchmark_section(result, out / "report")
        page = out / "report" / "benchmark.html"
        page.write_text(f"<!doctype html><meta charset='utf-8'><body>{html}</body>")
        paths += [page, *pngs]
    except ImportError:  # matplotlib missing: tables only
        pass
    for path in paths:
        sub = "benchmark/report" if path.parent.name == "report" else "benchmark"
        mlflow.log_artifact(str(path), artifact_path=sub)
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    return paths


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pipelines.bundle import bundle_fingerprint
    from pipelines.tracking import log_bundle_input, mlflow_run

    clock = Clock()
    cfg = config_from_args(args)
    as_of = parse_as_of(args.as_of)
    bcfg = BenchmarkConfig(
        underlyings=tuple(u.upper() for u in args.underlying),
        as_of=(as_of,) if isinstance(as_of, pd.Timestamp) else as_of,  # type: ignore[arg-type]
        positions=tuple(parse_position(p) for p in args.position),
    )
    model = None
    version = ""
    if args.model:
        model = load_model_for(args.model, cfg)
        version = args.model
    bundle = read_for_cli(args.bundle, quarantine=args.quarantine, clock=clock)
    tables = bundle_tables(bundle)
    out = Path(args.out)
    with mlflow_run(f"benchmark {Path(args.bundle).name}", cfg, kind="benchmark") as run_id:
        log_bundle_input(Path(args.bundle), tables, bundle_fingerprint(args.bundle))
        result = benchmark(tables, cfg, bcfg, model=model, model_version=version, progress=clock)
        write_and_log(result, out)
    if "ranking_spearman_mean" in result.metrics:  # the bundle carries a simulator's truth
        m = result.metrics
        clock(
            f"against truth: ranking_spearman_mean={m['ranking_spearman_mean']:.3f} "
            f"implied_horizon_within_25pct={m.get('implied_horizon_within_25pct', np.nan):.3f} "
            f"implied_horizon_median_rel_error="
            f"{m.get('implied_horizon_median_rel_error', np.nan):.3f} "
            f"(n={m.get('implied_horizon_n', 0):.0f})"
        )
    print(format_ranking(result.ranking))
    if len(result.positions):
        print()
        print(format_positions(result.positions))
    clock(f"benchmark in {out / 'benchmark.parquet'}; MLflow run {run_id}")
    return 0
