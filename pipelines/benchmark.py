"""The cross-venue benchmark: the same underlying, side by side across venues.

Pure step (no MLflow, no files): tables + config -> :class:`BenchmarkResult` with

* ``frame``: one row per (underlying, as_of, venue, symbol, tier) at each comparison date
  ``as_of``, where every venue listing the underlying shows its latest schedule at or before it
  (``schedule_as_of``; ``comparison`` says whether the compared schedules share a date), the
  published rate, fair margin and its interval from :func:`pipelines.flag.flag_tiers` (fitted on
  the bundle's history before each schedule, or the given model), the implied horizon, and the
  peer view (:mod:`models.peer`);
* ``ranking``: per (underlying, as_of) the venues from most under- to most over-margined by the
  mean over priced tiers of log(published / fair);
* ``positions``: for each requested position, the initial margin each venue would require, the
  fair margin and the capital difference.

Pricing of a schedule: ``priced`` when intraday bars give fair margin at its date; else
``daily_only`` when daily bars do (quantiles fitted on horizons of a day or more; shorter H are
extrapolated as a power law in H, METHOD.md); else ``unpriced`` (still in the published
comparison and the peer view).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError, require_columns
from features.panel import timeframe_minutes
from models.fair import FairMarginModel
from models.horizon import evaluated_notional
from models.peer import PeerMarginRegressor, leave_one_group_out, peer_features
from pipelines.config import ExperimentConfig
from pipelines.flag import flag_tiers, labelled_panel

__all__ = [
    "BENCHMARK_COLUMNS",
    "POSITION_COLUMNS",
    "RANKING_COLUMNS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Position",
    "benchmark",
    "comparison_schedules",
    "parse_position",
    "published_rate_at",
    "truth_agreement",
    "underlying_of",
    "venue_ranking",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

BENCHMARK_COLUMNS = [
    "underlying", "as_of", "venue", "symbol", "tier", "schedule_as_of", "schedule_age_days",
    "comparison", "n_venues", "pricing", "min_notional", "max_notional", "evaluated_notional",
    "published_initial_margin_rate", "fair_initial_margin_rate", "fair_lower", "fair_upper",
    "deviation", "status", "horizon_minutes", "implied_horizon_minutes",
    "implied_horizon_censored", "peer_expected_rate", "peer_residual", "model_version", "note",
]  # fmt: skip
RANKING_COLUMNS = [
    "underlying", "as_of", "venue", "mean_log_deviation", "rank", "n_ranked", "basis",
    "n_tiers", "mean_peer_log_residual", "note",
]  # fmt: skip
POSITION_COLUMNS = [
    "underlying", "as_of", "venue", "symbol", "schedule_as_of", "pricing", "notional", "side",
    "tier", "published_initial_margin_rate", "initial_margin", "fair_initial_margin_rate",
    "fair_margin", "capital_difference", "note",
]  # fmt: skip

_PREFIX = re.compile(r"^(1000000|100000|10000|1000|100|1M|1K)(?=[A-Z])")
_ALIASES = {"XBT": "BTC"}
_DAILY = 1440


@dataclass(frozen=True, slots=True)
class Position:
    """A position a trader asks about: notional in the quote currency and side."""

    notional: float
    side: Literal["long", "short", "both"] = "both"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.notional) and self.notional > 0):
            raise FairmarginInputError(
                f"--position: notional must be a finite number > 0, got {self.notional!r}"
            )
        if self.side not in ("long", "short", "both"):
            raise FairmarginInputError(
                f"--position: side must be long, short or both, got {self.side!r}"
            )


def parse_position(text: str) -> Position:
    """``"1000000:long"``, ``"1e6"`` or ``"250000:short"`` -> :class:`Position`."""
    amount, _, side = text.partition(":")
    try:
        notional = float(amount.replace("_", "").replace(",", ""))
    except ValueError:
        raise FairmarginInputError(
            f"--position must be NOTIONAL[:long|short|both], got {text!r}"
        ) from None
    return Position(notional, side or "both")  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class BenchmarkConfig:
    """What to compare.

    Attributes
    ----------
    underlyings : underlyings to keep (empty: all).
    as_of : ``"latest"`` (one comparison per underlying, at its latest schedule date), ``"all"``
        (a comparison at every date a venue published a schedule of it) or explicit times.
    positions : the position view's positions.
    daily_horizons_minutes : the label grid of the daily-bar pass (multiples of a day).
    peer_n_estimators, peer_min_child_samples : the peer model's LightGBM settings.
    """

    underlyings: tuple[str, ...] = ()
    as_of: Literal["latest", "all"] | tuple[pd.Timestamp, ...] = "latest"
    positions: tuple[Position, ...] = ()
    daily_horizons_minutes: tuple[int, ...] = (1440, 4320, 10080)
    peer_n_estimators: int = 200
    peer_min_child_samples: int = 5

    def __post_init__(self) -> None:
        if not self.daily_horizons_minutes or any(
            h <= 0 or h % _DAILY for h in self.daily_horizons_minutes
        ):
            raise FairmarginInputError(
                f"BenchmarkConfig: daily_horizons_minutes must be positive multiples of 1440, "
                f"got {self.daily_horizons_minutes!r}"
            )
        if isinstance(self.as_of, str) and self.as_of not in ("latest", "all"):
            raise FairmarginInputError(
                f"BenchmarkConfig: as_of must be 'latest', 'all' or times, got {self.as_of!r}"
            )


@dataclass(frozen=True)
class BenchmarkResult:
    frame: pd.DataFrame
    ranking: pd.DataFrame
    positions: pd.DataFrame
    models: dict[pd.Timestamp, FairMarginModel] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def underlying_of(base: pd.Series) -> pd.Series:
    """Underlying of a contract from ``contracts.base``: upper case, ``1000PEPE`` -> ``PEPE``,
    ``XBT`` -> ``BTC``."""
    b = base.astype(str).str.upper().str.replace(_PREFIX, "", regex=True)
    return b.replace(_ALIASES)


def _tiers_with_underlying(tables: Mapping[str, pd.DataFrame | None]) -> pd.DataFrame:
    contracts, tiers = tables.get("contracts"), tables.get("margin_tiers")
    if contracts is None or tiers is None or tiers.empty:
        raise FairmarginInputError("benchmark: the bundle must hold contracts and margin_tiers")
    require_columns(contracts, ["venue", "symbol", "type", "base", "expiry"], who="contracts")
    c = contracts[contracts["type"].isin(["swap", "future"])]
    c = c[["venue", "symbol", "type", "base", "linear", "expiry"]].assign(
        underlying=underlying_of(c["base"])
    )
    return tiers.merge(c, on=["venue", "symbol"], how="inner")


def comparison_schedules(tiers: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """(underlying, as_of, venue, symbol, schedule_as_of) of every comparison: each contract's
    latest schedule at or before ``as_of``; dated futures expired by then are left out."""
    keys = tiers[["underlying", "venue", "symbol", "as_of", "expiry"]].drop_duplicates(
        ["venue", "symbol", "as_of"]
    )
    if cfg.underlyings:
        keys = keys[keys["underlying"].isin(cfg.underlyings)]
        if keys.empty:
            raise FairmarginInputError(
                f"--underlying must name an underlying with margin tiers, got "
                f"{list(cfg.underlyings)}; available: {sorted(tiers['underlying'].unique())}"
            )
    parts = []
    for u, g in keys.groupby("underlying", sort=True):
        if cfg.as_of == "latest":
            dates = [g["as_of"].max()]
        elif cfg.as_of == "all":
            dates = sorted(g["as_of"].unique())
        else:
            dates = sorted(cfg.as_of)
        for d in dates:
            d = pd.Timestamp(d)
            known = g[(g["as_of"] <= d) & ~(g["expiry"] <= d)]
            if known.empty:
                continue
            latest = known.loc[known.groupby(["venue", "symbol"])["as_of"].idxmax()]
            parts.append(
                latest[["venue", "symbol"]].assign(
                    underlying=u, comparison_as_of=d, schedule_as_of=latest["as_of"].to_numpy()
                )
            )
    if not parts:
        raise FairmarginInputError(
            f"benchmark: no schedule published at or before the comparison dates {cfg.as_of!r}"
        )
    return pd.concat(parts, ignore_index=True)


def _bars_cover(
    ohlcv: pd.DataFrame | None,
    schedules: pd.DataFrame,
    *,
    intraday: bool,
    ecfg: ExperimentConfig,
) -> pd.Series:
    """Whether bars of the kind asked cover each (venue, symbol, schedule_as_of): a bar closing
    within the price tolerance before it and ``min_history_days`` of bars before that."""
    out = pd.Series(False, index=schedules.index)
    if ohlcv is None or ohlcv.empty:
        return out
    tf_min = ohlcv["timeframe"].map(
        {tf: timeframe_minutes(tf) for tf in ohlcv["timeframe"].unique()}
    )
    rows = ohlcv[(tf_min < _DAILY) if intraday else (tf_min >= _DAILY)]
    if rows.empty:
        return out
    close = rows["timestamp"] + pd.to_timedelta(tf_min[rows.index], unit="min")
    span = (
        rows.assign(close=close)
        .groupby(["venue", "symbol"])["close"]
        .agg(["min", "max"])
        .reset_index()
    )
    s = schedules.reset_index().merge(span, on=["venue", "symbol"], how="left")
    tol = pd.Timedelta(minutes=max(ecfg.data.price_tolerance_minutes, 0 if intraday else 2880))
    ok = (
        s["min"].notna()
        & (s["schedule_as_of"] - s["min"] >= pd.Timedelta(days=ecfg.data.min_history_days))
        & (s["max"] >= s["schedule_as_of"] - tol)
    )
    return pd.Series(ok.to_numpy(dtype=bool), index=s["index"].to_numpy())


def _daily_risk(ohlcv: pd.DataFrame | None, keys: pd.DataFrame) -> pd.DataFrame:
    """Peer-model risk features per (venue, symbol, schedule_as_of) from any bars known then:
    daily log-return volatility over the last 30 days and traded notional per day over the
    last 7 (NaN without bars)."""
    out = keys[["venue", "symbol", "schedule_as_of"]].drop_duplicates().reset_index(drop=True)
    out["daily_vol"] = np.nan
    out["daily_traded_notional"] = np.nan
    if ohlcv is None or ohlcv.empty:
        return out
    for i in range(len(out)):
        venue, symbol = out.at[i, "venue"], out.at[i, "symbol"]
        bars = ohlcv[(ohlcv["venue"] == venue) & (ohlcv["symbol"] == symbol)]
        if bars.empty:
            continue
        tfs = {str(tf): timeframe_minutes(tf) for tf in bars["timeframe"].unique()}
        t: pd.Timestamp = out["schedule_as_of"].iloc[i]
        best = None
        for tf in sorted(tfs, key=lambda k: tfs[k]):  # the finest timeframe with 10 bars
            b = bars[bars["timeframe"] == tf]
            close_t = b["timestamp"] + pd.Timedelta(minutes=tfs[tf])
            b = b[(close_t <= t) & (close_t > t - pd.Timedelta(days=30))].sort_values("timestamp")
            if len(b) >= 10:
                best = (b, tfs[tf])
                break
        if best is None:
            continue
        b, minutes = best
        r = np.diff(np.log(b["close"].to_numpy(dtype=np.float64)))
        out.at[i, "daily_vol"] = float(np.std(r, ddof=1) * np.sqrt(_DAILY / minutes))
        last7 = b[b["timestamp"] >= t - pd.Timedelta(days=7)]
        days = max(len(last7) * minutes / _DAILY, 1e-9)
        notional = float((last7["volume"] * last7["close"]).sum())
        out.at[i, "daily_traded_notional"] = notional / days if notional > 0 else np.nan
    return out


def _intraday_only(ohlcv: pd.DataFrame, daily: bool) -> pd.DataFrame:
    tf_min = ohlcv["timeframe"].map(
        {tf: timeframe_minutes(tf) for tf in ohlcv["timeframe"].unique()}
    )
    return ohlcv[(tf_min >= _DAILY) if daily else (tf_min < _DAILY)]


@dataclass
class _Pass:
    """One fair-margin pass (intraday or daily bars): its tables, config and models."""

    name: str
    tables: dict[str, pd.DataFrame | None]
    cfg: ExperimentConfig
    labelled: pd.DataFrame | None = None
    models: dict[pd.Timestamp, FairMarginModel] = field(default_factory=dict)
    fixed: FairMarginModel | None = None
    version: str = ""


def _run_pass(p: _Pass, schedules: pd.DataFrame, say: Progress) -> pd.DataFrame:
    """Flags of ``schedules`` (margin_tiers rows) judged at their own as_of in this pass."""
    if schedules.empty:
        return pd.DataFrame()
    tables = {**p.tables, "margin_tiers": schedules}
    if p.labelled is None:
        p.labelled = labelled_panel(tables, p.cfg)
        say(f"{p.name} pass: features and labels, {len(p.labelled):,} rows")
    try:
        res = flag_tiers(
            tables,
            p.cfg,
            as_of="all",
            model=p.fixed,
            model_version=p.version,
            labelled=p.labelled,
            progress=say,
        )
    except FairmarginInputError as exc:
        log.warning("%s pass: %s", p.name, exc)
        return pd.DataFrame()
    p.models.update(res.models)
    return res.flags


def _model_for(p: _Pass, t: pd.Timestamp) -> FairMarginModel | None:
    if p.fixed is not None:
        return p.fixed
    cut = [c for c in p.models if c <= t]
    return p.models[max(cut)] if cut else None


def published_rate_at(tiers: pd.DataFrame, notional: float) -> pd.DataFrame:
    """The tier of each (venue, symbol, as_of) schedule covering ``notional`` (min < N <= max;
    the first tier from 0) with its published initial margin rate (1 / max_leverage where the
    rate is null). Schedules whose last tier ends below N are left out."""
    t = tiers[(tiers["min_notional"] < notional) & (tiers["max_notional"] >= notional)]
    rate = t["initial_margin_rate"].fillna(1.0 / t["max_leverage"])
    return t.assign(published_initial_margin_rate=rate.to_numpy(dtype=np.float64))


def _fair_at(
    passes: Sequence[_Pass], pricing: pd.Series, rows: pd.DataFrame, notional: float
) -> pd.DataFrame:
    """Fair margin at ``notional`` for (venue, symbol, schedule_as_of) rows with their published
    rate at that notional: a one-tier schedule judged at ``single_tier_notional = notional``,
    with the model that judged the schedule's tiers."""
    out = []
    for p in passes:
        sel = rows[pricing.reindex(rows.index).to_numpy() == p.name]
        for t, g in sel.groupby("schedule_as_of"):
            model = _model_for(p, pd.Timestamp(t))
            if model is None:
                continue
            one = pd.DataFrame(
                {
                    "venue": g["venue"],
                    "symbol": g["symbol"],
                    "as_of": g["schedule_as_of"],
                    "tier": 1,
                    "min_notional": 0.0,
                    "max_notional": np.inf,
                    "maintenance_margin_rate": np.nan,
                    "max_leverage": 1.0 / g["published_initial_margin_rate"],
                    "initial_margin_rate": g["published_initial_margin_rate"],
                }
            ).drop_duplicates(["venue", "symbol", "as_of"])
            cfg = replace(p.cfg, single_tier_notional=notional)
            res = flag_tiers(
                {**p.tables, "margin_tiers": one},
                cfg,
                as_of="all",
                model=model,
                model_version=p.version,
                labelled=p.labelled,
            )
            out.append(res.flags)
    if not out:
        return pd.DataFrame(columns=["venue", "symbol", "as_of"])
    return pd.concat(out, ignore_index=True)


