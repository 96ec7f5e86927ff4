"""Backtest statistics that judge a margin model (METHOD.md, "Backtests").

Each side of a margin is its own forecast of the adverse move at coverage ``q``: an *exception*
is a realised adverse move larger than the forecast. This module holds the classic VaR
backtests written on :mod:`scipy.stats` (``arch`` has none of them):

- :func:`kupiec_pof`: Kupiec's (1995) proportion-of-failures likelihood-ratio test;
- :func:`transition_counts`, :func:`christoffersen`: Christoffersen's (1998) independence and
  conditional-coverage likelihood-ratio tests;
- :func:`traffic_light`: the Basel Committee's (1996) traffic-light zones;
- :func:`pooled_kupiec_bootstrap`, :func:`pooled_christoffersen`: the pooled versions over
  symbols whose exceptions are correlated on the same dates;
- :func:`coverage_by_tercile`, :func:`peak_to_trough`, :func:`largest_increase`: conditional
  coverage and procyclicality statistics;
- :func:`backtest`: all of them on one (forecast, realised) pair, as a :class:`BacktestReport`;
- :func:`apc_buffer`, :func:`apc_stressed_weight`, :func:`apc_floor`: the three
  anti-procyclicality overlays of EMIR (Commission Delegated Regulation 153/2013, Art. 28).

Pure functions and frozen dataclasses; no I/O.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from features._checks import FairmarginInputError

__all__ = [
    "BacktestReport",
    "ChristoffersenResult",
    "PooledKupiecResult",
    "TestResult",
    "TrafficLight",
    "TransitionCounts",
    "apc_buffer",
    "apc_floor",
    "apc_multiplier_at",
    "apc_overlay",
    "apc_stressed_weight",
    "backtest",
    "christoffersen",
    "coverage_by_tercile",
    "kupiec_pof",
    "largest_increase",
    "non_overlapping",
    "peak_to_trough",
    "pooled_christoffersen",
    "pooled_kupiec_bootstrap",
    "traffic_light",
    "transition_counts",
]

logger = logging.getLogger(__name__)

TrafficLight = Literal["green", "yellow", "red"]

#: Basel zone boundaries on the cumulative binomial probability P(X <= k).
_GREEN_BELOW = 0.95
_YELLOW_BELOW = 0.9999
#: Number of most recent non-overlapping observations the traffic light looks at.
TRAFFIC_LIGHT_WINDOW = 250
_ZONE_CODE: dict[str, float] = {"green": 0.0, "yellow": 1.0, "red": 2.0}
#: Largest number of block starts drawn at once by the pooled bootstrap (memory bound).
_MAX_BOOT_CELLS = 2_000_000


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TestResult:
    """A likelihood-ratio test: its statistic and p-value.

    Attributes
    ----------
    statistic : float
        The likelihood-ratio statistic (>= 0).
    p_value : float
        Its chi-square tail probability, in [0, 1].
    """

    __test__ = False  # not a pytest test class despite its name

    statistic: float
    p_value: float


@dataclass(frozen=True, slots=True)
class TransitionCounts:
    """Counts of consecutive exception pairs ``(e[t-1], e[t])``.

    Attributes
    ----------
    n00, n01, n10, n11 : int
        ``n_ij`` counts the times ``t`` with ``e[t-1] = i`` and ``e[t] = j`` (1 = exception).
    """

    n00: int
    n01: int
    n10: int
    n11: int

    def __post_init__(self) -> None:
        for name in ("n00", "n01", "n10", "n11"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise FairmarginInputError(
                    f"TransitionCounts: {name} must be an integer >= 0, got {_show(value)}"
                )

    @property
    def n_transitions(self) -> int:
        """Number of pairs, ``n00 + n01 + n10 + n11`` (one less than the observations)."""
        return int(self.n00 + self.n01 + self.n10 + self.n11)

    @property
    def n_exceptions(self) -> int:
        """Exceptions among the second elements of the pairs, ``n01 + n11``."""
        return int(self.n01 + self.n11)

    def __add__(self, other: TransitionCounts) -> TransitionCounts:
        """Cell-wise sum, used to pool symbols."""
        return TransitionCounts(
            n00=int(self.n00 + other.n00),
            n01=int(self.n01 + other.n01),
            n10=int(self.n10 + other.n10),
            n11=int(self.n11 + other.n11),
        )


@dataclass(frozen=True, slots=True)
class ChristoffersenResult:
    """Christoffersen's independence and conditional-coverage tests.

    Attributes
    ----------
    counts : TransitionCounts
        The transition counts the tests were computed on.
    lr_pof : float
        Kupiec's statistic on the ``n_transitions`` second elements of the pairs (chi2, 1 dof).
    lr_ind : float
        Independence statistic: first-order Markov chain vs independent exceptions (chi2, 1 dof).
    p_ind : float
        p-value of ``lr_ind``.
    lr_cc : float
        Conditional-coverage statistic, ``lr_pof + lr_ind`` (chi2, 2 dof).
    p_cc : float
        p-value of ``lr_cc``.
    """

    counts: TransitionCounts
    lr_pof: float
    lr_ind: float
    p_ind: float
    lr_cc: float
    p_cc: float


@dataclass(frozen=True, slots=True)
class PooledKupiecResult:
    """Pooled proportion-of-failures test by block bootstrap over dates.

    Attributes
    ----------
    statistic : float
        ``(exception_rate - p0) / sqrt(design_effect * p0 (1 - p0) / n_obs)`` with
        ``p0 = 1 - coverage``: a z-score under the null variance inflated by the design effect
        (design effect 1 when it cannot be estimated, see ``design_effect``).
    p_value : float
        Two-sided p-value, in ``(0, 1]``.
    exception_rate : float
        Pooled exception rate, ``n_exceptions / n_obs``.
    n_obs : int
        Observed (non-NaN) cells of the dates x symbols table.
    n_exceptions : int
        Exceptions among them.
    std_error : float
        Bootstrap standard deviation of the pooled exception rate (at the observed rate).
    design_effect : float
        ``std_error ** 2 / (R (1 - R) / n_obs)``: how much the dependence inflates the binomial
        variance (1 for independent exceptions, up to the number of symbols for perfectly
        correlated ones). When ``R`` is 0 or 1 the exceptions cannot measure it: it is the
        proxy's (floored at 1, the Kupiec LR divided by it), or NaN without a proxy (the p-value
        is then the plain pooled Kupiec one).
    """

    statistic: float
    p_value: float
    exception_rate: float
    n_obs: int
    n_exceptions: int
    std_error: float
    design_effect: float


@dataclass(frozen=True, slots=True)
class BacktestReport:
    """Backtest of one quantile-forecast series (one side of one symbol's margin).

    Exception-based figures use the non-overlapping sample (every ``step``-th observation);
    the margin-path figures (``average_margin`` onwards) use the full forecast series.

    Attributes
    ----------
    observations : int
        Non-overlapping observations the tests use.
    exceptions : int
        Exceptions among them (realised > forecast).
    target_coverage : float
        The coverage ``q`` the forecast aims at.
    coverage : float
        Empirical coverage, ``1 - exceptions / observations``.
    step : int
        Sampling step in rows (the horizon in bars).
    largest_breach : float
        Largest ``realised - forecast`` over the exceptions (fraction of notional); NaN without
        exceptions.
    average_breach : float
        Mean ``realised - forecast`` over the exceptions; NaN without exceptions.
    kupiec_p : float
        p-value of Kupiec's POF test.
    christoffersen_ind_p : float
        p-value of Christoffersen's independence test.
    christoffersen_cc_p : float
        p-value of Christoffersen's conditional-coverage test.
    traffic_light : {"green", "yellow", "red"}
        Basel zone over the last ``n_traffic`` non-overlapping observations.
    n_traffic : int
        Observations the traffic light used: ``min(250, observations)``.
    traffic_exceptions : int
        Exceptions among them.
    tercile_coverage : tuple of float
        Coverage in the (low, mid, high) tercile of trailing realised volatility; NaNs when no
        volatility is given.
    average_margin : float
        Mean of the forecast (margin) series.
    peak_to_trough : float
        ``max / min`` of the forecast series.
    largest_5d_increase, largest_30d_increase : float
        :func:`largest_increase` of the forecast series over 5 and 30 calendar days.
    """

    observations: int
    exceptions: int
    target_coverage: float
    coverage: float
    step: int
    largest_breach: float
    average_breach: float
    kupiec_p: float
    christoffersen_ind_p: float
    christoffersen_cc_p: float
    traffic_light: TrafficLight
    n_traffic: int
    traffic_exceptions: int
    tercile_coverage: tuple[float, float, float]
    average_margin: float
    peak_to_trough: float
    largest_5d_increase: float
    largest_30d_increase: float

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: float}`` for ``mlflow.log_metrics``.

        The traffic light becomes ``traffic_light_zone`` (green 0, yellow 1, red 2) and the
        terciles ``tercile_coverage_low``, ``_mid`` and ``_high``. NaN stays NaN.
        """
        low, mid, high = self.tercile_coverage
        return {
            "observations": float(self.observations),
            "exceptions": float(self.exceptions),
            "target_coverage": float(self.target_coverage),
            "coverage": float(self.coverage),
            "step": float(self.step),
            "largest_breach": float(self.largest_breach),
            "average_breach": float(self.average_breach),
            "kupiec_p": float(self.kupiec_p),
            "christoffersen_ind_p": float(self.christoffersen_ind_p),
            "christoffersen_cc_p": float(self.christoffersen_cc_p),
            "traffic_light_zone": _ZONE_CODE[self.traffic_light],
            "n_traffic": float(self.n_traffic),
            "traffic_exceptions": float(self.traffic_exceptions),
            "tercile_coverage_low": float(low),
            "tercile_coverage_mid": float(mid),
            "tercile_coverage_high": float(high),
            "average_margin": float(self.average_margin),
            "peak_to_trough": float(self.peak_to_trough),
            "largest_5d_increase": float(self.largest_5d_increase),
            "largest_30d_increase": float(self.largest_30d_increase),
        }


# --------------------------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------------------------
def _show(value: object) -> str:
    """``repr`` of a value, numpy scalars shown as plain Python ones (0.3, not np.float64(0.3))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_coverage(coverage: float, *, who: str) -> None:
    if isinstance(coverage, bool) or not isinstance(coverage, int | float | np.floating):
        raise FairmarginInputError(
            f"{who}: coverage must be a float in (0.5, 1), got {_show(coverage)}"
        )
    if not 0.5 < float(coverage) < 1:
        raise FairmarginInputError(f"{who}: coverage must be in (0.5, 1), got {_show(coverage)}")


def _check_int(value: object, *, name: str, minimum: int, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise FairmarginInputError(
            f"{who}: {name} must be an integer >= {minimum}, got {_show(value)}"
        )
    return int(value)


def _xlogy(x: float, y: float) -> float:
    """``x * log(y)`` with the convention ``0 * log(0) = 0``."""
    return 0.0 if x == 0 else x * math.log(y)


def _bernoulli_loglik(n_zero: float, n_one: float, p: float) -> float:
    """Log-likelihood of ``n_one`` ones and ``n_zero`` zeros at success probability ``p``."""
    return _xlogy(n_zero, 1.0 - p) + _xlogy(n_one, p)


def _exception_values(exceptions: ArrayLike, *, who: str, allow_nan: bool) -> NDArray[np.float64]:
    """1-D float array of 0/1 (and NaN when ``allow_nan``) from bools, 0/1 or nullable bools."""
    if np.ndim(exceptions) != 1:
        raise FairmarginInputError(
            f"{who}: exceptions must be 1-D, got {np.ndim(exceptions)} dimensions"
        )
    series = exceptions if isinstance(exceptions, pd.Series) else pd.Series(exceptions)
    try:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise FairmarginInputError(
            f"{who}: exceptions must be booleans or 0/1, got dtype {series.dtype}"
        ) from err
    nan = np.isnan(values)
    if nan.any() and not allow_nan:
        raise FairmarginInputError(
            f"{who}: exceptions must be NaN-free, got {int(nan.sum())} NaN "
            f"(first at position {int(np.argmax(nan))})"
        )
    bad = ~nan & (values != 0.0) & (values != 1.0)
    if bad.any():
        raise FairmarginInputError(
            f"{who}: exceptions must be booleans or 0/1, got {float(values[bad][0])!r} "
            f"at position {int(np.argmax(bad))}"
        )
    return np.asarray(values, dtype=np.float64)


def _require_same_index(a: pd.Series, b: pd.Series, *, names: tuple[str, str], who: str) -> None:
    if not a.index.equals(b.index):
        raise FairmarginInputError(
            f"{who}: {names[0]} and {names[1]} must share the same index, got lengths "
            f"{len(a)} and {len(b)}; align them first (e.g. {names[1]}.reindex({names[0]}.index))"
        )


def _require_time_index(series: pd.Series, *, name: str, who: str) -> None:
    if not isinstance(series.index, pd.DatetimeIndex):
        raise FairmarginInputError(
            f"{who}: {name} must have a DatetimeIndex, got {type(series.index).__name__}"
        )
    if not series.index.is_monotonic_increasing or not series.index.is_unique:
        raise FairmarginInputError(
            f"{who}: {name} index must be sorted ascending without duplicates"
        )


def _positive_margin(margin: pd.Series, *, who: str, name: str = "margin") -> pd.Series:
    """Non-NaN values of ``margin`` as floats, which must be finite and > 0."""
    if not isinstance(margin, pd.Series):
        raise FairmarginInputError(
            f"{who}: {name} must be a pandas Series, got {type(margin).__name__}"
        )
    values = margin.dropna().astype(np.float64)
    if values.empty:
        raise FairmarginInputError(f"{who}: {name} must hold at least one non-NaN value, got none")
    bad = (values <= 0) | ~np.isfinite(values)
    if bad.any():
        raise FairmarginInputError(
            f"{who}: {name} must be finite and > 0, got {float(values[bad].iloc[0])!r} "
            f"at {values.index[bad.to_numpy()][0]}"
        )
    return values


# --------------------------------------------------------------------------------------------
# Single-series tests
# --------------------------------------------------------------------------------------------
def kupiec_pof(n_obs: int, n_exceptions: int, *, coverage: float) -> TestResult:
    """Kupiec's proportion-of-failures (unconditional coverage) likelihood-ratio test.

    ``LR = -2 [ln L(p0) - ln L(x/n)]`` with ``L(p) = (1-p)^(n-x) p^x`` and
    ``p0 = 1 - coverage``; chi-square with one degree of freedom under H0. ``0 * log 0 = 0``,
    so ``x = 0`` and ``x = n`` are finite.

    Parameters
    ----------
    n_obs : int
        Number of (independent, e.g. non-overlapping) observations, >= 1.
    n_exceptions : int
        Exceptions among them, in ``[0, n_obs]``.
    coverage : float
        Target coverage ``q`` in (0.5, 1); the expected exception rate is ``1 - q``.

    Returns
    -------
    TestResult
        LR statistic and p-value.
    """
    who = "kupiec_pof"
    n = _check_int(n_obs, name="n_obs", minimum=1, who=who)
    x = _check_int(n_exceptions, name="n_exceptions", minimum=0, who=who)
    if x > n:
        raise FairmarginInputError(f"{who}: n_exceptions must be <= n_obs ({n}), got {x}")
    _check_coverage(coverage, who=who)
    p0 = 1.0 - float(coverage)
    p_hat = x / n
    lr = -2.0 * (_bernoulli_loglik(n - x, x, p0) - _bernoulli_loglik(n - x, x, p_hat))
    lr = max(lr, 0.0)  # rounding can leave -1e-16 when x / n == p0
    return TestResult(statistic=lr, p_value=float(stats.chi2.sf(lr, df=1)))


def transition_counts(exceptions: ArrayLike) -> TransitionCounts:
    """Count consecutive exception pairs of a NaN-free exception sequence.

    Parameters
    ----------
    exceptions : array-like of bool or 0/1
        Exception indicators in time order (1-D, no NaN). Sample non-overlapping
        observations first (:func:`non_overlapping`).

    Returns
    -------
    TransitionCounts
        ``n_ij`` = number of ``t >= 1`` with ``e[t-1] = i`` and ``e[t] = j``.
    """
    e = _exception_values(exceptions, who="transition_counts", allow_nan=False).astype(bool)
    prev, cur = e[:-1], e[1:]
    return TransitionCounts(
        n00=int(np.count_nonzero(~prev & ~cur)),
        n01=int(np.count_nonzero(~prev & cur)),
        n10=int(np.count_nonzero(prev & ~cur)),
        n11=int(np.count_nonzero(prev & cur)),
    )


def christoffersen(counts: TransitionCounts, *, coverage: float) -> ChristoffersenResult:
    """Christoffersen's independence and conditional-coverage likelihood-ratio tests.

    With ``pi01 = n01 / (n00 + n01)``, ``pi11 = n11 / (n10 + n11)`` and
    ``pi = (n01 + n11) / n`` over the ``n`` transitions::

        LR_ind = -2 [ln L(pi, pi) - ln L(pi01, pi11)]                 ~ chi2(1)
        LR_pof = Kupiec's LR on the n second elements (x = n01 + n11)  ~ chi2(1)
        LR_cc  = LR_pof + LR_ind                                       ~ chi2(2)

    where ``L(a, b) = (1-a)^n00 a^n01 (1-b)^n10 b^n11``. Using the ``n`` pair-ends for the POF
    part makes the decomposition exact (Christoffersen 1998, eq. 9). Zero cells are handled
    with ``0 * log 0 = 0``: a row of the transition matrix without observations adds nothing.

    Parameters
    ----------
    counts : TransitionCounts
        Transition counts (:func:`transition_counts`, or a pooled sum), at least one pair.
    coverage : float
        Target coverage ``q`` in (0.5, 1).

    Returns
    -------
    ChristoffersenResult
    """
    who = "christoffersen"
    if not isinstance(counts, TransitionCounts):
        raise FairmarginInputError(
            f"{who}: counts must be a TransitionCounts, got {type(counts).__name__}"
        )
    _check_coverage(coverage, who=who)
    n = counts.n_transitions
    if n < 1:
        raise FairmarginInputError(
            f"{who}: counts must hold at least one transition (two observations), got {n}"
        )
    n00, n01, n10, n11 = (float(c) for c in (counts.n00, counts.n01, counts.n10, counts.n11))
    from0, from1 = n00 + n01, n10 + n11
    pi01 = n01 / from0 if from0 > 0 else 0.0
    pi11 = n11 / from1 if from1 > 0 else 0.0
    pi = (n01 + n11) / n
    ll_markov = _bernoulli_loglik(n00, n01, pi01) + _bernoulli_loglik(n10, n11, pi11)
    ll_indep = _bernoulli_loglik(n00 + n10, n01 + n11, pi)
    lr_ind = max(-2.0 * (ll_indep - ll_markov), 0.0)
    lr_pof = kupiec_pof(n, counts.n_exceptions, coverage=coverage).statistic
    lr_cc = lr_pof + lr_ind
    return ChristoffersenResult(
        counts=counts,
        lr_pof=lr_pof,
        lr_ind=lr_ind,
        p_ind=float(stats.chi2.sf(lr_ind, df=1)),
        lr_cc=lr_cc,
        p_cc=float(stats.chi2.sf(lr_cc, df=2)),
    )


def traffic_light(
    n_exceptions: int, *, n_obs: int = TRAFFIC_LIGHT_WINDOW, coverage: float = 0.99
) -> TrafficLight:
    """Basel traffic-light zone of an exception count.

    With ``X ~ Binomial(n_obs, 1 - coverage)``: green while ``P(X <= k) < 0.95``, yellow while
    ``P(X <= k) < 0.9999``, red beyond. At 250 observations and 99 % this is the Basel table:
    green 0-4, yellow 5-9, red 10+. With fewer observations the same rule applies to the
    binomial of the observations there are.

    Parameters
    ----------
    n_exceptions : int
        Exceptions ``k``, in ``[0, n_obs]``.
    n_obs : int
        Observations, >= 1 (250 in the Basel rule).
    coverage : float
        Target coverage in (0.5, 1).

    Returns
    -------
    {"green", "yellow", "red"}
    """
    who = "traffic_light"
    n = _check_int(n_obs, name="n_obs", minimum=1, who=who)
    k = _check_int(n_exceptions, name="n_exceptions", minimum=0, who=who)
    if k > n:
        raise FairmarginInputError(f"{who}: n_exceptions must be <= n_obs ({n}), got {k}")
    _check_coverage(coverage, who=who)
    cumulative = float(stats.binom.cdf(k, n, 1.0 - float(coverage)))
    if cumulative < _GREEN_BELOW:
        return "green"
    if cumulative < _YELLOW_BELOW:
        return "yellow"
    return "red"


@overload
def non_overlapping(index_or_frame: pd.DataFrame, *, step: int) -> pd.DataFrame: ...
@overload
def non_overlapping(index_or_frame: pd.Series, *, step: int) -> pd.Series: ...
@overload
def non_overlapping(index_or_frame: pd.Index, *, step: int) -> pd.Index: ...
def non_overlapping(
    index_or_frame: pd.DataFrame | pd.Series | pd.Index, *, step: int
) -> pd.DataFrame | pd.Series | pd.Index:
    """Every ``step``-th row, counted backwards from the last one.

    The last row is always kept (it is the most recent observation, the one the traffic light
    must see), then the rows ``step``, ``2 step``, ... positions before it. Sampling is by
    position: the rows must lie on a regular bar grid (one row per bar, NaN where missing) so
    that ``step`` rows are ``step`` bars. Labels over a horizon of ``step`` bars taken this way
    do not overlap.

    Parameters
    ----------
    index_or_frame : DataFrame, Series or Index
        Rows in time order.
    step : int
        Sampling step in rows (the horizon in bars), >= 1; 1 keeps everything.

    Returns
    -------
    Same type as ``index_or_frame``
        The sampled rows, in time order.
    """
    who = "non_overlapping"
    k = _check_int(step, name="step", minimum=1, who=who)
    if not isinstance(index_or_frame, pd.DataFrame | pd.Series | pd.Index):
        raise FairmarginInputError(
            f"{who}: index_or_frame must be a DataFrame, Series or Index, "
            f"got {type(index_or_frame).__name__}"
        )
    n = len(index_or_frame)
    start = (n - 1) % k if n else 0
    if isinstance(index_or_frame, pd.Index):
        return index_or_frame[start::k]
    return index_or_frame.iloc[start::k]


# --------------------------------------------------------------------------------------------
# Pooled tests
# --------------------------------------------------------------------------------------------
def pooled_kupiec_bootstrap(
    exceptions: pd.DataFrame,
    *,
    coverage: float,
    block_length: int,
    n_boot: int = 2000,
    rng: np.random.Generator,
    proxy: pd.DataFrame | None = None,
) -> PooledKupiecResult:
    """Pooled proportion-of-failures test over symbols by a circular block bootstrap of dates.

    Exceptions of different symbols on the same date are correlated (a market-wide move breaks
    many coins at once), so the pooled count is not binomial: its variance is larger and the
    plain pooled Kupiec test over-rejects a calibrated model. Here the sampling distribution of
    the pooled exception rate ``R = sum(e) / sum(observed)`` comes from resampling whole dates
    (rows, so the cross-sectional dependence is kept) in blocks of ``block_length`` consecutive
    dates (so serial dependence up to that length is kept too).

    Method (circular block bootstrap, Politis & Romano 1992): dates with no observation are
    dropped; the ``T`` remaining dates are wrapped on a circle; each replicate concatenates
    ``ceil(T / block_length)`` blocks starting at uniform random dates and truncates to ``T``
    dates; ``R*`` is the pooled rate of the replicate. The test of ``H0: rate = p0 =
    1 - coverage`` is a centred bootstrap test with the spread carried to the null rate: the
    deviations ``R* - R`` stand for those of ``R`` around its mean, and since the variance of
    a pooled rate is ``design effect x p (1 - p) / n`` they are rescaled by
    ``s = sqrt(p0 (1 - p0) / (R (1 - R)))`` to the null rate (the design effect, which the
    bootstrap measures, is taken as the same at ``R`` and ``p0``)::

        p = (1 + #{ s |R* - R| >= |R - p0| }) / (n_boot + 1)

    Without the rescaling (``s = 1``) the test is liberal for rare exceptions (a rate below
    ``p0`` comes with a small variance): on 9 symbols x 1000 dates with a cross-correlation
    of 0.8 of the latent moves at q = 0.99 (1,000 replications) its size was 7 % at a
    nominal 5 %, against 5.6 % with it, and it rejected a true rate of 1.5 % less often
    (45 % vs 62 %).

    With no exception (or only exceptions) the exceptions carry no information on the
    dependence. Given ``proxy`` (continuous scores on the same table, e.g. ``realised /
    forecast``), the design effect is then measured the same way on the exceedances of a
    lower threshold of the proxy, its pooled quantile at ``1 - max(p0, 10 / n_obs)`` (about ten
    exceedances at least; the median at most), floored at 1, and the pooled Kupiec LR statistic
    is divided by it (the Rao-Scott first-order correction, chi-square with 1 df). Several
    venues listing one underlying are the usual case: with 17 contracts on a handful of
    underlyings, no exception in 20 days is likely for a calibrated model, which the plain
    pooled Kupiec test (design effect 1, the fallback without ``proxy``) rejects. This assumes
    exceedances of the lower level depend on each other as much as tail ones do (a stronger
    tail dependence would make the test liberal). With fewer than about ten pooled exceptions
    the bootstrap distribution is coarse and the p-value unreliable.

    Parameters
    ----------
    exceptions : DataFrame
        Dates (rows, in time order) x symbols; True/1 for an exception, False/0 for none,
        NaN (or ``pd.NA``) where a symbol has no observation that date. For horizons longer
        than a bar, pass the non-overlapping dates (the same dates for every symbol).
    coverage : float
        Target coverage ``q`` in (0.5, 1).
    block_length : int
        Dates per block, in ``[1, T]``: long enough to hold the serial dependence left in
        the exceptions (clusters a model misses); ``T ** (1/3)`` is the usual order.
    n_boot : int
        Bootstrap replicates, >= 100 (the p-value moves in steps of ``1 / (n_boot + 1)``).
    rng : numpy.random.Generator
        Source of randomness (the result is reproducible for a seeded generator).
    proxy : DataFrame, optional
        Scores with the index and columns of ``exceptions`` (NaN where it is NaN), higher is
        nearer an exception; used only when the pooled rate is 0 or 1.

    Returns
    -------
    PooledKupiecResult
    """
    who = "pooled_kupiec_bootstrap"
    if not isinstance(exceptions, pd.DataFrame):
        raise FairmarginInputError(
            f"{who}: exceptions must be a DataFrame (dates x symbols), "
            f"got {type(exceptions).__name__}"
        )
    _check_coverage(coverage, who=who)
    length = _check_int(block_length, name="block_length", minimum=1, who=who)
    reps = _check_int(n_boot, name="n_boot", minimum=100, who=who)
    if not isinstance(rng, np.random.Generator):
        raise FairmarginInputError(
            f"{who}: rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    try:
        values = exceptions.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise FairmarginInputError(
            f"{who}: exceptions must be booleans, 0/1 or NaN, got dtypes "
            f"{sorted(set(map(str, exceptions.dtypes)))}"
        ) from err
    observed = ~np.isnan(values)
    bad = observed & (values != 0.0) & (values != 1.0)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise FairmarginInputError(
            f"{who}: exceptions must be booleans, 0/1 or NaN, got {float(values[row, col])!r} "
            f"at row {row}, column {exceptions.columns[col]!r}"
        )
    n_per_date = observed.sum(axis=1)
    keep = n_per_date > 0
    x_per_date = np.where(observed, values, 0.0).sum(axis=1)[keep]
    n_per_date = n_per_date[keep].astype(np.float64)
    n_dates = int(keep.sum())
    if n_dates == 0:
        raise FairmarginInputError(f"{who}: exceptions must hold at least one observation")
    if length > n_dates:
        raise FairmarginInputError(
            f"{who}: block_length must be <= the number of dates with observations "
            f"({n_dates}), got {length}"
        )

    n_obs = float(n_per_date.sum())
    n_exc = float(x_per_date.sum())
    rate = n_exc / n_obs
    p0 = 1.0 - float(coverage)

    boot_rate = _block_bootstrap_rates(x_per_date, n_per_date, length, reps, rng)

    distance = abs(rate - p0)
    std_error = float(boot_rate.std(ddof=1))
    null_var = p0 * (1.0 - p0) / n_obs
    if 0.0 < rate < 1.0:
        scale = math.sqrt(p0 * (1.0 - p0) / (rate * (1.0 - rate)))
        design_effect = std_error**2 / (rate * (1.0 - rate) / n_obs)
        deviations = scale * np.abs(boot_rate - rate)
        # Tolerance so that a replicate equal to R up to rounding counts as extreme when R = p0.
        tol = 1e-12 * max(rate, p0)
        n_extreme = float(np.count_nonzero(deviations >= distance - tol))
        p_value = (1.0 + n_extreme) / (reps + 1.0)
        null_se = math.sqrt(design_effect * null_var)
    else:
        lr = kupiec_pof(int(n_obs), int(n_exc), coverage=coverage).statistic
        design_effect = math.nan
        if proxy is not None:
            design_effect = _proxy_design_effect(
                proxy, exceptions, observed, keep, p0, length, reps, rng, who=who
            )
        if math.isnan(design_effect):
            p_value = float(stats.chi2.sf(lr, df=1))
            null_se = math.sqrt(null_var)
            logger.info(
                "%s: pooled exception rate is %s, the bootstrap cannot measure the dependence; "
                "using the plain pooled Kupiec p-value",
                who,
                rate,
            )
        else:
            p_value = float(stats.chi2.sf(lr / design_effect, df=1))
            null_se = math.sqrt(design_effect * null_var)
    if null_se > 0:
        statistic = (rate - p0) / null_se
    else:
        statistic = 0.0 if rate == p0 else math.copysign(math.inf, rate - p0)
    logger.debug(
        "%s: %d dates, %d obs, %d exceptions, rate %.5f, se %.5f, deff %.3f, p %.4f",
        who,
        n_dates,
        int(n_obs),
        int(n_exc),
        rate,
        std_error,
        design_effect,
        p_value,
    )
    return PooledKupiecResult(
        statistic=float(statistic),
        p_value=min(p_value, 1.0),
        exception_rate=rate,
        n_obs=int(n_obs),
        n_exceptions=int(n_exc),
        std_error=std_error,
        design_effect=float(design_effect),
    )


def _block_bootstrap_rates(
    x_per_date: NDArray[np.float64],
    n_per_date: NDArray[np.float64],
    length: int,
    reps: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Pooled rates of ``reps`` circular block-bootstrap replicates of the dates."""
    n_dates = x_per_date.size
    # Block sums on the circle from prefix sums of the dates repeated twice.
    n_blocks = -(-n_dates // length)
    last_length = n_dates - (n_blocks - 1) * length
    cum_x = np.concatenate(([0.0], np.cumsum(np.tile(x_per_date, 2))))
    cum_n = np.concatenate(([0.0], np.cumsum(np.tile(n_per_date, 2))))
    lengths = np.full(n_blocks, length)
    lengths[-1] = last_length
    boot_rate = np.empty(reps, dtype=np.float64)
    chunk = max(1, _MAX_BOOT_CELLS // n_blocks)  # bound the memory of the start indices
    for lo in range(0, reps, chunk):
        hi = min(reps, lo + chunk)
        starts = rng.integers(0, n_dates, size=(hi - lo, n_blocks))
        ends = starts + lengths
        boot_x = (cum_x[ends] - cum_x[starts]).sum(axis=1)
        boot_n = (cum_n[ends] - cum_n[starts]).sum(axis=1)
        boot_rate[lo:hi] = boot_x / boot_n  # every kept date has an observation: boot_n > 0
    return boot_rate


def _proxy_design_effect(
    proxy: pd.DataFrame,
    exceptions: pd.DataFrame,
    observed: NDArray[np.bool_],
    keep: NDArray[np.bool_],
    p0: float,
    length: int,
    reps: int,
    rng: np.random.Generator,
    *,
    who: str,
) -> float:
    """Design effect of the exceedances of the proxy's pooled ``1 - max(p0, 10 / n)`` quantile
    (the median at most; floored at 1); NaN when the proxy has no spread there."""
    if not isinstance(proxy, pd.DataFrame) or proxy.shape != exceptions.shape:
        raise FairmarginInputError(
            f"{who}: proxy must be a DataFrame shaped like exceptions {exceptions.shape}, got "
            f"{getattr(proxy, 'shape', type(proxy).__name__)}"
        )
    if not (proxy.index.equals(exceptions.index) and proxy.columns.equals(exceptions.columns)):
        raise FairmarginInputError(f"{who}: proxy must have the index and columns of exceptions")
    scores = proxy.to_numpy(dtype=np.float64, na_value=np.nan)
    usable = observed & np.isfinite(scores)
    if (observed & ~usable).any():
        row, col = (int(i[0]) for i in np.nonzero(observed & ~usable))
        raise FairmarginInputError(
            f"{who}: proxy must be finite where exceptions are observed, got "
            f"{scores[row, col]!r} at row {row}, column {exceptions.columns[col]!r}"
        )
    n_obs = float(observed.sum())
    threshold = float(np.quantile(scores[observed], 1.0 - min(max(p0, 10.0 / n_obs), 0.5)))
    above = np.where(observed, scores > threshold, False)
    x_per_date = above.sum(axis=1)[keep].astype(np.float64)
    n_per_date = observed.sum(axis=1)[keep].astype(np.float64)
    rate = float(x_per_date.sum() / n_obs)
    if not 0.0 < rate < 1.0:
        return math.nan
    boot = _block_bootstrap_rates(x_per_date, n_per_date, length, reps, rng)
    return max(float(boot.var(ddof=1)) / (rate * (1.0 - rate) / n_obs), 1.0)


def pooled_christoffersen(
    per_symbol_exceptions: Mapping[str, ArrayLike], *, coverage: float
) -> ChristoffersenResult:
    """Christoffersen's tests on the transition counts summed over symbols.

    Each symbol's sequence gives its own pairs (no pair spans two symbols); the pooled test
    assumes a common first-order Markov chain for all symbols.

    Parameters
    ----------
    per_symbol_exceptions : Mapping of str to array-like of bool
        Each symbol's NaN-free exception sequence in time order (non-overlapping sample).
    coverage : float
        Target coverage ``q`` in (0.5, 1).

    Returns
    -------
    ChristoffersenResult
    """
    who = "pooled_christoffersen"
    if not isinstance(per_symbol_exceptions, Mapping) or not per_symbol_exceptions:
        raise FairmarginInputError(
            f"{who}: per_symbol_exceptions must be a non-empty mapping symbol -> exceptions, "
            f"got {per_symbol_exceptions!r:.80}"
        )
    _check_coverage(coverage, who=who)
    total = TransitionCounts(0, 0, 0, 0)
    for symbol, seq in per_symbol_exceptions.items():
        try:
            total = total + transition_counts(seq)
        except FairmarginInputError as err:
            raise FairmarginInputError(f"{who}: symbol {symbol!r}: {err}") from err
    return christoffersen(total, coverage=coverage)


# --------------------------------------------------------------------------------------------
# Conditional coverage and procyclicality
# --------------------------------------------------------------------------------------------
def coverage_by_tercile(exceptions: ArrayLike, trailing_vol: ArrayLike) -> dict[str, float]:
    """Coverage (1 - exception rate) in each tercile of trailing realised volatility.

    Observations are ranked by ``trailing_vol`` (ties broken by position) and split into three
    groups of sizes as equal as possible (rank ``r`` of ``n``, from 0, goes to tercile
    ``floor(3 r / n)``). Pairs where either value is NaN are dropped. A good model covers
    about ``q`` in every tercile; a model that lags volatility under-covers in the high one.

    Parameters
    ----------
    exceptions : array-like of bool or 0/1 (NaN allowed)
        Exception indicators.
    trailing_vol : array-like of float
        Volatility known at each forecast time, same length (and index, for two Series).

    Returns
    -------
    dict
        ``{"low": ..., "mid": ..., "high": ...}``; NaN for an empty tercile (fewer than three
        observations).
    """
    who = "coverage_by_tercile"
    if (
        isinstance(exceptions, pd.Series)
        and isinstance(trailing_vol, pd.Series)
        and not exceptions.index.equals(trailing_vol.index)
    ):
        raise FairmarginInputError(
            f"{who}: exceptions and trailing_vol must share the same index; align them first"
        )
    e = _exception_values(exceptions, who=who, allow_nan=True)
    if np.ndim(trailing_vol) != 1:
        raise FairmarginInputError(
            f"{who}: trailing_vol must be 1-D, got {np.ndim(trailing_vol)} dimensions"
        )
    vol_series = trailing_vol if isinstance(trailing_vol, pd.Series) else pd.Series(trailing_vol)
    vol = vol_series.to_numpy(dtype=np.float64, na_value=np.nan)
    if len(vol) != len(e):
        raise FairmarginInputError(
            f"{who}: trailing_vol must have the length of exceptions ({len(e)}), got {len(vol)}"
        )
    ok = ~np.isnan(e) & ~np.isnan(vol)
    e, vol = e[ok], vol[ok]
    n = len(e)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(vol, kind="stable")] = np.arange(n)
    group = (3 * ranks) // max(n, 1)
    out: dict[str, float] = {}
    for g, name in enumerate(("low", "mid", "high")):
        members = e[group == g]
        out[name] = float(1.0 - members.mean()) if members.size else math.nan
    return out


def peak_to_trough(margin: pd.Series) -> float:
    """Ratio of the largest to the smallest margin over the period (NaN ignored).

    Parameters
    ----------
    margin : Series
        Margin rates (fractions, > 0).

    Returns
    -------
    float
        ``max / min`` (>= 1; 1 for a constant margin).
    """
    values = _positive_margin(margin, who="peak_to_trough")
    return float(values.max() / values.min())


def largest_increase(margin: pd.Series, *, window: pd.Timedelta) -> float:
    """Largest relative rise of the margin within any window of length ``window``.

    Defined against the trailing minimum: ``max_t margin_t / min{margin_s : t - window <= s <=
    t} - 1``, i.e. the largest ``margin_t / margin_s - 1`` over all pairs ``s <= t`` at most
    ``window`` apart. It is the sharpest margin call a position held through the window could
    have met, whatever the path inside it; it is >= 0 (0 when the margin never rises). NaN
    values are ignored.

    Parameters
    ----------
    margin : Series
        Margin rates (fractions, > 0) on a sorted, unique DatetimeIndex.
    window : Timedelta
        Window length (> 0), e.g. ``pd.Timedelta(days=5)``.

    Returns
    -------
    float
    """
    who = "largest_increase"
    values = _positive_margin(margin, who=who)
    _require_time_index(values, name="margin", who=who)
    if not isinstance(window, pd.Timedelta) or window <= pd.Timedelta(0):
        raise FairmarginInputError(f"{who}: window must be a positive Timedelta, got {window!r}")
    trailing_min = values.rolling(window, closed="both").min()
    return float((values / trailing_min).max() - 1.0)


# --------------------------------------------------------------------------------------------
# One-series report
# --------------------------------------------------------------------------------------------
def backtest(
    forecast: pd.Series,
    realised: pd.Series,
    *,
    coverage: float,
    step: int,
    trailing_vol: pd.Series | None = None,
) -> BacktestReport:
    """Backtest one side's quantile forecast against that side's realised adverse move.

    An exception is ``realised > forecast``. The rows are first cut after the last one where
    both values are known (later labels are not complete yet); then every ``step``-th row is
    taken counting back from that one (:func:`non_overlapping`), and sampled rows with a NaN
    are dropped. All exception-based figures (counts, coverage, breaches, Kupiec,
    Christoffersen, traffic light, terciles) use that sample; the traffic light looks at its
    last ``min(250, observations)`` observations with the binomial of that many observations
    at ``coverage`` (the Basel rule at the default 0.99). The margin-path figures (average
    margin, peak-to-trough, largest 5- and 30-day increases) use the full forecast series.

    Parameters
    ----------
    forecast : Series
        Margin (forecast quantile of the adverse move, fraction of notional, > 0) on a sorted,
        unique DatetimeIndex on the bar grid.
    realised : Series
        Realised adverse move over the horizon (fraction), same index; NaN where not known.
    coverage : float
        Target coverage ``q`` in (0.5, 1).
    step : int
        Horizon in bars (>= 1): the sampling step of the non-overlapping observations.
    trailing_vol : Series, optional
        Trailing realised volatility known at each forecast time, same index; without it the
        tercile coverages are NaN.

    Returns
    -------
    BacktestReport
    """
    who = "backtest"
    for name, series in (("forecast", forecast), ("realised", realised)):
        if not isinstance(series, pd.Series):
            raise FairmarginInputError(
                f"{who}: {name} must be a pandas Series, got {type(series).__name__}"
            )
    _check_coverage(coverage, who=who)
    k = _check_int(step, name="step", minimum=1, who=who)
    _require_same_index(forecast, realised, names=("forecast", "realised"), who=who)
    _require_time_index(forecast, name="forecast", who=who)
    _positive_margin(forecast, who=who, name="forecast")
    if np.isinf(realised.to_numpy(dtype=np.float64, na_value=np.nan)).any():
        raise FairmarginInputError(f"{who}: realised must be finite or NaN, got an infinite value")
    if trailing_vol is not None:
        if not isinstance(trailing_vol, pd.Series):
            raise FairmarginInputError(
                f"{who}: trailing_vol must be a pandas Series or None, "
                f"got {type(trailing_vol).__name__}"
            )
        _require_same_index(forecast, trailing_vol, names=("forecast", "trailing_vol"), who=who)

    frame = pd.DataFrame(
        {
            "forecast": forecast.astype(np.float64),
            "realised": realised.astype(np.float64),
            "vol": (trailing_vol.astype(np.float64) if trailing_vol is not None else np.nan),
        },
        index=forecast.index,
    )
    both = frame["forecast"].notna() & frame["realised"].notna()
    if not both.any():
        raise FairmarginInputError(
            f"{who}: forecast and realised must both be known on at least two rows, got none"
        )
    last = int(np.flatnonzero(both.to_numpy())[-1])
    sample = non_overlapping(frame.iloc[: last + 1], step=k)
    sample = sample[sample["forecast"].notna() & sample["realised"].notna()]
    n_obs = len(sample)
    if n_obs < 2:
        raise FairmarginInputError(
            f"{who}: non-overlapping observations must be >= 2, got {n_obs} "
            f"(step {k}, {int(both.sum())} rows with both values)"
        )

    excess = (sample["realised"] - sample["forecast"]).to_numpy()
    is_exc = excess > 0
    n_exc = int(is_exc.sum())
    breaches = excess[is_exc]
    largest_breach = float(breaches.max()) if n_exc else math.nan
    average_breach = float(breaches.mean()) if n_exc else math.nan

    pof = kupiec_pof(n_obs, n_exc, coverage=coverage)
    chris = christoffersen(transition_counts(is_exc), coverage=coverage)
    n_traffic = min(TRAFFIC_LIGHT_WINDOW, n_obs)
    traffic_exc = int(is_exc[-n_traffic:].sum())
    zone = traffic_light(traffic_exc, n_obs=n_traffic, coverage=coverage)

    if trailing_vol is not None:
        terc = coverage_by_tercile(is_exc, sample["vol"].to_numpy())
        terciles = (terc["low"], terc["mid"], terc["high"])
    else:
        terciles = (math.nan, math.nan, math.nan)

    margin = frame["forecast"]
    report = BacktestReport(
        observations=n_obs,
        exceptions=n_exc,
        target_coverage=float(coverage),
        coverage=1.0 - n_exc / n_obs,
        step=k,
        largest_breach=largest_breach,
        average_breach=average_breach,
        kupiec_p=pof.p_value,
        christoffersen_ind_p=chris.p_ind,
        christoffersen_cc_p=chris.p_cc,
        traffic_light=zone,
        n_traffic=n_traffic,
        traffic_exceptions=traffic_exc,
        tercile_coverage=terciles,
        average_margin=float(margin.mean()),
        peak_to_trough=peak_to_trough(margin),
        largest_5d_increase=largest_increase(margin, window=pd.Timedelta(days=5)),
        largest_30d_increase=largest_increase(margin, window=pd.Timedelta(days=30)),
    )
    logger.debug("%s: %d obs, %d exceptions, zone %s", who, n_obs, n_exc, zone)
    return report


# --------------------------------------------------------------------------------------------
# Anti-procyclicality overlays (EMIR RTS 153/2013, Art. 28(1))
# --------------------------------------------------------------------------------------------
def _check_margin_series(margin: pd.Series, *, who: str) -> pd.Series:
    if not isinstance(margin, pd.Series):
        raise FairmarginInputError(
            f"{who}: margin must be a pandas Series, got {type(margin).__name__}"
        )
    values = margin.astype(np.float64)
    if (values < 0).any():
        raise FairmarginInputError(
            f"{who}: margin must be >= 0, got {float(values[values < 0].iloc[0])!r}"
        )
    return values


def _aligned_operand(
    operand: float | pd.Series, margin: pd.Series, *, name: str, who: str
) -> pd.Series:
    """A scalar broadcast to ``margin``'s index, or a Series that must share it."""
    if isinstance(operand, pd.Series):
        _require_same_index(margin, operand, names=("margin", name), who=who)
        values = operand.astype(np.float64)
    elif isinstance(operand, int | float | np.floating | np.integer) and not isinstance(
        operand, bool
    ):
        if not math.isfinite(float(operand)):
            raise FairmarginInputError(f"{who}: {name} must be finite, got {_show(operand)}")
        values = pd.Series(float(operand), index=margin.index, dtype=np.float64)
    else:
        raise FairmarginInputError(
            f"{who}: {name} must be a float or a pandas Series, got {type(operand).__name__}"
        )
    if (values < 0).any():
        raise FairmarginInputError(
            f"{who}: {name} must be >= 0, got {float(values[values < 0].iloc[0])!r}"
        )
    return values


def apc_buffer(
    margin: pd.Series, *, buffer: float = 0.25, stress: pd.Series | None = None
) -> pd.Series:
    """EMIR APC option (a): a margin buffer that is released in stress.

    ``margin * (1 + buffer)`` in normal times and ``margin`` where ``stress`` is True (the
    buffer "can be temporarily exhausted" when margin rises significantly). EMIR asks for a
    buffer of at least 25 %.

    Parameters
    ----------
    margin : Series
        Margin rates (fractions, >= 0).
    buffer : float
        Buffer as a fraction of margin, >= 0.
    stress : Series of bool, optional
        True on stressed dates (same index as ``margin``, no NaN); None means never stressed.

    Returns
    -------
    Series
        The buffered margin, same index and name as ``margin``.
    """
    who = "apc_buffer"
    values = _check_margin_series(margin, who=who)
    if isinstance(buffer, bool) or not isinstance(buffer, int | float) or not buffer >= 0:
        raise FairmarginInputError(f"{who}: buffer must be a float >= 0, got {_show(buffer)}")
    if stress is None:
        released = np.zeros(len(values), dtype=bool)
    else:
        if not isinstance(stress, pd.Series):
            raise FairmarginInputError(
                f"{who}: stress must be a pandas Series of bool or None, "
                f"got {type(stress).__name__}"
            )
        _require_same_index(margin, stress, names=("margin", "stress"), who=who)
        released = _exception_values(stress, who=f"{who}: stress", allow_nan=False).astype(bool)
    factor = np.where(released, 1.0, 1.0 + float(buffer))
    return pd.Series(values.to_numpy() * factor, index=margin.index, name=margin.name)


def apc_stressed_weight(
    margin: pd.Series, stressed_margin: float | pd.Series, *, weight: float = 0.25
) -> pd.Series:
    """EMIR APC option (b): give stressed observations a weight in the margin.

    EMIR asks that stressed observations carry at least 25 % of the weight in the lookback.
    For a quantile model this is applied to the outputs as the blend
    ``(1 - weight) * margin + weight * stressed_margin``, with ``stressed_margin`` the margin
    the model gives on the stressed period (a constant or a series).

    Parameters
    ----------
    margin : Series
        Margin rates (fractions, >= 0).
    stressed_margin : float or Series
        Stressed-period margin (>= 0), a scalar or a Series on ``margin``'s index.
    weight : float
        Weight of the stressed margin, in [0, 1].

    Returns
    -------
    Series
        The blended margin, same index and name as ``margin``.
    """
    who = "apc_stressed_weight"
    values = _check_margin_series(margin, who=who)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise FairmarginInputError(f"{who}: weight must be in [0, 1], got {_show(weight)}")
    stressed = _aligned_operand(stressed_margin, margin, name="stressed_margin", who=who)
    w = float(weight)
    blended = (1.0 - w) * values.to_numpy() + w * stressed.to_numpy()
    return pd.Series(blended, index=margin.index, name=margin.name)


def apc_floor(margin: pd.Series, floor: float | pd.Series) -> pd.Series:
    """EMIR APC option (c): a floor, e.g. the margin from a ten-year lookback.

    ``max(margin, floor)`` element-wise; NaN in ``margin`` stays NaN.

    Parameters
    ----------
    margin : Series
        Margin rates (fractions, >= 0).
    floor : float or Series
        Floor (>= 0), a scalar or a Series on ``margin``'s index (NaN: no floor that date).

    Returns
    -------
    Series
        The floored margin, same index and name as ``margin``.
    """
    who = "apc_floor"
    values = _check_margin_series(margin, who=who)
    floors = _aligned_operand(floor, margin, name="floor", who=who)
    m, f = values.to_numpy(), floors.to_numpy()
    with np.errstate(invalid="ignore"):
        floored = np.where(m < f, f, m)  # NaN compares False: NaN margin stays, NaN floor is none
    return pd.Series(floored, index=margin.index, name=margin.name)


def apc_overlay(
    margin: pd.Series,
    sigma: pd.Series,
    *,
    buffer: float = 0.0,
    stressed_weight: float = 0.0,
    floor_years: float = 0.0,
) -> pd.Series:
    """The switched-on APC overlays on one contract's margin path, point in time.

    The fair margin scales with volatility, so the margin it would give in another volatility
    state is ``margin x sigma_other / sigma_t``; with ``sigma`` the trailing volatility known at
    each t (e.g. the panel's ``sigma_ann``):

    - ``stressed_weight`` w > 0: :func:`apc_stressed_weight` with the stressed margin at the
      highest volatility of the history known at t (expanding maximum);
    - ``floor_years`` Y > 0: :func:`apc_floor` at the margin of the root-mean-square volatility
      of the trailing Y years (or the history there is);
    - ``buffer`` b > 0: :func:`apc_buffer`, ``x (1 + b)`` (held: releasing it in stress is the
      risk committee's call).

    Applied in that order; all zero returns ``margin`` unchanged. Each overlay is proportional
    to ``margin``, so ``apc_overlay(m, s) = m x apc_overlay(1, s)``. Where ``sigma`` is not
    positive and finite the volatility-based overlays leave the margin as it is.

    Parameters
    ----------
    margin : Series of margin rates (>= 0) on a sorted DatetimeIndex.
    sigma : Series of trailing volatility, same index.
    buffer, stressed_weight, floor_years : the switches (0 = off).
    """
    who = "apc_overlay"
    values = _check_margin_series(margin, who=who)
    _require_same_index(margin, sigma, names=("margin", "sigma"), who=who)
    _require_time_index(margin, name="margin", who=who)
    for name, v in (("floor_years", floor_years), ("buffer", buffer)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise FairmarginInputError(f"{who}: {name} must be a float >= 0, got {_show(v)}")
    s = sigma.astype(np.float64).where(lambda x: (x > 0) & np.isfinite(x))
    out = values
    if stressed_weight:
        ratio = (s.cummax() / s).fillna(1.0)
        out = apc_stressed_weight(out, values * ratio, weight=stressed_weight)
    if floor_years:
        window = pd.Timedelta(days=365.25 * float(floor_years))
        rms = np.sqrt((s**2).rolling(window, min_periods=1).mean())
        out = apc_floor(out, (values * (rms / s).fillna(1.0)).fillna(0.0))
    if buffer:
        out = apc_buffer(out, buffer=float(buffer))
    return out


def apc_multiplier_at(
    panel: pd.DataFrame,
    keys: pd.DataFrame,
    *,
    buffer: float = 0.0,
    stressed_weight: float = 0.0,
    floor_years: float = 0.0,
) -> NDArray[np.float64]:
    """The factor :func:`apc_overlay` applies to a margin of a contract at given times.

    Parameters
    ----------
    panel : rows ``venue, symbol, t, sigma_ann`` (each contract's volatility path).
    keys : rows ``venue, symbol, as_of``; each gets the factor of its contract's last panel
        row at or before ``as_of`` (1 where there is none).
    """
    who = "apc_multiplier_at"
    for name, frame, cols in (
        ("panel", panel, ["venue", "symbol", "t", "sigma_ann"]),
        ("keys", keys, ["venue", "symbol", "as_of"]),
    ):
        if missing := sorted(set(cols) - set(frame.columns)):
            raise FairmarginInputError(
                f"{who}: {name} must have columns {cols}, missing {missing}"
            )
    out = np.ones(len(keys))
    if not (buffer or stressed_weight or floor_years):
        return out
    parts = []
    for (venue, symbol), g in panel.groupby(["venue", "symbol"], sort=False):
        g = g.sort_values("t")
        idx = pd.DatetimeIndex(g["t"])
        mult = apc_overlay(
            pd.Series(1.0, index=idx),
            pd.Series(g["sigma_ann"].to_numpy(dtype=np.float64), index=idx),
            buffer=buffer,
            stressed_weight=stressed_weight,
            floor_years=floor_years,
        )
        parts.append(
            pd.DataFrame({"venue": venue, "symbol": symbol, "t": idx, "mult": mult.to_numpy()})
        )
    table = pd.concat(parts, ignore_index=True).astype({"venue": object, "symbol": object})
    left = pd.DataFrame(
        {
            "venue": keys["venue"].astype(object).to_numpy(),
            "symbol": keys["symbol"].astype(object).to_numpy(),
            "t": pd.DatetimeIndex(keys["as_of"]).as_unit("ns"),
            "_pos": np.arange(len(keys)),
        }
    )
    left = left.astype({"venue": object, "symbol": object}).sort_values("t")
    table["t"] = pd.DatetimeIndex(table["t"]).as_unit("ns")
    merged = pd.merge_asof(
        left, table.sort_values("t"), on="t", by=["venue", "symbol"], direction="backward"
    )
    out[merged["_pos"].to_numpy()] = merged["mult"].fillna(1.0).to_numpy(dtype=np.float64)
    return out
