"""Exact margins (and the exact core of counterfactuals) for quadratic forms: GaussianNB and
QuadraticDiscriminantAnalysis, alone or behind affine preprocessing.

One quadratic constraint, solved through its one-dimensional dual
------------------------------------------------------------------
With the metric ``||w * delta||_2`` write ``v = w * delta`` (frozen coordinates removed). The
score gap of class ``j`` over class ``c`` is a quadratic function of ``v``::

    g(v) = s_j - s_c - tau = v^T Q v + p^T v + g0,
    Q = 1/2 M^T (P_c - P_j) M,   p = M^T (P_c e_c - P_j e_j),   M = A W^-1,   e_k = z0 - m_k,

(``A``: the folded affine preprocessing, ``P_k``: class ``k``'s precision, ``tau``: 0, or the
log-odds ``log(P / (1 - P))`` of a confidence). The nearest point where ``j`` beats ``c`` is

    minimise ||v||^2  subject to  g(v) >= 0,

a QCQP with a single (non-convex) quadratic constraint. Such problems have no duality gap
(the S-lemma; Boyd & Vandenberghe, *Convex Optimization*, 2004, appendix B.1) and the optimum
is ``v(lam) = (I - lam Q)^-1 lam p / 2`` at the multiplier ``lam`` in ``[0, 1 / mu_max]`` (where
``I - lam Q`` stays positive semidefinite; ``mu_max`` the largest eigenvalue of ``Q``) with
``g(v(lam)) = 0``. In the eigenbasis of ``Q`` (``p~ = U^T p``)

    phi(lam) = g(v(lam)) = g0 + sum_i p~_i^2 lam (2 - lam mu_i) / (4 (1 - lam mu_i)^2)

is strictly increasing on that interval (``phi' = sum p~_i^2 / (2 (1 - lam mu_i)^3)``), from
``g0 < 0``; its root is found by bisection (parametrised by ``1 - lam mu_max`` near the pole, so
roots within ``1e-300`` of it keep full relative precision), vectorised over rows. The *hard
case* (``p~`` vanishing on the top eigenspace and ``phi`` still negative at the pole) puts
``lam = 1 / mu_max`` and completes ``v`` along the top eigenvector. Every answer carries the
dual value ``d(lam) = -lam g0 - lam^2 / 4 sum p~_i^2 / (1 - lam mu_i)`` at the bracket's
infeasible end, a certified lower bound on the squared distance; a row is exact when the
feasible end's distance is within ``1e-9`` of it. One eigendecomposition per class pair (and
set of frozen features): ``Q`` does not depend on the row.

Why the pairwise minimum is the exact margin
--------------------------------------------
A point predicted as ``k != c`` has ``s_k >= s_c``, so its distance is at least
``rho_k = dist(x0, {s_k >= s_c})``: the margin is at least ``min_k rho_k``. The minimiser's own
point has ``s_j* = s_c`` and, just beyond it, ``s_j* > s_c``: ``c`` is not the argmax there,
whichever class is. So ``margin = min_k rho_k`` exactly, for any number of classes.

Boxes and other norms
---------------------
Frozen features are removed from ``v`` (the problem keeps its single constraint). Other bounds
keep the answer exact when the unbounded optimum already lies inside them (it is then optimal
for the smaller set too); otherwise SLSQP from the clipped optimum gives a verified point,
``exact: false``, with the unbounded distance as the lower bound. For ``l1`` and ``linf`` the
``l2`` distance gives the lower bound (``||v||_1 >= ||v||_2``, ``||v||_inf >= ||v||_2 /
sqrt(D)``) and SLSQP on the smooth reformulation the verified point.
"""

from __future__ import annotations

import numpy as np

from invaudit.margins._common import Problem, finalize, weighted_norm

__all__ = ["QuadraticSolver", "solve_quadratic", "secular_solve"]

_ITERS = 400         # bisection steps (geometric while the bracket spans orders of magnitude)
_TAU_MIN = 1e-300    # smallest 1 - lam mu_max tried before declaring the hard case
_EXACT_RTOL = 1e-9   # primal-dual gap accepted as exact (relative distance)
_NUDGE = 1e-13       # score gap asked beyond the boundary for the reported point (relative)


