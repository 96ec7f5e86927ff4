"""Price-path engine of the market simulator: the one-minute dynamics of an underlying index.

One model, two drivers:

* :func:`simulate_index_history` draws the joint history of several underlyings (correlated
  through a common normal factor and a common chi-square mixing variable, so each marginal
  innovation is an exact standardised Student-t; market-wide jumps and a market-wide regime);
* :func:`simulate_extremes` draws Monte-Carlo continuations of ONE underlying from a given state,
  with the same marginal dynamics, and returns the running minimum and maximum of the log price
  of one or more contracts (index plus a basis) on the one-minute grid.

Per minute ``t`` (all variances per minute)::

    s_t    : regime, 0 calm / 1 stressed, a two-state Markov chain (switch probability per minute)
    r_t    = m[s_t] * sqrt(h_t) * z_t + jumps_t
    h_t+1  = omega + (beta + alpha * z_t**2) * h_t          (GARCH(1,1) on the standardised shocks)
    jumps  : independent Poisson sources, each hit with probability rate * f[s_t], size
             jump_scale * clip(Student-t(jump_df), +-jump_clip)

A contract's log price is ``x_t + b_t`` where the basis ``b`` is piecewise constant over blocks of
:data:`BASIS_BLOCK_MINUTES` minutes (block ``j`` covers the minute marks ``5j .. 5j + 4``):
``b = level_j + scale_j * ou_j`` with ``ou_j+1 = phi * ou_j + innov_sd * N(0, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BASIS_BLOCK_MINUTES",
    "BasisPaths",
    "IndexHistory",
    "PathModel",
    "simulate_extremes",
    "simulate_index_history",
]

BASIS_BLOCK_MINUTES = 5
"""The basis of every contract is redrawn every this many minutes (on marks divisible by it)."""

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PathModel:
    """One-minute dynamics of an underlying index (see the module docstring).

    Parameters
    ----------
    omega, alpha, beta
        GARCH(1,1) parameters on the per-minute variance of the diffusive part.
    t_df
        Degrees of freedom of the Student-t innovations (standardised to unit variance);
        ``None`` for Gaussian innovations.
    stress_vol_multiplier
        Volatility multiplier ``m[1]`` in the stressed regime (``m[0] = 1``).
    p_calm_to_stress, p_stress_to_calm
        Regime switch probabilities per minute.
    jump_rates
        Per-minute hit probability of each independent jump source in the calm regime.
    jump_stress_factor
        Multiplier of every jump rate in the stressed regime.
    jump_scale, jump_df, jump_clip
        Jump size ``jump_scale * clip(t(jump_df), -jump_clip, jump_clip)`` in log price.
    """

    omega: float
    alpha: float
    beta: float
    t_df: float | None = 5.0
    stress_vol_multiplier: float = 1.0
    p_calm_to_stress: float = 0.0
    p_stress_to_calm: float = 0.0
    jump_rates: tuple[float, ...] = ()
    jump_stress_factor: float = 1.0
    jump_scale: float = 0.0
    jump_df: float = 3.0
    jump_clip: float = 40.0

    def __post_init__(self) -> None:
        if not self.omega > 0:
            raise ValueError(f"PathModel: omega must be > 0, got {self.omega!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta >= 1:
            raise ValueError(
                "PathModel: alpha, beta must be >= 0 with alpha + beta < 1, "
                f"got {self.alpha!r}, {self.beta!r}"
            )
        if self.t_df is not None and not self.t_df > 2:
            raise ValueError(f"PathModel: t_df must be > 2 or None, got {self.t_df!r}")
        for name in ("p_calm_to_stress", "p_stress_to_calm"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"PathModel: {name} must be in [0, 1], got {p!r}")
        if any(not 0 <= lam <= 1 for lam in self.jump_rates):
            raise ValueError(f"PathModel: jump_rates must be in [0, 1], got {self.jump_rates!r}")
        if not self.jump_df > 2:
            raise ValueError(f"PathModel: jump_df must be > 2, got {self.jump_df!r}")

    @property
    def regime_vol(self) -> FloatArray:
        """Volatility multiplier per regime, ``[1, stress_vol_multiplier]``."""
        return np.array([1.0, self.stress_vol_multiplier])

    @property
    def jump_factor(self) -> FloatArray:
        """Jump-rate multiplier per regime, ``[1, jump_stress_factor]``."""
        return np.array([1.0, self.jump_stress_factor])

    @property
    def jump_variance(self) -> float:
        """Variance of one jump size (clipping ignored: it removes < 1e-6 of the mass)."""
        return self.jump_scale**2 * self.jump_df / (self.jump_df - 2.0)

    def conditional_variance(self, h_next: FloatArray, stressed: NDArray[np.bool_]) -> FloatArray:
        """Variance of the next one-minute log return given ``h`` and the current regime."""
        s = np.asarray(stressed, dtype=np.intp)
        lam = float(sum(self.jump_rates)) * self.jump_factor[s]
        return np.asarray(self.regime_vol[s] ** 2 * h_next + lam * self.jump_variance)

    def t_scale(self) -> float:
        """Factor that turns a raw Student-t draw into a unit-variance innovation."""
        return 1.0 if self.t_df is None else float(np.sqrt((self.t_df - 2.0) / self.t_df))


@dataclass(frozen=True, slots=True)
class BasisPaths:
    """Basis of ``k`` contracts over Monte-Carlo blocks (block 0 holds the starting mark).

    Parameters
    ----------
    ou0
        Mean-reverting part of each contract's basis in the starting block, shape ``(k,)``.
    phi, innov_sd
        Per-block autoregressive coefficient and innovation standard deviation, shape ``(k,)``.
    level, scale
        Deterministic level and scale of the basis per block, shape ``(k, n_blocks)``; the basis
        in block ``j`` is ``level[:, j] + scale[:, j] * ou_j``.
    """

    ou0: FloatArray
    phi: FloatArray
    innov_sd: FloatArray
    level: FloatArray
    scale: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        k = self.ou0.shape[0]
        for name in ("phi", "innov_sd"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"BasisPaths: {name} must have shape ({k},)")
        if (
            self.level.ndim != 2
            or self.level.shape[0] != k
            or self.scale.shape != self.level.shape
        ):
            raise ValueError(
                f"BasisPaths: level and scale must have the same shape ({k}, n_blocks)"
            )


def simulate_extremes(
    model: PathModel,
    *,
    h0: float,
    stressed0: bool,
    horizons: Sequence[int] | NDArray[np.int64],
    n_paths: int,
    rng: np.random.Generator,
    basis: BasisPaths | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Running minimum and maximum of contract log prices over Monte-Carlo continuations.

    The paths start at minute mark 0 (log price 0 relative to the start, which must be a mark
    divisible by :data:`BASIS_BLOCK_MINUTES`), in regime ``stressed0`` with GARCH variance ``h0``
    for the first new minute, and are vectorised over paths with a loop over minutes; only the
    running extremes are kept. The start point itself is part of the running extremes, so the
    minimum is <= 0 and the maximum >= 0.

    Parameters
    ----------
    model
        The dynamics.
    h0
        GARCH variance of minute 1 (known at the start).
    stressed0
        Regime of the starting minute; minute 1's regime follows by one Markov step.
    horizons
        Strictly increasing whole minutes >= 1 at which to record the extremes.
    n_paths
        Number of paths.
    rng
        Random generator (consumed).
    basis
        Basis of ``k`` contracts; ``None`` for the index alone (``k = 1``, basis 0).

    Returns
    -------
    (running_min, running_max)
        Log price relative to the start, each of shape ``(k, len(horizons), n_paths)``.
    """
    hz = np.asarray(horizons, dtype=np.int64)
    if hz.ndim != 1 or hz.size == 0 or hz[0] < 1 or np.any(np.diff(hz) <= 0):
        raise ValueError(
            f"simulate_extremes: horizons must be strictly increasing minutes >= 1, got {hz!r}"
        )
    if n_paths < 1:
        raise ValueError(f"simulate_extremes: n_paths must be >= 1, got {n_paths!r}")
    if not h0 > 0:
        raise ValueError(f"simulate_extremes: h0 must be > 0, got {h0!r}")
    top = int(hz[-1])
    n_blocks = top // BASIS_BLOCK_MINUTES + 1
    n = n_paths
    if basis is None:
        k = 1
        phi = np.zeros((1, 1))
        sd = np.zeros((1, 1))
        level = np.zeros((1, n_blocks))
        scale = np.zeros((1, n_blocks))
        ou = np.zeros((1, n))
    else:
        k = basis.ou0.shape[0]
        if basis.level.shape[1] < n_blocks:
            raise ValueError(
                f"simulate_extremes: basis must cover {n_blocks} blocks, "
                f"got {basis.level.shape[1]}"
            )
        phi = basis.phi[:, None]
        sd = basis.innov_sd[:, None]
        level = basis.level
        scale = basis.scale
        ou = np.repeat(basis.ou0[:, None], n, axis=1)
    b_start = level[:, :1] + scale[:, :1] * ou[:, :1]
    b_cur = np.zeros((k, n))  # basis of the current block relative to the start

    out_min = np.empty((k, hz.size, n))
    out_max = np.empty((k, hz.size, n))
    mn = np.zeros((k, n))  # contract extremes folded up to the previous block
    mx = np.zeros((k, n))
    bmn = np.zeros(n)  # index extremes inside the current block (mark 0 included)
    bmx = np.zeros(n)
    x = np.zeros(n)
    h = np.full(n, float(h0))
    s = np.full(n, 1 if stressed0 else 0, dtype=np.intp)
    m = model.regime_vol
    jf = model.jump_factor
    p_switch = np.array([model.p_calm_to_stress, model.p_stress_to_calm])
    switching = bool(p_switch.any())
    t_scale = model.t_scale()
    gi = 0
    for j in range(1, top + 1):
        if j % BASIS_BLOCK_MINUTES == 0:
            np.minimum(mn, bmn + b_cur, out=mn)
            np.maximum(mx, bmx + b_cur, out=mx)
            blk = j // BASIS_BLOCK_MINUTES
            if basis is not None:
                ou = phi * ou + sd * rng.standard_normal((k, n))
                b_cur = level[:, blk : blk + 1] + scale[:, blk : blk + 1] * ou - b_start
            bmn.fill(np.inf)
            bmx.fill(-np.inf)
        if switching:
            flip = rng.random(n) < p_switch[s]
            s = np.where(flip, 1 - s, s)
        if model.t_df is None:
            z = rng.standard_normal(n)
        else:
            z = rng.standard_t(model.t_df, n) * t_scale
        r = m[s] * np.sqrt(h) * z
        h = model.omega + (model.beta + model.alpha * z * z) * h
        for lam in model.jump_rates:
            hit = np.flatnonzero(rng.random(n) < lam * jf[s])
            if hit.size:
                draw = rng.standard_t(model.jump_df, hit.size)
                r[hit] += model.jump_scale * np.clip(draw, -model.jump_clip, model.jump_clip)
        x += r
        np.minimum(bmn, x, out=bmn)
        np.maximum(bmx, x, out=bmx)
        if j == hz[gi]:
            out_min[:, gi] = np.minimum(mn, bmn + b_cur)
            out_max[:, gi] = np.maximum(mx, bmx + b_cur)
            gi += 1
    return out_min, out_max


