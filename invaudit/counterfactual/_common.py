"""What the counterfactual solvers share: the target check, and the per-problem bundle the
linear solvers hand back to :mod:`.solve` (coordinates ``z``)."""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError

__all__ = ["_Sol", "check_target"]


def check_target(target, n: int, K: int):
    """``None`` for ``"other"``, else an ``(n,)`` array of class indices."""
    if isinstance(target, str):
        if target != "other":
            raise InputError(f"target must be class indices or 'other', got {target!r}.")
        return None
    tgt = np.asarray(target)
    if tgt.ndim == 0:
        tgt = np.full(n, tgt)
    if tgt.shape != (n,):
        raise InputError(f"target must have one class index per row ({n}), got shape {tgt.shape}.")
    if not np.issubdtype(tgt.dtype, np.integer):
        if np.issubdtype(tgt.dtype, np.floating) and np.all(tgt == np.round(tgt)):
            tgt = tgt.astype(np.int64)
        else:
            raise InputError("target must be integer class indices (positions in classes).")
    if np.any((tgt < 0) | (tgt >= K)):
        bad = int(tgt[(tgt < 0) | (tgt >= K)][0])
        raise InputError(f"target class index {bad} is out of range for a {K}-class model.")
    return tgt.astype(np.intp)


class _Sol:
    """Per-problem solver output (z in the kept coordinates)."""

    def __init__(self, n, p):
        self.z = np.full((n, p), np.nan)
        self.state = np.full(n, "failed", dtype=object)   # ok / infeasible / failed / local
        self.reason = np.full(n, None, dtype=object)
        self.kkt = np.full(n, np.nan)
        self.iters = np.zeros(n, dtype=np.int64)
        self.method = np.full(n, "", dtype=object)
        # a proven lower bound on the optimal distance of the *unshifted* problem (no hair of
        # margin, score rounding allowed for); NaN where the method has none
        self.lb = np.full(n, np.nan)


# --------------------------------------------------------------------------------------------
# score differences to near machine precision
# --------------------------------------------------------------------------------------------

_U = np.finfo(np.float64).eps / 2          # unit roundoff
_SPLIT = 134217729.0                       # 2**27 + 1 (Veltkamp)


def _two_prod(a, b):
    """``a * b == p + e`` exactly (Dekker's TwoProduct with Veltkamp's split)."""
    p = a * b
    ca = _SPLIT * a
    ah = ca - (ca - a)
    al = a - ah
    cb = _SPLIT * b
    bh = cb - (cb - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def score_differences(X, W, b, ref, *, rel=1e-11):
    """Scores relative to a reference class, ``S[i, k] - S[i, ref[i]]``, and error bounds.

    The float64 matrix product loses up to ``~D u (|W| . |x| + |b|)`` to rounding, which is
    everything for a row within that distance of a decision boundary (a relative change of the
    score gap there is a relative change of the counterfactual distance). Rows whose rounding
    bound exceeds ``rel`` times a gap are recomputed exactly: every product ``W_kj x_j`` is split
    into two floats that sum to it exactly (TwoProduct) and ``math.fsum`` rounds the exact sum
    once, so the gap is correct to half an ulp of itself.

    Parameters
    ----------
    X : (n, D); W : (K, D); b : (K,); ref : (n,) class indices.

    Returns
    -------
    Sd : (n, K) ``S - S[:, ref]`` (zero in the ``ref`` column).
    err : (n, K) bounds on ``|Sd - exact|`` (zero in the ``ref`` column).
    absS : (n,) ``max_k |W_k| . |x| + |b_k|``: the magnitude the estimator's own rounding of
        the scores scales with.
    """
    import math

    X = np.asarray(X, dtype=np.float64)
    n, D = X.shape
    K = W.shape[0]
    r = np.arange(n)
    ref = np.asarray(ref, dtype=np.intp)
    S = X @ W.T + b
    Sd = S - S[r, ref][:, None]
    aS = np.abs(X) @ np.abs(W).T + np.abs(b)
    gam = (D + 2) * _U / (1.0 - (D + 2) * _U)
    err = gam * (aS + aS[r, ref][:, None]) + _U * np.abs(Sd)
    err[r, ref] = 0.0
    near = np.flatnonzero(np.any(err > rel * np.abs(Sd), axis=1))
    if len(near):  # rare: rows within rounding reach of a boundary; a loop over those rows
        P, E = _two_prod(X[near][:, None, :], W[None, :, :])          # (m, K, D)
        if np.all(np.isfinite(P)) and np.all(np.isfinite(E)):
            for q, i in enumerate(near):
                t = ref[i]
                base = [-v for v in P[q, t]] + [-v for v in E[q, t]] + [-float(b[t])]
                for k in range(K):
                    if k == t:
                        continue
                    Sd[i, k] = math.fsum(list(P[q, k]) + list(E[q, k]) + [float(b[k])] + base)
            err[near] = _U * np.abs(Sd[near])
    return Sd, err, aS.max(axis=1)
