"""Tests of models/backtest.py.

Golden numbers come from hand algebra written out with ``math`` (never from the code under
test), from the Basel Committee's published traffic-light table (1996, "Supervisory framework
for the use of backtesting", Table 2), or from an independent calculation stated beside them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy.stats import multivariate_normal, norm

from features._checks import FairmarginInputError
from models.backtest import (
    BacktestReport,
    TransitionCounts,
    apc_buffer,
    apc_floor,
    apc_stressed_weight,
    backtest,
    christoffersen,
    coverage_by_tercile,
    kupiec_pof,
    largest_increase,
    non_overlapping,
    peak_to_trough,
    pooled_christoffersen,
    pooled_kupiec_bootstrap,
    traffic_light,
    transition_counts,
)


def chi2_1_sf(x: float) -> float:
    """Chi-square(1) tail by hand: P(Z^2 > x) = erfc(sqrt(x / 2))."""
    return math.erfc(math.sqrt(x / 2.0))


def chi2_2_sf(x: float) -> float:
    """Chi-square(2) tail by hand: exp(-x / 2)."""
    return math.exp(-x / 2.0)


def hand_lr_ind(n00: int, n01: int, n10: int, n11: int) -> float:
    """Christoffersen's LR_ind written out term by term (0 log 0 = 0 by skipping zero terms)."""

    def t(count: int, prob: float) -> float:
        return count * math.log(prob) if count else 0.0

    n = n00 + n01 + n10 + n11
    pi = (n01 + n11) / n
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    l_indep = t(n00 + n10, 1 - pi) + t(n01 + n11, pi)
    l_markov = t(n00, 1 - pi01) + t(n01, pi01) + t(n10, 1 - pi11) + t(n11, pi11)
    return -2 * (l_indep - l_markov)


def hand_lr_pof(n: int, x: int, p0: float) -> float:
    """Kupiec's LR written out: 2 [(n-x) ln((1-x/n)/(1-p0)) + x ln((x/n)/p0)]."""
    out = 0.0
    if n - x:
        out += (n - x) * math.log((1 - x / n) / (1 - p0))
    if x:
        out += x * math.log((x / n) / p0)
    return 2 * out


# ------------------------------------------------------------------------------------------
# Kupiec
# ------------------------------------------------------------------------------------------
def test_kupiec_golden_250_obs_5_exceptions():
    # 2 [245 ln(0.98 / 0.99) + 5 ln(0.02 / 0.01)] = 2 [-2.487305 + 3.465736] = 1.956810
    res = kupiec_pof(250, 5, coverage=0.99)
    assert res.statistic == pytest.approx(1.956810, abs=1e-6)
    assert res.statistic == pytest.approx(
        2 * (245 * math.log(0.98 / 0.99) + 5 * math.log(2)), rel=1e-12
    )
    # chi2(1) tail: erfc(sqrt(1.956810 / 2)) = 0.161855
    assert res.p_value == pytest.approx(0.161855, abs=1e-6)


def test_kupiec_zero_and_all_exceptions_are_finite():
    # x = 0: LR = -2 n ln(1 - p0) = -500 ln 0.99 = 5.025168
    zero = kupiec_pof(250, 0, coverage=0.99)
    assert zero.statistic == pytest.approx(-500 * math.log(0.99), rel=1e-12)
    assert zero.statistic == pytest.approx(5.025168, abs=1e-6)
    assert zero.p_value == pytest.approx(chi2_1_sf(5.025168), abs=1e-6)
    # x = n: LR = -2 n ln p0 = -20 ln 0.01 = 92.103404
    full = kupiec_pof(10, 10, coverage=0.99)
    assert full.statistic == pytest.approx(92.103404, abs=1e-6)
    assert 0.0 <= full.p_value < 1e-20


