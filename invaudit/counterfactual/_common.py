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