def venue_ranking(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (underlying, as_of): each venue's mean over priced tiers of log(published / fair),
    ranked from most under-margined (1) to most over-margined. Where fewer than two venues have
    priced tiers, the daily_only tiers are used too and ``basis`` says which tiers each venue's
    mean rests on; a venue alone is not ranked."""
    rows = []
    for (u, d), g in frame.groupby(["underlying", "as_of"], sort=True):
        n_venues = int(g["venue"].nunique())
        ok = np.isfinite(g["fair_initial_margin_rate"]) & (g["fair_initial_margin_rate"] > 0)
        priced = ok & (g["pricing"] == "priced")
        use = g[priced] if g.loc[priced, "venue"].nunique() >= 2 else g[ok]
        basis = use.groupby("venue")["pricing"].agg(lambda s: "+".join(sorted(set(s))))
        logdev = np.log(use["published_initial_margin_rate"] / use["fair_initial_margin_rate"])
        mean = logdev.groupby(use["venue"]).mean()
        peer = np.log1p(g["peer_residual"]).groupby(g["venue"]).mean()
        counts = use.groupby("venue").size()
        ranked = mean.rank(method="min") if n_venues > 1 and len(mean) > 1 else None
        for v in sorted(g["venue"].unique()):
            note = ""
            if n_venues == 1:
                note = "alone: no other venue lists this underlying at this date"
            elif v not in mean.index:
                note = "unpriced: no fair margin at this date"
            elif len(mean) < 2:
                note = "the only priced venue: not ranked"
            if (g.loc[g["venue"] == v, "comparison"] == "mixed_dates").any():
                note = (note + "; " if note else "") + "schedules of different dates"
            rows.append(
                {
                    "underlying": u,
                    "as_of": d,
                    "venue": v,
                    "mean_log_deviation": float(mean.get(v, np.nan)),
                    "rank": float(ranked[v]) if ranked is not None and v in ranked else np.nan,
                    "n_ranked": len(mean) if ranked is not None else 0,
                    "basis": str(basis.get(v, "")),
                    "n_tiers": int(counts.get(v, 0)),
                    "mean_peer_log_residual": float(peer.get(v, np.nan)),
                    "note": note,
                }
            )
    out = pd.DataFrame(rows, columns=RANKING_COLUMNS)
    out["rank"] = out["rank"].astype("Int64")
    return out


def benchmark(
    tables: Mapping[str, pd.DataFrame | None],
    ecfg: ExperimentConfig,
    bcfg: BenchmarkConfig,
    *,
    model: FairMarginModel | None = None,
    model_version: str = "",
    progress: Progress | None = None,
) -> BenchmarkResult:
    """Compare every venue's published margin with fair margin and with its peers.

    ``model`` (trained on intraday bars) judges the priced schedules; without it, models are
    fitted on the bundle's history before each schedule. The daily-bar pass always fits on the
    bundle (horizons ``bcfg.daily_horizons_minutes``).
    """
    say = progress or (lambda _msg: None)
    tiers = _tiers_with_underlying(tables)
    comp = comparison_schedules(tiers, bcfg)
    sched_keys = comp[["venue", "symbol", "schedule_as_of"]].drop_duplicates(ignore_index=True)
    ohlcv = tables.get("ohlcv")
    intraday_ok = _bars_cover(ohlcv, sched_keys, intraday=True, ecfg=ecfg)
    daily_ok = _bars_cover(ohlcv, sched_keys, intraday=False, ecfg=ecfg) & ~intraday_ok
    say(
        f"{comp['underlying'].nunique()} underlyings, {comp['comparison_as_of'].nunique()} "
        f"comparison dates, {len(sched_keys)} schedules: {int(intraday_ok.sum())} with intraday "
        f"bars, {int(daily_ok.sum())} with daily bars only"
    )
    base_tables = dict(tables)
    sched_tiers = tiers.merge(
        sched_keys.rename(columns={"schedule_as_of": "as_of"}), on=["venue", "symbol", "as_of"]
    )[
        ["venue", "symbol", "as_of", "tier", "min_notional", "max_notional",
         "maintenance_margin_rate", "max_leverage", "initial_margin_rate"]
    ]  # fmt: skip
    passes: list[_Pass] = []
    flags_parts = []
    if intraday_ok.any() and ohlcv is not None:
        p = _Pass(
            "priced",
            {**base_tables, "ohlcv": _intraday_only(ohlcv, daily=False)},
            ecfg,
            fixed=model,
            version=model_version,
        )
        want = sched_keys[intraday_ok.to_numpy()]
        f = _run_pass(p, _select(sched_tiers, want), say)
        passes.append(p)
        flags_parts.append(f.assign(pricing="priced") if len(f) else f)
    if daily_ok.any() and ohlcv is not None:
        dcfg = replace(
            ecfg,
            data=replace(
                ecfg.data,
                horizons_minutes=tuple(bcfg.daily_horizons_minutes),
                sample_every_minutes=_DAILY,
                price_tolerance_minutes=max(ecfg.data.price_tolerance_minutes, 2 * _DAILY),
                book_tolerance_minutes=ecfg.data.book_tolerance_minutes,
            ),
        )
        p = _Pass(
            "daily_only",
            {**base_tables, "ohlcv": _intraday_only(ohlcv, daily=True), "order_books": None},
            dcfg,
        )
        want = sched_keys[daily_ok.to_numpy()]
        f = _run_pass(p, _select(sched_tiers, want), say)
        passes.append(p)
        flags_parts.append(f.assign(pricing="daily_only") if len(f) else f)
    flags = (
        pd.concat([f for f in flags_parts if len(f)], ignore_index=True)
        if any(len(f) for f in flags_parts)
        else pd.DataFrame()
    )

    # one row per compared tier; unpriced tiers keep their published rate
    rows = comp.merge(
        tiers.rename(columns={"as_of": "schedule_as_of"}),
        on=["underlying", "venue", "symbol", "schedule_as_of"],
        how="left",
    )
    rows["published_initial_margin_rate"] = rows["initial_margin_rate"].fillna(
        1.0 / rows["max_leverage"]
    )
    ev = sched_tiers.assign(
        evaluated_notional=evaluated_notional(
            sched_tiers,
            single_tier_notional=ecfg.single_tier_notional,
            last_tier_cap_multiple=ecfg.last_tier_cap_multiple,
        ).to_numpy()
    ).rename(columns={"as_of": "schedule_as_of"})
    rows = rows.merge(
        ev[["venue", "symbol", "schedule_as_of", "tier", "evaluated_notional"]],
        on=["venue", "symbol", "schedule_as_of", "tier"],
        how="left",
    )
    fair_cols = [
        "fair_initial_margin_rate", "fair_lower", "fair_upper", "deviation", "status",
        "horizon_minutes", "implied_horizon_minutes", "implied_horizon_censored",
        "model_version", "pricing",
    ]  # fmt: skip
    if len(flags):
        f = flags.rename(columns={"as_of": "schedule_as_of"})
        f = f[f["status"] != "insufficient_data"]
        rows = rows.merge(
            f[["venue", "symbol", "schedule_as_of", "tier", *fair_cols]],
            on=["venue", "symbol", "schedule_as_of", "tier"],
            how="left",
        )
    else:
        for c in fair_cols:
            rows[c] = np.nan
    rows["pricing"] = rows["pricing"].fillna("unpriced").astype(str)
    for c in ("status", "implied_horizon_censored", "model_version"):
        rows[c] = rows[c].fillna("").astype(str)
    rows.loc[rows["pricing"] == "unpriced", "status"] = "unpriced"

    # the comparison itself: venues at the date, schedule dates
    grp = rows.groupby(["underlying", "comparison_as_of"])
    rows["n_venues"] = grp["venue"].transform("nunique").astype("int64")
    n_dates = grp["schedule_as_of"].transform("nunique")
    rows["comparison"] = np.where(
        rows["n_venues"] == 1, "alone", np.where(n_dates > 1, "mixed_dates", "same_date")
    )
    rows["schedule_age_days"] = (
        rows["comparison_as_of"] - rows["schedule_as_of"]
    ).dt.total_seconds() / 86400.0

    # the peer view, fitted once on every distinct tier (not once per comparison date)
    risk = _daily_risk(ohlcv, sched_keys)
    rows = rows.merge(risk, on=["venue", "symbol", "schedule_as_of"], how="left")
    distinct = rows.drop_duplicates(["venue", "symbol", "schedule_as_of", "tier"]).reset_index(
        drop=True
    )
    X = peer_features(
        distinct["evaluated_notional"],
        distinct["daily_vol"],
        distinct["daily_traded_notional"],
        distinct["linear"].astype(bool),
        distinct["type"] == "future",
    )
    est = PeerMarginRegressor(
        n_estimators=bcfg.peer_n_estimators,
        min_child_samples=bcfg.peer_min_child_samples,
        random_state=ecfg.random_state,
    )
    distinct["peer_expected_rate"] = leave_one_group_out(
        X, distinct["published_initial_margin_rate"], distinct["venue"], estimator=est
    )
    rows = rows.merge(
        distinct[["venue", "symbol", "schedule_as_of", "tier", "peer_expected_rate"]],
        on=["venue", "symbol", "schedule_as_of", "tier"],
        how="left",
    )
    rows["peer_residual"] = rows["published_initial_margin_rate"] / rows["peer_expected_rate"] - 1
    say(f"peer model: {len(distinct)} distinct tiers of {distinct['venue'].nunique()} venues")

    rows["note"] = _row_notes(rows)
    frame = rows.rename(columns={"comparison_as_of": "as_of"}).sort_values(
        ["underlying", "as_of", "venue", "symbol", "tier"], ignore_index=True
    )
    frame["tier"] = frame["tier"].astype("int64")
    frame = frame[BENCHMARK_COLUMNS]
    ranking = venue_ranking(frame)
    positions = _position_view(frame, tiers, passes, bcfg.positions)
    models: dict[pd.Timestamp, FairMarginModel] = {}
    for p in passes:
        models.update(p.models)
    metrics = {
        "n_rows": float(len(frame)),
        "n_priced": float((frame["pricing"] == "priced").sum()),
        "n_daily_only": float((frame["pricing"] == "daily_only").sum()),
        "n_unpriced": float((frame["pricing"] == "unpriced").sum()),
    }
    truth = tables.get("truth")
    if truth is not None and len(truth):
        metrics.update(truth_agreement(frame, truth))
    return BenchmarkResult(frame, ranking, positions, models=models, metrics=metrics)


def _row_notes(rows: pd.DataFrame) -> list[str]:
    """What a reader must know about a row: alone, schedule dates, daily bars only."""
    notes = []
    for comp, age, pricing, h in zip(
        rows["comparison"],
        rows["schedule_age_days"],
        rows["pricing"],
        rows["horizon_minutes"],
        strict=True,
    ):
        parts = []
        if comp == "alone":
            parts.append("alone: no other venue lists this underlying at this date")
        elif comp == "mixed_dates":
            parts.append(
                f"schedules of different dates compared; this one {age:.1f} days before as_of"
            )
        if pricing == "daily_only":
            parts.append(
                "daily bars only: quantiles fitted at horizons >= 1 day"
                + ("; H below a day extrapolated (power law)" if h < _DAILY else "")
            )
        elif pricing == "unpriced":
            parts.append("unpriced: no bars at this date; published and peer view only")
        notes.append("; ".join(parts))
    return notes


def _select(tiers: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    return tiers.merge(
        keys.rename(columns={"schedule_as_of": "as_of"})[["venue", "symbol", "as_of"]],
        on=["venue", "symbol", "as_of"],
    )


def _position_view(
    frame: pd.DataFrame,
    tiers: pd.DataFrame,
    passes: Sequence[_Pass],
    positions: Sequence[Position],
) -> pd.DataFrame:
    """For each position, at each underlying's latest comparison date: the IM each contract's
    schedule would require, fair margin at that notional, and the capital difference
    (published IM - fair IM: > 0 locks up more capital than the risk needs)."""
    if not positions:
        return pd.DataFrame(columns=POSITION_COLUMNS)
    latest = frame[frame["as_of"] == frame.groupby("underlying")["as_of"].transform("max")]
    keys = latest.drop_duplicates(["venue", "symbol", "schedule_as_of"])[
        ["underlying", "as_of", "venue", "symbol", "schedule_as_of", "pricing"]
    ]
    sched = tiers.rename(columns={"as_of": "schedule_as_of"}).merge(
        keys[["venue", "symbol", "schedule_as_of"]], on=["venue", "symbol", "schedule_as_of"]
    )
    out = []
    for pos in positions:
        at = published_rate_at(sched, pos.notional)
        rows = keys.merge(
            at[["venue", "symbol", "schedule_as_of", "tier", "published_initial_margin_rate"]],
            on=["venue", "symbol", "schedule_as_of"],
            how="left",
        )
        pricing = rows["pricing"]
        priced = rows[rows["published_initial_margin_rate"].notna()]
        fair = _fair_at(passes, pricing, priced, pos.notional)
        side_col = {"both": "fair_initial_margin_rate", "long": "fair_long_rate",
                    "short": "fair_short_rate"}[pos.side]  # fmt: skip
        if len(fair):
            fair = fair[fair["status"] != "insufficient_data"]
            f = fair.rename(columns={"as_of": "schedule_as_of", side_col: "_fair"})[
                ["venue", "symbol", "schedule_as_of", "_fair"]
            ]
            rows = rows.merge(f, on=["venue", "symbol", "schedule_as_of"], how="left")
        else:
            rows["_fair"] = np.nan
        note = np.where(
            rows["published_initial_margin_rate"].isna(),
            "above the schedule's largest tier: not allowed",
            np.where(rows["_fair"].isna(), "no fair margin (unpriced)", ""),
        )
        note = np.where(
            (rows["pricing"] == "daily_only") & (note == ""),
            "fair from daily bars (horizons >= 1 day)",
            note,
        )
        im = rows["published_initial_margin_rate"] * pos.notional
        fair_im = rows["_fair"] * pos.notional
        out.append(
            pd.DataFrame(
                {
                    "underlying": rows["underlying"],
                    "as_of": rows["as_of"],
                    "venue": rows["venue"],
                    "symbol": rows["symbol"],
                    "schedule_as_of": rows["schedule_as_of"],
                    "pricing": rows["pricing"],
                    "notional": pos.notional,
                    "side": pos.side,
                    "tier": rows["tier"].astype("Int64"),
                    "published_initial_margin_rate": rows["published_initial_margin_rate"],
                    "initial_margin": im,
                    "fair_initial_margin_rate": rows["_fair"],
                    "fair_margin": fair_im,
                    "capital_difference": im - fair_im,
                    "note": note.astype(str),
                }
            )
        )
    return pd.concat(out, ignore_index=True)[POSITION_COLUMNS]


def truth_agreement(frame: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Agreement with a simulator's truth at its as_of: Spearman correlation per underlying
    between our venue ranking and the truth's (mean log(published / true fair) over the same
    tiers), averaged over underlyings with at least 3 ranked venues (2 when none has 3); and
    the share of implied horizons within 25 % of the truth's (both uncensored)."""
    t = truth.rename(columns={"as_of": "schedule_as_of"})
    m = frame.merge(
        t[["venue", "symbol", "schedule_as_of", "tier", "fair_initial_margin_rate",
           *(["implied_horizon_minutes"] if "implied_horizon_minutes" in t else [])]],
        on=["venue", "symbol", "schedule_as_of", "tier"],
        suffixes=("", "_true"),
    )  # fmt: skip
    m = m[(m["pricing"] == "priced") & np.isfinite(m["fair_initial_margin_rate"])]
    rhos: list[float] = []
    for (_u, _d), g in m.groupby(["underlying", "as_of"]):
        ours = np.log(g["published_initial_margin_rate"] / g["fair_initial_margin_rate"])
        true = np.log(g["published_initial_margin_rate"] / g["fair_initial_margin_rate_true"])
        a = ours.groupby(g["venue"]).mean()
        b = true.groupby(g["venue"]).mean().reindex(a.index)
        if len(a) >= 2:
            rho = float(a.rank().corr(b.rank()))  # Spearman: Pearson on ranks
            if np.isfinite(rho):
                rhos.append(rho)
    out = {
        "ranking_spearman_mean": float(np.mean(rhos)) if rhos else np.nan,
        "ranking_n_underlyings": float(len(rhos)),
    }
    if "implied_horizon_minutes_true" in m:
        ok = (
            (m["implied_horizon_censored"] == "")
            & np.isfinite(m["implied_horizon_minutes"])
            & np.isfinite(m["implied_horizon_minutes_true"])
        )
        rel = np.abs(
            m.loc[ok, "implied_horizon_minutes"] / m.loc[ok, "implied_horizon_minutes_true"] - 1
        )
        out["implied_horizon_within_25pct"] = float((rel <= 0.25).mean()) if ok.any() else np.nan
        out["implied_horizon_median_rel_error"] = float(rel.median()) if ok.any() else np.nan
        out["implied_horizon_n"] = float(ok.sum())
    return out