def test_kupiec_rate_on_target_gives_zero_statistic():
    res = kupiec_pof(1000, 10, coverage=0.99)
    assert res.statistic == pytest.approx(0.0, abs=1e-9)
    assert res.p_value == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5000),
    frac=st.floats(0.0, 1.0),
    q=st.sampled_from([0.9, 0.95, 0.975, 0.99, 0.995]),
)
def test_kupiec_matches_hand_formula(n, frac, q):
    x = round(frac * n)
    res = kupiec_pof(n, x, coverage=q)
    expected = hand_lr_pof(n, x, 1 - q)
    # The hand formula is a different arrangement of the same logs: rounding ~1e-12 * n.
    assert res.statistic == pytest.approx(max(expected, 0.0), rel=1e-9, abs=1e-9 * n)
    assert 0.0 <= res.p_value <= 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (
            (10, 11),
            {"coverage": 0.99},
            r"kupiec_pof: n_exceptions must be <= n_obs \(10\), got 11",
        ),
        ((0, 0), {"coverage": 0.99}, r"kupiec_pof: n_obs must be an integer >= 1, got 0"),
        ((10, -1), {"coverage": 0.99}, r"kupiec_pof: n_exceptions must be an integer >= 0"),
        ((10, 1), {"coverage": 1.0}, r"kupiec_pof: coverage must be in \(0.5, 1\), got 1.0"),
        ((10, 1), {"coverage": 0.4}, r"kupiec_pof: coverage must be in \(0.5, 1\), got 0.4"),
        ((10.0, 1), {"coverage": 0.99}, r"kupiec_pof: n_obs must be an integer >= 1, got 10.0"),
    ],
)
def test_kupiec_bad_input(args, kwargs, match):
    with pytest.raises(FairmarginInputError, match=match):
        kupiec_pof(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# Christoffersen
# ------------------------------------------------------------------------------------------
def test_transition_counts_hand_built_sequence():
    # pairs: 00 00 01 11 11 10 00 00 00 -> n00 = 5, n01 = 1, n10 = 1, n11 = 2
    seq = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert transition_counts(seq) == TransitionCounts(n00=5, n01=1, n10=1, n11=2)
    assert transition_counts(np.array(seq, dtype=bool)) == TransitionCounts(5, 1, 1, 2)
    assert transition_counts(pd.Series(seq, dtype="boolean")) == TransitionCounts(5, 1, 1, 2)


def test_christoffersen_golden_hand_built_sequence():
    counts = TransitionCounts(n00=5, n01=1, n10=1, n11=2)
    res = christoffersen(counts, coverage=0.99)
    # pi = 3/9, pi01 = 1/6, pi11 = 2/3:
    # ln L(pi)   = 6 ln(2/3) + 3 ln(1/3)                       = -5.728628
    # ln L(Markov)= 5 ln(5/6) + ln(1/6) + ln(1/3) + 2 ln(2/3)   = -4.612910
    # LR_ind = -2 (-5.728628 + 4.612910) = 2.231436
    lr_ind = -2 * (
        (6 * math.log(2 / 3) + 3 * math.log(1 / 3))
        - (5 * math.log(5 / 6) + math.log(1 / 6) + math.log(1 / 3) + 2 * math.log(2 / 3))
    )
    assert lr_ind == pytest.approx(2.231436, abs=1e-6)
    assert res.lr_ind == pytest.approx(lr_ind, rel=1e-12)
    assert res.p_ind == pytest.approx(chi2_1_sf(lr_ind), rel=1e-9)
    # POF on the 9 pair ends (3 exceptions): 2 [6 ln((6/9)/0.99) + 3 ln((3/9)/0.01)]
    lr_pof = 2 * (6 * math.log((6 / 9) / 0.99) + 3 * math.log((3 / 9) / 0.01))
    assert res.lr_pof == pytest.approx(lr_pof, rel=1e-12)
    assert res.lr_cc == pytest.approx(lr_pof + lr_ind, rel=1e-12)
    assert res.p_cc == pytest.approx(chi2_2_sf(lr_pof + lr_ind), rel=1e-9)


@pytest.mark.parametrize(
    ("seq", "counts"),
    [
        ([0] * 10, (9, 0, 0, 0)),  # no exception: only n00
        ([0, 0, 0, 0, 1], (3, 1, 0, 0)),  # no pair starts at an exception: n10 = n11 = 0
        ([1, 1, 1], (0, 0, 0, 2)),  # only exceptions
        ([0, 1, 0, 1, 0], (0, 2, 2, 0)),  # alternating: n00 = n11 = 0
    ],
)
def test_christoffersen_zero_cells_are_finite(seq, counts):
    tc = transition_counts(seq)
    assert (tc.n00, tc.n01, tc.n10, tc.n11) == counts
    res = christoffersen(tc, coverage=0.99)
    for value in (res.lr_ind, res.p_ind, res.lr_cc, res.p_cc, res.lr_pof):
        assert math.isfinite(value)
    assert res.lr_ind == pytest.approx(hand_lr_ind(*counts), abs=1e-12)
    n = sum(counts)
    assert res.lr_pof == pytest.approx(hand_lr_pof(n, counts[1] + counts[3], 0.01), rel=1e-12)


def test_christoffersen_alternating_is_dependent():
    # Alternating exceptions: pi01 = 1, pi11 = 0, pi = 1/2; LR_ind = -2 * 8 ln(1/2) = 11.090355
    res = christoffersen(transition_counts([0, 1] * 4 + [0]), coverage=0.9)
    assert res.lr_ind == pytest.approx(-16 * math.log(0.5), rel=1e-12)
    assert res.p_ind < 0.001


@settings(max_examples=40, deadline=None)
@given(seq=st.lists(st.booleans(), min_size=2, max_size=300))
def test_christoffersen_matches_hand_formula(seq):
    tc = transition_counts(seq)
    assert tc.n_transitions == len(seq) - 1
    assert tc.n_exceptions == sum(seq[1:])
    res = christoffersen(tc, coverage=0.95)
    assert res.lr_ind == pytest.approx(
        max(hand_lr_ind(tc.n00, tc.n01, tc.n10, tc.n11), 0.0), abs=1e-9 * len(seq)
    )
    assert res.lr_cc == pytest.approx(res.lr_pof + res.lr_ind, rel=1e-12)
    assert 0.0 <= res.p_ind <= 1.0
    assert 0.0 <= res.p_cc <= 1.0


def test_pooled_christoffersen_sums_counts_without_cross_symbol_pairs():
    # A: pairs 01 11 10; B: pairs 10 00 -> n00 = 1, n01 = 1, n10 = 2, n11 = 1.
    # Concatenating A and B would add a spurious 0 -> 1 pair (n01 = 2).
    res = pooled_christoffersen({"A": [0, 1, 1, 0], "B": [True, False, False]}, coverage=0.99)
    assert res.counts == TransitionCounts(n00=1, n01=1, n10=2, n11=1)
    assert res.lr_ind == pytest.approx(hand_lr_ind(1, 1, 2, 1), rel=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: christoffersen(TransitionCounts(0, 0, 0, 0), coverage=0.99),
            r"christoffersen: counts must hold at least one transition .*, got 0",
        ),
        (
            lambda: TransitionCounts(1, -1, 0, 0),
            r"TransitionCounts: n01 must be an integer >= 0, got -1",
        ),
        (
            lambda: transition_counts([0.0, np.nan, 1.0]),
            r"transition_counts: exceptions must be NaN-free, got 1 NaN \(first at position 1\)",
        ),
        (
            lambda: transition_counts([0, 2, 1]),
            r"transition_counts: exceptions must be booleans or 0/1, got 2.0 at position 1",
        ),
        (
            lambda: transition_counts(np.zeros((2, 2))),
            r"transition_counts: exceptions must be 1-D, got 2 dimensions",
        ),
        (
            lambda: pooled_christoffersen({"A": [0, 1], "B": [0, np.nan]}, coverage=0.99),
            r"pooled_christoffersen: symbol 'B': transition_counts: exceptions must be NaN-free",
        ),
        (
            lambda: pooled_christoffersen({}, coverage=0.99),
            r"pooled_christoffersen: per_symbol_exceptions must be a non-empty mapping",
        ),
    ],
)
def test_christoffersen_bad_input(call, match):
    with pytest.raises(FairmarginInputError, match=match):
        call()


