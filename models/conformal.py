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

__all__ = [
    "ScoreQuantiles",
    "block_bootstrap_factor",
    "block_resample",
    "calibrate_scores",
    "level_drift_sd",
]


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


def level_drift_sd(
    scores: ArrayLike,
    times: ArrayLike,
    blocks: ArrayLike,
    *,
    level: float = 0.90,
    min_block_scores: int = 100,
    min_blocks: int = 5,
    n_boot: int = 50,
    rng: np.random.Generator,
) -> float:
    """How far the calibrated level drifts between time blocks, net of sampling noise.

    The calibration factor is right on average over the window; at any one time the model can
    still be off by a level error that persists for a while (a volatility regime its features
    read late). That error is what a single as_of inherits, and the factor's own interval does
    not carry it. It is measured as a random effect: the ``level``-quantile of the scores in each
    block (e.g. a day) gives ``log q_b``; their variance across blocks is the drift variance plus
    the sampling variance of each ``log q_b``, which a bootstrap over the block's distinct decision
    times estimates (whole times, so the dependence across symbols at one time is kept)::

        tau^2 = max(0, var_b(log q_b) - mean_b(var_boot(log q_b)))

    A central level (0.9 by default) is used, not q itself: a level error moves every quantile
    alike, and a block holds too few tail scores to read q. Scores should not overlap in time
    (horizons no longer than the spacing of decision times).

    Parameters
    ----------
    scores : calibrated ratio scores (realised / calibrated forecast).
    times : the decision time of each score (any sortable key); scores of one time are resampled
        together.
    blocks : a block label per score (e.g. its day).
    level : the quantile read in each block.
    min_block_scores, min_blocks : blocks with fewer scores are skipped; with fewer usable
        blocks the drift cannot be told from noise and 0.0 is returned.
    n_boot : bootstrap resamples per block.
    rng : the random generator (seeded by the caller).

    Returns
    -------
    float
        ``tau``, the standard deviation of the log level across blocks (0.0 when none is
        measurable).
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(times)
    b = np.asarray(blocks)
    if not (s.shape == t.shape == b.shape) or s.ndim != 1:
        raise FairmarginInputError(
            "level_drift_sd: scores, times and blocks must be 1-D and align, got "
            f"{s.shape}, {t.shape} and {b.shape}"
        )
    if not 0.0 < level < 1.0:
        raise FairmarginInputError(f"level_drift_sd: level must be in (0, 1), got {level!r}")
    ok = np.isfinite(s) & (s > 0)
    s, t, b = s[ok], t[ok], b[ok]
    order = np.lexsort((t, b))
    s, t, b = s[order], t[order], b[order]
    _, b_starts, b_counts = np.unique(b, return_index=True, return_counts=True)
    log_q, noise = [], []
    for start, count in zip(b_starts, b_counts, strict=True):
        if count < min_block_scores:
            continue
        sb, tb = s[start : start + count], t[start : start + count]
        _, starts, lengths = np.unique(tb, return_index=True, return_counts=True)
        if starts.size < 2:
            continue
        log_q.append(np.log(np.quantile(sb, level)))
        boot = [np.log(np.quantile(sb[block_resample(starts, lengths, rng)], level))
                for _ in range(n_boot)]  # fmt: skip
        noise.append(np.var(boot, ddof=1))
    if len(log_q) < min_blocks:
        return 0.0
    between = float(np.var(log_q, ddof=1))
    return float(np.sqrt(max(between - float(np.mean(noise)), 0.0)))
