"""Exact margins of linear classifiers (binary and multiclass, l2 / l1 / linf, boxes, weights).

Why the pairwise bound is the exact margin
------------------------------------------
With class scores ``s_k(x) = W_k . x + b_k`` (``W_full`` rows; every link predicts the argmax),
the region of the predicted class ``p`` is the polyhedron ``P_p = {z : s_p(z) >= s_j(z) for all
j}``, an intersection of halfspaces. The points predicted otherwise are (up to ties on the
boundary) its complement, the *union* of the open halfspaces ``H_j = {z : s_j(z) > s_p(z)}``.
The distance to a union is the minimum of the distances, so for an admissible set ``B`` (a box)

    margin(x) = min_j  dist(x, B ∩ H_j),

and each term is a projection onto one halfspace inside a box, which
:func:`~invaudit.margins._common.halfspace_step` solves exactly. Without a box it is the closed
form ``(s_p - s_j) / ||(W_p - W_j) / w||_q`` (``q`` the dual norm).

The distance from ``x`` to the region where a *specific* class ``j`` wins (the polyhedron
``P_j``) can be larger than ``dist(x, H_j)`` (another class ``k`` may beat ``j`` at the
projection point), but then that point lies in ``H_k`` and the segment to it crosses ``H_k``
earlier, so ``dist(x, H_k)`` is smaller: the minimiser ``j*`` always attains
``dist(x, P_j*) = dist(x, B ∩ H_j*)``. Hence no QP is needed for the margin; the tests check
this against SLSQP on each ``P_j`` and against brute force.

References
----------
Carreira-Perpiñán & Hada, "Inverse classification with logistic and softmax classifiers:
efficient optimization" (the linear counterfactual problem this specialises).
Moosavi-Dezfooli, Fawzi & Frossard (2016), "DeepFool", eq. (4): the same closed form for affine
multiclass classifiers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from invaudit.counterfactual._common import score_differences
from invaudit.margins._common import Problem, dual_norm, halfspace_step, is_other

# relative size of the step that puts a point strictly across the boundary, and its retries
_NUDGE = 1e-12
_ROUND = 4.0 * np.finfo(np.float64).eps
_NUDGE_GROWTH = 16.0
_NUDGE_TRIES = 8


def pairwise_norms(W: np.ndarray, weights: np.ndarray, norm: str) -> np.ndarray:
    """``N[k, j] = ||(W_j - W_k) / weights||_q`` (``q`` dual to ``norm``); one pass per class
    (direct differences, no Gram-matrix cancellation)."""
    K, d = W.shape
    if K * K * d <= 2_000_000:  # small: all differences at once
        return dual_norm(W[None, :, :] - W[:, None, :], weights, norm)
    N = np.empty((K, K))
    for k in range(K):
        N[k] = dual_norm(W - W[k], weights, norm)
    return N


def _closed_form_step(a: np.ndarray, r: np.ndarray, w: np.ndarray, norm: str):
    """``argmin ||w * delta||`` s.t. ``a . delta >= r`` without a box (``r > 0``), and its
    norm ``r / ||a / w||_q``; ``a`` is overwritten."""
    n = a.shape[0]
    unit = bool(np.all(w == 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        if norm == "l2":
            if not unit:
                a /= w
            nq = np.sqrt(np.einsum("ij,ij->i", a, a))
            a *= (r / (nq * nq))[:, None]
            if not unit:
                a /= w
            return a, r / nq
        if norm == "linf":
            nq = np.sum(np.abs(a) / w, axis=1)
            return np.sign(a) * ((r / nq)[:, None] / w), r / nq
        v = np.abs(a) / w
        i = np.argmax(v, axis=1)
        rows = np.arange(n)
        ai = a[rows, i]
        delta = np.zeros_like(a)
        delta[rows, i] = r / ai
        return delta, r * w[i] / np.abs(ai)


_JOINT_PREDICT = 1_000_000  # up to this many values, predict rows and perturbed rows in one call


def solve_linear(form, prob: Problem, progress=None) -> dict:
    """Exact margins for a :class:`~invaudit.models.base.LinearForm` (see module docstring).

    ``prob.pred`` may be None: the rows' classes then come from the estimator's ``predict`` in
    the same call that verifies the perturbations (computed for the form's own argmax; the rare
    rows where the two disagree, ties within rounding, are solved again for the estimator's class).

    Returns a dict of the MarginBatch arrays (without ``norm``), with ``predicted_index``.
    """
    W, b = np.asarray(form.W_full, dtype=np.float64), np.asarray(form.b_full, dtype=np.float64)
    S = prob.X @ W.T + b
    if prob.pred is not None:
        out = _solve(form, prob, W, S, progress, joint=False)
        out["predicted_index"] = prob.pred
        return out
    n, d = prob.X.shape
    joint = n * d <= _JOINT_PREDICT
    own = np.argmax(S, axis=1)
    pred = own if joint else np.asarray(form.predict_index(prob.X), dtype=np.intp)
    out = _solve(form, replace(prob, pred=pred), W, S, progress, joint=joint)
    est = out.pop("estimator_pred", pred)
    out["predicted_index"] = est
    again = np.flatnonzero(est != pred)
    if again.size:
        sub = Problem(X=prob.X[again], pred=est[again], norm=prob.norm, weights=prob.weights,
                      lo=None if prob.lo is None else prob.lo[again],
                      hi=None if prob.hi is None else prob.hi[again])
        fix = _solve(form, sub, W, S[again], None, joint=False)
        for key, val in fix.items():
            out[key][again] = val
    return out


def _solve(form, prob: Problem, W, S, progress, joint: bool) -> dict:
    X, p, norm, w = prob.X, prob.pred, prob.norm, prob.weights
    n, d = X.shape
    K = W.shape[0]
    rows = np.arange(n)
    estimator_pred = None
    sp = S[rows, p]
    # gaps s_p - s_j to near machine precision: a row close to a boundary loses its gap to the
    # rounding of the scores otherwise (and the margin is proportional to it)
    Sd, _, absS = score_differences(X, W, np.asarray(form.b_full, dtype=np.float64), p)
    gap = np.maximum(-Sd, 0.0)  # (n, K); 0 where the form ties (predict decided)

    # W_j - W_k as a (K, K, D) table when it is small (reused for the steps below)
    diff = W[:, None, :] - W[None, :, :] if K * K * d <= 2_000_000 else None
    N = pairwise_norms(W, w, norm) if diff is None else dual_norm(diff, w, norm)
    with np.errstate(divide="ignore"):
        inv = 1.0 / N  # inf on the diagonal and for identical weight rows: never reachable
    np.fill_diagonal(inv, 0.0)
    dist = gap * inv[p]
    dist[(dist == 0) & (inv[p] == 0)] = np.inf  # the class itself; identical rows (a tie p keeps)
    dist[np.isnan(dist)] = np.inf
    if prob.lo is None:
        j = np.argmin(dist, axis=1)
        margin = dist[rows, j]
        method = "linear-closed-form"
    else:
        # The unboxed distance to each halfspace is a lower bound on the boxed one: visit the
        # classes of each row in increasing order of it and stop once it exceeds the best so far.
        order = np.argsort(dist, axis=1, kind="stable")
        margin = np.full(n, np.inf)
        j = np.zeros(n, dtype=np.intp)
        for rank in range(K - 1):  # a loop over classes
            k = order[:, rank]
            todo = np.flatnonzero(dist[rows, k] < margin)
            if todo.size == 0:
                break
            kt = k[todo]
            a = W[kt] - W[p[todo]]
            _, dk, _ = halfspace_step(a, gap[todo, kt], w, norm, prob.lo[todo], prob.hi[todo])
            better = dk < margin[todo]
            idx = todo[better]
            margin[idx] = dk[better]
            j[idx] = kt[better]
            if progress is not None:
                progress(rank + 1, K - 1)
        method = "linear-box-exact"

    reachable = np.isfinite(margin)
    delta = None
    pnorm = np.full(n, np.nan)
    nearest = np.full(n, -1, dtype=np.intp)
    verified = np.zeros(n, dtype=bool)
    # nudge: aim a hair past the boundary so that the estimator's own predict leaves class p;
    # relative to the gap (the perturbation's norm then exceeds the margin by ~1e-12 of itself
    # at every scale) plus a few ulps of the scores' magnitude (the estimator's rounding)
    todo = np.flatnonzero(reachable)
    tau = _NUDGE * gap[rows, j] + _ROUND * absS
    tau = np.where(tau > 0, tau, _NUDGE)
    for _ in range(_NUDGE_TRIES):
        if todo.size == 0:
            break
        everything = todo.size == n  # plain views instead of fancy-index copies of (n, D) arrays
        a = diff[j[todo], p[todo]] if diff is not None else W[j[todo]] - W[p[todo]]
        r = gap[todo, j[todo]] + tau[todo]
        if prob.lo is None:
            dl, dist_t = _closed_form_step(a, r, w, norm)
        else:
            lo, hi = (prob.lo, prob.hi) if everything else (prob.lo[todo], prob.hi[todo])
            dl, dist_t, _ = halfspace_step(a, r, w, norm, lo, hi)
        ok_step = np.isfinite(dist_t)
        other = np.zeros(todo.size, dtype=bool)
        idx = np.zeros(todo.size, dtype=np.intp)
        if joint and everything and np.all(ok_step):
            # one call: the rows' own classes and the classes at x + delta (exactly as reported)
            both = form.predict_index(np.concatenate([X, X + dl]))
            estimator_pred, idx = both[:n], both[n:]
            other = idx != p
        elif np.all(ok_step):  # verify exactly x + delta as reported (float64 sum)
            other, idx = is_other(form, (X if everything else X[todo]) + dl, p[todo])
        elif np.any(ok_step):
            o, ix = is_other(form, X[todo[ok_step]] + dl[ok_step], p[todo[ok_step]])
            other[ok_step], idx[ok_step] = o, ix
        if everything and np.all(other):
            delta = dl
        else:
            if delta is None:
                delta = np.full((n, d), np.nan)
            delta[todo[other]] = dl[other]
        good = todo[other]
        nearest[good] = idx[other]
        pnorm[good] = dist_t[other]
        verified[good] = True
        todo = todo[~other]
        tau = tau * _NUDGE_GROWTH
    if delta is None:
        delta = np.full((n, d), np.nan)

    exact = verified | ~reachable
    # a row the estimator does not confirm means the form is not the estimator there: no bound
    lower = np.where(exact, margin, np.nan)
    marg = np.where(exact, margin, np.nan)
    meth = np.full(n, method, dtype=object)
    meth[~reachable] = method + " (unreachable)"
    meth[reachable & ~verified] = method + " (unverified: the estimator disagrees with the form)"
    out = dict(margin=marg, lower_bound=lower, nearest_index=nearest, perturbation=delta,
               perturbation_norm=pnorm, exact=exact, method=meth)
    if joint:
        out["estimator_pred"] = form.predict_index(X) if estimator_pred is None else estimator_pred
    return out