@dataclass(frozen=True, slots=True)
class IndexHistory:
    """Joint one-minute history of several underlyings (marks ``0 .. n_minutes``).

    Attributes
    ----------
    log_price
        Index log price at each minute mark, shape ``(n_minutes + 1, U)``.
    h
        GARCH variance of the minute ending at each mark, shape ``(n_minutes + 1, U)``; row 0 is
        the variance of the last burn-in minute, and ``h_next`` the variance of minute
        ``n_minutes + 1``.
    h_next
        Shape ``(U,)``.
    stressed
        Regime of the minute ending at each mark (mark 0: last burn-in minute), shape
        ``(n_minutes + 1,)``.
    """

    log_price: FloatArray
    h: FloatArray
    h_next: FloatArray
    stressed: NDArray[np.bool_]


def _regime_chain(n: int, p01: float, p10: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """A two-state Markov chain of length ``n`` from its stationary law, by holding times."""
    out = np.zeros(n, dtype=bool)
    if p01 <= 0:
        return out
    if p10 <= 0:
        out[:] = True
        return out
    state = bool(rng.random() < p01 / (p01 + p10))
    pos = 0
    while pos < n:
        stay = int(rng.geometric(p10 if state else p01))  # minutes until the switch, >= 1
        out[pos : pos + stay] = state
        pos += stay
        state = not state
    return out


def simulate_index_history(
    models: Sequence[PathModel],
    *,
    log_price0: FloatArray,
    factor_loading: FloatArray,
    common_jump_source: int,
    n_minutes: int,
    burn_in_minutes: int,
    rng: np.random.Generator,
) -> IndexHistory:
    """Joint history of ``U`` underlyings sharing one regime chain and one common factor.

    Every model must share ``t_df``, the regime parameters and the number of jump sources. The
    normal part of each innovation is ``loading * f + sqrt(1 - loading**2) * e`` with ``f``
    common; the Student-t mixing variable is common too (a multivariate t), so each marginal
    innovation is an exact standardised t, as in :func:`simulate_extremes`. Jump source
    ``common_jump_source`` fires for all underlyings at once with a common t-draw (scaled by each
    underlying's ``jump_scale``); the other sources are independent per underlying.
    """
    u = len(models)
    if u == 0:
        raise ValueError("simulate_index_history: models must not be empty")
    m0 = models[0]
    for mod in models[1:]:
        same = (
            mod.t_df == m0.t_df
            and mod.p_calm_to_stress == m0.p_calm_to_stress
            and mod.p_stress_to_calm == m0.p_stress_to_calm
            and mod.stress_vol_multiplier == m0.stress_vol_multiplier
            and mod.jump_stress_factor == m0.jump_stress_factor
            and len(mod.jump_rates) == len(m0.jump_rates)
            and mod.jump_df == m0.jump_df
            and mod.jump_clip == m0.jump_clip
        )
        if not same:
            raise ValueError(
                "simulate_index_history: models must share t_df, regime and jump-shape parameters"
            )
    total = burn_in_minutes + n_minutes
    stressed = _regime_chain(total + 1, m0.p_calm_to_stress, m0.p_stress_to_calm, rng)
    s = stressed.astype(np.intp)
    # innovations: minute i (1..total) uses row i
    loading = np.asarray(factor_loading, dtype=np.float64)
    f = rng.standard_normal(total + 1)
    e = rng.standard_normal((total + 1, u))
    normal = loading[None, :] * f[:, None] + np.sqrt(1.0 - loading**2)[None, :] * e
    if m0.t_df is None:
        z = normal
    else:
        w = rng.chisquare(m0.t_df, total + 1)
        z = normal * np.sqrt((m0.t_df - 2.0) / w)[:, None]
    z[0] = 0.0
    r = np.zeros((total + 1, u))
    h_all = np.empty((total + 1, u))
    h_next = np.empty(u)
    for a, mod in enumerate(models):
        coef = (mod.beta + mod.alpha * z[:, a] ** 2).tolist()
        hbar = mod.omega / (1.0 - mod.alpha - mod.beta)
        hh = hbar
        col = [0.0] * (total + 1)
        col[0] = hbar
        for i in range(1, total + 1):
            col[i] = hh  # variance of minute i
            hh = mod.omega + coef[i] * hh
        h_all[:, a] = col
        h_next[a] = hh
        r[:, a] = mod.regime_vol[s] * np.sqrt(h_all[:, a]) * z[:, a]
    n_src = len(m0.jump_rates)
    jf = m0.jump_factor[s]
    for src in range(n_src):
        if src == common_jump_source:
            rates = np.array([mod.jump_rates[src] for mod in models])
            if np.ptp(rates) > 0:
                raise ValueError("simulate_index_history: the common jump source needs one rate")
            hit = np.flatnonzero(rng.random(total + 1) < rates[0] * jf)
            draw = np.clip(rng.standard_t(m0.jump_df, hit.size), -m0.jump_clip, m0.jump_clip)
            for a, mod in enumerate(models):
                r[hit, a] += mod.jump_scale * draw
        else:
            for a, mod in enumerate(models):
                hit = np.flatnonzero(rng.random(total + 1) < mod.jump_rates[src] * jf)
                draw = np.clip(rng.standard_t(m0.jump_df, hit.size), -m0.jump_clip, m0.jump_clip)
                r[hit, a] += mod.jump_scale * draw
    r[0] = 0.0
    keep = slice(burn_in_minutes, total + 1)
    rk = r[keep].copy()
    rk[0] = 0.0  # mark 0 of the bundle is the start price
    log_price = np.asarray(log_price0, dtype=np.float64)[None, :] + np.cumsum(rk, axis=0)
    return IndexHistory(
        log_price=log_price,
        h=h_all[keep].copy(),
        h_next=h_next,
        stressed=stressed[keep].copy(),
    )
