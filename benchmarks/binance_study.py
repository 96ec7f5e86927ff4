"""Binance USD-M study: published brackets vs walk-forward fair margin, 2023-01 to 2024-05.

Usage::

    OMP_WAIT_POLICY=passive python benchmarks/binance_study.py /work/shared/data [--out DIR]

1. A bundle from the real files under DATA (read where they lie): the Binance perp candles
   (15m and 1h), 8-hourly funding and the history of leverage brackets of BTC, ETH, LTC, SUI and
   1000PEPE (``BTC/USDT:USDT`` ...), through :func:`pipelines.ingest.ingest` (the 2022-04-16
   snapshot, whose bounds are empty, goes to the quarantine with its reason).
2. Fair margin for every bracket at each bracket snapshot published from 2023-01 to 2024-05 with
   ``flag_tiers(tables, cfg, as_of="all")``: walk-forward, each model trained only on data before
   its as_of, retrained every ``walk_forward.retrain_every_days`` and reused in between. The
   labelled panel is built once and passed in. Snapshots after the candles end are
   ``insufficient_data`` and printed as unpriced.
3. Per symbol and tier: published rate, fair rate, interval, status and implied horizon at the
   latest priced snapshot, and a compact history over all snapshots.
4. Backtests, side by side on the same windows: the published initial margin of each tier (as
   in force at each decision time) and the fair quantile of the walk-forward model in force at
   that time (the model trained at the latest cutoff at or before it), each against the realised
   adverse move of each side at the grid horizon nearest the tier's liquidation horizon
   (``models.backtest.backtest``; non-overlapping observations). The fair series is the
   price-risk quantile (the liquidation cost, a separate term of fair, is not part of the
   realised move).
5. Everything goes to one MLflow run (params, metrics, flags, printed tables, backtests).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/features.py would shadow
# the `features` package: drop the folder before importing the project.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.backtest import backtest  # noqa: E402
from models.labels import SIDES  # noqa: E402
from pipelines.bundle import write_bundle, write_quarantine  # noqa: E402
from pipelines.config import (  # noqa: E402
    ExperimentConfig,
    default_experiment_path,
    load_experiment,
    with_overrides,
)
from pipelines.flag import flag_tiers, labelled_panel, train_model  # noqa: E402
from pipelines.ingest import format_summary, ingest  # noqa: E402

SYMBOLS = ("BTC", "ETH", "LTC", "SUI", "1000PEPE")
PERPS = "returns/binance_usdm_perps_freqtrade_cyft"
BRACKETS = "margin_schedules/binance_usdm_freqtrade/binance_usdm_leverage_brackets_history.csv.gz"
START = pd.Timestamp("2023-01-01", tz="UTC")
END = pd.Timestamp("2024-06-01", tz="UTC")  # snapshots published before this

log = logging.getLogger("binance_study")


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def study_config(args: argparse.Namespace) -> ExperimentConfig:
    """METHOD.md defaults with a label grid and sampling suited to 15-minute bars."""
    cfg = load_experiment(default_experiment_path())
    cfg = with_overrides(
        cfg,
        **{
            "data.horizons_minutes": (15, 60, 240, 1440, 4320),
            "data.sample_every_minutes": args.sample_every,
            "data.min_history_days": 10.0,
            "model.n_estimators": args.trees,
            "model.min_child_samples": 100,
            "walk_forward.retrain_every_days": args.retrain_days,
        },
    )
    return replace(cfg, name="binance-usdm-study")


def source_files(data: Path) -> list[Path]:
    files = []
    for s in SYMBOLS:
        for kind in ("15m-futures", "1h-futures", "8h-funding_rate"):
            files.append(data / PERPS / f"{s}_USDT_USDT-{kind}.parquet")
    files.append(data / BRACKETS)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"binance_study: data files must exist, missing {missing[:3]}")
    return files


def study_tables(result_tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The five perps only; schedules published in [START, END)."""
    symbols = {f"{s}/USDT:USDT" for s in SYMBOLS}
    out = {}
    for name, df in result_tables.items():
        out[name] = df[df["symbol"].isin(symbols)].reset_index(drop=True)
    mt = out["margin_tiers"]
    out["margin_tiers"] = mt[(mt["as_of"] >= START) & (mt["as_of"] < END)].reset_index(drop=True)
    return out