# ------------------------------------------------------------------------------------------
# Traffic light
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "zone"),
    [(k, "green") for k in range(5)]
    + [(k, "yellow") for k in range(5, 10)]
    + [(k, "red") for k in (10, 11, 15, 250)],
)
def test_traffic_light_basel_zones_at_250(k, zone):
    # Basel (1996) Table 2: green 0-4, yellow 5-9, red 10+ at 250 observations and 99 %.
    assert traffic_light(k) == zone
    assert traffic_light(k, n_obs=250, coverage=0.99) == zone


def test_traffic_light_fewer_observations_uses_their_binomial():
    # n = 6, p = 0.01: P(X <= 0) = 0.99^6 = 0.941480 (green);
    # P(X <= 1) = 0.941480 + 6 * 0.01 * 0.99^5 = 0.998540 (yellow);
    # P(X <= 2) = 0.998540 + 15 * 0.01^2 * 0.99^4 = 0.999980 (red).
    def cdf(k: int) -> float:
        return sum(math.comb(6, i) * 0.01**i * 0.99 ** (6 - i) for i in range(k + 1))

    assert cdf(0) < 0.95 <= cdf(1) < 0.9999 <= cdf(2)
    assert [traffic_light(k, n_obs=6) for k in range(4)] == ["green", "yellow", "red", "red"]


def test_traffic_light_bad_input():
    with pytest.raises(
        FairmarginInputError,
        match=r"traffic_light: n_exceptions must be <= n_obs \(250\), got 251",
    ):
        traffic_light(251)
    with pytest.raises(
        FairmarginInputError, match=r"traffic_light: coverage must be in \(0.5, 1\), got 0.3"
    ):
        traffic_light(1, coverage=0.3)


# ------------------------------------------------------------------------------------------
# Non-overlapping sampling
# ------------------------------------------------------------------------------------------
def test_non_overlapping_counts_back_from_the_last_row():
    idx = pd.date_range("2024-01-01", periods=10, freq="h")
    assert list(non_overlapping(idx, step=4)) == [idx[1], idx[5], idx[9]]
    s = pd.Series(range(10), index=idx)
    assert non_overlapping(s, step=3).tolist() == [0, 3, 6, 9]
    frame = pd.DataFrame({"a": range(10)}, index=idx)
    assert non_overlapping(frame, step=4)["a"].tolist() == [1, 5, 9]
    assert non_overlapping(s, step=1).equals(s)
    assert non_overlapping(s, step=20).tolist() == [9]
    assert len(non_overlapping(s.iloc[:0], step=3)) == 0


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), step=st.integers(1, 50))
def test_non_overlapping_spacing_property(n, step):
    out = non_overlapping(pd.RangeIndex(n), step=step)
    assert out[-1] == n - 1
    assert (np.diff(out) == step).all()
    assert len(out) == math.ceil(n / step)


def test_non_overlapping_bad_input():
    with pytest.raises(
        FairmarginInputError, match=r"non_overlapping: step must be an integer >= 1, got 0"
    ):
        non_overlapping(pd.RangeIndex(3), step=0)
    with pytest.raises(
        FairmarginInputError,
        match=r"non_overlapping: index_or_frame must be a DataFrame, Series or Index, got list",
    ):
        non_overlapping([1, 2, 3], step=1)  # type: ignore[call-overload]


# ------------------------------------------------------------------------------------------
# Pooled Kupiec by block bootstrap
# ------------------------------------------------------------------------------------------
N_DATES, N_SYMBOLS, RHO = 1000, 9, 0.8


def correlated_exceptions(rng: np.random.Generator, *, true_coverage: float) -> pd.DataFrame:
    """Exceptions of a forecaster whose true coverage is ``true_coverage`` on every symbol.

    Latent moves ``sqrt(rho) Z_t + sqrt(1 - rho) e_ts`` (standard normal on each symbol); the
    forecast is the normal 0.99-quantile, so the exception rate is 1 - true_coverage when
    ``true_coverage`` is used as the threshold level and exceptions share the date factor Z_t.
    """
    z = rng.standard_normal((N_DATES, 1))
    e = rng.standard_normal((N_DATES, N_SYMBOLS))
    moves = math.sqrt(RHO) * z + math.sqrt(1 - RHO) * e
    return pd.DataFrame(moves > norm.ppf(true_coverage), columns=[f"S{i}" for i in range(9)])


