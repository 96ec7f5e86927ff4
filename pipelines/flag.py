"""The flag step: published vs fair initial margin per (venue, symbol, as_of, tier).

Pure (no MLflow, no files): it takes tables and a config and returns frames. The CLI and
:mod:`pipelines.tracking` put edges around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError
from features.book import book_arrays, liquidation_cost
from features.panel import PanelSpec, build_panel
from models.fair import FairMarginModel, QuantileGrid, add_labels, model_matrix
from models.horizon import evaluated_notional, implied_horizon, liquidation_horizon_minutes
from models.labels import SIDES
from pipelines.config import ExperimentConfig

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
            "random_state": cfg.random_state,
        },
        calibration_fraction=cfg.calibration.window_fraction,
        max_calibration_days=cfg.calibration.max_window_days,
        min_scores=cfg.calibration.min_scores,
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


def _drivers(
    model: FairMarginModel,
    state: pd.DataFrame,
    grid: QuantileGrid,
    horizon: NDArray[np.float64],
    side: NDArray[np.object_],
    *,
    top: int = 3,
) -> list[str]:
    """The features that move each row's fair margin most, with signed contributions in
    percentage points of margin, at the grid horizon nearest H on the binding side."""
    hs = grid.horizons
    out = [""] * len(state)
    ok = np.isfinite(horizon)
    if not ok.any():
        return out
    gi = np.abs(np.log(hs)[None, :] - np.log(np.where(ok, horizon, hs[0]))[:, None]).argmin(axis=1)
    X = model_matrix(state, hs[gi], features=model.features_)
    names = [*X.columns]
    for s in SIDES:
        m = ok & (side == s)
        if not m.any():
            continue
        contrib = model.regressors_[s].contributions(X[m])[:, :-1]
        factor = np.array([model.calibration_[s][int(h)].factor for h in hs[gi[m]]])
        pp = contrib * (grid.scale[m, gi[m]] * factor)[:, None] * 100.0
        vals = X[m].to_numpy()
        for k, (row_pp, row_v) in enumerate(zip(pp, vals, strict=True)):
            order = np.argsort(-np.abs(row_pp))[:top]
            out[int(np.flatnonzero(m)[k])] = "; ".join(
                f"{names[j]}={row_v[j]:.3g} ({row_pp[j]:+.2f} pp)" for j in order
            )
    return out


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


def judge(
    model: FairMarginModel,
    rows: pd.DataFrame,
    horizon: NDArray[np.float64],
    cost_long: NDArray[np.float64],
    cost_short: NDArray[np.float64],
    published: NDArray[np.float64],
) -> dict[str, NDArray[Any]]:
    """Fair margin of positions: per side Q(H) + cost, the interval, the binding side, the
    implied horizon of ``published`` (NaN where unknown) and the drivers.

    ``rows`` are panel rows (one per position) at the decision time.
    """
    grid = model.quantile_grid(rows)
    fl = grid.at("long", horizon) + cost_long
    fs = grid.at("short", horizon) + cost_short
    lower = np.maximum(
        grid.at("long", horizon, "lower") + cost_long,
        grid.at("short", horizon, "lower") + cost_short,
    )
    upper = np.maximum(
        grid.at("long", horizon, "upper") + cost_long,
        grid.at("short", horizon, "upper") + cost_short,
    )
    side = np.where(fl >= fs, "long", "short").astype(object)
    ih, ic = implied_horizon(
        grid.horizons, grid.quantile["long"], grid.quantile["short"], cost_long, cost_short,
        published,
    )  # fmt: skip
    return {
        "fair_long_rate": fl,
        "fair_short_rate": fs,
        "fair_lower": lower,
        "fair_upper": upper,
        "binding_side": side,
        "implied_horizon_minutes": ih,
        "implied_horizon_censored": ic,
        "drivers": np.array(_drivers(model, rows, grid, horizon, side), dtype=object),
    }


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

    price_age = (tiers_state["as_of"] - tiers_state["t_state"]).dt.total_seconds() / 60.0
    history = (tiers_state["t_state"] - tiers_state["first_t"]).dt.total_seconds() / 86400.0
    usable = (
        tiers_state["t_state"].notna()
        & (price_age <= cfg.data.price_tolerance_minutes)
        & (history >= cfg.data.min_history_days)
        & (tiers_state["sigma_bar"] > 0)
        & (tiers_state["traded_notional_per_minute"] > 0)
    ).to_numpy(dtype=bool, copy=True)

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
