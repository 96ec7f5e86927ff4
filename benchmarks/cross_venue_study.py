"""Cross-venue margin study on real schedules, and the check on a simulated 90-day bundle.

Usage:
    python -P benchmarks/cross_venue_study.py /work/shared/data [--out DIR] [--trees 60]
    python -P benchmarks/cross_venue_study.py --simulated [--days 90] [--seed 7]

Real study: Binance USD-M leverage brackets, dYdX v4 margin fractions (genesis 2023-10-26 and
the 2024 indexer reply), BingX risk tiers (2025-26) and BitMEX instruments (2024-03-02,
2024-11-24), BTC and ETH perpetuals quoted in USD, USDT or USDC, read with
``pipelines.importers.read``. Prices: the Binance USD-M perp 1h candles (2023-01 to 2024-05)
price every venue's contract of the same underlying (a proxy: one reference price and volume per
underlying; no order books, so liquidation cost is the square-root impact estimate); the
Binance spot daily candles (to 2026-03) back horizons of a day or more for later schedules
(``daily_only``); schedules with neither are ``unpriced`` and still enter the published
comparison and the peer view. The dYdX indexer reply carries no date: it is dated at its
source commit, 2024-08-22 (published at or before).

Prints, per comparison date and underlying, each venue's tier-1 rate, implied horizon (priced
tiers) and rank, and the position view for 100k, 1M and 10M USDT; logs everything to MLflow.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/features.py would shadow
# the `features` package: drop the folder before importing the project.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.benchmark import BenchmarkConfig, Position, benchmark  # noqa: E402
from pipelines.cmd_benchmark import format_positions, format_ranking, write_and_log  # noqa: E402
from pipelines.config import default_experiment_path, load_experiment, with_overrides  # noqa: E402
from pipelines.importers import read  # noqa: E402
from pipelines.tracking import mlflow_run  # noqa: E402

UNDERLYINGS = ("BTC", "ETH")
QUOTES = ("USDT", "USDC", "USD")
INDEXER_AS_OF = pd.Timestamp("2024-08-22", tz="UTC")


def _cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


def real_tables(data: Path) -> dict[str, pd.DataFrame | None]:
    ms = data / "margin_schedules"
    reads = [
        read(ms / "binance_usdm_freqtrade/binance_usdm_leverage_brackets_history.csv.gz"),
        read(ms / "dydx_v4/dydx_mainnet1_genesis_perpetuals_liquidity_tiers.json"),
        read(
            ms / "dydx_v4/dydx_v4_indexer_perpetual_markets_2024.json",
            format="dydx_indexer_markets",
            as_of=INDEXER_AS_OF,
        ),
        read(ms / "bingx_cornix/bingx_perp_risk_tiers_history.csv"),
        read(ms / "bitmex_instruments/bitmex_instrument_snapshot_2024-03-02.json"),
        read(ms / "bitmex_instruments/bitmex_instrument_XBTUSD_2024-11-24.json"),
    ]
    contracts = _cat([r.tables["contracts"] for r in reads]).drop_duplicates(
        ["venue", "symbol"], keep="last"
    )
    keep = contracts[
        (contracts["type"] == "swap")
        & contracts["base"].isin(UNDERLYINGS)
        & contracts["quote"].isin(QUOTES)
    ]
    tiers = _cat([r.tables["margin_tiers"] for r in reads]).merge(
        keep[["venue", "symbol"]], on=["venue", "symbol"]
    )
    tiers = tiers.drop_duplicates(["venue", "symbol", "as_of", "tier"], keep="last")
    # candles: the Binance perp (1h) and spot (1d) of each underlying, copied to every contract
    # of that underlying (one reference price per underlying)
    bars = []
    for u in UNDERLYINGS:
        perp = read(
            data / f"returns/binance_usdm_perps_freqtrade_cyft/{u}_USDT_USDT-1h-futures.parquet"
        ).tables["ohlcv"]
        spot = read(
            data
            / f"returns/cryptodatadownload_binance_spot_daily_causcrypto/Binance_{u}USDT_d.csv"
        ).tables["ohlcv"]
        for _, c in keep[keep["base"] == u].iterrows():
            for src in (perp, spot):
                bars.append(src.assign(venue=c["venue"], symbol=c["symbol"]))
    ohlcv = _cat(bars).drop_duplicates(["venue", "symbol", "timeframe", "timestamp"])
    return {
        "contracts": keep.reset_index(drop=True),
        "margin_tiers": tiers,
        "ohlcv": ohlcv,
        "order_books": None,
        "option_quotes": None,
        "funding_rates": None,
        "truth": None,
    }


def comparison_dates(tiers: pd.DataFrame) -> tuple[pd.Timestamp, ...]:
    """Every date a non-Binance venue published (Binance, with 57 snapshots, is compared at its
    latest snapshot at or before each)."""
    other = tiers[tiers["venue"] != "binanceusdm"]
    return tuple(sorted(pd.Timestamp(t) for t in other["as_of"].unique()))


def print_study(frame: pd.DataFrame, ranking: pd.DataFrame) -> None:
    t1 = frame[frame["tier"] == 1].merge(
        ranking[["underlying", "as_of", "venue", "rank"]], on=["underlying", "as_of", "venue"]
    )
    for (d, u), g in t1.groupby(["as_of", "underlying"], sort=True):
        print(f"\n{d:%Y-%m-%d %H:%M} {u} ({g['n_venues'].iloc[0]} venues)")
        for _, r in g.sort_values(["venue", "symbol"]).iterrows():
            ih, cens = r["implied_horizon_minutes"], r["implied_horizon_censored"]
            ih_s = f"{ih:,.0f} min" + (f" ({cens})" if cens else "") if np.isfinite(ih) else "-"
            fair = r["fair_initial_margin_rate"]
            fair_s = f"{fair:.2%}" if np.isfinite(fair) else "-"
            peer = r["peer_residual"]
            peer_s = f"{peer:+.0%}" if np.isfinite(peer) else "-"
            rank = "-" if pd.isna(r["rank"]) else str(int(r["rank"]))
            print(
                f"  {r['venue']:<12} {r['symbol']:<14} sched {r['schedule_as_of']:%Y-%m-%d} "
                f"tier1 {r['published_initial_margin_rate']:6.2%} fair {fair_s:>6} "
                f"implied H {ih_s:<20} rank {rank:<2} {r['pricing']:<10} vs peers {peer_s}"
            )


def run(tables: dict[str, pd.DataFrame | None], bcfg: BenchmarkConfig, trees: int, out: Path,
        name: str) -> None:  # fmt: skip
    cfg = load_experiment(default_experiment_path())
    cfg = with_overrides(cfg, **{"model.n_estimators": trees})
    cfg = replace(cfg, name=name)
    t0 = time.perf_counter()
    with mlflow_run(f"cross-venue study {name}", cfg, kind="benchmark-study") as run_id:
        result = benchmark(
            tables, cfg, bcfg, progress=lambda m: print(f"[{time.perf_counter() - t0:6.1f} s] {m}",
                                                        file=sys.stderr, flush=True)
        )  # fmt: skip
        write_and_log(result, out)
        import mlflow

        mlflow.log_metric("seconds", time.perf_counter() - t0)
    print_study(result.frame, result.ranking)
    print("\nranking:\n" + format_ranking(result.ranking))
    print("\npositions at each underlying's latest comparison date:")
    print(format_positions(result.positions))
    print(f"\nmetrics: {result.metrics}")
    print(f"outputs in {out}; MLflow run {run_id}; {time.perf_counter() - t0:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="/work/shared/data")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trees", type=int, default=60)
    ap.add_argument("--simulated", action="store_true", help="check on a simulated bundle")
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="cross-venue-"))
    positions = tuple(Position(n, "both") for n in (1e5, 1e6, 1e7))
    if args.simulated:
        from pipelines.simulator import SimConfig, simulate_market

        tables: dict[str, pd.DataFrame | None] = dict(
            simulate_market(SimConfig(seed=args.seed, days=args.days))
        )
        run(tables, BenchmarkConfig(positions=positions), args.trees, out, f"sim{args.seed}")
        return 0
    tables = real_tables(Path(args.data))
    assert tables["margin_tiers"] is not None
    dates = comparison_dates(tables["margin_tiers"])
    bcfg = BenchmarkConfig(underlyings=UNDERLYINGS, as_of=dates, positions=positions)
    run(tables, bcfg, args.trees, out, "real")
    return 0


if __name__ == "__main__":
    sys.exit(main())
