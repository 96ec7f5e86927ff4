"""Detection benchmark: flags on simulated bundles scored against their truth.

Usage: python benchmarks/detection.py [--seeds 7 11] [--days 90] [--bundle DIR ...]

For each simulated seed (and each given bundle that holds a ``truth`` table) it fits on the
bundle's own history, flags the latest schedules, scores them (recall of planted tiers with the
right direction, precision, false flags on in-line tiers, median |fair / true fair - 1|, share of
true fair inside the interval), logs the scores to MLflow and prints them. The last line pools all
bundles:
``recall=R precision=P inline_false_flag_rate=F median_abs_rel_error=E interval_coverage=C``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/features.py would shadow
# the `features` package: drop the folder before importing the project.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from models.detection import detection_scores  # noqa: E402
from pipelines.bundle import read_bundle, write_bundle  # noqa: E402
from pipelines.config import default_experiment_path, load_experiment  # noqa: E402
from pipelines.flag import flag_tiers  # noqa: E402
from pipelines.simulator import SimConfig, simulate_market  # noqa: E402
from pipelines.tracking import mlflow_run  # noqa: E402

KEYS = (
    "recall",
    "precision",
    "inline_false_flag_rate",
    "median_abs_rel_error",
    "interval_coverage",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[7, 11])
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--bundle", nargs="*", default=[], help="extra bundles with a truth table")
    args = ap.parse_args(argv)
    cfg = load_experiment(default_experiment_path())
    sources: list[tuple[str, Path]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fairmargin-detection-"))
    for seed in args.seeds:
        t0 = time.perf_counter()
        path = write_bundle(
            simulate_market(SimConfig(seed=seed, days=args.days)), tmp / f"seed{seed}"
        )
        print(f"simulated seed {seed} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        sources.append((f"sim-seed{seed}", path))
    sources += [(Path(b).name, Path(b)) for b in args.bundle]

    all_flags = []
    with mlflow_run("detection benchmark", cfg, kind="benchmark"):
        for name, path in sources:
            t0 = time.perf_counter()
            bundle = read_bundle(path)
            if bundle.truth is None:
                print(f"{name}: no truth table, skipped", file=sys.stderr)
                continue
            tables = {
                n: bundle.table(n)
                for n in (
                    "contracts",
                    "margin_tiers",
                    "ohlcv",
                    "order_books",
                    "option_quotes",
                    "funding_rates",
                )
            }
            result = flag_tiers(tables, cfg)
            scores = detection_scores(result.flags, bundle.truth)
            mlflow.log_metrics({f"{name}.{k}": v for k, v in scores.items()})
            all_flags.append((result.flags, bundle.truth))
            print(
                f"{name}: "
                + " ".join(f"{k}={scores[k]:.3f}" for k in KEYS)
                + f" tiers={scores['n_tiers']:.0f} planted={scores['n_planted']:.0f}"
                + f" ({time.perf_counter() - t0:.0f} s)"
            )
        flags = pd.concat([f.assign(_src=i) for i, (f, _) in enumerate(all_flags)])
        truth = pd.concat([t.assign(_src=i) for i, (_, t) in enumerate(all_flags)])
        # pooled: the bundle index keeps tiers of different bundles apart
        flags["venue"] = flags["venue"] + "#" + flags["_src"].astype(str)
        truth["venue"] = truth["venue"] + "#" + truth["_src"].astype(str)
        pooled = detection_scores(flags, truth)
        mlflow.log_metrics({f"pooled.{k}": v for k, v in pooled.items()})
    print(" ".join(f"{k}={pooled[k]:.4f}" for k in KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
