"""Walk-forward backtest of the fair-margin model against the classical baselines (issue 6).

Runs every model side by side on
(a) a simulated bundle: its horizon grid limited by its history, the last third as test period,
    retrained weekly;
(b) daily spot candles of 9 coins (cryptodatadownload, Binance), H = 1 day and 5 days, test
    period 2021-01-01 onward, retrained monthly;
(c) Binance USD-M perp 1h candles (freqtrade), H = 1 h and 8 h, test period 2023-07-01 onward,
    retrained monthly.
Training is always strictly before each test window (cutoff = window start - longest horizon).
One table per setup; the last line is the main model on (b), H = 1 day:

    kupiec_p=K christoffersen_cc_p=C traffic_light=Z worst_tercile_coverage=W
    margin_vs_best_baseline=M peak_trough_vs_best_baseline=P

Rows beside the baselines: ``fair_lgbm`` (the LightGBM quantile model with its split-conformal
factor), ``fair_lgbm_aci<GAMMA>x<GROUPS>`` (the adaptive conformal update of
``models/adaptive.py`` applied to its stored out-of-sample forecasts, one factor per side,
horizon and trailing-volatility group), ``fair_lgbm_aci_wrapped`` (``--wrapper``: the same
update by the ``AdaptiveConformal`` wrapper itself inside the walk-forward) and
``<main>+buffer25|stressed25|floor10y`` (the main row with one APC overlay, as
``[apc]`` in an experiment config would apply it). ``--main`` names the row of the last line.

Usage: ``python benchmarks/backtest.py [--setups a,b,c] [--trees N] [--n-seeds N]
[--aci GAMMA:GROUPS,...] [--wrapper GAMMA:GROUPS] [--main ROW] [--no-apc]`` (about 6 minutes
on 2 busy cores with the defaults: 3 seeds, the ACI rows and the wrapper). Choices for (b) were
made on ``--setups bval`` (2019-2020, before the test period): the main row is
``fair_lgbm_aci0.01x1`` (one ACI factor per side and horizon, gamma 0.01), ``num_leaves`` 3,
``side_asymmetry_z`` 2.576, target-scale half-life 60 days; bval M 0.928 against 0.948 for the
previous ``aci0.005x3`` with 7 leaves (``--aci``, ``--leaves``, ``--side-z``, ``--lr``,
``--b-sample-every``, ``--main-halflife-days`` reproduce the alternatives). The boosters are
trained at the 95 % quantile (``--fit-level``), chosen on bval, (a) and (c) together (main row M
at 0.95 / q itself: bval 0.923 / 0.928, (a) 1h 0.890 / 0.891, (c) 8h 0.947 / 0.963).
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# other benchmark scripts sit beside this one (e.g. features.py): never let them shadow packages
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from features.panel import PanelSpec, build_panel  # noqa: E402
from models.adaptive import adapt_forecasts, adaptive_factory, volatility_group  # noqa: E402
from models.backtest import apc_multiplier_at  # noqa: E402
from models.baselines import BASELINES, make_baseline  # noqa: E402
from models.fair import FairMarginModel, add_labels  # noqa: E402
from models.walkforward import (  # noqa: E402
    SetupResult,
    evaluate,
    walk_forward,
    walk_forward_splits,
)
from pipelines.config import DataConfig  # noqa: E402
from pipelines.importers import read  # noqa: E402

DATA = "/work/shared/data/returns"
DAILY = f"{DATA}/cryptodatadownload_binance_spot_daily_causcrypto/*.csv"
HOURLY = f"{DATA}/binance_usdm_perps_freqtrade_cyft/*-1h-futures.parquet"
Q = 0.99
MAIN = "fair_lgbm"
#: options of the main model set from the command line (--calibration, --cal-days-scale)
MAIN_OPTIONS: dict[str, Any] = {
    "calibration_method": "split",
    "cal_days_scale": 1.0,
    "cal_fraction": 0.5,
    "num_leaves": 3,
    "min_child_samples": 100,
    "learning_rate": 0.05,
    "side_asymmetry_z": 2.576,
    "fit_level": 0.95,
    "seed": 0,
}


def _regime_features(panel: pd.DataFrame) -> pd.DataFrame:
    """Regime features for the main model (a prototype for features/, point in time): the
    coin's realised volatility over 30 and 90 bars, and the market's (median over coins at the
    same t) over 7 and 30 bars; ``rv_`` columns, so the model reads them relative to sigma."""
    out = panel.copy()
    per_year = np.sqrt(525_600.0 / out["bar_minutes"].to_numpy(dtype=np.float64))
    g = out.groupby(["venue", "symbol"], sort=False)["ret_1bar"]
    for n in (30, 90):
        out[f"rv_{n}bar"] = g.transform(lambda r, n=n: r.rolling(n, min_periods=n // 2).std())
        out[f"rv_{n}bar"] *= per_year
    for n in (7, 30):
        own = g.transform(lambda r, n=n: r.rolling(n, min_periods=n // 2).std()) * per_year
        out[f"rv_mkt_{n}bar"] = own.groupby(out["t"]).transform("median")
    return out


#: EMIR's anti-procyclicality options at their usual settings (pipelines.config.ApcConfig)
APC = {
    "buffer25": {"buffer": 0.25},
    "stressed25": {"stressed_weight": 0.25},
    "floor10y": {"floor_years": 10.0},
}


def _load(pattern: str) -> dict[str, pd.DataFrame | None]:
    ohlcv, contracts = [], []
    for path in sorted(glob.glob(pattern)):
        tables = read(path).tables
        ohlcv.append(tables["ohlcv"])
        contracts.append(tables["contracts"])
    return {
        "ohlcv": pd.concat(ohlcv, ignore_index=True),
        "contracts": pd.concat(contracts, ignore_index=True).drop_duplicates(["venue", "symbol"]),
    }


def main_model(
    horizons: tuple[int, ...], sample_every: int, trees: int, cal_days: float, n_seeds: int = 1
) -> Callable[[], FairMarginModel]:
    def make() -> FairMarginModel:
        return FairMarginModel(
            coverage=Q,
            horizons_minutes=horizons,
            regressor_params={
                "n_estimators": trees,
                "learning_rate": float(MAIN_OPTIONS["learning_rate"]),
                "num_leaves": int(MAIN_OPTIONS["num_leaves"]),
                "min_child_samples": int(MAIN_OPTIONS["min_child_samples"]),
                "n_jobs": 2,
                "random_state": int(MAIN_OPTIONS["seed"]),
                "n_seeds": n_seeds,
            },
            calibration_fraction=float(MAIN_OPTIONS["cal_fraction"]),
            max_calibration_days=cal_days * MAIN_OPTIONS["cal_days_scale"],
            calibration_method=str(MAIN_OPTIONS["calibration_method"]),
            sample_every_minutes=sample_every,
            side_asymmetry_z=float(MAIN_OPTIONS["side_asymmetry_z"]),
            fit_level=MAIN_OPTIONS["fit_level"],
        )

    return make


def run_setup(
    name: str,
    tables: dict[str, pd.DataFrame | None],
    *,
    horizons: tuple[int, ...],
    report_h: tuple[int, ...],
    first_test: pd.Timestamp,
    freq: str,
    sample_every: int,
    trees: int,
    cal_days: float,
    models: set[str] | None = None,
    main_halflife_days: float | None = None,
    n_seeds: int = 1,
    aci: tuple[tuple[float, int, str], ...] = (),
    wrapper: tuple[float, int, str] | None = None,
    main_name: str = MAIN,
    apc: bool = False,
) -> dict[int, dict[str, SetupResult]]:
    t0 = time.perf_counter()
    panel = build_panel(tables)
    labelled = add_labels(panel, horizons_minutes=horizons)
    # the main model may scale its targets by a slower volatility; the tests' trailing
    # volatility (terciles) stays the panel's default one for every model
    main_labelled = labelled
    if main_halflife_days is not None:
        # the half-life as given, even below the panel's default floor of 11 bars
        spec = PanelSpec(
            scale_halflife_minutes=main_halflife_days * 1440.0, min_scale_halflife_bars=1.0
        )
        main_labelled = add_labels(build_panel(tables, spec=spec), horizons_minutes=horizons)
    if MAIN_OPTIONS.get("regime"):
        main_labelled = _regime_features(main_labelled)
    if MAIN_OPTIONS.get("drop"):
        drop = [c for c in main_labelled if re.fullmatch(str(MAIN_OPTIONS["drop"]), c)]
        print(f"  main model without {drop}")
        main_labelled = main_labelled.drop(columns=drop)
    end = pd.Timestamp(labelled["t"].max())
    splits = walk_forward_splits(
        first_test=first_test, end=end, gap=pd.Timedelta(minutes=max(horizons)), freq=freq
    )
    print(
        f"\n## setup {name}: {labelled[['venue', 'symbol']].drop_duplicates().shape[0]} "
        f"contracts, {len(labelled):,} rows, {len(splits)} retrains, test {first_test:%Y-%m-%d}"
        f" .. {end:%Y-%m-%d} ({time.perf_counter() - t0:.0f} s to build)",
        flush=True,
    )
    names = [b for b in BASELINES if b != "published" or tables.get("margin_tiers") is not None]
    names = [b for b in names if models is None or b in models]
    forecasts: dict[str, pd.DataFrame] = {}
    for b in names:
        t1 = time.perf_counter()
        forecasts[b] = walk_forward(
            lambda b=b: make_baseline(  # type: ignore[misc]
                b,
                coverage=Q,
                horizons_minutes=horizons,
                margin_tiers=tables.get("margin_tiers"),
            ),
            labelled,
            splits=splits,
            horizons_minutes=report_h,
            needs_history=True,
        )
        print(f"  {b}: {time.perf_counter() - t1:.0f} s", flush=True)
    t1 = time.perf_counter()
    fc = walk_forward(
        main_model(horizons, sample_every, trees, cal_days, n_seeds),
        main_labelled,
        splits=splits,
        horizons_minutes=report_h,
    )
    vol = labelled[["venue", "symbol", "t", "sigma_ann"]]
    forecasts[MAIN] = fc.drop(columns="sigma_ann").merge(vol, on=["venue", "symbol", "t"])
    print(f"  {MAIN}: {time.perf_counter() - t1:.0f} s", flush=True)
    for gamma, n_groups, source in aci:
        # the adaptive conformal update of models/adaptive.py on the stored out-of-sample
        # forecasts; groups: percentile of a trailing volatility over the past year, point in
        # time: "eval" the panel's default one (the tests' terciles), "model" the main model's
        col = {"eval": labelled, "model": main_labelled}[source]
        grp = col[["venue", "symbol", "t"]].assign(
            group=volatility_group(col, n_groups=n_groups, lookback_days=365.0)
        )
        base = forecasts[MAIN].merge(grp, on=["venue", "symbol", "t"])
        tag = f"{MAIN}_aci{gamma:g}x{n_groups}" + ("" if source == "eval" else source)
        forecasts[tag] = adapt_forecasts(
            base.drop(columns="group"),
            coverage=Q,
            gamma=gamma,
            groups=base["group"].to_numpy(dtype=np.int64),
        )
    if wrapper is not None:
        # the same update by the wrapper itself (models.adaptive.AdaptiveConformal), retrained
        # in the walk-forward like the main model; groups by the panel's default volatility
        gamma, n_groups, source = wrapper
        rows = main_labelled
        if source == "eval":
            rows = main_labelled.assign(sigma_eval=labelled["sigma_ann"].to_numpy())
        t1 = time.perf_counter()
        fcw = walk_forward(
            adaptive_factory(
                _without(
                    main_model(horizons, sample_every, trees, cal_days, n_seeds), "sigma_eval"
                ),
                coverage=Q,
                gamma=gamma,
                n_groups=n_groups,
                group_column="sigma_eval" if source == "eval" else "sigma_ann",
            ),
            rows,
            splits=splits,
            horizons_minutes=report_h,
            needs_history=True,
        )
        forecasts[f"{MAIN}_aci_wrapped"] = fcw.drop(columns="sigma_ann").merge(
            vol, on=["venue", "symbol", "t"]
        )
        print(f"  {MAIN}_aci_wrapped: {time.perf_counter() - t1:.0f} s", flush=True)
    if apc and main_name in forecasts:
        # each overlay on the main model's forecasts, its volatility path from the panel
        fm = forecasts[main_name]
        keys = fm[["venue", "symbol"]].assign(as_of=fm["t"])
        for tag, switches in APC.items():
            k = apc_multiplier_at(labelled, keys, **switches)
            forecasts[f"{main_name}+{tag}"] = fm.assign(
                forecast_long=fm["forecast_long"] * k, forecast_short=fm["forecast_short"] * k
            )
    out: dict[int, dict[str, SetupResult]] = {}
    for h in report_h:
        out[h] = {}
        rows = []
        for m, fc in forecasts.items():
            try:
                res = evaluate(fc, h=h, coverage=Q)
            except Exception as exc:  # a model without forecasts there: say so in the table
                print(f"  {m} H={h}: not evaluated ({exc})")
                continue
            out[h][m] = res
            rows.append({"model": m, **res.summary()})
        table = pd.DataFrame(rows).set_index("model")
        print(f"\n### setup {name}, H = {h} minutes\n")
        with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
            print(table.to_string())
        for m in out[h]:
            if m not in BASELINES:
                print(f"  {m} vs best passing baseline: {_ratio_line(out[h], m)}")
        if main_name in out[h]:
            print(f"  {main_name} by side: {_side_line(out[h][main_name])}")
    print(f"  setup {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _aci_spec(text: str) -> tuple[float, int, str]:
    parts = text.split(":")
    source = parts[2] if len(parts) > 2 else "eval"
    if source not in ("eval", "model"):
        raise SystemExit(f"--aci/--wrapper: source must be eval or model, got {source!r}")
    return float(parts[0]), int(parts[1]), source


class _Without:
    """A forecaster that hides some columns from the model it wraps (a grouping column that
    the main model must not take for a feature)."""

    def __init__(self, model: FairMarginModel, columns: list[str]) -> None:
        self.model, self.columns = model, columns
        self.horizons_: tuple[int, ...] = ()

    def fit(self, labelled: pd.DataFrame, *, cutoff: pd.Timestamp) -> _Without:
        self.model.fit(labelled.drop(columns=self.columns, errors="ignore"), cutoff=cutoff)
        self.horizons_ = self.model.horizons_
        return self

    def quantile_grid(self, rows: pd.DataFrame) -> Any:
        return self.model.quantile_grid(rows.drop(columns=self.columns, errors="ignore"))


def _without(make: Callable[[], FairMarginModel], column: str) -> Callable[[], _Without]:
    return lambda: _Without(make(), [column])


def _side_line(result: SetupResult) -> str:
    """Exceptions / observations and pooled Kupiec p of each side (which side under-covers)."""
    parts = []
    for side in sorted({s for _, s in result.reports}):
        reps = [r for (_, s), r in result.reports.items() if s == side]
        exc, obs = sum(r.exceptions for r in reps), sum(r.observations for r in reps)
        parts.append(
            f"{side} {exc}/{obs} = {1.0 - exc / max(obs, 1):.4f} "
            f"(kupiec_p={result.pooled_kupiec_p.get(side, math.nan):.3g})"
        )
    return ", ".join(parts)


def _ratio_line(results: dict[str, SetupResult], main_name: str = MAIN) -> str:
    main = results[main_name].summary()
    passing = [
        (r.summary()["avg_margin"], m, r.summary())
        for m, r in results.items()
        if m in BASELINES and r.passes
    ]
    if passing:
        _, best, bs = min(passing)
        m_ratio = main["avg_margin"] / bs["avg_margin"]
        p_ratio = main["peak_trough"] / bs["peak_trough"]
    else:
        best, m_ratio, p_ratio = "none", math.nan, math.nan
    return (
        f"kupiec_p={main['kupiec_p']:.4g} christoffersen_cc_p={main['cc_p']:.4g} "
        f"traffic_light={main['traffic_light']} worst_tercile_coverage={main['worst_tercile']:.4g}"
        f" margin_vs_best_baseline={m_ratio:.4g} peak_trough_vs_best_baseline={p_ratio:.4g}"
        f" (best passing baseline: {best}; main passes: {main['passes']})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="a,b,c")
    ap.add_argument("--trees", type=int, default=40)
    ap.add_argument("--models", default=None, help="baselines to run (default: all)")
    ap.add_argument("--n-seeds", type=int, default=3, help="seed bagging of the main model")
    ap.add_argument("--calibration", default="split", choices=["split", "crossfit"])
    ap.add_argument("--cal-days-scale", type=float, default=1.0)
    ap.add_argument("--cal-fraction", type=float, default=0.5)
    ap.add_argument(
        "--leaves", type=int, default=3, help="num_leaves of the main model (bval: 3 over 2-15)"
    )
    ap.add_argument("--min-child", type=int, default=100, help="its min_child_samples")
    ap.add_argument("--lr", type=float, default=0.05, help="its learning_rate")
    ap.add_argument(
        "--side-z",
        type=float,
        default=2.576,
        help="side_asymmetry_z of the main model (0: each side's model as fitted)",
    )
    ap.add_argument(
        "--b-sample-every",
        type=int,
        default=1440,
        help="sample_every_minutes of the main model on (b) and bval",
    )
    ap.add_argument(
        "--fit-level",
        type=float,
        default=0.95,
        help="quantile level the main model's boosters are trained at, conformal carries it "
        "to q (0.95 chosen on bval, (a) and (c): mean M 0.920 against 0.928 at q itself, "
        "0.927 at 0.9, 0.921 at 0.975)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random_state of the main model")
    ap.add_argument("--drop", default=None, help="regex: panel columns the main model ignores")
    ap.add_argument("--regime", action="store_true", help="add regime features to the main model")
    ap.add_argument(
        "--main", default=f"{MAIN}_aci0.01x1", help="the row reported on the last line"
    )
    ap.add_argument(
        "--no-apc", action="store_true", help="skip the rows of the main model with APC overlays"
    )
    ap.add_argument(
        "--aci",
        default="0.01:1,0.005:3",
        help="adaptive conformal variants of the main model on its stored forecasts, "
        "GAMMA:GROUPS[:eval|model][,...] (e.g. 0.005:1,0.005:3); each adds a row "
        "fair_lgbm_aci<GAMMA>x<GROUPS>",
    )
    ap.add_argument(
        "--wrapper",
        default="0.01:1",
        help="GAMMA:GROUPS[:eval|model]: also run the AdaptiveConformal wrapper itself in the "
        "walk-forward (row fair_lgbm_aci_wrapped; trains the main model again)",
    )
    ap.add_argument(
        "--main-halflife-days",
        type=float,
        default=None,
        help="half-life of the volatility that scales the main model's targets (default per "
        "setup: a the product default (4 hours), b 60 days, c 3 days; b chosen on the "
        "2019-2020 validation run)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    setups = set(args.setups.split(","))
    MAIN_OPTIONS.update(
        calibration_method=args.calibration,
        cal_days_scale=args.cal_days_scale,
        cal_fraction=args.cal_fraction,
        num_leaves=args.leaves,
        min_child_samples=args.min_child,
        learning_rate=args.lr,
        side_asymmetry_z=args.side_z,
        regime=args.regime,
        fit_level=args.fit_level,
        drop=args.drop,
        seed=args.seed,
    )
    aci = tuple(_aci_spec(v) for v in args.aci.split(",") if v)
    extra: dict[str, Any] = {
        "n_seeds": args.n_seeds,
        "aci": aci,
        "wrapper": _aci_spec(args.wrapper) if args.wrapper else None,
        "main_name": args.main,
        "apc": not args.no_apc,
    }
    results: dict[str, Any] = {}
    if "a" in setups:
        from pipelines.simulator import SimConfig, simulate_market

        sim = simulate_market(SimConfig(seed=7, days=60, mc_paths=500))
        tables = {k: v for k, v in sim.items() if k != "truth"}
        t = sim["ohlcv"]["timestamp"]
        start, stop = t.min(), t.max()
        first = (start + (stop - start) * 2 / 3).ceil("D")
        results["a"] = run_setup(
            "a (simulated)",
            tables,
            horizons=(15, 60, 240, 1440),
            report_h=(60, 1440),
            first_test=first,
            freq="7D",
            sample_every=60,
            trees=args.trees,
            models=set(args.models.split(",")) if args.models else None,
            # the product's scale (experiments/default.toml) on the product's own kind of data
            main_halflife_days=args.main_halflife_days
            or DataConfig().scale_halflife_minutes / 1440,
            cal_days=10.0,
            **extra,
        )
    if "c" in setups:
        results["c"] = run_setup(
            "c (Binance perps, 1h)",
            _load(HOURLY),
            horizons=(60, 240, 480, 1440),
            report_h=(60, 480),
            first_test=pd.Timestamp("2023-07-01", tz="UTC"),
            freq="MS",
            sample_every=60,
            trees=args.trees,
            models=set(args.models.split(",")) if args.models else None,
            main_halflife_days=args.main_halflife_days or 3.0,
            cal_days=60.0,
            **extra,
        )
    if "bval" in setups:
        # model selection for (b) without the test period: the same walk-forward on
        # 2019-2020 only, every bar closing after 2021-01-01 removed first
        tables = _load(DAILY)
        ohlcv = tables["ohlcv"]
        assert ohlcv is not None
        tables["ohlcv"] = ohlcv[
            ohlcv["timestamp"] + pd.Timedelta(days=1) <= pd.Timestamp("2021-01-01", tz="UTC")
        ]
        results["bval"] = run_setup(
            "b-validation (spot daily, 2019-2020, before the test period)",
            tables,
            horizons=(1440, 2880, 7200),
            report_h=(1440,),
            first_test=pd.Timestamp("2019-01-01", tz="UTC"),
            freq="MS",
            sample_every=args.b_sample_every,
            trees=args.trees,
            models=set(args.models.split(",")) if args.models else None,
            main_halflife_days=args.main_halflife_days or 60.0,
            cal_days=730.0,  # on bval: M 0.960 at 730 days, 0.965 at 365
            **extra,
        )
    if "b" in setups:
        results["b"] = run_setup(
            "b (spot daily, 9 coins)",
            _load(DAILY),
            horizons=(1440, 2880, 7200),
            report_h=(1440, 7200),
            first_test=pd.Timestamp("2021-01-01", tz="UTC"),
            freq="MS",
            sample_every=args.b_sample_every,
            trees=args.trees,
            models=set(args.models.split(",")) if args.models else None,
            main_halflife_days=args.main_halflife_days or 60.0,
            cal_days=730.0,  # on bval: M 0.960 at 730 days, 0.965 at 365
            **extra,
        )
        print()
        print(_ratio_line(results["b"][1440], args.main).split(" (best")[0])
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