def secular_solve(mu: np.ndarray, pt: np.ndarray, g0: np.ndarray):
    """``min ||v||^2 s.t. v^T Q v + p^T v + g0 >= 0`` in the eigenbasis of ``Q`` for many rows.

    Parameters
    ----------
    mu : (r,) eigenvalues of ``Q`` (ascending).
    pt : (n, r) ``p`` in the eigenbasis.
    g0 : (n,) constraint values at ``v = 0`` (rows with ``g0 >= 0`` get ``v = 0``).

    Returns
    -------
    vt : (n, r) the minimiser in the eigenbasis (NaN rows: infeasible).
    lower : (n,) certified lower bound on ``||v||`` (``inf``: certified infeasible).
    """
    n, r = pt.shape
    vt = np.zeros((n, r))
    lower = np.zeros(n)
    todo = np.flatnonzero(g0 < 0)
    if todo.size == 0:
        return vt, lower
    P2 = pt[todo] ** 2
    g = g0[todo]
    scale = float(np.max(np.abs(mu))) if r else 0.0
    mmax = float(mu[-1]) if r else 0.0
    if r and mmax > 0:
        nu = mu / mmax
        gap = (mmax - mu) / mmax  # exactly 0 on the top eigenvalue

        def parts(tau):
            lam = (1.0 - tau) / mmax
            den = gap[None, :] + tau[:, None] * nu[None, :]
            return lam, den

        def phi(tau):
            lam, den = parts(tau)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.sum(np.where(P2 > 0, P2 * (1.0 + den) / den ** 2, 0.0), axis=1)
            return g + 0.25 * lam * s

        a = np.full(todo.size, _TAU_MIN)   # feasible side (phi >= 0), small tau
        b = np.ones(todo.size)             # infeasible side (phi < 0), lam = 0
        fa = phi(a)
        hard = ~(fa >= 0)
        for _ in range(_ITERS):
            mid = np.where(b > 4.0 * a, np.sqrt(a * b), 0.5 * (a + b))
            fm = phi(mid)
            pos = fm >= 0
            a = np.where(pos, mid, a)
            b = np.where(pos, b, mid)
            if np.all((b - a) <= 2e-16 * b):
                break
        lam_a, den_a = parts(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            V = np.where(P2 > 0, lam_a[:, None] * pt[todo] / (2.0 * den_a), 0.0)
        lam_b, den_b = parts(b)
        with np.errstate(divide="ignore", invalid="ignore"):
            dual = -lam_b * g - 0.25 * lam_b ** 2 * np.sum(np.where(P2 > 0, P2 / den_b, 0.0), axis=1)
        if np.any(hard):
            # p~ vanishes (numerically) on the top eigenspace: lam = 1 / mu_max, v completed
            # along the top eigenvector so that g(v) = 0 exactly
            h = np.flatnonzero(hard)
            top = gap <= 1e-14
            lam = 1.0 / mmax
            with np.errstate(divide="ignore", invalid="ignore"):
                Vh = np.where(top[None, :], 0.0, lam * pt[todo][h] / (2.0 * np.where(top, 1.0, gap)[None, :]))
            rest = g[h] + np.sum(mu[None, :] * Vh ** 2 + pt[todo][h] * Vh, axis=1)
            i_top = int(np.flatnonzero(top)[-1])
            Vh[:, i_top] = np.sqrt(np.maximum(-rest, 0.0) / mmax)
            V[h] = Vh
            with np.errstate(divide="ignore", invalid="ignore"):
                dual[h] = -lam * g[h] - 0.25 * lam ** 2 * np.sum(
                    np.where(top[None, :] | (P2[h] == 0), 0.0, P2[h] / np.where(top, 1.0, gap)[None, :]), axis=1)
        vt[todo] = V
        lower[todo] = np.sqrt(np.maximum(dual, 0.0))
        return vt, lower
    # mu_max <= 0: {g >= 0} is convex; lam ranges over [0, inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        def phi_l(lam):
            den = 1.0 - lam[:, None] * mu[None, :]
            return g + 0.25 * lam * np.sum(P2 * (1.0 + den) / den ** 2, axis=1)

        a = np.ones(todo.size)
        for _ in range(2000):  # grow the feasible end
            fa = phi_l(a)
            grow = ~(fa >= 0) & (a < 1e300)
            if not grow.any():
                break
            a = np.where(grow, a * 16.0, a)
        feasible = phi_l(a) >= 0
        b = np.zeros(todo.size)
        for _ in range(_ITERS):
            mid = np.where(b > 0, np.where(a > 4.0 * b, np.sqrt(a * b), 0.5 * (a + b)), 0.25 * a)
            fm = phi_l(mid)
            pos = fm >= 0
            a = np.where(pos, mid, a)
            b = np.where(pos, b, mid)
        den_a = 1.0 - a[:, None] * mu[None, :]
        V = a[:, None] * pt[todo] / (2.0 * den_a)
        den_b = 1.0 - b[:, None] * mu[None, :]
        dual = -b * g - 0.25 * b ** 2 * np.sum(P2 / den_b, axis=1)
    V[~feasible] = np.nan
    dual = np.where(feasible, dual, np.inf)
    vt[todo] = V
    lower[todo] = np.sqrt(np.maximum(dual, 0.0))
    del scale
    return vt, lower


class QuadraticSolver:
    """Per-run precomputation for one quadratic form and one set of metric weights: the maps and
    precisions in input units, and the eigendecomposition of ``Q`` per (class pair, frozen set)
    on first use."""

    def __init__(self, form, weights: np.ndarray):
        self.form = form
        self.w = np.asarray(weights, dtype=np.float64)
        self.A = form.input_map                      # (dz, D)
        self.P = [form.precision(k) for k in range(len(form.classes))]
        self._eig = {}

    def _pair(self, c: int, j: int, free: np.ndarray):
        key = (c, j, free.tobytes())
        if key not in self._eig:
            M = self.A[:, free] / self.w[free]
            Q = 0.5 * (M.T @ (self.P[c] - self.P[j]) @ M)
            Q = 0.5 * (Q + Q.T)
            mu, U = np.linalg.eigh(Q)
            self._eig[key] = (M, mu, U)
        return self._eig[key]

    def pair(self, X: np.ndarray, scores: np.ndarray, c: int, j: int, tau: float, free: np.ndarray,
             nudge: float = 0.0):
        """Nearest ``delta`` (input units, zero on frozen features) with ``s_j - s_c >= tau`` for
        rows ``X`` sharing the pair and the free set.

        Returns ``(delta (n, D), dist (n,), dist0 (n,), lower (n,))``: ``delta`` solves the
        problem asking ``nudge`` (relative to the scores) beyond ``tau``, ``dist = ||w * delta||_2``;
        ``dist0`` is the distance of the feasible point of the problem without the nudge and
        ``lower`` a certified lower bound on it (``inf`` when class ``j`` can never beat ``c`` by
        ``tau``): ``dist0 - lower`` is the primal-dual gap.
        """
        n, D = X.shape
        M, mu, U = self._pair(c, j, free)
        Z = self.form.transform(X)
        ec = Z - self.form.means[c]
        ej = Z - self.form.means[j]
        p = (ec @ self.P[c] - ej @ self.P[j]) @ M       # (n, F)
        gap0 = scores[:, j] - scores[:, c] - tau
        pad = nudge * (1.0 + np.abs(scores[:, j]) + np.abs(scores[:, c]))
        pt = p @ U
        vt0, low = secular_solve(mu, pt, gap0)
        vt = secular_solve(mu, pt, gap0 - pad)[0] if nudge else vt0
        with np.errstate(invalid="ignore"):
            dist0 = np.sqrt(np.sum(vt0 * vt0, axis=1))
        dist0 = np.where(np.isfinite(dist0), dist0, np.inf)
        v = vt @ U.T
        delta = np.zeros((n, D))
        delta[:, free] = v / self.w[free]
        delta[~np.all(np.isfinite(v), axis=1)] = np.nan
        dist = np.where(np.all(np.isfinite(delta), axis=1), np.sqrt(np.sum(v * v, axis=1)), np.inf)
        return delta, dist, dist0, low


def solve_quadratic(form, prob: Problem, progress=None) -> dict:
    """Margins of a quadratic form (module docstring)."""
    n, D = prob.X.shape
    X = prob.X
    K = len(form.classes)
    lo, hi = prob.box()
    free_all = ~((lo == 0) & (hi == 0))
    scores = form.scores(X)
    solver = QuadraticSolver(form, prob.weights)
    best = np.full(n, np.inf)
    best0 = np.full(n, np.inf)
    best_low = np.full(n, np.inf)
    best_delta = np.full((n, D), np.nan)
    best_j = np.full(n, -1, dtype=np.intp)
    masks, inv = np.unique(free_all, axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    done = 0
    for g, free in enumerate(masks):  # a loop over sets of frozen features (usually one)
        rows_g = np.flatnonzero(inv == g)
        for c in np.unique(prob.pred[rows_g]):  # loops over class pairs
            rows = rows_g[prob.pred[rows_g] == c]
            for j in range(K):
                if j == c:
                    continue
                if not free.any():
                    continue
                delta, dist, dist0, low = solver.pair(X[rows], scores[rows], int(c), j, 0.0, free, nudge=_NUDGE)
                better = dist < best[rows]
                r = rows[better]
                best[r] = dist[better]
                best0[r] = dist0[better]
                best_delta[r] = delta[better]
                best_j[r] = j
                best_low[rows] = np.minimum(best_low[rows], low)
            done += rows.size
            if progress is not None:
                progress(done, n)
    # the L2 answer is exact when it lies inside the box; the other norms only bound it
    inside = np.all(np.isfinite(best_delta), axis=1)
    inside[inside] = np.all((best_delta[inside] >= lo[inside] - 1e-12 * np.abs(lo[inside]))
                            & (best_delta[inside] <= hi[inside] + 1e-12 * np.abs(hi[inside])), axis=1)
    l2_low = np.where(np.isfinite(best_low), best_low, np.inf)
    delta_v, ok, idx = finalize(form, X, X + np.clip(np.nan_to_num(best_delta), lo, hi) * 1.0, prob.pred)
    ok &= np.all(np.isfinite(best_delta), axis=1)
    margin = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    exact = np.zeros(n, dtype=bool)
    method = np.full(n, "quadratic dual (one-dimensional, exact)", dtype=object)
    pert = np.full((n, D), np.nan)
    pnorm = np.full(n, np.nan)
    nearest = np.full(n, -1, dtype=np.intp)
    unreachable = ~np.isfinite(l2_low) | ~free_all.any(axis=1)
    if prob.norm == "l2":
        # exact: the un-nudged optimum of the winning pair meets the (global) lower bound, and the
        # nudged point beside it is verified
        with np.errstate(invalid="ignore"):
            cert = ok & inside & (best0 - l2_low <= _EXACT_RTOL * np.maximum(best0, 1e-300) + 1e-300)
        margin[cert] = l2_low[cert]
        lower[cert] = l2_low[cert]
        exact[cert] = True
    else:
        cert = np.zeros(n, dtype=bool)
    pert[ok] = delta_v[ok]
    pnorm[ok] = weighted_norm(delta_v[ok], prob.weights, prob.norm)
    nearest[ok] = idx[ok]
    # certified unreachable: no class can ever beat the prediction (dual unbounded) or all frozen
    margin[unreachable] = np.inf
    lower[unreachable] = np.inf
    exact[unreachable] = True
    method[unreachable] = "quadratic dual (exact): unreachable"
    rest = np.flatnonzero(~cert & ~unreachable)
    if rest.size:
        nfree = np.maximum(free_all[rest].sum(axis=1), 1)
        lb = l2_low[rest] if prob.norm != "linf" else l2_low[rest] / np.sqrt(nfree)
        up_d, up_ok, up_idx = _refine(form, prob, rest, best_delta[rest], best_j[rest], lo[rest], hi[rest])
        use = up_ok & (~ok[rest] | (weighted_norm(np.nan_to_num(up_d), prob.weights, prob.norm)
                                    < np.where(ok[rest], pnorm[rest], np.inf)))
        rr = rest[use]
        pert[rr] = up_d[use]
        pnorm[rr] = weighted_norm(up_d[use], prob.weights, prob.norm)
        nearest[rr] = up_idx[use]
        have = np.isfinite(pnorm[rest])
        margin[rest] = np.where(have, pnorm[rest], np.nan)
        lower[rest] = lb
        method[rest] = np.where(have, "quadratic dual bound + SLSQP (verified upper bound)",
                                "quadratic dual bound (no verified point)")
    return dict(margin=margin, lower_bound=lower, nearest_index=nearest, perturbation=pert,
                perturbation_norm=pnorm, exact=exact, method=method)


def _refine(form, prob: Problem, rows, start_delta, best_j, lo, hi):
    """Verified points for rows the dual does not settle (a box cuts the optimum, or an l1 / linf
    metric): SLSQP on the smooth problem from the clipped dual optimum, then the estimator's own
    check. Returns ``(delta, ok, idx)``."""
    from invaudit.counterfactual._nl_quadratic import slsqp_points

    X = prob.X[rows]
    c = prob.pred[rows]
    starts = np.clip(np.nan_to_num(start_delta), lo, hi)[:, None, :]
    pts, ok = slsqp_points(form, X, starts, c, best_j, tau=0.0, lower=X + lo, upper=X + hi,
                           weights=prob.weights, norm=prob.norm, pairwise=True)
    delta, ok2, idx = finalize(form, X, np.where(ok[:, None], pts, np.nan), c)
    return delta, ok & ok2, idx
