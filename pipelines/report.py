"""The discrepancy report of a flag run: one self-contained HTML file (PNG plots embedded as
base64) a risk team can read, and the PNGs beside it.

Sections: a summary (status counts per venue and the flagged tiers with their drivers); per
venue, published vs fair margin by tier with the interval; the implied liquidation horizon per
tier; backtest charts (the model's margin vs realised adverse moves over the history of one
contract per venue, exceptions marked); the feature contributions of each flagged tier.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError
from models.fair import FairMarginModel
from models.horizon import liquidation_horizon_minutes
from models.labels import SIDES
from pipelines.config import ExperimentConfig
from pipelines.explain import contributions, describe, nearest_grid_index

__all__ = ["Report", "backtest_series", "write_report"]

log = logging.getLogger(__name__)

FLAGGED = ("under_margined", "over_margined")
_STATUS_COLOURS = {
    "under_margined": "#c0392b",
    "over_margined": "#2471a3",
    "in_line": "#7f8c8d",
    "insufficient_data": "#d4ac0d",
}
_MAX_BACKTEST_POINTS = 300
_MAX_DRIVER_PANELS = 12


@dataclass(frozen=True)
class Report:
    """The written report: the HTML file and the PNGs (name -> path)."""

    html: Path
    images: dict[str, Path]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=80)  # no bbox_inches="tight": it renders twice
    _plt().close(fig)
    return path


def _grid_shape(n: int, ncols: int = 3) -> tuple[int, int]:
    cols = min(ncols, max(n, 1))
    return (n + cols - 1) // cols, cols


def _plot_venue(flags: pd.DataFrame, venue: str, path: Path) -> Path:
    plt = _plt()
    sub = flags[flags["venue"] == venue]
    symbols = sorted(sub["symbol"].unique())
    nrows, ncols = _grid_shape(len(symbols))
    height = 3.0 * nrows + 0.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, height), squeeze=False)
    for ax, symbol in zip(axes.ravel(), symbols, strict=False):
        g = sub[sub["symbol"] == symbol].sort_values("tier")
        x = g["tier"].to_numpy(dtype=np.float64)
        fair = 100 * g["fair_initial_margin_rate"].to_numpy(dtype=np.float64)
        lo = 100 * g["fair_lower"].to_numpy(dtype=np.float64)
        hi = 100 * g["fair_upper"].to_numpy(dtype=np.float64)
        ok = np.isfinite(fair)
        ax.errorbar(
            x[ok], fair[ok], yerr=[fair[ok] - lo[ok], hi[ok] - fair[ok]], fmt="o", ms=4,
            color="black", capsize=3, label="fair (interval)",
        )  # fmt: skip
        colours = [_STATUS_COLOURS.get(s, "grey") for s in g["status"]]
        ax.scatter(
            x, 100 * g["published_initial_margin_rate"], marker="x", s=40, c=colours,
            label="published", zorder=3,
        )  # fmt: skip
        ax.set_title(symbol, fontsize=9)
        ax.set_xlabel("tier")
        ax.set_ylabel("initial margin (%)")
        ax.set_xticks(x)
    for ax in axes.ravel()[len(symbols) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{venue}: published vs fair initial margin by tier (red under, blue over)")
    fig.subplots_adjust(hspace=0.55, wspace=0.3, top=1 - 0.7 / height)
    return _save(fig, path)


def _plot_implied(flags: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    venues = sorted(flags["venue"].unique())
    nrows, ncols = _grid_shape(len(venues), 2)
    height = 3.4 * nrows + 0.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, height), squeeze=False)
    for ax, venue in zip(axes.ravel(), venues, strict=False):
        g = flags[(flags["venue"] == venue) & np.isfinite(flags["implied_horizon_minutes"])]
        for symbol, gs in g.groupby("symbol", sort=True):
            x = gs["tier"].to_numpy(dtype=np.float64)
            y = np.maximum(gs["implied_horizon_minutes"].to_numpy(dtype=np.float64), 0.1)
            (line,) = ax.plot(x, y, "-", lw=0.8, alpha=0.7, label=str(symbol))
            marks = {"below": "v", "above": "^", "": "o"}
            for cens, marker in marks.items():
                m = (gs["implied_horizon_censored"] == cens).to_numpy()
                ax.scatter(x[m], y[m], marker=marker, s=22, color=line.get_color())
            ax.scatter(
                x, gs["horizon_minutes"], marker="_", s=60, color=line.get_color(), alpha=0.6
            )
        ax.set_yscale("log")
        ax.set_title(venue, fontsize=9)
        ax.set_xlabel("tier")
        ax.set_ylabel("minutes")
        if len(g):
            ax.legend(fontsize=6, ncol=2)
    for ax in axes.ravel()[len(venues) :]:
        ax.axis("off")
    fig.suptitle(
        "implied liquidation horizon of the published rate per tier "
        "(v below / ^ above the grid; dashes: H the model uses)"
    )
    fig.subplots_adjust(hspace=0.45, wspace=0.2, top=1 - 0.7 / height)
    return _save(fig, path)


def backtest_series(
    model: FairMarginModel,
    labelled: pd.DataFrame,
    cfg: ExperimentConfig,
    *,
    venue: str,
    symbol: str,
    reference_notional: float = 1e6,
    max_points: int = _MAX_BACKTEST_POINTS,
) -> pd.DataFrame:
    """The model's margin (Q per side at one grid horizon, the one nearest H at the reference
    notional) and the realised adverse moves over that horizon, on a sampled grid of decision
    times of one contract. Columns t, horizon_minutes, margin_long, margin_short,
    realised_long, realised_short."""
    rows = labelled[(labelled["venue"] == venue) & (labelled["symbol"] == symbol)]
    rows = rows[(rows["sigma_bar"] > 0) & (rows["traded_notional_per_minute"] > 0)]
    if rows.empty:
        raise FairmarginInputError(f"backtest: no usable rows of ({venue}, {symbol})")
    hs = np.asarray(model.horizons_, dtype=np.float64)
    h_pos = liquidation_horizon_minutes(
        np.full(len(rows), reference_notional),
        rows["traded_notional_per_minute"].to_numpy(dtype=np.float64),
        base_latency_minutes=cfg.base_latency_minutes,
        participation=cfg.participation,
        minutes_to_expiry=rows["minutes_to_expiry"].to_numpy(dtype=np.float64),
    )
    gi = int(np.median(nearest_grid_index(hs, h_pos)))
    h = int(hs[gi])
    labels = [f"y_{s}_{h}" for s in SIDES]
    rows = rows.dropna(subset=labels)
    if rows.empty:
        raise FairmarginInputError(
            f"backtest: no realised {h}-minute moves of ({venue}, {symbol})"
        )
    step = max(1, len(rows) // max_points)
    rows = rows.iloc[::step]
    for c in model.features_:
        if c not in rows:
            rows = rows.assign(**{c: np.nan})
    grid = model.quantile_grid(rows)
    return pd.DataFrame(
        {
            "t": rows["t"].to_numpy(),
            "horizon_minutes": float(h),
            "margin_long": grid.quantile["long"][:, gi],
            "margin_short": grid.quantile["short"][:, gi],
            "realised_long": rows[f"y_long_{h}"].to_numpy(dtype=np.float64),
            "realised_short": rows[f"y_short_{h}"].to_numpy(dtype=np.float64),
        }
    )


def _plot_backtest(series: pd.DataFrame, title: str, cutoff: Any, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
    for ax, side in zip(axes, SIDES, strict=True):
        t = pd.to_datetime(series["t"])
        margin = 100 * series[f"margin_{side}"]
        real = 100 * series[f"realised_{side}"]
        exc = (real > margin).to_numpy()
        ax.plot(t, margin, color="black", lw=1.0, label=f"margin ({side}, Q at H)")
        ax.scatter(t[~exc], real[~exc], s=6, color="#7f8c8d", label="realised adverse move")
        ax.scatter(t[exc], real[exc], s=22, color="#c0392b", marker="x", label="exception")
        rate = float(exc.mean()) if len(exc) else float("nan")
        ax.set_ylabel("% of notional")
        ax.set_title(f"{side}: {int(exc.sum())} exceptions in {len(exc)} ({rate:.1%})", fontsize=9)
        if cutoff is not None:
            ax.axvline(pd.Timestamp(cutoff), color="#2471a3", ls="--", lw=0.8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title + " (dashed: the model's training cutoff; before it, in sample)")
    fig.subplots_adjust(hspace=0.3)
    return _save(fig, path)


def _plot_drivers(
    flagged: pd.DataFrame, inputs: pd.DataFrame, model: FairMarginModel, path: Path
) -> Path | None:
    """Signed contributions (pp of margin) of the top features of each flagged tier."""
    rows = flagged.sort_values("score", ascending=False).head(_MAX_DRIVER_PANELS)
    rows = rows[rows.index.isin(inputs.index)]
    if rows.empty:
        return None
    state = inputs.loc[rows.index]
    grid = model.quantile_grid(state)
    contrib = contributions(model, state, grid)
    gi = nearest_grid_index(grid.horizons, rows["horizon_minutes"].to_numpy(dtype=np.float64))
    plt = _plt()
    nrows, ncols = _grid_shape(len(rows), 2)
    height = 2.4 * nrows + 0.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.0 * ncols, height), squeeze=False)
    for k, (ax, (_, r)) in enumerate(zip(axes.ravel(), rows.iterrows(), strict=False)):
        top = contrib.top(k, int(gi[k]), str(r["binding_side"]), k=5)[::-1]
        labels = [describe(d["feature"])[0] for d in top]
        vals = [d["pp"] for d in top]
        ax.barh(labels, vals, color=["#c0392b" if v > 0 else "#2471a3" for v in vals])
        ax.axvline(0, color="black", lw=0.6)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("pp of margin", fontsize=7)
        ax.set_title(
            f"{r['venue']} {r['symbol']} tier {r['tier']} ({r['status']}, {r['binding_side']})",
            fontsize=8,
        )
    for ax in axes.ravel()[len(rows) :]:
        ax.axis("off")
    fig.suptitle("feature contributions of the flagged tiers (top 5, on the binding side)")
    fig.subplots_adjust(left=0.22, wspace=1.1, hspace=0.6, top=1 - 0.7 / height)
    return _save(fig, path)


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="t", na_rep="")


def _flagged_view(flagged: pd.DataFrame) -> pd.DataFrame:
    def pct(v: Any) -> str:
        return f"{100 * v:.2f} %" if np.isfinite(v) else ""

    return pd.DataFrame(
        {
            "venue": flagged["venue"],
            "symbol": flagged["symbol"],
            "tier": flagged["tier"],
            "notional": flagged["evaluated_notional"].map(lambda v: f"{v:,.0f}"),
            "published": flagged["published_initial_margin_rate"].map(pct),
            "fair": flagged["fair_initial_margin_rate"].map(pct),
            "interval": [
                f"[{pct(a)}, {pct(b)}]"
                for a, b in zip(flagged["fair_lower"], flagged["fair_upper"], strict=True)
            ],
            "deviation": flagged["deviation"].map(lambda v: f"{v:+.0%}"),
            "status": flagged["status"],
            "score": flagged["score"].map(lambda v: f"{v:.1f}"),
            "H (min)": flagged["horizon_minutes"].map(lambda v: f"{v:,.0f}"),
            "implied H (min)": [
                f"{h:,.1f}" + {"below": " (below grid)", "above": " (above grid)"}.get(c, "")
                for h, c in zip(
                    flagged["implied_horizon_minutes"],
                    flagged["implied_horizon_censored"],
                    strict=True,
                )
            ],
            "drivers": flagged["drivers"],
        }
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#1c2833;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d5d8dc}
table.t{border-collapse:collapse;font-size:12px;margin:8px 0}
table.t th,table.t td{padding:3px 8px;border-bottom:1px solid #eaecee;text-align:left;
vertical-align:top}
table.t th{background:#f4f6f7}
img{max-width:100%;margin:8px 0;border:1px solid #eaecee}
.meta{color:#566573;font-size:13px}
"""