def test_pooled_bootstrap_calibrated_forecaster_keeps_nominal_size_where_binomial_does_not():
    # Independent calculation of how wrong the naive pooled binomial is: the exception
    # correlation between two symbols is rho_I = (P11 - p^2) / (p (1 - p)) with
    # P11 = P(both latent moves > z_0.99) from the bivariate normal with correlation 0.8,
    # the design effect is 1 + 8 rho_I (~3.96) and a naive 5 % test rejects with probability
    # 2 (1 - Phi(1.96 / sqrt(deff))) (~0.32).
    c = norm.ppf(0.99)
    p11 = multivariate_normal(mean=[0, 0], cov=[[1, RHO], [RHO, 1]]).cdf([-c, -c])
    rho_i = (p11 - 0.01**2) / (0.01 * 0.99)
    deff = 1 + (N_SYMBOLS - 1) * rho_i
    naive_expected = 2 * norm.sf(1.96 / math.sqrt(deff))
    assert 3.5 < deff < 4.5

    n_rep = 200
    boot_reject = naive_reject = 0
    deffs = []
    for seed in range(n_rep):
        rng = np.random.default_rng(seed)
        exc = correlated_exceptions(rng, true_coverage=0.99)
        res = pooled_kupiec_bootstrap(exc, coverage=0.99, block_length=5, n_boot=500, rng=rng)
        boot_reject += res.p_value < 0.05
        naive_reject += kupiec_pof(res.n_obs, res.n_exceptions, coverage=0.99).p_value < 0.05
        deffs.append(res.design_effect)
    # Band: 5 % +- about 4 binomial standard deviations of a rate over 200 replications
    # (sd = sqrt(0.05 * 0.95 / 200) = 1.5 %).
    assert 0.01 <= boot_reject / n_rep <= 0.11
    # The naive pooled binomial over-rejects, as the design effect predicts (+- 4 sd ~ 0.13).
    assert naive_reject / n_rep > 0.2
    assert abs(naive_reject / n_rep - naive_expected) < 0.13
    # The bootstrap measures the design effect (mean over replications, within 15 %).
    assert np.mean(deffs) == pytest.approx(deff, rel=0.15)


def test_pooled_bootstrap_rejects_a_forecaster_with_three_times_the_exceptions():
    n_rep = 30
    rejected = 0
    for seed in range(1000, 1000 + n_rep):
        rng = np.random.default_rng(seed)
        exc = correlated_exceptions(rng, true_coverage=0.97)  # true rate 3 %, tested at 1 %
        res = pooled_kupiec_bootstrap(exc, coverage=0.99, block_length=5, n_boot=500, rng=rng)
        rejected += res.p_value < 0.05
        assert res.statistic > 0
    # z ~ (0.03 - 0.01) / sqrt(deff * 0.01 * 0.99 / 9000) with deff < 9: z > 6, power ~ 1.
    assert rejected == n_rep


def test_pooled_bootstrap_design_effect_of_identical_and_independent_symbols():
    rng = np.random.default_rng(7)
    column = rng.random(2000) < 0.05
    # Nine identical columns: the pooled rate is one column's rate, so its variance is nine
    # times the binomial one over 9 x 2000 cells: design effect 9.
    same = pd.DataFrame({f"S{i}": column for i in range(9)})
    res = pooled_kupiec_bootstrap(same, coverage=0.95, block_length=1, n_boot=2000, rng=rng)
    assert res.design_effect == pytest.approx(9.0, rel=0.15)
    # Independent columns: design effect 1.
    indep = pd.DataFrame(rng.random((2000, 9)) < 0.05)
    res = pooled_kupiec_bootstrap(indep, coverage=0.95, block_length=1, n_boot=2000, rng=rng)
    assert res.design_effect == pytest.approx(1.0, rel=0.15)


def test_pooled_bootstrap_counts_nan_and_ignores_empty_dates():
    frame = pd.DataFrame(
        {
            "A": [True, False, np.nan, False, False, True],
            "B": [np.nan, False, np.nan, True, False, False],
        }
    )
    res = pooled_kupiec_bootstrap(
        frame, coverage=0.9, block_length=2, n_boot=200, rng=np.random.default_rng(3)
    )
    # 9 observed cells, 3 exceptions (counted by hand)
    assert (res.n_obs, res.n_exceptions) == (9, 3)
    assert res.exception_rate == pytest.approx(3 / 9)
    # The empty date (row 2) is dropped: same answer without it, for the same seed.
    res_without = pooled_kupiec_bootstrap(
        frame.drop(index=2),
        coverage=0.9,
        block_length=2,
        n_boot=200,
        rng=np.random.default_rng(3),
    )
    assert res_without == res
    # Nullable booleans with pd.NA read the same.
    nullable = frame.astype("boolean")
    res_nullable = pooled_kupiec_bootstrap(
        nullable, coverage=0.9, block_length=2, n_boot=200, rng=np.random.default_rng(3)
    )
    assert res_nullable == res


def test_pooled_bootstrap_is_reproducible_for_a_seed():
    exc = correlated_exceptions(np.random.default_rng(11), true_coverage=0.99)
    a = pooled_kupiec_bootstrap(
        exc, coverage=0.99, block_length=5, n_boot=300, rng=np.random.default_rng(5)
    )
    b = pooled_kupiec_bootstrap(
        exc, coverage=0.99, block_length=5, n_boot=300, rng=np.random.default_rng(5)
    )
    assert a == b
    assert 1 / 301 <= a.p_value <= 1.0


