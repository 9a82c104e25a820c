"""Counterfactuals through an invertible pipeline: project in feature space, map back, refine.

An invertible-linear model is ``x -> z = phi(x)`` followed by a hyperplane (or a softmax) on
``z`` (Zhuang et al., "Decision explanation and feature importance for invertible networks",
ICCVW 2019, sec. 3: the decision boundary of ``f = g o phi`` with linear ``g`` is the pull-back
of a hyperplane, so ``phi^{-1}`` of the projection of ``phi(x)`` onto the hyperplane is a point on
the input-space boundary). Here:

1. **Seed** (closed form in feature space): ``z* = z + (thr - s(z)) w / ||w||^2`` for binary
   models (``thr = logit P``, or 0 for the label alone), and the exact linear solver
   (:func:`invaudit.counterfactual.counterfactuals` on ``form.linear``) for multiclass ones;
   ``x_seed = phi^{-1}(z*)``, clipped into the box and the map's domain. It is a valid
   counterfactual, but the closest point in *feature* space is not the closest in *input*
   space.
2. **Refinement** in input space (:mod:`._nl_smooth`): boundary search and SQP with the
   analytic Jacobian ``W dphi/dx``, then SLSQP where the KKT residual is not yet small,
   started from the seed, from the row and from a pulled reference row; the closest point the
   estimator confirms is reported with its KKT residual (L2). The input-space
   problem is not convex, so the answer is a certified *local* optimum: ``exact`` is False.

Where ``phi`` has a bounded domain (QuantileTransformer's fitted range, log's positive axis),
the refinement stays strictly inside it (``domain_lower`` / ``domain_upper``), widened to contain
the row itself.
"""

from __future__ import annotations

import numpy as np

from invaudit.counterfactual._nl_common import Answers, Problem, pulled_points, qualifies
from invaudit.counterfactual._nl_smooth import ScoreModel, _logit, score_tau, solve_smooth

__all__ = ["solve_invertible", "domain_box", "feature_space_seed"]


def domain_box(form, X0, lower, upper):
    """The problem's box narrowed strictly inside the map's domain, widened to contain ``X0``."""
    D = X0.shape[1]
    dl = np.full(D, -np.inf) if form.domain_lower is None else np.asarray(form.domain_lower, float)
    du = np.full(D, np.inf) if form.domain_upper is None else np.asarray(form.domain_upper, float)
    with np.errstate(invalid="ignore"):
        il = np.where(np.isfinite(dl), dl + 1e-9 * (1.0 + np.abs(dl)), -np.inf)
        iu = np.where(np.isfinite(du), du - 1e-9 * (1.0 + np.abs(du)), np.inf)
    il = np.minimum(il, iu)
    lo = np.minimum(np.maximum(lower, il), X0)
    hi = np.maximum(np.minimum(upper, iu), X0)
    return lo, hi


def feature_space_seed(form, X0, t, P):
    """``x_seed = phi^{-1}(z*)`` with ``z*`` the closest target point to ``phi(x)`` in feature
    space (step 1 of the module docstring). NaN rows where there is none."""
    n, D = X0.shape
    lin = form.linear
    Z0 = form.forward(X0)
    Zs = np.full((n, D), np.nan)
    fin = np.all(np.isfinite(Z0), axis=1)
    if not np.any(fin):
        return Zs
    if lin.is_binary:
        w = lin.W[0]
        s0 = Z0 @ w + lin.b[0]
        sign = np.where(t == 1, 1.0, -1.0)
        thr = 0.0 if P is None else max(_logit(P), 0.0)
        need = thr + score_tau(s0[:, None]) - sign * s0
        step = np.maximum(need, 0.0) / float(w @ w) if float(w @ w) > 0 else np.full(n, np.nan)
        Zs = Z0 + (step * sign)[:, None] * w
    else:
        from invaudit.counterfactual.solve import counterfactuals as linear_counterfactuals

        idx = np.flatnonzero(fin)
        res = linear_counterfactuals(lin, Z0[idx], target=t[idx], confidence=P, norm="l2")
        Zs[idx] = res.x_cf
    Zs[~fin] = np.nan
    with np.errstate(all="ignore"):
        return form.inverse(Zs)


def solve_invertible(prob: Problem, *, polish: int = 1, maxiter: int = 100, n_pull: int = 1,
                     progress_offset: int = 0, progress_total=None):
    """Seed and refine every row (module docstring).

    Returns ``(answers, seed)`` with ``seed`` a dict of ``point`` (n, D) and ``verified`` (n,)
    for the feature-space seed mapped back.
    """
    form = prob.form
    model = ScoreModel(form)
    X0 = prob.X
    lo, hi = domain_box(form, X0, prob.lower, prob.upper)
    seed = feature_space_seed(form, X0, prob.target, prob.P)
    fin = np.all(np.isfinite(seed), axis=1)
    seed = np.where(fin[:, None], np.clip(np.nan_to_num(seed), lo, hi), np.nan)
    seed_ok = np.zeros(prob.n, dtype=bool)
    if np.any(fin):
        seed_ok[fin] = qualifies(form, seed[fin], prob.target[fin], prob.P)[0]
    starts = [seed[:, None, :]]
    if n_pull:
        starts.append(pulled_points(prob, n_pull))
    ans: Answers = solve_smooth(model, prob, lower=lo, upper=hi, starts=np.concatenate(starts, axis=1),
                                method="invertible-projection+sqp", maxiter=maxiter, polish=polish,
                                progress_offset=progress_offset, progress_total=progress_total)
    return ans, {"point": seed, "verified": seed_ok}