def write_report(
    flags: pd.DataFrame,
    out: Path,
    *,
    cfg: ExperimentConfig,
    model: FairMarginModel | None = None,
    labelled: pd.DataFrame | None = None,
    inputs: pd.DataFrame | None = None,
    title: str = "fairmargin discrepancy report",
    run_id: str = "",
) -> Report:
    """Write ``out/report.html`` and its PNGs (``out/report_*.png``).

    Parameters
    ----------
    flags : the flags table (DATA_CONTRACT.md).
    cfg : the config of the run (recorded in the header).
    model : the model that judged the latest schedules; without it the backtest and
        contributions sections are left out.
    labelled : the labelled panel (realised moves for the backtest charts).
    inputs : the judged tiers' state rows, indexed like ``flags`` (``FlagResult.inputs``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    sections: list[str] = []

    counts = (
        flags.groupby(["venue", "status"]).size().unstack(fill_value=0).reset_index()
        if len(flags)
        else pd.DataFrame()
    )
    if len(counts):
        counts.columns.name = None
    flagged = flags[flags["status"].isin(FLAGGED)].sort_values("score", ascending=False)
    versions = ", ".join(sorted(set(flags["model_version"].astype(str)))) or "(none)"
    as_of = ", ".join(sorted({f"{t:%Y-%m-%d %H:%M}" for t in pd.to_datetime(flags["as_of"])}))
    head = (
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">{len(flags)} tiers judged at {html.escape(as_of[:200])} UTC; '
        f"{len(flagged)} flagged. Coverage q = {cfg.coverage}, base latency "
        f"{cfg.base_latency_minutes} min, participation {cfg.participation}, materiality "
        f"{cfg.materiality}, interval level {cfg.interval_level}. Model: "
        f"{html.escape(versions)}{'; MLflow run ' + html.escape(run_id) if run_id else ''}.</p>"
    )
    sections.append("<h2>Summary</h2>" + (_table(counts) if len(counts) else "<p>no tiers</p>"))
    if len(flagged):
        sections.append(
            "<h3>Flagged tiers (largest score first)</h3>"
            "<p class='meta'>score: distance of the published rate outside the interval, in "
            "half-widths; drivers: the features that move fair most, each against its median "
            "over the training panel, in percentage points of margin.</p>"
            + _table(_flagged_view(flagged))
        )
    else:
        sections.append("<p>No tier is materially under- or over-margined.</p>")

    parts = ["<h2>Published vs fair margin by tier</h2>"]
    for venue in sorted(flags["venue"].unique()):
        name = f"report_tiers_{venue}.png"
        images[name] = _plot_venue(flags, str(venue), out / name)
        parts.append(f"<h3>{html.escape(str(venue))}</h3>" + _png_tag(images[name], name))
    sections.append("".join(parts))

    name = "report_implied_horizon.png"
    images[name] = _plot_implied(flags, out / name)
    sections.append("<h2>Implied liquidation horizon</h2>" + _png_tag(images[name], name))

    if model is not None and labelled is not None:
        parts = [
            "<h2>Backtest: margin vs realised adverse moves</h2>"
            "<p class='meta'>One contract per venue; the model's q-quantile per side at the "
            "grid horizon nearest H for a 1,000,000 position, on a sampled grid of decision "
            "times, against the realised adverse move over that horizon. Crosses are "
            "exceptions (the move exceeded the margin).</p>"
        ]
        for venue in sorted(flags["venue"].unique()):
            cands = labelled[(labelled["venue"] == venue) & labelled["minutes_to_expiry"].isna()]
            symbols = sorted(cands["symbol"].unique()) or sorted(
                labelled.loc[labelled["venue"] == venue, "symbol"].unique()
            )
            if not symbols:
                continue
            symbol = str(symbols[0])
            try:
                series = backtest_series(model, labelled, cfg, venue=str(venue), symbol=symbol)
            except FairmarginInputError as exc:
                parts.append(f"<p>{html.escape(str(exc))}</p>")
                continue
            safe = f"{venue}_{symbol}".replace("/", "-").replace(":", "_")
            name = f"report_backtest_{safe}.png"
            h = int(series["horizon_minutes"].iloc[0])
            images[name] = _plot_backtest(
                series, f"{venue} {symbol}, {h}-minute horizon", model.cutoff_, out / name
            )
            parts.append(_png_tag(images[name], name))
        sections.append("".join(parts))

    if model is not None and inputs is not None and len(flagged):
        name = "report_drivers.png"
        path = _plot_drivers(flagged, inputs, model, out / name)
        if path is not None:
            images[name] = path
            sections.append(
                "<h2>Feature contributions of the flagged tiers</h2>" + _png_tag(path, name)
            )

    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + head
        + "".join(sections)
        + "</body></html>"
    )
    target = out / "report.html"
    tmp = target.with_name(".report.html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(target)
    return Report(html=target, images=images)


def models_for(
    flags: pd.DataFrame, models: Mapping[pd.Timestamp, FairMarginModel]
) -> FairMarginModel | None:
    """The model that judged the latest as_of of a walk-forward run (None without models)."""
    if not models:
        return None
    latest = pd.Timestamp(pd.to_datetime(flags["as_of"]).max())
    usable: Sequence[pd.Timestamp] = [c for c in models if c <= latest] or list(models)
    return models[max(usable)]
