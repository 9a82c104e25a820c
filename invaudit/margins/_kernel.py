"""Margins of kernel machines (SVC / NuSVC, the kernel form).

Upper bound: the nearest point of another class is a counterfactual with target "other"
(:mod:`invaudit.counterfactual._nl_kernel`: boundary search and SQP on "the target wins all its
one-vs-one machines" with exact kernel gradients, from the row, from pulled reference rows and
from the model's support vectors, each verified by the estimator's ``predict``). Rows it leaves
without an answer get the query-only boundary search of black boxes.

Lower bound (certified, ignoring the box, which can only make the margin larger): while the
predicted class ``p`` wins every one of its machines it has ``K - 1`` votes and stays predicted,
so the margin is at least ``min_j |d_(p,j)(x)| / L_(p,j)`` with ``L`` a global Lipschitz constant of
``d`` in the metric. In the machines' space ``|grad_z k(s, z)|_2`` is at most ``sqrt(2 gamma / e)``
for the RBF kernel (the maximum of ``2 gamma r exp(-gamma r^2)``), ``gamma ||s||`` for the
sigmoid kernel and ``||s||`` for the linear one (where ``L_p = ||sum_l C_lp s_l||`` exactly); so
``L_p = sum_l |C_lp| bound_l`` times the operator norm of ``A diag(1/w)`` from the metric's norm
to L2. Polynomial kernels have no global constant (NaN), and a row whose class wins with fewer
than ``K - 1`` votes gets 0. Never exact.
"""

from __future__ import annotations

import numpy as np

from invaudit.margins._blackbox import solve_blackbox
from invaudit.margins._common import Problem, finalize, weighted_norm

METHOD = "kernel boundary search+sqp (verified upper bound); lipschitz lower bound"


def _input_operator_norm(form, w: np.ndarray, norm: str) -> float:
    """``sup ||A (delta)||_2`` over ``||w * delta||_norm <= 1`` (an upper bound for linf)."""
    D = int(form.n_features)
    A = np.eye(D) if form.pre_A is None else form.pre_A
    M = A / w[None, :]
    if norm == "l2":
        return float(np.linalg.norm(M, 2))
    if norm == "l1":
        return float(np.max(np.linalg.norm(M, axis=0)))
    return float(min(np.sqrt(D) * np.linalg.norm(M, 2), np.sqrt(np.sum(np.sum(np.abs(M), axis=1) ** 2))))


def lipschitz_constants(form, w: np.ndarray, norm: str) -> np.ndarray:
    """``(P,)`` global Lipschitz constants of the pair values in the metric (NaN: none)."""
    S, C = form.support_vectors, form.coef
    if form.kernel == "rbf":
        per_sv = np.full(S.shape[0], np.sqrt(2.0 * form.gamma / np.e))
    elif form.kernel == "sigmoid":
        per_sv = abs(form.gamma) * np.linalg.norm(S, axis=1)
    elif form.kernel == "linear":
        Lz = np.linalg.norm(C.T @ S, axis=1)
        return Lz * _input_operator_norm(form, w, norm)
    else:
        return np.full(form.n_pairs, np.nan)
    return (np.abs(C).T @ per_sv) * _input_operator_norm(form, w, norm)


def certified_lower_bound(form, prob: Problem) -> np.ndarray:
    """The module docstring's bound, per row."""
    V = form.pair_values(prob.X)
    L = lipschitz_constants(form, prob.weights, prob.norm)
    n = prob.n
    p = prob.pred
    out = np.full(n, np.inf)
    wins_all = np.ones(n, dtype=bool)
    for q, (i, j) in enumerate(form.pairs):  # a loop over class pairs
        involved = (p == i) | (p == j)
        won = np.where(p == i, V[:, q] > 0, V[:, q] <= 0)
        wins_all &= ~involved | won
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.abs(V[:, q]) / L[q]
        out = np.where(involved, np.minimum(out, b), out)
    out = np.where(wins_all, out, 0.0)
    return np.where(np.isfinite(out), out * (1.0 - 1e-9), np.nan)


def solve_kernel(form, prob: Problem, constraints, *, X_train=None, seed: int = 0, n_candidates: int = 32,
                 progress=None) -> dict:
    from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear

    n, X = prob.n, prob.X
    batch = counterfactuals_nonlinear(form, X, target="other", norm=prob.norm, constraints=constraints,
                                      X_train=X_train, seed=seed, progress=progress)
    found = np.asarray(batch.status) == "found"
    Pts = np.where(found[:, None], batch.x_cf, np.nan)
    delta, ok, idx = finalize(form, X, Pts, prob.pred)
    margin = np.full(n, np.nan)
    margin[ok] = weighted_norm(delta[ok], prob.weights, prob.norm)
    out = dict(margin=margin, lower_bound=np.full(n, np.nan), nearest_index=idx, perturbation=delta,
               perturbation_norm=margin.copy(), exact=np.zeros(n, dtype=bool),
               method=np.full(n, METHOD, dtype=object))
    missing = np.flatnonzero(~ok)
    if missing.size:  # the query-only boundary search for rows the solver left
        sub = Problem(X=X[missing], pred=prob.pred[missing], norm=prob.norm, weights=prob.weights,
                      lo=None if prob.lo is None else prob.lo[missing],
                      hi=None if prob.hi is None else prob.hi[missing])
        bb = solve_blackbox(form, sub, X_train=X_train, seed=seed, n_candidates=n_candidates)
        for key, value in bb.items():
            if key in out:
                out[key][missing] = value
    lower = certified_lower_bound(form, prob)
    m = out["margin"]
    out["lower_bound"] = np.where(np.isnan(m), lower, np.minimum(lower, m))
    return out
