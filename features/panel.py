"""Point-in-time assembly of the (venue, symbol, t) feature panel (METHOD.md, Time).

A decision time t is a bar close. An OHLCV row covers [timestamp, timestamp + timeframe) and is
known at its close, so bars are indexed here by close time. Books, option surfaces and funding are
joined as of t (the last row stamped at or before t) within a tolerance: a row older than that is
stale and its features become missing (NaN), never carried forward in silence.

Columns derived across tables (all at t from inputs known at t):

- ``basis_bp``: ``1e4 * ln(close_t / m_t)`` with ``m_t`` the median close at t of the swaps of
  the same underlying (``base``) listed on OTHER venues (the contract's own venue is left out,
  so a venue's swap and its futures share one reference); NaN where no other venue has a swap
  bar closing at t. Bars must close at the same t: nothing is carried forward.
- ``book_depth_to_volume_50bp``: quote depth within 50 bp of mid, both sides, over the trailing
  traded notional per day (``traded_notional_per_minute * 1440``): days of turnover the
  displayed book holds, scale-free. (The name avoids the ``depth_`` prefix, which the model
  would rescale by traded notional a second time.)
- ``book_resilience_min``: half-life in minutes of shocks to log two-sided depth within 50 bp,
  :func:`features.book.depth_resilience` over the snapshots up to the joined one; NaN where
  the snapshots are too sparse (the defaults need pairs of snapshots at most 15 minutes apart,
  30 of them within the last 120 snapshots).
- ``microprice_offset_bp``: ``1e4 * (microprice - mid) / mid`` of the joined snapshot (the raw
  microprice, a price level, is not kept).
- ``iv_rv_ratio_30d``: ``atm_iv_30d / rv_7d`` (implied over realised volatility, scale-free).
- ``days_to_expiry``: ``minutes_to_expiry / 1440`` (NaN for swaps).

Venue identity is deliberately not a column: a served model must answer for venues it has not
seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns
from features.book import book_features, depth_resilience, depth_vs_volume
from features.returns import funding_features, return_features
from features.surface import surface_features

__all__ = [
    "PanelSpec",
    "build_panel",
    "contract_bars",
    "timeframe_minutes",
]

_MINUTES_PER_YEAR = 365.0 * 1440.0


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """Tolerances and windows of the panel.

    Attributes
    ----------
    book_tolerance_minutes, quote_tolerance_minutes, funding_tolerance_minutes : as-of join
        tolerances; an older row is stale.
    volume_window_days : window of the trailing traded notional that sets H (METHOD: 7 days).
    scale_halflife_minutes : half-life of the EWMA variance that scales targets (at least
        ``min_scale_halflife_bars`` bars).
    resilience_window, resilience_min_pairs, resilience_max_gap_minutes : the
        ``window`` (snapshots), ``min_pairs`` and ``max_gap_minutes`` of
        :func:`features.book.depth_resilience` behind ``book_resilience_min``.
    """

    book_tolerance_minutes: float = 180.0
    quote_tolerance_minutes: float = 180.0
    funding_tolerance_minutes: float = 720.0
    volume_window_days: float = 7.0
    scale_halflife_minutes: float = 1440.0
    min_scale_halflife_bars: float = 11.0
    resilience_window: int = 120
    resilience_min_pairs: int = 30
    resilience_max_gap_minutes: float = 15.0


def timeframe_minutes(timeframe: str) -> int:
    """``"5m"`` -> 5, ``"1h"`` -> 60, ``"1d"`` -> 1440, ``"1w"`` -> 10080."""
    units = {"m": 1, "h": 60, "d": 1440, "w": 10080}
    tf = str(timeframe)
    if len(tf) < 2 or tf[-1] not in units or not tf[:-1].isdigit() or int(tf[:-1]) < 1:
        raise FairmarginInputError(
            f"timeframe must look like 1m, 5m, 1h, 1d or 1w, got {timeframe!r}"
        )
    return int(tf[:-1]) * units[tf[-1]]


def contract_bars(ohlcv: pd.DataFrame, *, venue: str, symbol: str) -> tuple[pd.DataFrame, int]:
    """One contract's bars at its finest timeframe, on a regular grid indexed by CLOSE time.

    Missing bars become NaN rows so that windows counted in bars are windows in time.
    Returns the bars and the bar length in minutes.
    """
    rows = ohlcv[(ohlcv["venue"] == venue) & (ohlcv["symbol"] == symbol)]
    if rows.empty:
        raise FairmarginInputError(f"ohlcv: no bars for ({venue}, {symbol})")
    tfs = {tf: timeframe_minutes(tf) for tf in rows["timeframe"].unique()}
    tf = min(tfs, key=lambda k: tfs[k])
    minutes = tfs[tf]
    rows = rows[rows["timeframe"] == tf]
    close_time = pd.DatetimeIndex(rows["timestamp"]) + pd.Timedelta(minutes=minutes)
    bars = pd.DataFrame(
        {
            c: rows[c].to_numpy(dtype=np.float64)
            for c in ("open", "high", "low", "close", "volume")
        },
        index=close_time.rename("t"),
    ).sort_index()
    grid = pd.date_range(bars.index[0], bars.index[-1], freq=pd.Timedelta(minutes=minutes))
    return bars.reindex(grid.rename("t")), minutes


def _scale(log_ret: pd.Series, *, bar_minutes: int, spec: PanelSpec) -> pd.Series:
    """Per-bar volatility that scales targets: sqrt of an EWMA of squared log returns."""
    halflife = max(spec.scale_halflife_minutes / bar_minutes, spec.min_scale_halflife_bars)
    var = (log_ret**2).ewm(halflife=halflife, min_periods=int(halflife), ignore_na=True).mean()
    return np.sqrt(var).rename("sigma_bar")


def _traded_notional_per_minute(bars: pd.DataFrame, *, window_days: float) -> pd.Series:
    """Trailing average traded notional per minute (quote currency) over ``window_days``.

    Uses bars closing in (t - window, t]; NaN until the window is covered.
    """
    notional = (bars["volume"] * bars["close"]).fillna(0.0)
    window = pd.Timedelta(days=window_days)
    total = notional.rolling(window).sum()
    covered = bars.index - bars.index[0] >= window - pd.Timedelta(minutes=1)
    return (total / (window_days * 1440.0)).where(covered).rename("traded_notional_per_minute")


def _ns(t: pd.Series) -> NDArray[np.int64]:
    """Nanoseconds since the epoch of a tz-aware datetime column (any unit)."""
    return np.asarray(pd.DatetimeIndex(t).as_unit("ns").asi8, dtype=np.int64)


def _asof(
    left: pd.DataFrame,
    right: pd.DataFrame,
    *,
    by: list[str],
    left_groups: Mapping[Any, NDArray[np.intp]],
    tolerance_minutes: float,
) -> dict[str, Any]:
    """Backward as-of join on ``t`` within a tolerance: each left row gets the right row of the
    same ``by`` key stamped at or before its t (the last one if several share that time), when
    it is at most ``tolerance_minutes`` older; else NaN. The semantics of
    ``pandas.merge_asof(direction="backward", tolerance=...)``, keeping the left row order.

    ``left_groups`` maps each key (a scalar for one ``by`` column, else a tuple) to the left
    rows holding it, so the (large) left frame is neither sorted nor grouped here. Returns the
    joined columns (right's columns but ``by`` and ``t``), aligned with the left rows.
    """
    tol = int(pd.Timedelta(minutes=tolerance_minutes).value)
    lt = _ns(left["t"])
    rt = _ns(right["t"])
    src = np.full(len(left), -1, dtype=np.intp)
    right_groups = right.groupby(by[0] if len(by) == 1 else by, sort=False).indices
    for key, r_idx in right_groups.items():
        l_rows = left_groups.get(key)
        if l_rows is None or len(l_rows) == 0:
            continue
        r_rows = np.asarray(r_idx, dtype=np.intp)
        order = r_rows[np.argsort(rt[r_rows], kind="stable")]
        r_t = rt[order]
        pos = np.searchsorted(r_t, lt[l_rows], side="right") - 1
        at = np.maximum(pos, 0)
        ok = (pos >= 0) & (lt[l_rows] - r_t[at] <= tol)
        src[l_rows] = np.where(ok, order[at], -1)
    cols = [c for c in right.columns if c not in (*by, "t")]
    return {c: pd.api.extensions.take(right[c].to_numpy(), src, allow_fill=True) for c in cols}


def _basis_bp(
    panel: pd.DataFrame,
    *,
    layout: list[tuple[str, str, str, NDArray[np.intp]]],
    swaps: set[tuple[str, str]],
) -> NDArray[np.float64]:
    """``basis_bp`` of every panel row (module docstring): own close at t against the median
    close at t of the other venues' swaps of the same base.

    ``layout`` lists (venue, symbol, base, rows) of each contract; ``swaps`` holds the
    (venue, symbol) of the swaps.
    """
    out = np.full(len(panel), np.nan)
    t_ns = _ns(panel["t"])
    close = panel["close"].to_numpy(dtype=np.float64)
    by_base: dict[str, list[tuple[str, str, NDArray[np.intp]]]] = {}
    for venue, symbol, base, rows in layout:
        by_base.setdefault(base, []).append((venue, symbol, rows))
    for members in by_base.values():
        legs = [m for m in members if (m[0], m[1]) in swaps]
        if not legs:
            continue
        grid = np.unique(np.concatenate([t_ns[rows] for _, _, rows in legs]))
        wide = np.full((len(grid), len(legs)), np.nan)
        for j, (_, _, rows) in enumerate(legs):
            wide[np.searchsorted(grid, t_ns[rows]), j] = close[rows]
        leg_venue = np.array([v for v, _, _ in legs])
        for venue, _, rows in members:
            others = wide[:, leg_venue != venue]
            if others.shape[1] == 0:
                continue
            ref = pd.DataFrame(others).median(axis=1, skipna=True).to_numpy(dtype=np.float64)
            pos = np.minimum(np.searchsorted(grid, t_ns[rows]), len(grid) - 1)
            at = np.where(grid[pos] == t_ns[rows], ref[pos], np.nan)
            out[rows] = 1e4 * np.log(close[rows] / at)
    return out


def _book_panel_features(books: pd.DataFrame, *, spec: PanelSpec) -> pd.DataFrame:
    """Per-snapshot book features as joined onto the panel (``t`` = snapshot time)."""
    bf = book_features(books)
    depth50 = bf["depth_bid_50bp"] + bf["depth_ask_50bp"]
    bf["book_resilience_min"] = depth_resilience(
        bf.assign(_depth_50bp=depth50),
        depth_col="_depth_50bp",
        window=spec.resilience_window,
        min_pairs=spec.resilience_min_pairs,
        max_gap_minutes=spec.resilience_max_gap_minutes,
    ).to_numpy()
    mid = bf["mid"].to_numpy(dtype=np.float64)
    bf["microprice_offset_bp"] = 1e4 * (bf["microprice"].to_numpy(dtype=np.float64) - mid) / mid
    return bf.drop(columns=["mid", "microprice"]).rename(columns={"timestamp": "t"})


def build_panel(
    tables: Mapping[str, pd.DataFrame | None],
    *,
    spec: PanelSpec | None = None,
    until: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The feature panel: one row per (venue, symbol, bar close t) of every non-option contract.

    Parameters
    ----------
    tables : contract tables by name: ``contracts`` and ``ohlcv`` required; ``order_books``,
        ``option_quotes`` and ``funding_rates`` optional (their features are NaN without them).
    spec : tolerances and windows.
    until : drop every input row that becomes known after this time before computing anything
        (bars closing after it, snapshots stamped after it). Features at t <= until are the same
        with or without it: that is the point-in-time property.

    Returns
    -------
    DataFrame with keys venue, symbol, t, descriptive columns (base, linear, is_future,
    minutes_to_expiry, bar_minutes, close, sigma_bar, sigma_ann, traded_notional_per_minute) and
    the feature families' columns.
    """
    spec = spec or PanelSpec()
    contracts = tables.get("contracts")
    ohlcv = tables.get("ohlcv")
    if contracts is None or ohlcv is None:
        raise FairmarginInputError("build_panel: the contracts and ohlcv tables are required")
    require_columns(
        contracts, ["venue", "symbol", "type", "base", "linear", "expiry"], who="contracts"
    )
    require_columns(ohlcv, ["venue", "symbol", "timeframe", "timestamp", "close"], who="ohlcv")
    if until is not None:
        close_at = ohlcv["timestamp"] + pd.to_timedelta(
            ohlcv["timeframe"].map(timeframe_minutes), unit="min"
        )
        ohlcv = ohlcv[close_at <= until]

    info: dict[tuple[str, str], dict[Any, Any]] = {
        (str(r["venue"]), str(r["symbol"])): r for r in contracts.to_dict("records")
    }
    frames = []
    swaps: set[tuple[str, str]] = set()
    layout: list[tuple[str, str, str, NDArray[np.intp]]] = []
    n_rows = 0
    for (venue, symbol), bars_rows in ohlcv.groupby(["venue", "symbol"], sort=True):
        if (str(venue), str(symbol)) not in info:
            raise FairmarginInputError(
                f"ohlcv: ({venue}, {symbol}) has bars but no row in contracts"
            )
        c = info[(str(venue), str(symbol))]
        if c["type"] == "option":
            continue
        bars, minutes = contract_bars(bars_rows, venue=str(venue), symbol=str(symbol))
        feats = return_features(bars, bar_minutes=minutes)
        log_ret = np.log(bars["close"]).diff()
        sigma = _scale(log_ret, bar_minutes=minutes, spec=spec)
        frame = feats.assign(
            venue=str(venue),
            symbol=str(symbol),
            base=c["base"],
            linear=bool(c["linear"]),
            is_future=c["type"] == "future",
            bar_minutes=float(minutes),
            high=bars["high"],
            low=bars["low"],
            close=bars["close"],
            sigma_bar=sigma,
            sigma_ann=sigma * np.sqrt(_MINUTES_PER_YEAR / minutes),
            traded_notional_per_minute=_traded_notional_per_minute(
                bars, window_days=spec.volume_window_days
            ),
        )
        expiry = c["expiry"]
        if pd.notna(expiry):
            to_expiry = pd.Timestamp(expiry) - pd.DatetimeIndex(frame.index)
            frame["minutes_to_expiry"] = to_expiry.total_seconds().to_numpy() / 60.0
        else:
            frame["minutes_to_expiry"] = np.nan
        frame["days_to_expiry"] = frame["minutes_to_expiry"] / 1440.0
        frames.append(frame.reset_index())
        layout.append(
            (str(venue), str(symbol), str(c["base"]), np.arange(n_rows, n_rows + len(frame)))
        )
        n_rows += len(frame)
        if c["type"] == "swap":
            swaps.add((str(venue), str(symbol)))
    if not frames:
        raise FairmarginInputError("build_panel: no swap or future has bars")
    # groupby(sort=True) and each frame sorted by t: the panel is sorted by (venue, symbol, t)
    panel = pd.concat(frames, ignore_index=True)
    panel["basis_bp"] = _basis_bp(panel, layout=layout, swaps=swaps)
    by_contract = {(v, s): rows for v, s, _, rows in layout}
    by_base: dict[str, NDArray[np.intp]] = {}
    for _, _, base, rows in layout:
        by_base[base] = np.concatenate([by_base.get(base, np.empty(0, np.intp)), rows])

    # joined and derived columns, added to the panel in one step at the end
    extra: dict[str, Any] = {}
    traded = panel["traded_notional_per_minute"].to_numpy(dtype=np.float64)
    books = tables.get("order_books")
    if books is not None and not books.empty:
        if until is not None:
            books = books[books["timestamp"] <= until]
        extra |= _asof(
            panel,
            _book_panel_features(books, spec=spec),
            by=["venue", "symbol"],
            left_groups=by_contract,
            tolerance_minutes=spec.book_tolerance_minutes,
        )
        extra["book_depth_to_volume_50bp"] = depth_vs_volume(
            np.asarray(extra["depth_bid_50bp"] + extra["depth_ask_50bp"], dtype=np.float64),
            traded * 1440.0,
        )

    quotes = tables.get("option_quotes")
    if quotes is not None and not quotes.empty:
        if until is not None:
            quotes = quotes[quotes["timestamp"] <= until]
        sf = surface_features(quotes).rename(columns={"timestamp": "t", "underlying": "base"})
        # one surface per underlying and time: the venue quoting the most options
        sf = (
            sf.sort_values(["base", "t", "n_quotes"])
            .drop_duplicates(["base", "t"], keep="last")
            .drop(columns=["venue", "n_quotes", "n_expiries"], errors="ignore")
        )
        extra |= _asof(
            panel,
            sf,
            by=["base"],
            left_groups=by_base,
            tolerance_minutes=spec.quote_tolerance_minutes,
        )
        if "atm_iv_30d" in extra and "rv_7d" in panel:
            rv = panel["rv_7d"].to_numpy(dtype=np.float64)
            iv = np.asarray(extra["atm_iv_30d"], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                extra["iv_rv_ratio_30d"] = np.where(rv > 0, iv / rv, np.nan)

    funding = tables.get("funding_rates")
    if funding is not None and not funding.empty:
        if until is not None:
            funding = funding[funding["timestamp"] <= until]
        parts = []
        for (venue, symbol), g in funding.groupby(["venue", "symbol"], sort=True):
            ff = funding_features(g.set_index("timestamp")["funding_rate"].sort_index())
            parts.append(
                ff.assign(venue=str(venue), symbol=str(symbol)).rename_axis("t").reset_index()
            )
        extra |= _asof(
            panel,
            pd.concat(parts, ignore_index=True),
            by=["venue", "symbol"],
            left_groups=by_contract,
            tolerance_minutes=spec.funding_tolerance_minutes,
        )
    if extra:
        panel = pd.concat([panel, pd.DataFrame(extra, index=panel.index)], axis=1)
    return panel
