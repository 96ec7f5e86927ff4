"""Shared input checks and the project's error classes (the bottom layer owns them)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

__all__ = [
    "FairmarginError",
    "FairmarginInputError",
    "require_columns",
    "require_sorted",
]


class FairmarginError(Exception):
    """Root of every error fairmargin raises on purpose."""


class FairmarginInputError(FairmarginError, ValueError):
    """Input data or arguments that break a stated rule."""


def require_columns(df: pd.DataFrame, needed: Iterable[str], *, who: str) -> None:
    """Raise when ``df`` lacks any of ``needed``, naming what is missing and what is there."""
    if missing := sorted(set(needed) - set(df.columns)):
        raise FairmarginInputError(
            f"{who}: missing columns {missing}; got {sorted(map(str, df.columns))}"
        )


def require_sorted(index_or_series: pd.Index | pd.Series, *, who: str) -> None:
    """Raise when a time index or column is not sorted ascending."""
    values = index_or_series
    if not values.is_monotonic_increasing:
        raise FairmarginInputError(f"{who}: must be sorted by time (ascending)")
