"""Conformal calibration of quantile forecasts with a tail fit and an interval (METHOD.md).

Scores are ratios ``s = realised / forecast`` of volatility-scaled moves, pooled across symbols.
The calibrated forecast is ``forecast x C(q)`` with ``C`` the score distribution's quantile
function: the empirical (conformal) quantile where at least ``min_tail`` scores lie beyond the
level, else a generalised Pareto fit to the scores above the ``tail_threshold`` quantile.

The interval for the q-quantile uses binomial order statistics: with ``n_eff`` independent
(non-overlapping) scores, the q-quantile lies between the order statistics of rank
``binom.ppf(a/2, n_eff, q)`` and ``binom.ppf(1 - a/2, n_eff, q)`` with confidence ``1 - a``; they
are read off ``C`` at levels rank / n_eff. Few independent scores (long horizons) widen it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from features._checks import FairmarginInputError

__all__ = ["ScoreQuantiles", "block_bootstrap_factor", "block_resample", "calibrate_scores"]


@dataclass(frozen=True, slots=True)
class ScoreQuantiles:
    """The calibration factors of one horizon.

    Attributes
    ----------
    factor : C(q), multiplies the raw quantile forecast.
    factor_lower, factor_upper : C at the binomial order-statistic levels (the interval).
    n_scores : scores used (overlapping windows included).
    n_eff : independent scores assumed for the interval.
    method : ``"empirical"`` or ``"gpd"`` (tail extrapolated).
    """

    factor: float
    factor_lower: float
    factor_upper: float
    n_scores: int
    n_eff: float
    method: str


def _gpd_quantile(sorted_scores: np.ndarray, level: float, threshold_level: float) -> float:
    n = sorted_scores.size
    u = float(np.quantile(sorted_scores, threshold_level))
    exc = sorted_scores[sorted_scores > u] - u
    if exc.size < 10:
        return float(sorted_scores[-1])
    shape, _, scale = stats.genpareto.fit(exc, floc=0.0)
    shape = float(np.clip(shape, -0.5, 0.5))  # keep the tail sane on few points
    p_exceed = exc.size / n
    tail_p = (1.0 - level) / p_exceed
    return u + float(stats.genpareto.ppf(1.0 - tail_p, shape, loc=0.0, scale=scale))


def _quantile_fn(
    sorted_scores: np.ndarray, level: float, *, min_tail: int, tail_threshold: float
) -> tuple[float, str]:
    n = sorted_scores.size
    if n * (1.0 - level) >= min_tail:
        # conformal (finite-sample) rank: ceil((n + 1) level), read on the sorted scores
        k = min(int(np.ceil((n + 1) * level)), n)
        return float(sorted_scores[k - 1]), "empirical"
    return _gpd_quantile(sorted_scores, level, tail_threshold), "gpd"


def calibrate_scores(
    scores: ArrayLike,
    *,
    coverage: float,
    interval_level: float = 0.90,
    n_eff: float | None = None,
    min_tail: int = 5,
    tail_threshold: float = 0.90,
) -> ScoreQuantiles:
    """Calibration factors from ratio scores ``realised / forecast``.

    Parameters
    ----------
    scores : finite ratio scores (>= 20 of them).
    coverage : q in (0.5, 1).
    interval_level : two-sided confidence of the interval, in (0, 1).
    n_eff : independent scores behind them (defaults to all of them).
    min_tail : scores needed beyond a level to read it empirically, else the GPD tail.
    tail_threshold : level above which the GPD is fitted.
    """
    if not 0.5 < coverage < 1:
        raise FairmarginInputError(
            f"calibrate_scores: coverage must be in (0.5, 1), got {coverage!r}"
        )
    if not 0 < interval_level < 1:
        raise FairmarginInputError(
            f"calibrate_scores: interval_level must be in (0, 1), got {interval_level!r}"
        )
    s = np.asarray(scores, dtype=np.float64)
    s = np.sort(s[np.isfinite(s)])
    if s.size < 20:
        raise FairmarginInputError(
            f"calibrate_scores: need at least 20 finite scores, got {s.size}"
        )
    # binomial order statistics need a whole number of independent scores
    n_ind = round(s.size if n_eff is None else max(min(n_eff, s.size), 1.0))
    alpha = 1.0 - interval_level
    k_lo = stats.binom.ppf(alpha / 2, n_ind, coverage)
    k_hi = stats.binom.ppf(1 - alpha / 2, n_ind, coverage) + 1
    lvl_lo = float(np.clip(k_lo / n_ind, 0.5, coverage))
    # beyond the largest order statistic the bound is open: cap at a tenth of the tail mass
    lvl_hi = float(np.clip(k_hi / n_ind, coverage, 1.0 - (1.0 - coverage) / 10.0))
    factor, method = _quantile_fn(s, coverage, min_tail=min_tail, tail_threshold=tail_threshold)
    lower, _ = _quantile_fn(s, lvl_lo, min_tail=min_tail, tail_threshold=tail_threshold)
    upper, _ = _quantile_fn(s, lvl_hi, min_tail=min_tail, tail_threshold=tail_threshold)
    return ScoreQuantiles(
        factor=factor,
        factor_lower=min(lower, factor),
        factor_upper=max(upper, factor),
        n_scores=int(s.size),
        n_eff=float(n_ind),
        method=method,
    )


def block_resample(
    starts: NDArray[np.intp], lengths: NDArray[np.intp], rng: np.random.Generator
) -> NDArray[np.intp]:
    """Indices of one block-bootstrap resample: as many blocks as there are, drawn with
    replacement, each kept whole. Block ``i`` is the slice ``starts[i]:starts[i] + lengths[i]``
    of data sorted by block."""
    pick = rng.integers(0, starts.size, starts.size)
    lens = lengths[pick]
    offsets = np.repeat(starts[pick] - np.cumsum(lens) + lens, lens)
    return np.asarray(offsets + np.arange(lens.sum()), dtype=np.intp)


def block_bootstrap_factor(
    scores: ArrayLike,
    blocks: ArrayLike,
    *,
    coverage: float,
    interval_level: float = 0.90,
    n_boot: int = 200,
    rng: np.random.Generator,
    min_tail: int = 5,
    tail_threshold: float = 0.90,
) -> tuple[float, float]:
    """Percentile interval of the calibration factor C(q) under a block bootstrap over time.

    Tail events cluster in time (volatility regimes, jumps), so the binomial bound, which treats
    non-overlapping scores as independent, is too narrow when a few days carry the tail. Whole
    blocks (e.g. days) are resampled with replacement and C(q) is recomputed on each resample.

    Parameters
    ----------
    scores : ratio scores.
    blocks : a block label per score (e.g. the day of its decision time).
    coverage, interval_level : as in :func:`calibrate_scores`.
    n_boot : resamples (fewer are used where the GPD tail has to be fitted).
    rng : the random generator (seeded by the caller).
    """
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(blocks)
    if s.shape != b.shape:
        raise FairmarginInputError(
            f"block_bootstrap_factor: scores and blocks must align, got {s.shape} and {b.shape}"
        )
    ok = np.isfinite(s)
    s, b = s[ok], b[ok]
    order = np.argsort(b, kind="stable")
    s, b = s[order], b[order]
    _, starts, lengths = np.unique(b, return_index=True, return_counts=True)
    n_blocks = starts.size
    if n_blocks < 2 or s.size < 20:
        return float("nan"), float("nan")
    empirical = s.size * (1.0 - coverage) >= 4 * min_tail
    draws = n_boot if empirical else max(n_boot // 4, 20)
    factors = np.empty(draws)
    for i in range(draws):
        idx = block_resample(starts, lengths, rng)
        factors[i], _ = _quantile_fn(
            np.sort(s[idx]), coverage, min_tail=min_tail, tail_threshold=tail_threshold
        )
    alpha = 1.0 - interval_level
    lo, hi = np.quantile(factors, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
