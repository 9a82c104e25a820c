"""The per-problem bundle the solvers hand back to :mod:`.solve` (coordinates ``z``)."""

from __future__ import annotations

import numpy as np

__all__ = ["_Sol"]


class _Sol:
    """Per-problem solver output (z in the kept coordinates)."""

    def __init__(self, n, p):
        self.z = np.full((n, p), np.nan)
        self.state = np.full(n, "failed", dtype=object)   # ok / infeasible / failed / local
        self.reason = np.full(n, None, dtype=object)
        self.kkt = np.full(n, np.nan)
        self.iters = np.zeros(n, dtype=np.int64)
        self.method = np.full(n, "", dtype=object)