def pct(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.2%}"


def latest_table(flags: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: its latest priced snapshot, one line per tier."""
    priced = flags[flags["status"] != "insufficient_data"]
    last = priced.groupby("symbol")["as_of"].transform("max")
    view = priced[priced["as_of"] == last].sort_values(["symbol", "tier"])
    return pd.DataFrame(
        {
            "symbol": view["symbol"],
            "as_of": view["as_of"].dt.strftime("%Y-%m-%d"),
            "tier": view["tier"],
            "notional": view["evaluated_notional"].map(lambda v: f"{v:,.0f}"),
            "published": view["published_initial_margin_rate"].map(pct),
            "fair": view["fair_initial_margin_rate"].map(pct),
            "interval": [
                f"[{pct(lo)}, {pct(hi)}]"
                for lo, hi in zip(view["fair_lower"], view["fair_upper"], strict=True)
            ],
            "deviation": view["deviation"].map(lambda v: f"{v:+.0%}"),
            "status": view["status"],
            "H_min": view["horizon_minutes"].map(lambda v: f"{v:,.0f}"),
            "implied_H_min": [
                "-"
                if not np.isfinite(h)
                else f"{h:,.0f}{'<' if c == 'below' else '>' if c == 'above' else ''}"
                for h, c in zip(
                    view["implied_horizon_minutes"], view["implied_horizon_censored"], strict=True
                )
            ],
            "cost": view["liquidation_cost"].map(pct),
        }
    )


def history_table(flags: pd.DataFrame) -> pd.DataFrame:
    """Per symbol and tier over all snapshots: counts by status and the deviation's range."""
    f = flags.copy()
    f["priced"] = f["status"] != "insufficient_data"
    g = f.groupby(["symbol", "tier"])
    out = pd.DataFrame(
        {
            "snapshots": g.size(),
            "priced": g["priced"].sum(),
            "under": g["status"].agg(lambda s: int((s == "under_margined").sum())),
            "over": g["status"].agg(lambda s: int((s == "over_margined").sum())),
            "in_line": g["status"].agg(lambda s: int((s == "in_line").sum())),
            "published_range": g["published_initial_margin_rate"].agg(
                lambda s: f"{s.min():.2%}-{s.max():.2%}"
            ),
            "median_fair": g["fair_initial_margin_rate"].median().map(pct),
            "median_dev": g["deviation"]
            .median()
            .map(lambda v: "-" if not np.isfinite(v) else f"{v:+.0%}"),
            "median_implied_H": g["implied_horizon_minutes"]
            .median()
            .map(lambda v: "-" if not np.isfinite(v) else f"{v:,.0f}"),
        }
    )
    return out.reset_index()


def fair_series(
    labelled: pd.DataFrame, models: dict[pd.Timestamp, object], *, every_minutes: int
) -> pd.DataFrame:
    """Walk-forward quantile grid at each decision time on an ``every_minutes`` grid from the
    first model's cutoff: the model in force is the one trained at the latest cutoff <= t."""
    cuts = sorted(models)
    t = labelled["t"]
    on_grid = (t.dt.hour * 60 + t.dt.minute) % every_minutes == 0
    rows = labelled[on_grid & (t >= cuts[0]) & (labelled["sigma_bar"] > 0)]
    parts = []
    for i, cut in enumerate(cuts):
        nxt = cuts[i + 1] if i + 1 < len(cuts) else pd.Timestamp.max.tz_localize("UTC")
        chunk = rows[(rows["t"] >= cut) & (rows["t"] < nxt)]
        if chunk.empty:
            continue
        model = models[cut]
        grid = model.quantile_grid(chunk)  # type: ignore[attr-defined]
        frame = chunk[["symbol", "t"]].copy()
        for side in SIDES:
            for j, h in enumerate(grid.horizons):
                frame[f"q_{side}_{int(h)}"] = grid.quantile[side][:, j]
        frame["cutoff"] = cut
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True)
    keep = ["symbol", "t", "sigma_bar"] + [
        str(c) for c in labelled.columns if str(c).startswith("y_")
    ]
    return out.merge(labelled[keep], on=["symbol", "t"], how="left")


