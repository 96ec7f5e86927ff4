"""Query latency: single in-process queries (p50, p99), a batch of 10,000 positions, and REST
through ``mlflow models serve``, in one run.

Usage: python benchmarks/query.py [--days 30] [--seed 7] [--queries 2000] [--rest 200]
       [--experiment FILE] [--workdir DIR]

It simulates a bundle, trains and registers a model with the experiment (default
``experiments/default.toml``; e.g. one with ``[model] n_seeds = 3``) in a private SQLite store
under the work folder, loads ``FairMargin`` from the registry's champion, times single queries
over random (venue, symbol, notional, side) after one warm-up per state, times a vectorised batch
of 10,000 positions, then serves the champion on 127.0.0.1 and times POST /invocations of one
feature row over one kept-alive connection, as a client that keeps its connection does. The REST
rows are the logged input example's market states with a random notional each (positions on
states the server has seen: the served model caches a state's grid and drivers, as the
in-process API does), sent as ``{"inputs": {column: [value]}}`` (columnar JSON, which MLflow
turns into a frame without casting it column by column); each request body is prepared before it
is timed. Also printed (stderr): the same rows as ``{"dataframe_split": ...}``, and "cold"
requests whose market state is new every time, in both formats. Last line:
``p50_ms=A p99_ms=B batch10k_s=C rest_p50_ms=D`` (D: ``inputs``, states seen before).
Targets: p50 < 2 ms, batch < 1 s, REST p50 < 25 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

# Run as a script, this folder comes first on sys.path, where benchmarks/features.py would
# shadow the features package: drop it (the project is installed, or run from the repo root).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(example: pd.DataFrame, n: int, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Request bodies of one row each, as ``dataframe_split`` and as ``inputs``: warm (the
    example's states, a random notional) and cold (a state not sent before each time: sigma_ann
    nudged, differently in the two formats)."""
    rows = example.iloc[rng.integers(len(example), size=n)].reset_index(drop=True)
    rows["notional"] = 10 ** rng.uniform(4, 7, size=n)
    nudge = 1.0 + 1e-6 * np.arange(1, 2 * n + 1)
    frames = {
        "warm": (rows, rows),
        "cold": tuple(rows.assign(sigma_ann=rows["sigma_ann"] * nudge[i::2]) for i in (0, 1)),
    }
    out: dict[str, list[bytes]] = {}
    for name, (for_split, for_inputs) in frames.items():
        split, inputs = [], []
        for k in range(n):
            part = json.loads(
                for_split.iloc[[k]].to_json(orient="split", index=False, double_precision=15)
            )
            split.append(json.dumps({"dataframe_split": part}).encode())
            part = json.loads(
                for_inputs.iloc[[k]].to_json(orient="split", index=False, double_precision=15)
            )
            cols = {c: [v] for c, v in zip(part["columns"], part["data"][0], strict=True)}
            inputs.append(json.dumps({"inputs": cols}).encode())
        out[f"dataframe_split {name}"] = split
        out[f"inputs {name}"] = inputs
    return out


def _rest(uri: str, example: pd.DataFrame, n: int, log_path: Path) -> dict[str, list[float]]:
    """Seconds per POST /invocations for each kind of body (see ``_bodies``)."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mlflow_bin = shutil.which("mlflow", path=env["PATH"]) or "mlflow"
    bodies = _bodies(example, n + 5, np.random.default_rng(1))
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not answer within 120 s") from None
                    time.sleep(0.5)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/json"}
            times: dict[str, list[float]] = {}
            for kind, items in bodies.items():
                times[kind] = []
                for k, body in enumerate(items):
                    t0 = time.perf_counter()
                    conn.request("POST", "/invocations", body=body, headers=headers)
                    r = conn.getresponse()
                    answer = r.read()
                    if k >= 5:  # warm-up
                        times[kind].append(time.perf_counter() - t0)
                    if r.status != 200:
                        raise SystemExit(f"{kind}: HTTP {r.status}: {answer[:300]!r}")
            conn.close()
            return times
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rest", type=int, default=200)
    ap.add_argument("--experiment", help="experiment TOML (default: experiments/default.toml)")
    ap.add_argument("--workdir", help="keep the bundle, store and logs here")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fairmargin-query-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

    import mlflow

    from pipelines.api import FairMargin
    from pipelines.bundle import write_bundle
    from pipelines.cli import main as cli
    from pipelines.simulator import SimConfig, simulate_market

    t0 = time.perf_counter()
    bundle = work / "bundle"
    write_bundle(
        simulate_market(SimConfig(seed=args.seed, days=args.days)), bundle, overwrite=True
    )
    from pipelines.config import default_experiment_path

    experiment = args.experiment or str(default_experiment_path())
    rc = cli(["train", experiment, str(bundle), "--out", str(work / "train")])
    if rc != 0:
        raise SystemExit(f"train failed ({rc})")
    print(f"bundle and model in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    uri = "models:/fair-margin@champion"
    t0 = time.perf_counter()
    fm = FairMargin.load(uri, bundle=bundle)
    print(f"FairMargin.load in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    flags = pd.read_parquet(work / "train" / "flags.parquet")
    keys = flags[["venue", "symbol"]].drop_duplicates().to_numpy()
    rng = np.random.default_rng(0)
    for v, s in keys:  # one warm-up per state: its grid and contributions are cached
        fm.estimate(venue=str(v), symbol=str(s), notional=1e6)
    times = []
    for _ in range(args.queries):
        v, s = keys[rng.integers(len(keys))]
        n = float(10 ** rng.uniform(3, 8))
        side = ("both", "long", "short")[int(rng.integers(3))]
        t1 = time.perf_counter()
        fm.estimate(venue=str(v), symbol=str(s), notional=n, side=side)
        times.append(time.perf_counter() - t1)
    p50, p99 = np.median(times) * 1e3, np.percentile(times, 99) * 1e3
    pick = rng.integers(len(keys), size=10_000)
    batch = pd.DataFrame(
        {
            "venue": keys[pick, 0],
            "symbol": keys[pick, 1],
            "notional": 10 ** rng.uniform(3, 8, size=10_000),
            "side": rng.choice(["both", "long", "short"], size=10_000),
        }
    )
    t1 = time.perf_counter()
    answers = fm.estimate_many(batch)
    batch_s = time.perf_counter() - t1
    assert len(answers) == 10_000

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    local = Path(mlflow.artifacts.download_artifacts(uri))
    example = pd.DataFrame(mlflow.models.Model.load(str(local)).load_input_example(str(local)))
    rest = _rest(uri, example, args.rest, work / "server.log")
    for kind, ts in rest.items():
        print(
            f"REST {kind}: p50 {np.median(ts) * 1e3:.2f} ms, p99 {np.percentile(ts, 99) * 1e3:.2f}"
            " ms",
            file=sys.stderr,
        )
    rest_p50 = float(np.median(rest["inputs warm"]) * 1e3)
    print(f"work folder {work}", file=sys.stderr)
    print(f"p50_ms={p50:.3f} p99_ms={p99:.3f} batch10k_s={batch_s:.3f} rest_p50_ms={rest_p50:.2f}")


if __name__ == "__main__":
    main()
