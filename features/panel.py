"""Point-in-time assembly of the (venue, symbol, t) feature panel (METHOD.md, Time).

A decision time t is a bar close. An OHLCV row covers [timestamp, timestamp + timeframe) and is
known at its close, so bars are indexed here by close time. Books, option surfaces and funding are
joined as of t (the last row stamped at or before t) within a tolerance: a row older than that is
stale and its features become missing (NaN), never carried forward in silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError, require_columns
from features.book import book_features
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
    """

    book_tolerance_minutes: float = 180.0
    quote_tolerance_minutes: float = 180.0
    funding_tolerance_minutes: float = 720.0
    volume_window_days: float = 7.0
    scale_halflife_minutes: float = 1440.0
    min_scale_halflife_bars: float = 11.0


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


def _asof(
    left: pd.DataFrame, right: pd.DataFrame, *, by: list[str], tolerance_minutes: float
) -> pd.DataFrame:
    """Backward as-of join on ``t`` (right stamped at or before t) within a tolerance."""
    right = right.sort_values("t")
    merged = pd.merge_asof(
        left.sort_values("t"),
        right,
        on="t",
        by=by,
        direction="backward",
        tolerance=pd.Timedelta(minutes=tolerance_minutes),
    )
    return merged


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
    for (venue, symbol), _ in ohlcv.groupby(["venue", "symbol"], sort=True):
        if (str(venue), str(symbol)) not in info:
            raise FairmarginInputError(
                f"ohlcv: ({venue}, {symbol}) has bars but no row in contracts"
            )
        c = info[(str(venue), str(symbol))]
        if c["type"] == "option":
            continue
        bars, minutes = contract_bars(ohlcv, venue=str(venue), symbol=str(symbol))
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
        frames.append(frame.reset_index())
    if not frames:
        raise FairmarginInputError("build_panel: no swap or future has bars")
    panel = pd.concat(frames, ignore_index=True)

    books = tables.get("order_books")
    if books is not None and not books.empty:
        if until is not None:
            books = books[books["timestamp"] <= until]
        bf = book_features(books).rename(columns={"timestamp": "t"})
        bf = bf.drop(columns=[c for c in ("mid",) if c in bf.columns])
        panel = _asof(
            panel, bf, by=["venue", "symbol"], tolerance_minutes=spec.book_tolerance_minutes
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
        panel = _asof(panel, sf, by=["base"], tolerance_minutes=spec.quote_tolerance_minutes)

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
        panel = _asof(
            panel,
            pd.concat(parts, ignore_index=True),
            by=["venue", "symbol"],
            tolerance_minutes=spec.funding_tolerance_minutes,
        )
    return panel.sort_values(["venue", "symbol", "t"], ignore_index=True)
