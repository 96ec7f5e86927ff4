"""The benchmark's report section: an HTML fragment and its PNG charts.

:func:`benchmark_section` returns the HTML section (to embed in the main report) and the PNG
paths it refers to (relative names, so the section and the PNGs move together): per underlying,
at its latest comparison date, published vs fair by tier for all venues on one plot (log notional
axis), the implied liquidation horizon per tier, and the venue ranking.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipelines.benchmark import BenchmarkResult

__all__ = ["benchmark_section"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _plots(frame: pd.DataFrame, underlying: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, ((venue, symbol), g) in enumerate(frame.groupby(["venue", "symbol"], sort=True)):
        g = g.sort_values("evaluated_notional")
        color = f"C{i % 10}"
        # published: one flat segment per tier, from its lower bound (a tenth of the
        # evaluated notional for a first tier from 0) to the notional it is judged at
        hi = g["evaluated_notional"].to_numpy(dtype=float)
        lo = g["min_notional"].to_numpy(dtype=float)
        lo = np.where(lo > 0, lo, hi / 10.0)
        rate = g["published_initial_margin_rate"].to_numpy(dtype=float) * 100
        ax.plot(np.column_stack([lo, hi]).ravel(), np.repeat(rate, 2), "-", color=color,
                label=f"{venue} {symbol} published")  # fmt: skip
        fair = g["fair_initial_margin_rate"] * 100
        if np.isfinite(fair).any():
            ax.plot(g["evaluated_notional"], fair, "o--", color=color, ms=3, lw=1,
                    label=f"{venue} {symbol} fair ({g['pricing'].iloc[0]})")  # fmt: skip
            ax.fill_between(
                g["evaluated_notional"], g["fair_lower"] * 100, g["fair_upper"] * 100,
                color=color, alpha=0.12,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("notional (quote currency, log)")
    ax.set_ylabel("initial margin rate, %")
    ax.set_title(f"{underlying}: published vs fair by tier")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    p = out / f"benchmark_{_slug(underlying)}_rates.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    ih = frame[np.isfinite(frame["implied_horizon_minutes"])]
    if len(ih):
        fig, ax = plt.subplots(figsize=(8, 4))
        for i, ((venue, symbol), g) in enumerate(ih.groupby(["venue", "symbol"], sort=True)):
            g = g.sort_values("evaluated_notional")
            ax.plot(g["evaluated_notional"], g["implied_horizon_minutes"], "o-",
                    color=f"C{i % 10}", ms=3, label=f"{venue} {symbol}")  # fmt: skip
            cens = g[g["implied_horizon_censored"] != ""]
            ax.plot(cens["evaluated_notional"], cens["implied_horizon_minutes"], "x",
                    color=f"C{i % 10}", ms=7)  # fmt: skip
        ax.plot(frame["evaluated_notional"], frame["horizon_minutes"], ".", color="grey",
                label="H (liquidation horizon of the method)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("notional (quote currency, log)")
        ax.set_ylabel("implied horizon, minutes (x: censored)")
        ax.set_title(f"{underlying}: implied liquidation horizon of the published rate")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        p = out / f"benchmark_{_slug(underlying)}_implied_horizon.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def benchmark_section(result: BenchmarkResult, out: str | Path) -> tuple[str, list[Path]]:
    """Write the charts into ``out`` and return (HTML section, PNG paths)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame, ranking = result.frame, result.ranking
    parts = ['<section id="cross-venue-benchmark"><h2>Cross-venue margin benchmark</h2>']
    parts.append(
        "<p>Per underlying at its latest comparison date: each venue's published initial "
        "margin rate by tier against fair margin (dashed, with its interval), the implied "
        "liquidation horizon of the published rate, and the venues ranked from most under- to "
        "most over-margined by the mean over priced tiers of log(published / fair). "
        "<em>vs peers</em> is the venue's mean residual against a model of the other venues' "
        "published rates for the same risk and size.</p>"
    )
    pngs: list[Path] = []
    for u, g in frame.groupby("underlying", sort=True):
        d = g["as_of"].max()
        latest = g[g["as_of"] == d]
        paths = _plots(latest, str(u), out)
        pngs += paths
        parts.append(f"<h3>{html.escape(str(u))} at {d:%Y-%m-%d %H:%M} UTC</h3>")
        if (latest["comparison"] == "mixed_dates").any():
            parts.append("<p><strong>Schedules of different dates</strong> are compared here; "
                         "see schedule_as_of.</p>")  # fmt: skip
        if (latest["comparison"] == "alone").any():
            parts.append("<p>Only one venue lists this underlying: reported, not compared.</p>")
        for p in paths:
            parts.append(f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">')
        r = ranking[(ranking["underlying"] == u) & (ranking["as_of"] == d)]
        table = pd.DataFrame(
            {
                "venue": r["venue"],
                "rank": r["rank"].astype(str).replace("<NA>", "-"),
                "vs fair": [
                    f"{np.expm1(v):+.0%}" if np.isfinite(v) else "-"
                    for v in r["mean_log_deviation"]
                ],
                "vs peers": [
                    f"{np.expm1(v):+.0%}" if np.isfinite(v) else "-"
                    for v in r["mean_peer_log_residual"]
                ],
                "basis": r["basis"],
                "tiers": r["n_tiers"],
                "note": r["note"],
            }
        )
        parts.append(table.to_html(index=False, escape=True, border=0))
    parts.append("</section>")
    return "\n".join(parts), pngs