def test_pooled_bootstrap_matches_a_loop_reference_and_chunking(monkeypatch):
    # Independent code path: the circular block bootstrap written as an explicit loop over
    # replicates (dates wrapped with a modulo, blocks concatenated and cut to T dates), fed the
    # same random block starts, then the documented null-rescaled centred p-value.
    rng = np.random.default_rng(21)
    frame = pd.DataFrame(rng.random((53, 4)) < 0.08).astype(float)
    frame.iloc[[3, 17], 1] = np.nan
    coverage, length, n_boot = 0.95, 4, 300
    res = pooled_kupiec_bootstrap(
        frame,
        coverage=coverage,
        block_length=length,
        n_boot=n_boot,
        rng=np.random.default_rng(99),
    )

    x = np.nansum(frame.to_numpy(), axis=1)
    n = frame.notna().sum(axis=1).to_numpy()
    t = len(x)
    n_blocks = math.ceil(t / length)
    draw = np.random.default_rng(99)
    rates = []
    for _ in range(n_boot):
        starts = draw.integers(0, t, size=n_blocks)
        dates = [(s + i) % t for s in starts for i in range(length)][:t]
        rates.append(x[dates].sum() / n[dates].sum())
    rates_arr = np.array(rates)
    r, p0 = x.sum() / n.sum(), 1 - coverage
    scale = math.sqrt(p0 * (1 - p0) / (r * (1 - r)))
    extreme = np.sum(scale * np.abs(rates_arr - r) >= abs(r - p0))
    assert res.p_value == pytest.approx((1 + extreme) / (n_boot + 1), abs=1e-12)
    assert res.std_error == pytest.approx(rates_arr.std(ddof=1), rel=1e-9)
    assert res.design_effect == pytest.approx(
        rates_arr.var(ddof=1) / (r * (1 - r) / n.sum()), rel=1e-9
    )

    # Drawing the block starts in small chunks (the memory bound) changes nothing.
    monkeypatch.setattr("models.backtest._MAX_BOOT_CELLS", 50)
    chunked = pooled_kupiec_bootstrap(
        frame,
        coverage=coverage,
        block_length=length,
        n_boot=n_boot,
        rng=np.random.default_rng(99),
    )
    assert chunked == res


def test_pooled_bootstrap_without_exceptions_falls_back_to_plain_kupiec():
    frame = pd.DataFrame(np.zeros((100, 9), dtype=bool))
    res = pooled_kupiec_bootstrap(
        frame, coverage=0.99, block_length=5, n_boot=100, rng=np.random.default_rng(0)
    )
    # LR = -2 * 900 ln 0.99 = 18.090605, p = erfc(sqrt(LR / 2))
    lr = -1800 * math.log(0.99)
    assert res.p_value == pytest.approx(chi2_1_sf(lr), rel=1e-9)
    assert math.isnan(res.design_effect)
    # z = (0 - 0.01) / sqrt(0.01 * 0.99 / 900) = -3.015113
    assert res.statistic == pytest.approx(-0.01 / math.sqrt(0.01 * 0.99 / 900), rel=1e-12)


def _venues_of_few_underlyings(rng: np.random.Generator, *, n_dates: int) -> pd.DataFrame:
    """Latent moves of 4 underlyings each listed on 4 venues (the venues' moves correlate 0.98,
    underlyings independent): 16 symbols, about 4 independent ones per date."""
    z = rng.standard_normal((n_dates, 4))
    moves = math.sqrt(0.98) * np.repeat(z, 4, axis=1)
    moves += math.sqrt(0.02) * rng.standard_normal((n_dates, 16))
    return pd.DataFrame(moves, columns=[f"S{i}" for i in range(16)])


def test_pooled_bootstrap_without_exceptions_reads_the_dependence_on_the_proxy():
    # A calibrated forecaster (exception when the move exceeds its 0.99-quantile) over 20 dates
    # on 16 venue-symbols of 4 underlyings: about 80 independent observations, so no exception
    # at all happens with probability ~0.99^80 = 0.45. The plain pooled Kupiec test on 320
    # cells rejects every one of those (LR = -640 ln 0.99 = 6.4, p = 0.011); with the proxy
    # (the moves themselves) the design effect (~3.9) is measured and the test keeps its size.
    c = norm.ppf(0.99)
    n_zero = plain_reject = proxy_reject = 0
    deffs = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        moves = _venues_of_few_underlyings(rng, n_dates=20)
        exc = moves > c
        if exc.to_numpy().any():
            continue
        n_zero += 1
        kw = {"coverage": 0.99, "block_length": 3, "n_boot": 300}
        plain = pooled_kupiec_bootstrap(exc, rng=rng, **kw)
        with_proxy = pooled_kupiec_bootstrap(exc, rng=rng, proxy=moves, **kw)
        plain_reject += plain.p_value < 0.05
        proxy_reject += with_proxy.p_value < 0.05
        deffs.append(with_proxy.design_effect)
    assert n_zero > 60  # ~0.45 of 200
    assert plain_reject == n_zero
    assert proxy_reject / n_zero < 0.1
    # the true design effect is 1 + 3 rho_I = 3.4 at both the 0.99 and the proxy's 0.969
    # level (rho_I = 0.79 and 0.82, bivariate normal with correlation 0.98); a block bootstrap
    # of 20 dates reads it low (median ~2.4), never as independent symbols
    assert 1.8 < np.median(deffs) < 4.5


