"""Counterfactuals for k-nearest-neighbour classifiers.

The work is :func:`invaudit.margins._neighbors.neighbor_rows`: for 1-NN with the Euclidean
metric the nearest Voronoi cell of a training point of the target class (one QP / LP per
candidate cell, pruned by bisector bounds), exact for ``l1``, ``l2`` and ``linf`` with boxes and
frozen features; otherwise a verified search (bisection toward the nearest training rows of the
target class, then a walk over order-k cells), which is never farther than the nearest training
row the model assigns the target. A confidence ``P`` asks for a vote share ``>= P``; 1-NN gives
every point a share of 1 for its cell's class, so it changes nothing there.
"""

from __future__ import annotations

import numpy as np

from invaudit.counterfactual._nl_common import Answers, Problem

__all__ = ["solve_neighbors", "solve_neighbors_other"]


def _answers(prob: Problem, target, offset: int = 0, total=None) -> Answers:
    from invaudit.margins._neighbors import neighbor_rows

    n, D = prob.X.shape
    ans = Answers(n, D)
    if n == 0:
        return ans
    X_train = prob.pool.X if prob.pool is not None and len(prob.pool.X) else None
    res = neighbor_rows(prob.form, prob.X, prob.orig, target, lo=prob.lower - prob.X, hi=prob.upper - prob.X,
                        weights=prob.weights, norm=prob.norm, P=prob.P, X_train=X_train, seed=prob.seed,
                        progress=None if prob.progress is None else
                        (lambda done, _n: prob.progress(offset + done, total if total is not None else n)))
    found = np.all(np.isfinite(res["point"]), axis=1)
    ex = found & res["exact"]
    r = np.flatnonzero(ex)
    ans.offer(r, res["point"][ex], res["dist"][ex], res["nearest"][ex], res["method"][ex], exact=True, kkt=0.0,
              backing="exact: every candidate Voronoi cell solved (QP dual-certified / LP) or pruned by a "
                      "bisector bound; point verified", lower_bound=res["opt"][ex])
    nx = found & ~ex
    r = np.flatnonzero(nx)
    ans.offer(r, res["point"][nx], res["dist"][nx], res["nearest"][nx], res["method"][nx], exact=False,
              backing="verified by the estimator; never farther than the nearest training row of the target class",
              lower_bound=res["lower"][nx])
    ans.fail(np.flatnonzero(res["unreachable"]), "no training point of the target class can be the nearest "
             "within the constraints", infeasible=True, method="1-NN Voronoi cells (exact)")
    ans.fail(np.flatnonzero(~found), "no verified point was found (pass --train for reference rows)",
             method="neighbour search")
    return ans


def solve_neighbors(prob: Problem, *, progress_offset: int = 0, progress_total=None) -> Answers:
    """Closest counterfactual of every row of ``prob`` to its target class."""
    return _answers(prob, prob.target, progress_offset, progress_total)


def solve_neighbors_other(prob: Problem, *, progress_offset: int = 0, progress_total=None) -> Answers:
    """``target="other"``: the nearest cell of any class but the row's (one search, exact for
    1-NN)."""
    return _answers(prob, np.full(prob.n, -1, dtype=np.intp), progress_offset, progress_total)
