"""Python API: the fair margin of any position, from a logged model and a bundle (or live data).

>>> from pipelines.api import FairMargin
>>> fm = FairMargin.load("models:/fair-margin@champion", bundle="path/to/bundle")
>>> fm.estimate(venue="binanceusdm", symbol="BTC/USDT:USDT", notional=1e6)   # a flags row
>>> fm.estimate_many(positions)      # a frame: venue, symbol, notional[, side, as_of]

The answer is the same as ``fairmargin query`` and, at a tier's evaluated notional with side
``both``, the same as that tier's flags row (same time, same model): the state at ``as_of`` is
the panel row of the last bar closing at or before it, the liquidation cost walks the last book
snapshot at or before it, and fair comes from the same :func:`pipelines.flag.judge_on_grid`.

Each (venue, symbol, as_of) state is computed once and cached (its panel row, book snapshot,
schedule, quantile grid and driver contributions), so a query after the first costs a few
numpy operations; a batch is vectorised over positions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError
from features.book import BookArrays, book_arrays, liquidation_cost
from features.panel import build_panel, timeframe_minutes
from models.fair import FairMarginModel, QuantileGrid
from models.horizon import liquidation_horizon_minutes
from models.labels import SIDES
from pipelines.config import ExperimentConfig, with_overrides
from pipelines.explain import Contributions, attach_medians, contributions
from pipelines.flag import (
    FLAG_COLUMNS,
    Side,
    judge_on_grid,
    panel_spec,
    status_of,
    usable_state,
)

__all__ = ["DEFAULT_MODEL", "QUERY_COLUMNS", "FairMargin", "State"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/fair-margin@champion"
#: A query answer: the fields of a flags row, then the side asked for.
QUERY_COLUMNS = [*FLAG_COLUMNS, "side"]
_SIDES_ASKED = ("both", "long", "short")


@dataclass(frozen=True)
class State:
    """Everything about one (venue, symbol, as_of) that does not depend on the position."""

    venue: str
    symbol: str
    as_of: pd.Timestamp
    usable: bool
    row: pd.DataFrame  # the panel row (one), as in flag_tiers
    book: BookArrays | None  # the snapshot the cost walks (one row), or None
    tiers: pd.DataFrame  # the schedule in force at as_of (may be empty)
    grid: QuantileGrid | None
    contrib: Contributions | None
    sigma_day: float
    daily_notional: float
    traded_per_minute: float
    minutes_to_expiry: float
    tier_no: NDArray[np.float64]  # the schedule as arrays: tier, min, max, rate
    tier_min: NDArray[np.float64]
    tier_max: NDArray[np.float64]
    tier_rate: NDArray[np.float64]


def _by_contract(frame: pd.DataFrame) -> dict[tuple[str, str], NDArray[np.intp]]:
    """Row positions of each (venue, symbol)."""
    groups: Any = frame.groupby(["venue", "symbol"], sort=False).indices
    return {(str(k[0]), str(k[1])): np.asarray(v, dtype=np.intp) for k, v in groups.items()}


def _utc(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


class FairMargin:
    """Fair initial margin of positions from one fair-margin model and one set of tables.

    Parameters
    ----------
    model : a fitted :class:`FairMarginModel`.
    cfg : the config its answers use (coverage must be the model's).
    tables : bundle tables (``contracts``, ``ohlcv``, ``margin_tiers``; optional books,
        option quotes, funding).
    model_version : recorded in every answer.
    """

    def __init__(
        self,
        model: FairMarginModel,
        cfg: ExperimentConfig,
        tables: Mapping[str, pd.DataFrame | None],
        *,
        model_version: str = "",
    ) -> None:
        if not np.isclose(model.coverage, cfg.coverage):
            raise FairmarginInputError(
                f"--coverage: the model was trained at coverage {model.coverage}, "
                f"asked for {cfg.coverage}"
            )
        from pipelines.serving import single_thread

        single_thread(model)  # queries hold a few rows: one thread is faster
        self.model = model
        self.cfg = cfg
        self.model_version = model_version
        self.tables = tables
        self.panel = build_panel(tables, spec=panel_spec(cfg))
        attach_medians(model, self.panel)
        self._panel_index = _by_contract(self.panel)
        t_ns = pd.DatetimeIndex(self.panel["t"]).as_unit("ns").asi8
        self._t = {k: t_ns[idx] for k, idx in self._panel_index.items()}
        ohlcv = tables.get("ohlcv")
        assert ohlcv is not None  # build_panel checked it
        close_at = ohlcv["timestamp"] + pd.to_timedelta(
            ohlcv["timeframe"].map(timeframe_minutes), unit="min"
        )
        self.last_close = pd.Timestamp(close_at.max())
        books = tables.get("order_books")
        self._books = books if books is not None and not books.empty else None
        self._book_index: dict[tuple[str, str], NDArray[np.intp]] = {}
        if self._books is not None:
            self._book_index = _by_contract(self._books)
        tiers = tables.get("margin_tiers")
        self._tiers = tiers if tiers is not None else pd.DataFrame()
        self._tier_index = _by_contract(self._tiers) if len(self._tiers) else {}
        self.venues = sorted({v for v, _ in self._panel_index})
        self._states: dict[tuple[str, str, pd.Timestamp], State] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        uri: str = DEFAULT_MODEL,
        *,
        bundle: str | Path | None = None,
        tables: Mapping[str, pd.DataFrame | None] | None = None,
        coverage: float | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> FairMargin:
        """Load a logged model (registry URI, ``runs:/...``) with features from a bundle folder
        or from ``tables``. ``coverage`` must be the model's (else an error); ``overrides``
        (e.g. ``{"base_latency_minutes": 30}``) change the config the answers use."""
        from pipelines.tracking import load_registered

        if (bundle is None) == (tables is None):
            raise FairmarginInputError("FairMargin.load: give exactly one of bundle or tables")
        model, cfg = load_registered(uri)
        if coverage is not None and not np.isclose(model.coverage, coverage):
            raise FairmarginInputError(
                f"--coverage {coverage}: model {uri} was trained at coverage {model.coverage}"
            )
        cfg = with_overrides(cfg, **dict(overrides or {}))
        if tables is None:
            from pipelines.bundle import read_bundle
            from pipelines.cliutil import bundle_tables

            tables = bundle_tables(read_bundle(str(bundle)))
        return cls(model, cfg, tables, model_version=uri)

    # ----------------------------------------------------------------- states
    def _check_key(self, venue: str, symbol: str) -> None:
        if venue not in self.venues:
            raise FairmarginInputError(
                f"venue must be one of the bundle's {self.venues}, got {venue!r}"
            )
        if (venue, symbol) not in self._panel_index:
            known = sorted(s for v, s in self._panel_index if v == venue)
            shown = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
            raise FairmarginInputError(
                f"symbol must be a swap or future of {venue} with bars in the bundle "
                f"({shown}), got {symbol!r}"
            )

    def state(self, venue: str, symbol: str, as_of: Any = None) -> State:
        """The cached state of (venue, symbol) at ``as_of`` (default: the bundle's last bar
        close)."""
        t = self.last_close if as_of is None else _utc(as_of)
        key = (venue, symbol, t)
        hit = self._states.get(key)
        if hit is None:
            hit = self._states[key] = self._make_state(venue, symbol, t)
        return hit

    def _make_state(self, venue: str, symbol: str, t: pd.Timestamp) -> State:
        self._check_key(venue, symbol)
        times = self._t[(venue, symbol)]
        first = pd.Timestamp(int(times[0]), tz="UTC")
        pos = int(np.searchsorted(times, t.as_unit("ns").value, side="right")) - 1
        if pos < 0:
            raise FairmarginInputError(
                f"as_of must be at or after the first bar close of ({venue}, {symbol}), "
                f"{first}; got {t}"
            )
        idx = self._panel_index[(venue, symbol)]
        row = self.panel.iloc[[idx[pos]]].rename(columns={"t": "t_state"})
        row = row.assign(as_of=t, first_t=first)
        row = row.reset_index(drop=True)
        cfg = self.cfg
        usable = bool(usable_state(row, cfg)[0])
        sigma_day = float(row["sigma_bar"].iloc[0] / math.sqrt(row["bar_minutes"].iloc[0]))
        sigma_day *= math.sqrt(1440.0)
        daily = float(row["traded_notional_per_minute"].iloc[0]) * 1440.0
        grid = contrib = None
        if usable:
            for c in self.model.features_:
                if c not in row:
                    row[c] = np.nan
            grid = self.model.quantile_grid(row)
            contrib = contributions(self.model, row, grid)
        tiers = self._schedule(venue, symbol, t)
        return State(
            venue=venue,
            symbol=symbol,
            as_of=t,
            usable=usable,
            row=row,
            book=self._snapshot(venue, symbol, t),
            tiers=tiers,
            grid=grid,
            contrib=contrib,
            sigma_day=sigma_day,
            daily_notional=daily,
            traded_per_minute=float(row["traded_notional_per_minute"].iloc[0]),
            minutes_to_expiry=float(row["minutes_to_expiry"].iloc[0]),
            tier_no=tiers["tier"].to_numpy(dtype=np.float64),
            tier_min=tiers["min_notional"].to_numpy(dtype=np.float64),
            tier_max=tiers["max_notional"].to_numpy(dtype=np.float64),
            tier_rate=tiers["initial_margin_rate"]
            .fillna(1.0 / tiers["max_leverage"])
            .to_numpy(dtype=np.float64),
        )

    def _snapshot(self, venue: str, symbol: str, t: pd.Timestamp) -> BookArrays | None:
        """The last book snapshot at or before t within the tolerance (as ``flag_tiers``)."""
        idx = self._book_index.get((venue, symbol))
        if idx is None or self._books is None:
            return None
        rows = self._books.iloc[idx]
        stamps = rows["timestamp"]
        ok = (stamps <= t) & (
            stamps >= t - pd.Timedelta(minutes=self.cfg.data.book_tolerance_minutes)
        )
        if not ok.any():
            return None
        snap = rows[ok & (stamps == stamps[ok].max())]
        snap = snap.sort_values(["venue", "symbol", "timestamp", "side", "level"])
        return book_arrays(snap.reset_index(drop=True))

    def _schedule(self, venue: str, symbol: str, t: pd.Timestamp) -> pd.DataFrame:
        idx = self._tier_index.get((venue, symbol))
        if idx is None:
            return self._tiers.head(0)
        tiers = self._tiers.iloc[idx]
        tiers = tiers[tiers["as_of"] <= t]
        if tiers.empty:
            return tiers
        latest = tiers[tiers["as_of"] == tiers["as_of"].max()].sort_values("tier")
        return latest.reset_index(drop=True)

    # ----------------------------------------------------------------- answers
    def estimate(
        self,
        *,
        venue: str,
        symbol: str,
        notional: float,
        side: str = "both",
        as_of: Any = None,
    ) -> dict[str, Any]:
        """The flags-row fields of one position (NaN where unknown), plus ``side``."""
        try:
            n = float(notional)
        except (TypeError, ValueError):
            raise FairmarginInputError(
                f"notional must be a positive number, got {notional!r}"
            ) from None
        if not (math.isfinite(n) and n > 0):
            raise FairmarginInputError(f"notional must be a positive number, got {notional!r}")
        if side not in _SIDES_ASKED:
            raise FairmarginInputError(f"side must be long, short or both, got {side!r}")
        st = self.state(str(venue), str(symbol), as_of)
        cols = self._compute(
            [st], np.zeros(1, dtype=np.intp), np.array([n]), np.array([side], dtype=object)
        )
        out: dict[str, Any] = {}
        for c in QUERY_COLUMNS:
            v = cols[c][0]
            out[c] = v.item() if isinstance(v, np.generic) else v
        out["as_of"] = st.as_of
        if out["tier"] is not None and math.isfinite(out["tier"]):
            out["tier"] = int(out["tier"])
        else:
            out["tier"] = None
        return out

    def estimate_many(self, positions: pd.DataFrame) -> pd.DataFrame:
        """Answers for a frame of positions (``venue``, ``symbol``, ``notional``; optional
        ``side`` (both), ``as_of``), one row each in input order, columns ``QUERY_COLUMNS``."""
        missing = sorted({"venue", "symbol", "notional"} - set(positions.columns))
        if missing:
            raise FairmarginInputError(
                f"positions: columns {missing} are missing; got {sorted(map(str, positions))}"
            )
        n = len(positions)
        venue = positions["venue"].astype(str).to_numpy()
        symbol = positions["symbol"].astype(str).to_numpy()
        try:
            notional = positions["notional"].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise FairmarginInputError("positions: notional must be a number") from None
        bad = ~np.isfinite(notional) | (notional <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise FairmarginInputError(
                f"positions row {k}: notional must be a positive number, "
                f"got {float(notional[k])!r}"
            )
        side = (
            positions["side"].fillna("both").astype(str).str.lower().to_numpy(dtype=object)
            if "side" in positions
            else np.full(n, "both", dtype=object)
        )
        if not np.isin(side, _SIDES_ASKED).all():
            k = int(np.flatnonzero(~np.isin(side, _SIDES_ASKED))[0])
            raise FairmarginInputError(
                f"positions row {k}: side must be long, short or both, got {side[k]!r}"
            )
        if "as_of" in positions:
            try:
                stamps = pd.DatetimeIndex(pd.to_datetime(positions["as_of"], utc=True))
            except (TypeError, ValueError):
                raise FairmarginInputError("positions: as_of must be UTC times") from None
            as_of = stamps.as_unit("ns").asi8
        else:
            as_of = np.full(n, self.last_close.as_unit("ns").value, dtype=np.int64)
        # one state per (venue, symbol, as_of); positions point at it
        codes, uniques = pd.factorize(pd.MultiIndex.from_arrays([venue, symbol, as_of]))
        states = [
            self.state(str(v), str(s), pd.Timestamp(int(t), tz="UTC")) for v, s, t in uniques
        ]
        cols = self._compute(states, np.asarray(codes, dtype=np.intp), notional, side)
        out = pd.DataFrame(cols)
        out["tier"] = pd.array(cols["tier"], dtype="Float64").astype("Int64")
        out["as_of"] = pd.DatetimeIndex(cols["as_of"]).tz_localize("UTC")
        return out[QUERY_COLUMNS]

    def _compute(
        self,
        states: list[State],
        code: NDArray[np.intp],
        notional: NDArray[np.float64],
        side: NDArray[Any],
    ) -> dict[str, NDArray[Any]]:
        """The answer columns as arrays (no pandas: this is the per-query hot path)."""
        cfg = self.cfg
        n = len(code)
        traded = np.array([st.traded_per_minute for st in states])[code]
        expiry = np.array([st.minutes_to_expiry for st in states])[code]
        horizon = liquidation_horizon_minutes(
            notional,
            traded,
            base_latency_minutes=cfg.base_latency_minutes,
            participation=cfg.participation,
            minutes_to_expiry=expiry,
        )
        cost = {s: np.full(n, np.nan) for s in SIDES}
        source = np.full(n, "impact_estimate", dtype=object)
        tier = np.full(n, np.nan)
        lo_n = np.full(n, np.nan)
        hi_n = np.full(n, np.nan)
        published = np.full(n, np.nan)
        usable = np.zeros(n, dtype=bool)
        cols: dict[str, NDArray[Any]] = {
            c: np.full(n, np.nan)
            for c in ("fair_initial_margin_rate", "fair_long_rate", "fair_short_rate",
                      "fair_lower", "fair_upper", "implied_horizon_minutes")
        }  # fmt: skip
        binding = np.full(n, "", dtype=object)
        censored = np.full(n, "", dtype=object)
        drivers = np.full(n, "", dtype=object)
        one = len(states) == 1
        for k, st in enumerate(states):
            m = np.arange(n) if one else np.flatnonzero(code == k)
            usable[m] = st.usable
            if st.book is not None:
                arrays = st.book
                if m.size != 1:  # one snapshot row per position, as flag_tiers walks it
                    rep = np.zeros(m.size, dtype=np.intp)
                    arrays = replace(
                        st.book,
                        keys=st.book.keys.iloc[rep].reset_index(drop=True),
                        bid_px=st.book.bid_px[rep],
                        bid_amt=st.book.bid_amt[rep],
                        ask_px=st.book.ask_px[rep],
                        ask_amt=st.book.ask_amt[rep],
                    )
                for s in SIDES:
                    cost[s][m] = liquidation_cost(
                        arrays,
                        notional[m],
                        side=s,
                        beyond_depth_multiplier=cfg.beyond_depth_multiplier,
                    )
                source[m] = "book"
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    impact = (
                        cfg.impact_coefficient
                        * st.sigma_day
                        * np.sqrt(notional[m] / st.daily_notional)
                    )
                for s in SIDES:
                    cost[s][m] = impact
            if st.tier_max.size:
                # a tier covers min < N <= max (the first from 0)
                j = np.searchsorted(st.tier_max, notional[m], side="left")
                inside = j < st.tier_max.size
                j = np.minimum(j, st.tier_max.size - 1)
                tier[m] = np.where(inside, st.tier_no[j], np.nan)
                lo_n[m] = np.where(inside, st.tier_min[j], np.nan)
                hi_n[m] = np.where(inside, st.tier_max[j], np.nan)
                published[m] = np.where(inside, st.tier_rate[j], np.nan)
            if st.grid is None:
                continue
            asked: Side
            for asked in ("both", "long", "short"):
                mm = m if one and side[0] == asked and n == 1 else m[side[m] == asked]
                if mm.size == 0:
                    continue
                j_ = judge_on_grid(
                    st.grid,
                    st.contrib,
                    horizon[mm],
                    cost["long"][mm],
                    cost["short"][mm],
                    published[mm],
                    state_index=np.zeros(mm.size, dtype=np.intp),
                    side=asked,
                )
                for c in cols:
                    cols[c][mm] = j_[c]
                binding[mm] = j_["binding_side"]
                censored[mm] = j_["implied_horizon_censored"]
                drivers[mm] = j_["drivers"]
        fair = cols["fair_initial_margin_rate"]
        usable &= np.isfinite(fair)
        status, deviation, score = status_of(
            published, fair, cols["fair_lower"], cols["fair_upper"], cfg.materiality, usable
        )
        status[usable & ~np.isfinite(published)] = ""  # no published rate: nothing to judge
        cost_binding = np.where(binding == "short", cost["short"], cost["long"])
        names = np.array([(st.venue, st.symbol) for st in states], dtype=object)
        return {
            "venue": names[code, 0],
            "symbol": names[code, 1],
            "tier": tier,
            "as_of": np.array([st.as_of.as_unit("ns").value for st in states])[code].astype(
                "datetime64[ns]"
            ),
            "min_notional": lo_n,
            "max_notional": hi_n,
            "evaluated_notional": notional,
            "published_initial_margin_rate": published,
            "fair_initial_margin_rate": fair,
            "fair_long_rate": cols["fair_long_rate"],
            "fair_short_rate": cols["fair_short_rate"],
            "fair_lower": cols["fair_lower"],
            "fair_upper": cols["fair_upper"],
            "deviation": deviation,
            "status": status,
            "score": score,
            "binding_side": binding,
            "horizon_minutes": horizon,
            "implied_horizon_minutes": cols["implied_horizon_minutes"],
            "implied_horizon_censored": censored,
            "liquidation_cost": np.where(usable, cost_binding, np.nan),
            "liquidation_cost_source": source,
            "drivers": drivers,
            "coverage": np.full(n, cfg.coverage),
            "base_latency_minutes": np.full(n, cfg.base_latency_minutes),
            "participation": np.full(n, cfg.participation),
            "model_version": np.full(n, self.model_version, dtype=object),
            "side": side,
        }