def test_pooled_bootstrap_proxy_of_independent_symbols_changes_little_and_is_checked():
    rng = np.random.default_rng(3)
    moves = pd.DataFrame(rng.standard_normal((60, 16)))
    exc = moves > 10.0  # no exception
    kw = {"coverage": 0.99, "block_length": 4, "n_boot": 500}
    plain = pooled_kupiec_bootstrap(exc, rng=rng, **kw)
    res = pooled_kupiec_bootstrap(exc, rng=rng, proxy=moves, **kw)
    assert 1.0 <= res.design_effect < 1.6  # floored at 1; independent symbols
    assert plain.p_value <= res.p_value < 0.05  # 960 cells without an exception still reject
    with pytest.raises(FairmarginInputError, match="proxy must be a DataFrame shaped like"):
        pooled_kupiec_bootstrap(exc, rng=rng, proxy=moves.iloc[:10], **kw)
    bad = moves.copy()
    bad.iloc[5, 2] = np.nan
    with pytest.raises(FairmarginInputError, match=r"proxy must be finite .* row 5, column 2"):
        pooled_kupiec_bootstrap(exc, rng=rng, proxy=bad, **kw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coverage": 1.5}, r"pooled_kupiec_bootstrap: coverage must be in \(0.5, 1\), got 1.5"),
        (
            {"block_length": 0},
            r"pooled_kupiec_bootstrap: block_length must be an integer >= 1, got 0",
        ),
        (
            {"block_length": 5},
            r"pooled_kupiec_bootstrap: block_length must be <= the number of dates with "
            r"observations \(4\), got 5",
        ),
        ({"n_boot": 10}, r"pooled_kupiec_bootstrap: n_boot must be an integer >= 100, got 10"),
        ({"rng": 42}, r"pooled_kupiec_bootstrap: rng must be a numpy.random.Generator, got int"),
        (
            {"exceptions": pd.DataFrame({"A": [0, 1, 2, 0]})},
            r"pooled_kupiec_bootstrap: exceptions must be booleans, 0/1 or NaN, got 2.0 at row 2, "
            r"column 'A'",
        ),
        (
            {"exceptions": pd.DataFrame({"A": [np.nan, np.nan]})},
            r"pooled_kupiec_bootstrap: exceptions must hold at least one observation",
        ),
        (
            {"exceptions": pd.DataFrame({"A": ["x", "y"]})},
            r"pooled_kupiec_bootstrap: exceptions must be booleans, 0/1 or NaN, got dtypes",
        ),
        (
            {"exceptions": [[0, 1]]},
            r"pooled_kupiec_bootstrap: exceptions must be a DataFrame \(dates x symbols\), "
            r"got list",
        ),
    ],
)
def test_pooled_bootstrap_bad_input(kwargs, match):
    args = {
        "exceptions": pd.DataFrame({"A": [0, 1, 0, 0], "B": [0, 0, np.nan, 1]}),
        "coverage": 0.99,
        "block_length": 2,
        "n_boot": 100,
        "rng": np.random.default_rng(0),
    } | kwargs
    with pytest.raises(FairmarginInputError, match=match):
        pooled_kupiec_bootstrap(**args)


# ------------------------------------------------------------------------------------------
# Terciles and procyclicality
# ------------------------------------------------------------------------------------------
def test_coverage_by_tercile_hand_case():
    exceptions = [True, False, False, False, True, True]
    vol = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # low {1, 2}: one exception of two -> 0.5; mid {3, 4}: none -> 1.0; high {5, 6}: both -> 0.0
    assert coverage_by_tercile(exceptions, vol) == {"low": 0.5, "mid": 1.0, "high": 0.0}
    # Order of the observations does not matter, only their volatility rank.
    order = [3, 0, 5, 2, 4, 1]
    shuffled = coverage_by_tercile([exceptions[i] for i in order], [vol[i] for i in order])
    assert shuffled == {"low": 0.5, "mid": 1.0, "high": 0.0}


def test_coverage_by_tercile_drops_nan_and_uneven_sizes():
    # 7 valid of 8: ranks 0..6 -> groups floor(3 r / 7) = 0,0,0,1,1,2,2 (sizes 3, 2, 2)
    exceptions = pd.Series([0, 1, 0, 0, 1, 1, 0, 1], dtype=float)
    vol = pd.Series([1, 2, 3, 4, 5, 6, 7, np.nan])
    out = coverage_by_tercile(exceptions, vol)
    assert out["low"] == pytest.approx(1 - 1 / 3)  # vol 1, 2, 3: one exception
    assert out["mid"] == pytest.approx(0.5)  # vol 4, 5: one
    assert out["high"] == pytest.approx(0.5)  # vol 6, 7: one
    two = coverage_by_tercile([True, False], [1.0, 2.0])
    # n = 2: ranks 0, 1 -> groups 0, 1; the high tercile is empty
    assert (two["low"], two["mid"]) == (0.0, 1.0)
    assert math.isnan(two["high"])


def test_coverage_by_tercile_bad_input():
    with pytest.raises(
        FairmarginInputError,
        match=r"coverage_by_tercile: trailing_vol must have the length of exceptions \(3\), got 2",
    ):
        coverage_by_tercile([True, False, True], [1.0, 2.0])
    with pytest.raises(
        FairmarginInputError,
        match=r"coverage_by_tercile: exceptions and trailing_vol must share the same index",
    ):
        coverage_by_tercile(pd.Series([True, False]), pd.Series([1.0, 2.0], index=[5, 6]))


def test_peak_to_trough_hand_case():
    assert peak_to_trough(pd.Series([0.02, 0.05, 0.01, np.nan, 0.04])) == pytest.approx(5.0)
    assert peak_to_trough(pd.Series([0.03, 0.03])) == 1.0
    with pytest.raises(
        FairmarginInputError, match=r"peak_to_trough: margin must be finite and > 0, got 0.0"
    ):
        peak_to_trough(pd.Series([0.02, 0.0]))
    with pytest.raises(
        FairmarginInputError, match=r"peak_to_trough: margin must hold at least one non-NaN value"
    ):
        peak_to_trough(pd.Series([np.nan]))


