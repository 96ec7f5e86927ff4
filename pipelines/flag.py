"""The flag step: published vs fair initial margin per (venue, symbol, as_of, tier).

Pure (no MLflow, no files): it takes tables and a config and returns frames. The CLI and
:mod:`pipelines.tracking` put edges around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError
from features.book import book_arrays, liquidation_cost
from features.panel import PanelSpec, build_panel
from models.backtest import apc_multiplier_at
from models.fair import FairMarginModel, QuantileGrid, add_labels
from models.horizon import evaluated_notional, implied_horizon, liquidation_horizon_minutes
from models.labels import SIDES
from pipelines.config import ExperimentConfig
from pipelines.explain import Contributions, attach_medians, contributions, nearest_grid_index

__all__ = [
    "FLAG_COLUMNS",
    "FlagResult",
    "flag_tiers",
    "judge",
    "labelled_panel",
    "select_schedules",
    "status_of",
    "train_model",
]

log = logging.getLogger(__name__)

FLAG_COLUMNS = [
    "venue", "symbol", "tier", "as_of", "min_notional", "max_notional", "evaluated_notional",
    "published_initial_margin_rate", "fair_initial_margin_rate", "fair_long_rate",
    "fair_short_rate", "fair_lower", "fair_upper", "deviation", "status", "score",
    "binding_side", "horizon_minutes", "implied_horizon_minutes", "implied_horizon_censored",
    "liquidation_cost", "liquidation_cost_source", "drivers", "coverage",
    "base_latency_minutes", "participation", "model_version",
]  # fmt: skip

Progress = Callable[[str], None]
Side = Literal["long", "short", "both"]


@dataclass(frozen=True)
class FlagResult:
    """Flags and the models that produced them (cutoff -> model)."""

    flags: pd.DataFrame
    models: dict[pd.Timestamp, FairMarginModel] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: pd.DataFrame | None = None  # the served model's input row of each judged tier


def panel_spec(cfg: ExperimentConfig) -> PanelSpec:
    return PanelSpec(
        book_tolerance_minutes=cfg.data.book_tolerance_minutes,
        quote_tolerance_minutes=cfg.data.quote_tolerance_minutes,
        funding_tolerance_minutes=cfg.data.funding_tolerance_minutes,
        scale_halflife_minutes=cfg.data.scale_halflife_minutes,
    )


def labelled_panel(
    tables: Mapping[str, pd.DataFrame | None], cfg: ExperimentConfig
) -> pd.DataFrame:
    """Feature panel of every swap and future with the label grid attached."""
    panel = build_panel(tables, spec=panel_spec(cfg))
    return add_labels(panel, horizons_minutes=cfg.data.horizons_minutes)


def train_model(
    labelled: pd.DataFrame, cfg: ExperimentConfig, *, cutoff: pd.Timestamp
) -> FairMarginModel:
    """Fit the fair-margin model on what is known at ``cutoff``."""
    model = FairMarginModel(
        coverage=cfg.coverage,
        interval_level=cfg.interval_level,
        horizons_minutes=cfg.data.horizons_minutes,
        regressor_params={
            "n_estimators": cfg.model.n_estimators,
            "learning_rate": cfg.model.learning_rate,
            "num_leaves": cfg.model.num_leaves,
            "min_child_samples": cfg.model.min_child_samples,
            "subsample": cfg.model.subsample,
            "colsample_bytree": cfg.model.colsample_bytree,
            "reg_lambda": cfg.model.reg_lambda,
            "n_jobs": cfg.model.n_jobs,
            "n_seeds": cfg.model.n_seeds,
            "random_state": cfg.random_state,
        },
        calibration_method=cfg.calibration.method,
        calibration_fraction=cfg.calibration.window_fraction,
        max_calibration_days=cfg.calibration.max_window_days,
        min_scores=cfg.calibration.min_scores,
        min_independent_scores=cfg.calibration.min_independent_scores,
        side_asymmetry_z=cfg.calibration.side_asymmetry_z,
        level_drift_block_minutes=cfg.calibration.level_drift_block_minutes,
        fit_level=cfg.model.fit_level or None,
        sample_every_minutes=cfg.data.sample_every_minutes,
    )
    return model.fit(labelled, cutoff=cutoff)


def select_schedules(
    margin_tiers: pd.DataFrame, as_of: Literal["latest", "all"] | pd.Timestamp
) -> pd.DataFrame:
    """The tiers to judge: each (venue, symbol)'s latest schedule, every schedule, or the
    latest schedule at or before a time."""
    tiers = margin_tiers
    if isinstance(as_of, pd.Timestamp):
        tiers = tiers[tiers["as_of"] <= as_of]
        if tiers.empty:
            raise FairmarginInputError(
                f"--as-of {as_of}: no margin schedule published at or before it"
            )
    if as_of != "all":
        latest = tiers.groupby(["venue", "symbol"])["as_of"].transform("max")
        tiers = tiers[tiers["as_of"] == latest]
    return tiers.sort_values(["venue", "symbol", "as_of", "tier"], ignore_index=True)


def _state_at(panel: pd.DataFrame, schedules: pd.DataFrame) -> pd.DataFrame:
    """For each (venue, symbol, as_of): the panel row of the last bar closing at or before it."""
    keys = schedules[["venue", "symbol", "as_of"]].drop_duplicates().sort_values("as_of")
    first_t = panel.groupby(["venue", "symbol"])["t"].min().rename("first_t").reset_index()
    rows = pd.merge_asof(
        keys,
        panel.rename(columns={"t": "t_state"}).sort_values("t_state"),
        left_on="as_of",
        right_on="t_state",
        by=["venue", "symbol"],
        direction="backward",
    )
    return rows.merge(first_t, on=["venue", "symbol"], how="left")


def _costs(
    books: pd.DataFrame | None,
    state: pd.DataFrame,
    notionals: NDArray[np.float64],
    cfg: ExperimentConfig,
) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.object_]]:
    """Liquidation cost per side for each tier row (state row per tier): the book walk on the
    last snapshot at or before as_of within the tolerance, else the square-root impact
    estimate."""
    n = len(state)
    cost: dict[str, NDArray[np.float64]] = {s: np.full(n, np.nan) for s in SIDES}
    source = np.full(n, "impact_estimate", dtype=object)
    if books is not None and not books.empty:
        snaps = books[["venue", "symbol", "timestamp"]].drop_duplicates()
        tol = pd.Timedelta(minutes=cfg.data.book_tolerance_minutes)
        want = state[["venue", "symbol", "as_of"]].assign(_row=np.arange(n)).sort_values("as_of")
        hit = pd.merge_asof(
            want,
            snaps.sort_values("timestamp"),
            left_on="as_of",
            right_on="timestamp",
            by=["venue", "symbol"],
            direction="backward",
            tolerance=tol,
        ).dropna(subset=["timestamp"])
        if not hit.empty:
            used = hit[["venue", "symbol", "timestamp"]].drop_duplicates()
            sub = books.merge(used, on=["venue", "symbol", "timestamp"], how="inner")
            sub = sub.sort_values(
                ["venue", "symbol", "timestamp", "side", "level"], ignore_index=True
            )
            arrays = book_arrays(sub)
            pos = (
                arrays.keys.reset_index(drop=True).reset_index().rename(columns={"index": "_snap"})
            )
            hit = hit.merge(pos, on=["venue", "symbol", "timestamp"], how="left")
            rows = hit["_row"].to_numpy()
            snap = hit["_snap"].to_numpy()
            per_tier = replace(
                arrays,
                keys=arrays.keys.iloc[snap].reset_index(drop=True),
                bid_px=arrays.bid_px[snap],
                bid_amt=arrays.bid_amt[snap],
                ask_px=arrays.ask_px[snap],
                ask_amt=arrays.ask_amt[snap],
            )
            for side in SIDES:
                cost[side][rows] = liquidation_cost(
                    per_tier,
                    notionals[rows],
                    side=side,
                    beyond_depth_multiplier=cfg.beyond_depth_multiplier,
                )
            source[rows] = "book"
    missing = np.isnan(cost["long"])
    if missing.any():
        sigma_day = (state["sigma_bar"] / np.sqrt(state["bar_minutes"])).to_numpy() * np.sqrt(
            1440.0
        )
        daily_notional = state["traded_notional_per_minute"].to_numpy() * 1440.0
        with np.errstate(divide="ignore", invalid="ignore"):
            impact = cfg.impact_coefficient * sigma_day * np.sqrt(notionals / daily_notional)
        for side in SIDES:
            cost[side][missing] = impact[missing]
    return cost, source


def status_of(
    published: NDArray[np.float64],
    fair: NDArray[np.float64],
    lower: NDArray[np.float64],
    upper: NDArray[np.float64],
    materiality: float,
    usable: NDArray[np.bool_],
) -> tuple[NDArray[np.object_], NDArray[np.float64], NDArray[np.float64]]:
    """Status, deviation and score (METHOD.md, Flags) of published rates against fair."""
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = published / fair - 1.0
        half = np.maximum((upper - lower) / 2.0, 1e-12)
        outside = np.maximum(lower - published, published - upper)
        score = np.where(usable, np.maximum(outside, 0.0) / half, 0.0)
    status = np.full(len(published), "in_line", dtype=object)
    status[(published < lower) & (deviation < -materiality)] = "under_margined"
    status[(published > upper) & (deviation > materiality)] = "over_margined"
    status[~usable] = "insufficient_data"
    return status, deviation, score


def take_grid(grid: QuantileGrid, idx: NDArray[np.intp]) -> QuantileGrid:
    """The grid rows ``idx`` (e.g. one state row per position)."""
    return QuantileGrid(
        horizons=grid.horizons,
        quantile={s: grid.quantile[s][idx] for s in SIDES},
        lower={s: grid.lower[s][idx] for s in SIDES},
        upper={s: grid.upper[s][idx] for s in SIDES},
        scale=grid.scale[idx],
    )


def _driver_texts(
    contrib: Contributions,
    idx: NDArray[np.intp],
    gi: NDArray[np.intp],
    binding: NDArray[Any],
    wanted: NDArray[np.bool_],
) -> NDArray[np.object_]:
    drivers = np.full(len(idx), "", dtype=object)
    texts: dict[tuple[int, int, str], str] = {}  # a text depends on (state, horizon, side)
    for k in np.flatnonzero(wanted):
        key = (int(idx[k]), int(gi[k]), str(binding[k]))
        if key not in texts:
            texts[key] = contrib.text(*key)
        drivers[k] = texts[key]
    return drivers


def judge_on_grid(
    grid: QuantileGrid,
    contrib: Contributions | None,
    horizon: NDArray[np.float64],
    cost_long: NDArray[np.float64],
    cost_short: NDArray[np.float64],
    published: NDArray[np.float64],
    *,
    state_index: NDArray[np.intp] | None = None,
    side: Side = "both",
) -> dict[str, NDArray[Any]]:
    """Fair margin of positions from their states' quantile grids (pure numpy: the fast path of
    queries). ``grid`` and ``contrib`` hold one row per state; ``state_index`` maps each
    position to its state (default: one state per position). With ``side`` both, fair is the
    larger side's; with one side, fair, interval, implied horizon and drivers are that side's.
    """
    n = len(horizon)
    idx = np.arange(n) if state_index is None else np.asarray(state_index, dtype=np.intp)
    g = take_grid(grid, idx) if state_index is not None else grid
    fl = g.at("long", horizon) + cost_long
    fs = g.at("short", horizon) + cost_short
    bounds = {
        (s, which): g.at(s, horizon, which) + (cost_long if s == "long" else cost_short)
        for s in SIDES
        for which in ("lower", "upper")
    }
    if side == "both":
        fair = np.maximum(fl, fs)
        lower = np.maximum(bounds["long", "lower"], bounds["short", "lower"])
        upper = np.maximum(bounds["long", "upper"], bounds["short", "upper"])
        binding = np.where(fl >= fs, "long", "short").astype(object)
        ih, ic = implied_horizon(
            g.horizons, g.quantile["long"], g.quantile["short"], cost_long, cost_short, published
        )
    elif side in SIDES:
        fair = fl if side == "long" else fs
        lower, upper = bounds[side, "lower"], bounds[side, "upper"]
        binding = np.full(n, side, dtype=object)
        cost = cost_long if side == "long" else cost_short
        ih, ic = implied_horizon(
            g.horizons, g.quantile[side], g.quantile[side], cost, cost, published
        )
    else:
        raise FairmarginInputError(f"side must be long, short or both, got {side!r}")
    drivers = np.full(n, "", dtype=object)
    if contrib is not None:
        drivers = _driver_texts(contrib, idx, nearest_grid_index(g.horizons, horizon), binding,
                                np.isfinite(horizon) & np.isfinite(fair))  # fmt: skip
    return {
        "fair_initial_margin_rate": fair,
        "fair_long_rate": fl,
        "fair_short_rate": fs,
        "fair_lower": lower,
        "fair_upper": upper,
        "binding_side": binding,
        "implied_horizon_minutes": ih,
        "implied_horizon_censored": ic,
        "drivers": drivers,
    }


def judge(
    model: FairMarginModel,
    rows: pd.DataFrame,
    horizon: NDArray[np.float64],
    cost_long: NDArray[np.float64],
    cost_short: NDArray[np.float64],
    published: NDArray[np.float64],
    *,
    side: Side = "both",
) -> dict[str, NDArray[Any]]:
    """Fair margin of positions: per side Q(H) + cost, the interval, the binding side, the
    implied horizon of ``published`` (NaN where unknown) and the drivers in plain words.

    ``rows`` are panel rows (one per position) at the decision time.
    """
    grid = model.quantile_grid(rows)
    out = judge_on_grid(grid, None, horizon, cost_long, cost_short, published, side=side)
    # contributions only where a text is shown: at each row's grid horizon on its binding side
    gi = nearest_grid_index(grid.horizons, horizon)
    wanted = np.isfinite(horizon) & np.isfinite(out["fair_initial_margin_rate"])
    contrib = contributions(model, rows, grid, only=(gi, out["binding_side"], wanted))
    idx = np.arange(len(rows), dtype=np.intp)
    out["drivers"] = _driver_texts(contrib, idx, gi, out["binding_side"], wanted)
    return out


def usable_state(state: pd.DataFrame, cfg: ExperimentConfig) -> NDArray[np.bool_]:
    """Rows whose state at ``as_of`` can be judged: a recent bar, enough history, a known scale
    and traded notional (else ``insufficient_data``)."""
    price_age = (state["as_of"] - state["t_state"]).dt.total_seconds() / 60.0
    history = (state["t_state"] - state["first_t"]).dt.total_seconds() / 86400.0
    return (
        state["t_state"].notna()
        & (price_age <= cfg.data.price_tolerance_minutes)
        & (history >= cfg.data.min_history_days)
        & (state["sigma_bar"] > 0)
        & (state["traded_notional_per_minute"] > 0)
    ).to_numpy(dtype=bool, copy=True)


def flag_tiers(
    tables: Mapping[str, pd.DataFrame | None],
    cfg: ExperimentConfig,
    *,
    as_of: Literal["latest", "all"] | pd.Timestamp = "latest",
    model: FairMarginModel | None = None,
    model_version: str = "",
    labelled: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> FlagResult:
    """Judge each selected schedule's tiers against the fair margin known at its as_of.

    Without ``model``, a model is fitted on the bundle's own history before each as_of (never
    after it), reused for later as_of values within ``walk_forward.retrain_every_days``.
    """
    say = progress or (lambda _msg: None)
    tiers = tables.get("margin_tiers")
    if tiers is None or tiers.empty:
        raise FairmarginInputError("margin_tiers: no schedules to judge")
    schedules = select_schedules(tiers, as_of)
    t0 = time.perf_counter()
    if labelled is None:
        labelled = labelled_panel(tables, cfg)
        say(f"features and labels: {len(labelled):,} rows in {time.perf_counter() - t0:.1f} s")
    state = _state_at(labelled, schedules)
    tiers_state = schedules.merge(state, on=["venue", "symbol", "as_of"], how="left")
    n = len(tiers_state)

    usable = usable_state(tiers_state, cfg)

    notional = evaluated_notional(
        tiers_state,
        single_tier_notional=cfg.single_tier_notional,
        last_tier_cap_multiple=cfg.last_tier_cap_multiple,
    ).to_numpy(dtype=np.float64)
    horizon = liquidation_horizon_minutes(
        notional,
        tiers_state["traded_notional_per_minute"].to_numpy(dtype=np.float64),
        base_latency_minutes=cfg.base_latency_minutes,
        participation=cfg.participation,
        minutes_to_expiry=tiers_state["minutes_to_expiry"].to_numpy(dtype=np.float64),
    )
    published = tiers_state["initial_margin_rate"].fillna(1.0 / tiers_state["max_leverage"])
    published_arr = published.to_numpy(dtype=np.float64)

    out = {c: np.full(n, np.nan) for c in ("fair_long_rate", "fair_short_rate", "fair_lower",
                                            "fair_upper", "implied")}  # fmt: skip
    binding = np.full(n, "", dtype=object)
    censored = np.full(n, "", dtype=object)
    drivers = [""] * n
    cost, source = _costs(tables.get("order_books"), tiers_state, notional, cfg)
    models: dict[pd.Timestamp, FairMarginModel] = {}
    versions = np.full(n, model_version, dtype=object)

    cutoffs = sorted(tiers_state.loc[usable, "as_of"].unique())
    current: FairMarginModel | None = model
    for cut in cutoffs:
        cut = pd.Timestamp(cut)
        if model is None:
            stale = (
                current is None
                or current.cutoff_ is None
                or (cut - current.cutoff_ > pd.Timedelta(days=cfg.walk_forward.retrain_every_days))
            )
            if stale:
                t1 = time.perf_counter()
                try:
                    current = train_model(labelled, cfg, cutoff=cut)
                except FairmarginInputError as exc:
                    log.warning("no model at %s: %s", cut, exc)
                    current = None
                    usable[(tiers_state["as_of"] == cut).to_numpy()] = False
                    continue
                models[cut] = current
                say(f"trained at {cut:%Y-%m-%d %H:%M} in {time.perf_counter() - t1:.1f} s")
        assert current is not None
        if not np.isclose(current.coverage, cfg.coverage):
            raise FairmarginInputError(
                f"model was trained at coverage {current.coverage}, asked for {cfg.coverage}"
            )
        m = usable & (tiers_state["as_of"] == cut).to_numpy()
        if not m.any():
            continue
        attach_medians(current, labelled)  # the training panel's medians explain the drivers
        rows = tiers_state[m]
        j = judge(current, rows, horizon[m], cost["long"][m], cost["short"][m], published_arr[m])
        for key in ("fair_long_rate", "fair_short_rate", "fair_lower", "fair_upper"):
            out[key][m] = j[key]
        out["implied"][m] = j["implied_horizon_minutes"]
        binding[m] = j["binding_side"]
        censored[m] = j["implied_horizon_censored"]
        for k, text in zip(np.flatnonzero(m), j["drivers"], strict=True):
            drivers[k] = text
        if not model_version:
            versions[m] = f"fit-on-bundle@{cut:%Y-%m-%dT%H:%MZ}"

    if cfg.apc.enabled:  # anti-procyclicality overlays scale fair and its interval
        apc_k = apc_multiplier_at(labelled, tiers_state, **asdict(cfg.apc))
        for key in ("fair_long_rate", "fair_short_rate", "fair_lower", "fair_upper"):
            out[key] = out[key] * apc_k
    fair = np.maximum(out["fair_long_rate"], out["fair_short_rate"])
    usable &= np.isfinite(fair)
    status, deviation, score = status_of(
        published_arr, fair, out["fair_lower"], out["fair_upper"], cfg.materiality, usable
    )
    cost_binding = np.where(binding == "short", cost["short"], cost["long"])
    flags = pd.DataFrame(
        {
            "venue": tiers_state["venue"].astype(str),
            "symbol": tiers_state["symbol"].astype(str),
            "tier": tiers_state["tier"].astype("int64"),
            "as_of": tiers_state["as_of"],
            "min_notional": tiers_state["min_notional"].astype(float),
            "max_notional": tiers_state["max_notional"].astype(float),
            "evaluated_notional": notional,
            "published_initial_margin_rate": published_arr,
            "fair_initial_margin_rate": fair,
            "fair_long_rate": out["fair_long_rate"],
            "fair_short_rate": out["fair_short_rate"],
            "fair_lower": out["fair_lower"],
            "fair_upper": out["fair_upper"],
            "deviation": deviation,
            "status": status.astype(str),
            "score": score,
            "binding_side": binding.astype(str),
            "horizon_minutes": horizon,
            "implied_horizon_minutes": out["implied"],
            "implied_horizon_censored": censored.astype(str),
            "liquidation_cost": np.where(usable, cost_binding, np.nan),
            "liquidation_cost_source": source.astype(str),
            "drivers": pd.Series(drivers, dtype=str).to_numpy(),
            "coverage": cfg.coverage,
            "base_latency_minutes": cfg.base_latency_minutes,
            "participation": cfg.participation,
            "model_version": versions.astype(str),
        }
    )
    for c in ("venue", "symbol", "status", "binding_side", "implied_horizon_censored",
              "liquidation_cost_source", "drivers", "model_version"):  # fmt: skip
        flags[c] = flags[c].astype("str")
    inputs = None
    if current is not None:
        from pipelines.serving import input_columns

        inputs = tiers_state.assign(
            notional=notional,
            liquidation_cost_long=cost["long"],
            liquidation_cost_short=cost["short"],
            published_initial_margin_rate=published_arr,
        )
        for c in current.features_:
            if c not in inputs:
                inputs[c] = np.nan
        inputs = inputs.loc[usable, [*input_columns(current), "published_initial_margin_rate"]]
    # the latest model's calibration-window metrics describe the run
    metrics = dict(models[max(models)].metrics_) if models else {}
    return FlagResult(flags=flags[FLAG_COLUMNS], models=models, metrics=metrics, inputs=inputs)
