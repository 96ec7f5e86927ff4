"""Labels: realised adverse moves per side over a grid of horizons (METHOD.md, Labels and Time).

A decision time ``t`` is a bar close. The label at ``t`` for a horizon of ``h`` bars uses the
``h`` bars that open at or after ``t`` and close at or before ``t + h * bar``; ``close_t`` is the
close of the bar ending at ``t``.

- linear long:   (close_t - min low) / close_t    linear short:  (max high - close_t) / close_t
- inverse long:  close_t / min low - 1            inverse short: 1 - close_t / max high
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError, require_columns

__all__ = ["SIDES", "Side", "adverse_move", "adverse_moves"]

Side = Literal["long", "short"]
SIDES: tuple[Side, Side] = ("long", "short")


def adverse_move(
    close_t: np.ndarray | pd.Series | float,
    extreme: np.ndarray | pd.Series | float,
    *,
    side: str,
    linear: bool,
) -> np.ndarray:
    """Adverse move of one side, as a fraction of the position, from ``close_t`` to ``extreme``.

    Parameters
    ----------
    close_t : price at the decision time.
    extreme : the window's minimum low (``side="long"``) or maximum high (``side="short"``).
    side : ``"long"`` or ``"short"``.
    linear : False for inverse contracts (margined in the base coin).
    """
    c = np.asarray(close_t, dtype=np.float64)
    x = np.asarray(extreme, dtype=np.float64)
    if side == "long":
        return (c - x) / c if linear else c / x - 1.0
    if side == "short":
        return (x - c) / c if linear else 1.0 - c / x
    raise FairmarginInputError(f"adverse_move: side must be 'long' or 'short', got {side!r}")


def adverse_moves(
    bars: pd.DataFrame, *, horizons_bars: Sequence[int], linear: bool = True
) -> pd.DataFrame:
    """Realised adverse moves of both sides for each horizon, one row per decision time.

    Parameters
    ----------
    bars : one contract's bars on a regular grid, indexed by bar CLOSE time, with columns
        ``high``, ``low``, ``close``. Missing bars must be present as NaN rows (reindex first):
        a window that touches a missing bar gives NaN, never a shorter window.
    horizons_bars : horizons in whole bars (>= 1).
    linear : False for inverse contracts.

    Returns
    -------
    DataFrame indexed like ``bars`` with columns ``long_{h}`` and ``short_{h}`` for each ``h``
    (fractions of notional). The last ``h`` rows of each column are NaN (the future is unknown).
    """
    require_columns(bars, ["high", "low", "close"], who="adverse_moves")
    if not bars.index.is_monotonic_increasing:
        raise FairmarginInputError("adverse_moves: bars must be sorted by close time")
    if bad := [h for h in horizons_bars if int(h) != h or h < 1]:
        raise FairmarginInputError(f"adverse_moves: horizons must be whole bars >= 1, got {bad}")
    close = bars["close"].to_numpy(dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for h in horizons_bars:
        h = int(h)
        # min low of the next h bars: a trailing rolling window shifted back by h rows
        fut_low = bars["low"].rolling(h, min_periods=h).min().shift(-h).to_numpy()
        fut_high = bars["high"].rolling(h, min_periods=h).max().shift(-h).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"long_{h}"] = adverse_move(close, fut_low, side="long", linear=linear)
            out[f"short_{h}"] = adverse_move(close, fut_high, side="short", linear=linear)
    return pd.DataFrame(out, index=bars.index)