def test_largest_increase_hand_case():
    idx = pd.date_range("2024-01-01", periods=7, freq="D")
    m = pd.Series([1.0, 1.2, 0.8, 1.0, 1.6, 1.0, 0.9], index=idx)
    # Within 2 days (closed both ends): 1.6 on day 4 vs 0.8 on day 2 -> 1.0
    assert largest_increase(m, window=pd.Timedelta(days=2)) == pytest.approx(1.0)
    # Within 1 day: 1.6 vs 1.0 on day 3 -> 0.6 (0.8 -> 1.0 is 0.25, 1.0 -> 1.2 is 0.2)
    assert largest_increase(m, window=pd.Timedelta(days=1)) == pytest.approx(0.6)
    falling = pd.Series([3.0, 2.0, 1.0], index=idx[:3])
    assert largest_increase(falling, window=pd.Timedelta(days=5)) == 0.0


def test_largest_increase_bad_input():
    with pytest.raises(
        FairmarginInputError,
        match=r"largest_increase: margin must have a DatetimeIndex, got RangeIndex",
    ):
        largest_increase(pd.Series([1.0, 2.0]), window=pd.Timedelta(days=1))
    idx = pd.date_range("2024-01-01", periods=2, freq="D")
    with pytest.raises(
        FairmarginInputError, match=r"largest_increase: window must be a positive Timedelta, got 5"
    ):
        largest_increase(pd.Series([1.0, 2.0], index=idx), window=5)  # type: ignore[arg-type]
    with pytest.raises(
        FairmarginInputError, match=r"largest_increase: margin index must be sorted ascending"
    ):
        largest_increase(pd.Series([1.0, 2.0], index=idx[::-1]), window=pd.Timedelta(days=1))


# ------------------------------------------------------------------------------------------
# backtest()
# ------------------------------------------------------------------------------------------
def small_case() -> tuple[pd.Series, pd.Series, pd.Series]:
    idx = pd.date_range("2024-01-01", periods=12, freq="D")
    forecast = pd.Series([0.05] + [0.10] * 6 + [0.20] + [0.10] * 4, index=idx)
    realised = pd.Series(0.02, index=idx)
    realised.iloc[[1, 3, 5]] = 0.5  # exceptions on rows the step-2 sample skips
    realised.iloc[4] = 0.13  # breach 0.03 on a sampled row
    realised.iloc[10] = 0.11  # breach 0.01 on a sampled row
    realised.iloc[11] = np.nan  # label not complete yet: the sample ends at row 10
    vol = pd.Series(np.arange(12, dtype=float), index=idx)
    vol.iloc[[0, 2, 4, 6, 8, 10]] = [6.0, 5.0, 1.0, 2.0, 3.0, 4.0]
    return forecast, realised, vol


def test_backtest_small_known_case():
    forecast, realised, vol = small_case()
    rep = backtest(forecast, realised, coverage=0.99, step=2, trailing_vol=vol)
    # Sample: rows 10, 8, 6, 4, 2, 0 (every 2nd back from row 10); exceptions at rows 4 and 10.
    assert rep.observations == 6
    assert rep.exceptions == 2
    assert rep.coverage == pytest.approx(4 / 6)
    assert rep.target_coverage == 0.99
    assert rep.step == 2
    assert rep.largest_breach == pytest.approx(0.03)
    assert rep.average_breach == pytest.approx(0.02)
    # Kupiec: 2 [4 ln((4/6)/0.99) + 2 ln((2/6)/0.01)]
    lr_pof = 2 * (4 * math.log((4 / 6) / 0.99) + 2 * math.log((2 / 6) / 0.01))
    assert rep.kupiec_p == pytest.approx(chi2_1_sf(lr_pof), rel=1e-9)
    # Sequence 0 0 1 0 0 1: pairs 00 01 10 00 01 -> n00 = 2, n01 = 2, n10 = 1, n11 = 0
    lr_ind = hand_lr_ind(2, 2, 1, 0)
    lr_pof_pairs = hand_lr_pof(5, 2, 0.01)
    assert rep.christoffersen_ind_p == pytest.approx(chi2_1_sf(lr_ind), rel=1e-9)
    assert rep.christoffersen_cc_p == pytest.approx(chi2_2_sf(lr_pof_pairs + lr_ind), rel=1e-9)
    # Traffic light on all 6 observations: P(X <= 2 | n = 6, p = 0.01) = 0.99998 -> red
    assert (rep.n_traffic, rep.traffic_exceptions, rep.traffic_light) == (6, 2, "red")
    # Vol at rows 4, 6 (low), 8, 10 (mid), 2, 0 (high): exceptions at 4 and 10.
    assert rep.tercile_coverage == (0.5, 0.5, 1.0)
    # Path statistics on all 12 forecasts: mean (0.05 + 0.20 + 10 * 0.10) / 12;
    # max / min = 0.20 / 0.05; within 5 days of day 7 the minimum is 0.10 -> +100 %;
    # within 30 days it is 0.05 (day 0) -> +300 %.
    assert rep.average_margin == pytest.approx(1.25 / 12)
    assert rep.peak_to_trough == pytest.approx(4.0)
    assert rep.largest_5d_increase == pytest.approx(1.0)
    assert rep.largest_30d_increase == pytest.approx(3.0)