def monthly_models(
    labelled: pd.DataFrame,
    cfg: ExperimentConfig,
    models: dict[pd.Timestamp, object],
    *,
    clock: Clock,
) -> dict[pd.Timestamp, object]:
    """The snapshot models of ``flag_tiers`` plus models trained wherever the gap to the next
    cutoff (or to the end of the labels) exceeds ``retrain_every_days``, so that the backtested
    fair series is never served by a model older than that (retrain at least monthly)."""
    every = pd.Timedelta(days=cfg.walk_forward.retrain_every_days)
    end = pd.Timestamp(labelled["t"].max())
    out = dict(models)
    cut = min(out)
    while cut < end:
        later = [c for c in out if c > cut]
        nxt = min(later) if later else end
        if nxt - cut > every:
            new = cut + every
            out[new] = train_model(labelled, cfg, cutoff=new)
            clock(f"backtest model trained at {new:%Y-%m-%d %H:%M} (gap to next cutoff)")
            cut = new
        else:
            cut = nxt
    return out


def nearest_grid(h: float, grid: list[int]) -> int:
    return min(grid, key=lambda g: abs(math.log(g) - math.log(max(h, 1e-9))))


def backtests(
    flags: pd.DataFrame,
    tiers: pd.DataFrame,
    series: pd.DataFrame,
    *,
    coverage: float,
    every_minutes: int,
    grid: list[int],
) -> pd.DataFrame:
    """Published vs fair, per symbol, tier and side, on the same decision times."""
    rows = []
    priced = flags[flags["status"] != "insufficient_data"]
    for sym, s in series.groupby("symbol"):
        s = s.sort_values("t").set_index("t")
        sched = tiers[tiers["symbol"] == sym]
        fs = priced[priced["symbol"] == sym]
        if fs.empty:
            continue
        latest = fs[fs["as_of"] == fs["as_of"].max()]
        for _, tier_row in latest.iterrows():
            tier = int(tier_row["tier"])
            h = nearest_grid(float(tier_row["horizon_minutes"]), grid)
            if f"q_long_{h}" not in s:
                continue
            pub = (
                sched[sched["tier"] == tier]
                .assign(rate=lambda d: d["initial_margin_rate"].fillna(1.0 / d["max_leverage"]))
                .set_index("as_of")["rate"]
                .sort_index()
            )
            pub_t = pub.reindex(s.index.union(pub.index)).ffill().reindex(s.index)
            step = max(1, h // every_minutes)
            for side in SIDES:
                realised = s[f"y_{side}_{h}"]
                rec = {"symbol": sym, "tier": tier, "side": side, "h_min": h, "step": step}
                for name, fc in (("published", pub_t), ("fair", s[f"q_{side}_{h}"])):
                    ok = fc.notna() & (fc > 0)
                    try:
                        rep = backtest(
                            fc[ok],
                            realised[ok],
                            coverage=coverage,
                            step=step,
                            trailing_vol=s["sigma_bar"][ok],
                        )
                    except Exception as exc:  # report and go on: one tier must not stop the study
                        log.warning("backtest %s %s %s %s: %s", sym, tier, side, name, exc)
                        continue
                    rec.update(
                        {
                            f"{name}_avg": rep.average_margin,
                            f"{name}_obs": rep.observations,
                            f"{name}_exc": rep.exceptions,
                            f"{name}_cov": rep.coverage,
                            f"{name}_kupiec_p": rep.kupiec_p,
                            f"{name}_cc_p": rep.christoffersen_cc_p,
                            f"{name}_light": rep.traffic_light,
                            f"{name}_p2t": rep.peak_to_trough,
                        }
                    )
                rows.append(rec)
    return pd.DataFrame(rows)


def backtest_view(bt: pd.DataFrame) -> pd.DataFrame:
    def f(col: str, fmt: str) -> pd.Series:
        if col not in bt:
            return pd.Series("-", index=bt.index)
        return bt[col].map(lambda v: "-" if pd.isna(v) else format(v, fmt))

    return pd.DataFrame(
        {
            "symbol": bt["symbol"],
            "tier": bt["tier"],
            "side": bt["side"],
            "H": bt["h_min"],
            "obs": bt.get("fair_obs", pd.Series(np.nan, index=bt.index)).map(
                lambda v: "-" if pd.isna(v) else f"{int(v)}"
            ),
            "pub_avg": f("published_avg", ".2%"),
            "pub_exc": f("published_exc", ".0f"),
            "pub_cov": f("published_cov", ".3f"),
            "pub_kupiec": f("published_kupiec_p", ".3f"),
            "pub_light": bt.get("published_light", pd.Series("-", index=bt.index)),
            "|": "|",
            "fair_avg": f("fair_avg", ".2%"),
            "fair_exc": f("fair_exc", ".0f"),
            "fair_cov": f("fair_cov", ".3f"),
            "fair_kupiec": f("fair_kupiec_p", ".3f"),
            "fair_light": bt.get("fair_light", pd.Series("-", index=bt.index)),
            "fair_p2t": f("fair_p2t", ".1f"),
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the shared data folder (e.g. /work/shared/data)")
    ap.add_argument("--out", default="benchmarks/out/binance_study", help="output folder")
    ap.add_argument("--trees", type=int, default=150)
    ap.add_argument("--sample-every", type=int, default=60, help="training spacing, minutes")
    ap.add_argument("--retrain-days", type=float, default=30.0)
    ap.add_argument("--backtest-every", type=int, default=60, help="decision spacing, minutes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    clock = Clock()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    res = ingest(source_files(Path(args.data)), quarantine=True)
    tables = study_tables(res.tables)
    bundle = write_bundle(tables, out / "bundle", overwrite=True)
    write_quarantine(res.quarantine, out)
    timings["ingest_s"] = time.perf_counter() - t
    clock(
        f"ingested {res.summary['source'].nunique()} files: "
        + ", ".join(f"{k} {len(v):,}" for k, v in tables.items())
        + f"; {len(res.quarantine):,} source rows set aside (2022-04-16 empty bounds)"
    )

    cfg = study_config(args)
    t = time.perf_counter()
    labelled = labelled_panel(tables, cfg)
    timings["panel_s"] = time.perf_counter() - t
    clock(f"features and labels: {len(labelled):,} panel rows in {timings['panel_s']:.1f} s")

    t = time.perf_counter()
    result = flag_tiers(tables, cfg, as_of="all", labelled=labelled, progress=clock)
    timings["flag_all_s"] = time.perf_counter() - t
    flags = result.flags
    clock(
        f"flagged {len(flags):,} tiers at {flags['as_of'].nunique()} snapshots with "
        f"{len(result.models)} walk-forward models in {timings['flag_all_s']:.1f} s"
    )

    t = time.perf_counter()
    models = monthly_models(labelled, cfg, dict(result.models), clock=clock)
    timings["extra_models_s"] = time.perf_counter() - t
    t = time.perf_counter()
    grid = [int(h) for h in cfg.data.horizons_minutes]
    series = fair_series(labelled, models, every_minutes=args.backtest_every)
    bt = backtests(
        flags,
        tables["margin_tiers"],
        series,
        coverage=cfg.coverage,
        every_minutes=args.backtest_every,
        grid=grid,
    )
    timings["backtest_s"] = time.perf_counter() - t
    clock(f"backtests: {len(bt)} (symbol, tier, side) in {timings['backtest_s']:.1f} s")

    text = io.StringIO()

    def emit(s: str = "") -> None:
        print(s)
        text.write(s + "\n")

    emit("== sources ==")
    emit(
        format_summary(
            res.summary.assign(source=res.summary["source"].map(lambda p: Path(p).name))
        )
    )
    emit("\n== latest priced snapshot per symbol ==")
    emit(latest_table(flags).to_string(index=False))
    unpriced = flags[flags["status"] == "insufficient_data"]
    emit("\n== unpriced snapshots (insufficient_data) ==")
    if unpriced.empty:
        emit("none")
    else:
        u = unpriced.groupby(["symbol", unpriced["as_of"].dt.strftime("%Y-%m-%d")]).size()
        emit(u.rename("tiers").reset_index().to_string(index=False))
    emit("\n== history over snapshots 2023-01 to 2024-05 ==")
    emit(history_table(flags).to_string(index=False))
    emit(
        f"\n== backtests at coverage {cfg.coverage}: published IM | walk-forward fair quantile,"
        " same decision times =="
    )
    emit(backtest_view(bt).to_string(index=False))

    counts = flags["status"].value_counts()
    metrics: dict[str, float] = {
        **timings,
        "n_tiers": float(len(flags)),
        "n_snapshots": float(flags["as_of"].nunique()),
        "n_models": float(len(result.models)),
        "panel_rows": float(len(labelled)),
    }
    for st in ("under_margined", "over_margined", "in_line", "insufficient_data"):
        metrics[f"n_{st}"] = float(counts.get(st, 0))
    for name in ("published", "fair"):
        if f"{name}_cov" in bt:
            metrics[f"{name}_mean_coverage"] = float(bt[f"{name}_cov"].mean())
            metrics[f"{name}_share_green"] = float((bt[f"{name}_light"] == "green").mean())
            metrics[f"{name}_mean_avg_margin"] = float(bt[f"{name}_avg"].mean())
    metrics["n_backtest_models"] = float(len(models))
    metrics["total_s"] = time.perf_counter() - clock.t0
    emit("\n== pooled over (symbol, tier, side) backtests ==")
    for name in ("published", "fair"):
        if f"{name}_cov" in bt:
            emit(
                f"{name:>9}: mean coverage {metrics[f'{name}_mean_coverage']:.4f} "
                f"(target {cfg.coverage}), green {metrics[f'{name}_share_green']:.0%}, "
                f"Kupiec p >= 0.05 in {(bt[f'{name}_kupiec_p'] >= 0.05).mean():.0%}, "
                f"mean average margin {metrics[f'{name}_mean_avg_margin']:.2%}"
            )
    emit(
        "status counts: "
        + ", ".join(f"{k} {int(v)}" for k, v in sorted(counts.items()))
        + f"; {len(result.models)} snapshot models, {len(models)} models for the backtest"
    )
    emit("\n== timings ==")
    emit(
        ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f", total {metrics['total_s']:.1f} s"
    )

    flags.to_csv(out / "flags.csv", index=False)
    flags.to_parquet(out / "flags.parquet", index=False)
    bt.to_csv(out / "backtests.csv", index=False)
    (out / "report.txt").write_text(text.getvalue())
    res.summary.to_csv(out / "ingest_summary.csv", index=False)

    from pipelines.bundle import bundle_fingerprint
    from pipelines.tracking import log_bundle_input, mlflow_run

    with mlflow_run("binance usdm study", cfg, kind="study") as run_id:
        import mlflow

        log_bundle_input(bundle, dict(tables), bundle_fingerprint(bundle))
        mlflow.log_params(
            {
                "study.symbols": ",".join(SYMBOLS),
                "study.window": "2023-01..2024-05",
                "study.backtest_every_minutes": args.backtest_every,
            }
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for name in (
            "flags.csv",
            "flags.parquet",
            "backtests.csv",
            "report.txt",
            "ingest_summary.csv",
            "quarantine.parquet",
        ):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name))
    print(f"\nMLflow run {run_id}; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
