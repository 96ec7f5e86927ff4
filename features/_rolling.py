"""Private trailing-window kernels that pandas' ``rolling`` does not provide.

Both kernels split the series into consecutive blocks of ``window`` rows. A trailing window of
``window`` rows ending at row t is then the tail (suffix) of the previous block plus the head
(prefix) of t's own block, so per-block running summaries of prefixes and suffixes combine into
every window's answer with array operations. Every value at row t is built from rows at or before
t only (a suffix of the previous block ends before t), so the kernels are point-in-time exact,
bit for bit: changing a later row never changes an earlier answer.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["rolling_count", "rolling_max_drawdown_log", "rolling_top_k"]

_CHUNK = 8192


def rolling_count(valid: NDArray[np.bool_], *, window: int) -> NDArray[np.int64]:
    """Number of True values among the ``window`` rows ending at each row (fewer at the start).

    ``valid`` has shape (n,) or (n, c); counting runs along axis 0.
    """
    csum = np.cumsum(valid, axis=0, dtype=np.int64)
    out = csum.copy()
    out[window:] -= csum[:-window]
    return out


def rolling_top_k(x: NDArray[np.float64], *, window: int, k: int) -> NDArray[np.float64]:
    """The ``k`` largest values of each trailing window, in descending order.

    Parameters
    ----------
    x : array of shape (n, c), finite or NaN. NaN is missing: it never ranks among the largest.
    window : window length in rows (>= 1). At rows t < window - 1 the window is the rows 0..t.
    k : number of order statistics kept (>= 1).

    Returns
    -------
    Array of shape (n, c, k). ``out[t, j, i]`` is the (i+1)-th largest non-missing value of column
    j in rows ``max(0, t - window + 1)..t``; ``-inf`` where the window holds fewer than ``i + 1``
    non-missing values.

    Notes
    -----
    Cost: one Python-level step per row of a block (``window`` steps in all), each sorting an
    array of shape (2 * n_blocks * c, k + 1), then one sort of shape (n, c, 2k). Memory is about
    three arrays of n * c * k floats.
    """
    n, c = x.shape
    if n == 0:
        return np.empty((0, c, k), dtype=np.float64)
    b = window
    nb = -(-n // b)
    filled = np.where(np.isnan(x), -np.inf, x)
    padded = np.concatenate([filled, np.full((nb * b - n, c), -np.inf)])
    rows = padded.reshape(nb, b, c).transpose(0, 2, 1).reshape(nb * c, b)
    # Prefixes run forwards, suffixes backwards: one running top-k over both stacks, laid out
    # (step, row) so that each step reads contiguous memory.
    stacked = np.ascontiguousarray(np.concatenate([rows, rows[:, ::-1]]).T)
    n_rows = stacked.shape[1]
    running = np.empty((b, n_rows, k))
    state = np.full((n_rows, k), -np.inf)  # ascending: the k largest values seen so far
    upper = np.empty((n_rows, k))
    for j in range(b):
        # Insert v and drop the smallest: new_i = max(s_i, min(v, s_{i+1})), s_k = +inf.
        v = stacked[j][:, None]
        np.minimum(state[:, 1:], v, out=upper[:, :-1])
        upper[:, -1:] = v
        np.maximum(state, upper, out=running[j])
        state = running[j]
    half = nb * c
    flat = running.reshape(b * n_rows, k)
    cols = np.arange(c)

    def prefix_rows(g: NDArray[np.int64]) -> NDArray[np.int64]:
        """Rows of ``flat``: top-k of block(g) from its start to g."""
        return (g % b)[:, None] * n_rows + (g // b)[:, None] * c + cols

    def suffix_rows(g: NDArray[np.int64]) -> NDArray[np.int64]:
        """Rows of ``flat``: top-k of block(g) from g to its end."""
        return (b - 1 - g % b)[:, None] * n_rows + half + (g // b)[:, None] * c + cols

    out = np.empty((n, c, k))
    head = np.arange(min(b - 1, n))
    out[head] = flat[prefix_rows(head)][:, :, ::-1]
    for lo in range(b - 1, n, _CHUNK):  # chunks keep the temporaries small
        t = np.arange(lo, min(lo + _CHUNK, n))
        merged = np.empty((t.size, c, 2 * k))
        merged[:, :, :k] = flat[suffix_rows(t - b + 1)]
        merged[:, :, k:] = flat[prefix_rows(t)]
        # A window ending at a block's last row is that whole block: the suffix alone.
        merged[(t % b) == b - 1, :, k:] = -np.inf
        merged.sort(axis=2)
        out[t] = merged[:, :, : k - 1 : -1]
    return out


def rolling_max_drawdown_log(logp: NDArray[np.float64], *, window: int) -> NDArray[np.float64]:
    """Largest fall ``max(l_i - l_j : i <= j)`` of log prices within each trailing window.

    Parameters
    ----------
    logp : array of shape (n,), log prices; NaN is missing and skipped.
    window : window length in rows (>= 1). At rows t < window - 1 the window is the rows 0..t.

    Returns
    -------
    Array of shape (n,), in log units (>= 0); NaN where the window holds no price.

    Notes
    -----
    For a window made of a suffix S of one block and a prefix P of the next, the answer is
    ``max(dd(S), dd(P), max(S) - min(P))``; ``dd`` of all prefixes and suffixes of every block come
    from cumulative maxima and minima, so the whole computation is vectorised.
    """
    n = logp.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.float64)
    b = window
    nb = -(-n // b)
    padded = np.concatenate([logp, np.full(nb * b - n, np.nan)]).reshape(nb, b)
    p_max = np.fmax.accumulate(padded, axis=1)
    p_min = np.fmin.accumulate(padded, axis=1)
    p_dd = np.fmax.accumulate(p_max - padded, axis=1)
    rev = padded[:, ::-1]
    s_min = np.fmin.accumulate(rev, axis=1)
    s_max = np.fmax.accumulate(rev, axis=1)[:, ::-1].reshape(-1)
    s_dd = np.fmax.accumulate(rev - s_min, axis=1)[:, ::-1].reshape(-1)
    p_min_f = p_min.reshape(-1)
    p_dd_f = p_dd.reshape(-1)
    out = np.empty(n)
    head = min(b - 1, n)
    out[:head] = p_dd_f[:head]
    if n >= b:
        t = np.arange(b - 1, n)
        start = t - b + 1
        whole_block = (t % b) == b - 1
        cross = np.where(whole_block, np.nan, s_max[start] - p_min_f[t])
        tail = np.where(whole_block, np.nan, p_dd_f[t])
        out[b - 1 :] = np.fmax(np.fmax(s_dd[start], tail), cross)
    return out
