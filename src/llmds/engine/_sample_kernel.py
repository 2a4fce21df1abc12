"""numba kernel: draw one token per logits row from ``softmax(x / T)``, min-p applied, by inverse CDF.

The rows without top-k or top-p (the usual sampled request) need no sort and no normalised
probabilities: per row, one pass for the maximum, one that writes ``exp((x - max) / T)`` into a
scratch row and sums it (tokens below the min-p floor weigh 0), and a scan that stops at the first
token whose running sum exceeds ``u`` times the total.  Rows run in parallel.  On 32 rows of
SmolLM2's 49,152 logits this replaces torch's divide, softmax, cumsum and searchsorted (~5-11 ms
on a 2-core AMD EPYC, each a pass over the whole matrix) with about one fused pass.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llmds._jit import njit
from llmds.engine.models._simd import exp_f32

__all__ = ["sample_rows"]


@njit(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
def sample_rows(x: np.ndarray, rows: np.ndarray, temps: np.ndarray, log_min_p: np.ndarray, u: np.ndarray,
                scratch: np.ndarray, out: np.ndarray) -> None:
    """``out[j]``: a token drawn from row ``rows[j]`` of the float32 logits ``x`` at temperature
    ``temps[j]``, keeping the tokens with ``(x - max) / T >= log_min_p[j]`` (``-inf``: all), by the
    uniform ``u[j]`` in [0, 1).  A token of weight 0 (a ``-inf`` logit, under the floor) is never
    drawn.  ``scratch``: float32 ``[len(rows), V]``."""
    V = x.shape[1]
    for j in prange(rows.shape[0]):
        r = rows[j]
        m = np.float32(-np.inf)
        for t in range(V):
            if x[r, t] > m:
                m = x[r, t]
        inv = np.float32(1.0) / temps[j]
        lo = log_min_p[j]
        w = scratch[j]
        total = 0.0
        for t in range(V):
            z = (x[r, t] - m) * inv
            e = exp_f32(z) if z >= lo and z > np.float32(-87.0) else np.float32(0.0)
            w[t] = e
            total += e
        target = u[j] * total
        acc = 0.0
        pick = -1
        for t in range(V):
            if w[t] > 0.0:
                acc += w[t]
                pick = t
                if acc > target:
                    break
        out[j] = pick