def test_backtest_report_as_dict_is_flat_and_numeric():
    forecast, realised, _ = small_case()
    rep = backtest(forecast, realised, coverage=0.99, step=2)
    assert isinstance(rep, BacktestReport)
    flat = rep.as_dict()
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["traffic_light_zone"] == 2.0
    assert flat["observations"] == 6.0
    assert all(math.isnan(flat[f"tercile_coverage_{t}"]) for t in ("low", "mid", "high"))
    assert {
        "kupiec_p",
        "christoffersen_ind_p",
        "christoffersen_cc_p",
        "largest_30d_increase",
        "n_traffic",
        "average_margin",
        "peak_to_trough",
    } <= set(flat)


def test_backtest_step_one_uses_every_row():
    forecast, realised, _ = small_case()
    rep = backtest(forecast, realised, coverage=0.99, step=1)
    # rows 0..10 (row 11 has no label); exceptions at rows 1, 3, 5, 4, 10
    assert (rep.observations, rep.exceptions) == (11, 5)
    assert rep.largest_breach == pytest.approx(0.4)


def test_backtest_traffic_light_uses_last_250_observations():
    idx = pd.date_range("2023-01-01", periods=300, freq="D")
    forecast = pd.Series(0.1, index=idx)
    realised = pd.Series(0.0, index=idx)
    realised.iloc[:20] = 0.2  # 20 exceptions in the first 50 days, outside the last 250
    realised.iloc[-3:] = 0.2  # 3 in the last 250
    rep = backtest(forecast, realised, coverage=0.99, step=1)
    assert (rep.n_traffic, rep.traffic_exceptions, rep.traffic_light) == (250, 3, "green")
    assert rep.exceptions == 23


def test_backtest_bad_input():
    forecast, realised, vol = small_case()
    with pytest.raises(
        FairmarginInputError,
        match=r"backtest: forecast and realised must share the same index, got lengths 12 and 11",
    ):
        backtest(forecast, realised.iloc[:-1], coverage=0.99, step=2)
    with pytest.raises(
        FairmarginInputError, match=r"backtest: coverage must be in \(0.5, 1\), got 99"
    ):
        backtest(forecast, realised, coverage=99, step=2)
    with pytest.raises(
        FairmarginInputError, match=r"backtest: step must be an integer >= 1, got 0"
    ):
        backtest(forecast, realised, coverage=0.99, step=0)
    with pytest.raises(
        FairmarginInputError, match=r"backtest: non-overlapping observations must be >= 2, got 1"
    ):
        backtest(forecast, realised, coverage=0.99, step=11)
    with pytest.raises(
        FairmarginInputError,
        match=r"backtest: forecast and trailing_vol must share the same index",
    ):
        backtest(forecast, realised, coverage=0.99, step=2, trailing_vol=vol.iloc[1:])
    with pytest.raises(
        FairmarginInputError, match=r"backtest: forecast must be finite and > 0, got 0.0 at 2024"
    ):
        backtest(
            forecast.where(forecast.index != forecast.index[3], 0.0),
            realised,
            coverage=0.99,
            step=2,
        )
    with pytest.raises(
        FairmarginInputError, match=r"backtest: forecast must have a DatetimeIndex, got RangeIndex"
    ):
        backtest(
            forecast.reset_index(drop=True), realised.reset_index(drop=True), coverage=0.99, step=2
        )


# ------------------------------------------------------------------------------------------
# Anti-procyclicality overlays
# ------------------------------------------------------------------------------------------
def test_apc_buffer_released_in_stress():
    m = pd.Series([0.1, 0.2, 0.4], name="im")
    stress = pd.Series([False, True, False])
    assert_allclose(apc_buffer(m, stress=stress), [0.125, 0.2, 0.5])
    assert_allclose(apc_buffer(m, buffer=0.5), [0.15, 0.3, 0.6])
    assert apc_buffer(m).name == "im"
    with pytest.raises(
        FairmarginInputError, match=r"apc_buffer: buffer must be a float >= 0, got -0.1"
    ):
        apc_buffer(m, buffer=-0.1)
    with pytest.raises(
        FairmarginInputError, match=r"apc_buffer: margin and stress must share the same index"
    ):
        apc_buffer(m, stress=stress.iloc[:2])


def test_apc_stressed_weight_blends():
    m = pd.Series([0.1, 0.2])
    # 0.75 * 0.1 + 0.25 * 0.3 = 0.15; 0.75 * 0.2 + 0.25 * 0.3 = 0.225
    assert_allclose(apc_stressed_weight(m, 0.3), [0.15, 0.225])
    assert_allclose(apc_stressed_weight(m, pd.Series([0.5, 0.0]), weight=0.5), [0.3, 0.1])
    with pytest.raises(
        FairmarginInputError, match=r"apc_stressed_weight: weight must be in \[0, 1\], got 1.5"
    ):
        apc_stressed_weight(m, 0.3, weight=1.5)
    with pytest.raises(
        FairmarginInputError, match=r"apc_stressed_weight: stressed_margin must be >= 0, got -0.3"
    ):
        apc_stressed_weight(m, -0.3)


def test_apc_floor():
    m = pd.Series([0.1, 0.2, np.nan])
    assert_allclose(apc_floor(m, 0.15), [0.15, 0.2, np.nan])
    assert_allclose(apc_floor(m, pd.Series([np.nan, 0.3, 0.1])), [0.1, 0.3, np.nan])
    with pytest.raises(FairmarginInputError, match=r"apc_floor: margin must be >= 0, got -0.1"):
        apc_floor(pd.Series([-0.1]), 0.1)
    with pytest.raises(
        FairmarginInputError, match=r"apc_floor: floor must be a float or a pandas Series, got str"
    ):
        apc_floor(m, "0.1")  # type: ignore[arg-type]
