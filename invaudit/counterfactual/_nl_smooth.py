"""Counterfactuals for forms with exact input gradients: boundary search and SQP from several
starts, keeping the closest point the estimator confirms.

Problem, per row ``x0`` and target ``t``::

    minimise    || w * (x - x0) ||_p
    subject to  lower <= x <= upper,   c(s(x)) >= 0,

where ``s(x)`` are the model's class scores (:class:`ScoreModel`) and ``c`` the target
constraints (:func:`target_constraints`): ``s_t - s_j >= tau`` for every other class ``j`` (the
target is predicted) and, with a confidence ``P``, ``log p_t(s) >= log P``.

1. Boundary search (:func:`fab_search`, vectorised over rows and starts): FAB's steps (Croce &
   Hein, ICML 2020) onto the tangent polyhedron of the target constraints, from the row itself
   and from the caller's starts (pulled training rows, a feature-space projection).
2. SQP from every point the search found (:func:`sqp`): the closest point to the row inside the
   box and the tangent polyhedron (:func:`qp_l2_box` for L2; the exact half-space projection
   for one binding constraint in every norm), kept feasible by backtracking. For a ReLU
   network the step is exact within an activation region.
3. SLSQP (Kraft 1988) with analytic gradients polishes the best point: for L1 / Linf always (as
   smooth programs with auxiliary variables ``u >= |w (x - x0)|``), for L2 where the KKT
   residual is above 1e-8 on a smooth model.
4. Every candidate is checked by the estimator's own ``predict`` / ``predict_proba``; the
   closest confirmed one is kept. For L2 the relative KKT residual of the kept point is computed
   (multipliers by NNLS on the active constraints); it certifies a *local* optimum only (the
   problem is not convex), so answers are never called exact.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from invaudit.counterfactual._binary import solve_binary
from invaudit.counterfactual._nl_common import (
    Answers,
    Problem,
    distance,
    dual_norm,
    qualifies,
)
from invaudit.errors import InputError

__all__ = ["ScoreModel", "target_constraints", "fab_search", "sqp", "qp_l2_box",
           "solve_smooth", "kkt_residual_l2", "rank_other_classes"]

_HAIR = 1e-9


# --- scores and their input Jacobians -------------------------------------------------------------

class ScoreModel:
    """Class scores ``s(x)`` ``(n, M)`` and their input Jacobian ``(n, M, D)`` for the forms with
    gradients: linear (``W x + b``), invertible-linear (``W phi(x) + b``; ``J = W dphi/dx``) and
    differentiable (the network's logits, by exact backpropagation).

    ``link`` is the link from scores to probabilities (``sigmoid`` / ``softmax`` / ``ovr`` /
    ``none``); binary models have ``M == 1`` (a positive score means class index 1).
    """

    def __init__(self, form):
        self.form = form
        kind = form.kind
        if kind == "linear":
            self._lin = form
        elif kind == "invertible-linear":
            self._lin = form.linear
        elif kind == "differentiable":
            self._lin = None
        else:
            raise InputError(f"the {kind} form has no input gradients.")
        self.kind = kind
        self.link = form.link if self._lin is None else self._lin.link
        self.K = int(form.n_classes)
        self.M = 1 if self.K == 2 and (self._lin is None or self._lin.is_binary) else self.K
        if self._lin is not None:
            self.W, self.b = self._lin.W, self._lin.b
            self.M = self.W.shape[0]

    def scores(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.kind == "linear":
            return X @ self.W.T + self.b
        if self.kind == "invertible-linear":
            return self.form.forward(X) @ self.W.T + self.b
        return self.form.logits(X)

    def scores_jac(self, X: np.ndarray):
        """``(S, J)``: scores ``(n, M)`` and ``J[i, m] = d S[i, m] / d X[i]`` ``(n, M, D)``."""
        X = np.asarray(X, dtype=np.float64)
        n, D = X.shape
        if self.kind == "linear":
            return X @ self.W.T + self.b, np.broadcast_to(self.W, (n,) + self.W.shape)
        if self.kind == "invertible-linear":
            S = self.form.forward(X) @ self.W.T + self.b
            Jphi = self.form.jacobian(X)
            if Jphi.ndim == 2:
                Jphi = Jphi[None]
            return S, np.einsum("md,nde->nme", self.W, Jphi)
        S = self.form.logits(X)
        if self.M == 1:
            return S, self.form.logit_grad(X, 1)[:, None, :]
        rep = np.repeat(X, self.M, axis=0)
        ks = np.tile(np.arange(self.M), n)
        return S, self.form.logit_grad(rep, ks).reshape(n, self.M, D)

    def log_proba(self, S: np.ndarray) -> np.ndarray:
        """``(n, K)`` log-probabilities from scores through the link."""
        from scipy.special import log_expit, log_softmax  # lazy: scipy.special is ~1 s of start-up

        if self.M == 1:
            s = S[:, 0]
            return np.column_stack([log_expit(-s), log_expit(s)])
        if self.link == "ovr":
            ls = log_expit(S)
            mx = ls.max(axis=1, keepdims=True)
            return ls - (mx + np.log(np.exp(ls - mx).sum(axis=1, keepdims=True)))
        return log_softmax(S, axis=1)

    def log_proba_score_grad(self, S: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``(n, M)``: ``d log p_t / d S`` through the link."""
        from scipy.special import expit, softmax

        n = S.shape[0]
        r = np.arange(n)
        if self.M == 1:
            s = S[:, 0]
            return np.where(t == 1, expit(-s), -expit(s))[:, None]
        if self.link == "ovr":
            sig = expit(S)
            q = sig / sig.sum(axis=1, keepdims=True)
            dls = 1.0 - sig
            g = -q * dls
            g[r, t] += dls[r, t]
            return g
        g = -softmax(S, axis=1)
        g[r, t] += 1.0
        return g

    def margin_grad(self, X: np.ndarray, t: np.ndarray, o: np.ndarray) -> np.ndarray:
        """``(n, D)`` gradient of the target's log-odds against the original class:
        ``sign * s`` for binary models, ``s_t - s_o`` otherwise."""
        _, J = self.scores_jac(X)
        if self.M == 1:
            return np.where(t == 1, 1.0, -1.0)[:, None] * J[:, 0, :]
        r = np.arange(X.shape[0])
        return J[r, t] - J[r, o]


# --- target constraints -------------------------------------------------------------------------

def _logit(P: float) -> float:
    return float(np.log(P) - np.log1p(-P))


def target_constraints(model: ScoreModel, S, J, t, P, tau):
    """Constraint values ``C`` ``(n, m)`` (``>= 0`` means the target holds) and their input
    gradients ``G`` ``(n, m, D)`` (``None`` when ``J`` is None: values only).

    Binary: ``sign(t) * s - max(logit P, 0) - tau``. Multiclass: ``s_t - s_j - tau`` for every
    ``j != t`` (left out when ``P > 1/2``, where ``p_t >= P`` already makes ``t`` the argmax) and
    ``log p_t - log P - tau`` with a confidence.
    """
    n = S.shape[0]
    r = np.arange(n)
    if model.M == 1:
        sign = np.where(t == 1, 1.0, -1.0)
        thr = 0.0 if P is None else max(_logit(P), 0.0)
        C = (sign * S[:, 0] - thr - tau)[:, None]
        G = None if J is None else (sign[:, None] * J[:, 0, :])[:, None, :]
        return C, G
    K = model.K
    cs, gs = [], []
    if P is None or P <= 0.5:
        j = np.arange(K - 1)[None, :]
        others = j + (j >= t[:, None])
        cs.append(S[r, t][:, None] - np.take_along_axis(S, others, axis=1) - tau[:, None])
        if J is not None:
            gs.append(J[r, t][:, None, :] - J[r[:, None], others])
    if P is not None:
        lp = model.log_proba(S)[r, t]
        cs.append((lp - np.log(P) - 1e-3 * tau)[:, None])
        if J is not None:
            dS = model.log_proba_score_grad(S, t)
            gs.append(np.einsum("nm,nmd->nd", dS, J)[:, None, :])
    return np.concatenate(cs, axis=1), (None if J is None else np.concatenate(gs, axis=1))


def score_tau(S0: np.ndarray) -> np.ndarray:
    """The hair of margin aimed inside the target region (relative to the scores' size)."""
    return _HAIR * (1.0 + np.abs(S0).max(axis=1))


def rank_other_classes(model: ScoreModel, prob: Problem, n_keep: int) -> np.ndarray:
    """``(n, K)`` bool: the ``n_keep`` classes other than the prediction whose linearised distance
    ``max(0, s_o - s_k) / ||grad(s_k - s_o)||_q`` is smallest (all other classes for binary)."""
    n, K = prob.n, model.K
    keep = np.ones((n, K), dtype=bool)
    keep[np.arange(n), prob.orig] = False
    if K == 2 or n_keep >= K - 1:
        return keep
    S, J = model.scores_jac(prob.X)
    r = np.arange(n)
    o = prob.orig
    gap = np.maximum(S[r, o][:, None] - S, 0.0)
    G = J - J[r, o][:, None, :]
    q = dual_norm(G, prob.weights, prob.norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(q > 0, gap / q, np.inf)
    est[r, o] = np.inf
    order = np.argsort(est, axis=1, kind="stable")[:, :n_keep]
    keep[:] = False
    np.put_along_axis(keep, order, True, axis=1)
    return keep


# --- the exact L2 step: projection onto linearised constraints and a box ----------------------

def qp_l2_box(A, r, lz, uz, *, iters: int = 80):
    """Exact ``argmin 1/2 ||z||^2`` s.t. ``A z >= r`` and ``lz <= z <= uz``, for a batch of small
    problems (``A`` is ``(N, m, p)`` with ``m`` a handful of constraints).

    The dual is a concave piecewise quadratic in ``nu >= 0``::

        D(nu) = nu . r + sum_i (1/2 z_i^2 - v_i z_i),   v = A^T nu,   z(nu) = clip(v, lz, uz),

    with gradient ``r - A z(nu)`` and generalised Hessian ``-A_F A_F^T`` over the coordinates
    strictly inside the box; it is maximised by Bertsekas' projected Newton method with an
    Armijo search along the projection arc (Bertsekas, "Projected Newton methods for
    optimization problems with simple constraints", SIAM J. Control Optim. 20(2), 1982).

    Returns ``(z, nu, ok)``; ``ok`` where the primal point satisfies the constraints to a relative
    1e-10 (False also when the problem is infeasible: the dual then grows without bound).
    """
    N, m, p = A.shape
    rscale = 1.0 + np.abs(r).max(axis=1)
    an = np.einsum("nmp,nmp->nm", A, A)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(an > 0, np.maximum(r, 0.0) / an, 0.0) / m

    z, v, Dv, g = state_sub(A, r, lz, uz, nu)
    active = np.ones(N, dtype=bool)
    eye = np.eye(m)[None]
    for _ in range(iters):
        viol = np.maximum(g, 0.0).max(axis=1) / rscale
        comp = np.abs(nu * np.minimum(g, 0.0)).max(axis=1) / np.maximum(1.0, np.abs(Dv))
        done = (viol <= 1e-13) & (comp <= 1e-13)
        active &= ~done
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        Ai, nui, gi, vi = A[idx], nu[idx], g[idx], v[idx]
        free = ((vi > lz[idx]) & (vi < uz[idx])).astype(np.float64)
        B = np.einsum("nmp,np,nkp->nmk", Ai, free, Ai)
        eps = np.minimum(1e-9 * (1.0 + nui.max(axis=1)), 1e-3)
        fixed = (nui <= eps[:, None]) & (gi < 0)
        keep = ~fixed
        Br = B * (keep[:, :, None] & keep[:, None, :])
        dg = np.einsum("nii->ni", B)
        Br = Br + eye * np.where(fixed, np.maximum(dg, 1.0), 0.0)[:, :, None]
        reg = 1e-12 * np.maximum(dg.max(axis=1), 1e-300)
        Br = Br + reg[:, None, None] * eye
        try:
            d = np.linalg.solve(Br, gi[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            d = np.stack([np.linalg.lstsq(Br[k], gi[k], rcond=None)[0] for k in range(len(idx))])
        d = np.where(np.isfinite(d), d, gi / np.maximum(dg, 1e-300))
        alpha = np.ones(len(idx))
        pending = np.ones(len(idx), dtype=bool)
        new_nu = nui.copy()
        for _ls in range(40):
            pi = np.flatnonzero(pending)
            if len(pi) == 0:
                break
            trial = np.maximum(nui[pi] + alpha[pi, None] * d[pi], 0.0)
            zt, vt, Dt, gt = state_sub(A[idx[pi]], r[idx[pi]], lz[idx[pi]], uz[idx[pi]], trial)
            gain = Dt - Dv[idx[pi]]
            pred = np.einsum("nm,nm->n", gi[pi], trial - nui[pi])
            ok = gain >= 1e-4 * pred - 1e-15 * (1.0 + np.abs(Dv[idx[pi]]))
            acc = pi[ok]
            new_nu[acc] = trial[ok]
            pending[acc] = False
            alpha[pending] *= 0.5
        stalled = pending
        nu[idx] = new_nu
        zz, vv, DD, gg = state_sub(Ai, r[idx], lz[idx], uz[idx], nu[idx])
        z[idx], v[idx], Dv[idx], g[idx] = zz, vv, DD, gg
        active[idx[stalled]] = False
        # an unbounded dual (infeasible primal): the multipliers explode
        active[idx[~np.all(np.isfinite(nu[idx]), axis=1) | (nu[idx].max(axis=1) > 1e30)]] = False
    viol = np.maximum(g, 0.0).max(axis=1) / rscale
    ok = np.all(np.isfinite(z), axis=1) & (viol <= 1e-10)
    return z, nu, ok


def state_sub(A, r, lz, uz, nu):
    v = np.einsum("nm,nmp->np", nu, A)
    z = np.clip(v, lz, uz)
    Dv = np.einsum("nm,nm->n", nu, r) + np.einsum("np,np->n", 0.5 * z - v, z)
    g = r - np.einsum("nmp,np->nm", A, z)
    return z, v, Dv, g


def project_tangent(X_from, X_at, C, G, lower, upper, w, norm):
    """Closest point to ``X_from`` (weighted ``norm``) in the box and in the tangent polyhedron
    ``C + G (x - X_at) >= 0`` of the target constraints at ``X_at``.

    L2: all constraints (:func:`qp_l2_box`). L1 / Linf: the most binding constraint only (its
    exact half-space projection, :func:`solve_binary`). Returns ``(points, ok)``.
    """
    N, D = X_from.shape
    lz = np.minimum(w * (lower - X_from), 0.0)
    uz = np.maximum(w * (upper - X_from), 0.0)
    r = -C - np.einsum("nmd,nd->nm", G, X_from - X_at)
    A = G / w
    out = X_from.copy()
    if norm == "l2" and A.shape[1] > 1:
        z, _, ok = qp_l2_box(A, r, lz, uz)
        out = X_from + np.nan_to_num(z) / w
        return out, ok
    if A.shape[1] > 1:
        q = dual_norm(G, w, norm)
        with np.errstate(divide="ignore", invalid="ignore"):
            j = np.argmax(np.where(q > 0, r / q, -np.inf), axis=1)
    else:
        j = np.zeros(N, dtype=np.intp)
    rr = np.arange(N)
    a, rj = A[rr, j], r[rr, j]
    ok = np.ones(N, dtype=bool)
    need = rj > 0
    if np.any(need):
        z, okk, _, _ = solve_binary(a[need], rj[need], lz[need], uz[need], norm)
        good = okk & np.all(np.isfinite(z), axis=1)
        ii = np.flatnonzero(need)
        out[ii[good]] = X_from[ii[good]] + z[good] / w
        ok[ii[~good]] = False
    return out, ok


def fab_search(model: ScoreModel, prob: Problem, rows, starts, lower, upper, *, iters: int = 40,
               eta: float = 1.05, alpha_max: float = 0.1, beta: float = 0.9):
    """FAB-style boundary search from many starts at once (Croce & Hein, "Minimally distorted
    adversarial examples with a fast adaptive boundary attack", ICML 2020, sec. 3, eqs. 9-10),
    targeted, with the projection onto the tangent polyhedron of all target constraints.

    Each step mixes the projection of the current point and the projection of the row onto the
    linearised target region, ``x <- (1 - a)(x + eta d_x) + a (x0 + eta d_0)``,
    ``a = min(|d_x| / (|d_x| + |d_0|), alpha_max)``; once the point satisfies the constraints
    it is recorded and pulled back toward the row, ``x <- x0 + beta (x - x0)``.

    Returns ``(best, best_d)``: the closest iterate of each start that satisfies the model's
    constraints (NaN / inf where none did).
    """
    X0 = prob.X[rows]
    N, D = X0.shape
    w = prob.weights
    t = prob.target[rows]
    lo, hi = lower[rows], upper[rows]
    tau = score_tau(model.scores(X0))
    x = np.clip(np.array(starts, dtype=np.float64), lo, hi)
    best = np.full((N, D), np.nan)
    best_d = np.full(N, np.inf)
    for _ in range(iters):
        S, J = model.scores_jac(x)
        C, G = target_constraints(model, S, J, t, prob.P, tau)
        feas = np.all(C >= 0, axis=1)
        d = distance(x - X0, w, prob.norm)
        imp = feas & (d < best_d)
        best[imp] = x[imp]
        best_d[imp] = d[imp]
        p_x, ok_x = project_tangent(x, x, C, G, lo, hi, w, prob.norm)
        p_0, ok_0 = project_tangent(X0, x, C, G, lo, hi, w, prob.norm)
        dx = p_x - x
        d0 = p_0 - X0
        nx = distance(dx, w, prob.norm)
        n0 = distance(d0, w, prob.norm)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(nx + n0 > 0, np.minimum(nx / (nx + n0), alpha_max), 0.0)
        a = np.where(ok_0, a, 0.0)
        new = (1.0 - a)[:, None] * (x + eta * dx) + a[:, None] * (X0 + eta * d0)
        new = np.where(ok_x[:, None] | ok_0[:, None], new, x)
        # feasible points are recorded next round; step back toward the row from them
        new = np.where(feas[:, None], X0 + beta * (x - X0), new)
        x = np.clip(new, lo, hi)
    S, J = model.scores_jac(x)
    C, _ = target_constraints(model, S, J, t, prob.P, tau)
    feas = np.all(C >= 0, axis=1)
    d = distance(x - X0, w, prob.norm)
    imp = feas & (d < best_d)
    best[imp] = x[imp]
    best_d[imp] = d[imp]
    return best, best_d


def sqp(model: ScoreModel, prob: Problem, rows, starts, lower, upper, *, iters: int = 60):
    """SQP from many starts at once (``rows[k]`` is the row of start ``k``), in the problem's norm.

    Each step moves to the closest point to the row (in the weighted norm) inside the box and the
    tangent polyhedron of the target constraints at the current point
    (:func:`project_tangent`: exact for L2 with all constraints, and for every norm when one
    constraint binds; L1 / Linf with several constraints use the most binding one). It is an
    SQP step whose model of the objective is the objective itself (the constraints' curvature is
    left out; it is zero almost everywhere for ReLU networks, where the step is then exact within
    an activation region). From a point that satisfies the constraints a step is accepted only
    if it keeps them and gets closer (backtracking); from one that does not, on the l1
    exact-penalty merit ``f + mu sum max(0, -c_j)`` with ``mu`` above the multipliers (Han, "A
    globally convergent method for nonlinear programming", JOTA 22, 1977; L2 only, the other
    norms accept steps that reduce the violation).

    Returns ``(best, best_f)``: the closest iterate of each start that satisfies the model's
    constraints and its objective (``1/2 d^2`` for L2, ``d`` otherwise); NaN / inf where none did.
    """
    X0 = prob.X[rows]
    N, D = X0.shape
    w = prob.weights
    norm = prob.norm
    t = prob.target[rows]
    lo, hi = lower[rows], upper[rows]
    tau = score_tau(model.scores(X0))
    x = np.clip(np.array(starts, dtype=np.float64), lo, hi)
    best = np.full((N, D), np.nan)
    best_f = np.full(N, np.inf)
    mu = np.zeros(N)
    active = np.ones(N, dtype=bool)

    def evaluate(xs, idx):
        S, J = model.scores_jac(xs)
        return target_constraints(model, S, J, t[idx], prob.P, tau[idx])

    def objective(xs, idx):
        if norm == "l2":
            return 0.5 * np.sum((w * (xs - X0[idx])) ** 2, axis=1)
        return distance(xs - X0[idx], w, norm)

    def merit(xs, C, idx):
        f = objective(xs, idx)
        viol = np.maximum(-C, 0.0).sum(axis=1)
        return f, (f + mu[idx] * viol) if norm == "l2" else viol

    C, G = evaluate(x, np.arange(N))
    for _ in range(iters):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        xi, Ci, Gi = x[idx], C[idx], G[idx]
        f, phi = merit(xi, Ci, idx)
        feas = np.all(Ci >= 0, axis=1)
        imp = feas & (f < best_f[idx])
        best[idx[imp]] = xi[imp]
        best_f[idx[imp]] = f[imp]
        if norm == "l2" and Gi.shape[1] > 1:
            lz = np.minimum(w * (lo[idx] - X0[idx]), 0.0)
            uz = np.maximum(w * (hi[idx] - X0[idx]), 0.0)
            r = -Ci - np.einsum("nmd,nd->nm", Gi, X0[idx] - xi)
            z, nu, okq = qp_l2_box(Gi / w, r, lz, uz)
            x_qp = X0[idx] + np.nan_to_num(z) / w
            mu[idx] = np.maximum(mu[idx], 1.5 * np.nan_to_num(nu).max(axis=1) + 1e-12)
        else:
            x_qp, okq = project_tangent(X0[idx], xi, Ci, Gi, lo[idx], hi[idx], w, norm)
            if norm == "l2":  # one constraint: its multiplier from the free coordinates
                a0 = Gi[:, 0] / w
                z = w * (x_qp - X0[idx])
                fr = (x_qp > lo[idx]) & (x_qp < hi[idx]) & (a0 != 0)
                den = np.sum(np.where(fr, a0 * a0, 0.0), axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    nu1 = np.where(den > 0, np.sum(np.where(fr, z * a0, 0.0), axis=1) / den, 0.0)
                mu[idx] = np.maximum(mu[idx], 1.5 * np.abs(np.nan_to_num(nu1)) + 1e-12)
        p = x_qp - xi
        f_qp = objective(x_qp, idx)
        pred = np.where(feas, np.maximum(f - f_qp, 0.0), np.maximum(phi - f_qp, 0.0)
                        if norm == "l2" else phi)
        step_small = distance(p, w, norm) <= 1e-13 * (1.0 + distance(xi - X0[idx], w, norm))
        active[idx[(step_small & feas) | ~okq]] = False
        go = np.flatnonzero(~step_small & okq)
        alpha = np.ones(len(go))
        pending = np.ones(len(go), dtype=bool)
        for _ls in range(20):
            pi = np.flatnonzero(pending)
            if len(pi) == 0:
                break
            gi = idx[go[pi]]
            trial = np.clip(xi[go[pi]] + alpha[pi, None] * p[go[pi]], lo[gi], hi[gi])
            Ct, _ = target_constraints(model, model.scores(trial), None, t[gi], prob.P, tau[gi])
            ft, phit = merit(trial, Ct, gi)
            # from a feasible point stay feasible (and get closer); from an infeasible one,
            # decrease the merit
            fe = feas[go[pi]]
            ok_feas = np.all(Ct >= 0, axis=1) & (
                ft <= f[go[pi]] - 1e-4 * alpha[pi] * pred[go[pi]])
            ok_merit = phit <= phi[go[pi]] - 1e-4 * alpha[pi] * pred[go[pi]]
            ok = np.where(fe, ok_feas, ok_merit)
            acc = pi[ok]
            x[idx[go[acc]]] = trial[ok]
            pending[acc] = False
            alpha[pending] *= 0.5
        moved = idx[go[~pending]]
        if len(moved):
            C[moved], G[moved] = evaluate(x[moved], moved)
        active[idx[go[pending]]] = False
    f = objective(x, np.arange(N))
    feas = np.all(C >= 0, axis=1)
    imp = feas & (f < best_f)
    best[imp] = x[imp]
    best_f[imp] = f[imp]
    return best, best_f


# --- SLSQP polish -------------------------------------------------------------------------------

class _RowProblem:
    """One row's smooth program for SLSQP, with the score evaluation cached per point."""

    def __init__(self, model, x0, lo, hi, w, norm, t, P, tau):
        self.model, self.x0, self.w, self.norm = model, x0, w, norm
        self.t = np.array([t], dtype=np.intp)
        self.P, self.tau = P, np.array([tau])
        self.lo, self.hi = lo, hi
        self.D = x0.shape[0]
        self._key = None

    def _eval(self, x):
        key = x.tobytes()
        if key != self._key:
            S, J = self.model.scores_jac(x[None, :])
            C, G = target_constraints(self.model, S, J, self.t, self.P, self.tau)
            self._key, self._C, self._G = key, C[0], G[0]
        return self._C, self._G

    def solve(self, start, maxiter: int, scale: float | None = None):
        """SLSQP from ``start``; ``scale`` (a typical distance) normalises the objective."""
        D, w, x0 = self.D, self.w, self.x0
        start = np.clip(start, self.lo, self.hi)
        d0 = float(distance(start - x0, w, self.norm))
        scale = max(d0 if scale is None or not np.isfinite(scale) or scale <= 0 else scale, 1e-8)
        if self.norm == "l2":
            sc = scale * scale

            def f(v):
                r = w * (v - x0)
                return 0.5 * float(r @ r) / sc, (w * r) / sc

            cons = [{"type": "ineq", "fun": lambda v: self._eval(v)[0],
                     "jac": lambda v: self._eval(v)[1]}]
            v0, lb, ub = start, self.lo, self.hi
        else:
            extra = D if self.norm == "l1" else 1
            u0 = np.abs(w * (start - x0))
            v0 = np.concatenate([start, u0 if self.norm == "l1" else [u0.max()]])
            lb = np.concatenate([self.lo, np.zeros(extra)])
            ub = np.concatenate([self.hi, np.full(extra, np.inf)])
            cvec = np.concatenate([np.zeros(D), np.full(extra, 1.0 / scale)])
            Wd = np.diag(w)
            Iu = np.eye(D) if self.norm == "l1" else np.ones((D, 1))
            A_pos = np.hstack([-Wd, Iu])   # u - w (x - x0) >= 0
            A_neg = np.hstack([Wd, Iu])    # u + w (x - x0) >= 0
            A_lin = np.vstack([A_pos, A_neg])
            b_lin = np.concatenate([w * x0, -(w * x0)])

            def f(v):
                return float(cvec @ v), cvec

            def cf(v):
                return self._eval(v[:D])[0]

            def cj(v):
                G = self._eval(v[:D])[1]
                return np.hstack([G, np.zeros((G.shape[0], extra))])

            cons = [{"type": "ineq", "fun": cf, "jac": cj},
                    {"type": "ineq", "fun": lambda v: A_lin @ v + b_lin, "jac": lambda v: A_lin}]
        from scipy.optimize import Bounds, minimize

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = minimize(f, v0, jac=True, method="SLSQP", bounds=Bounds(lb, ub), constraints=cons,
                           options={"maxiter": maxiter, "ftol": 1e-12})
        x = np.clip(np.asarray(res.x[:D], dtype=np.float64), self.lo, self.hi)
        return x, int(res.nit)


def kkt_residual_l2(model: ScoreModel, X0, Xc, t, P, lower, upper, w) -> np.ndarray:
    """Relative KKT residual of L2 solutions ``Xc`` (NaN where a row has no point).

    Stationarity ``w^2 (x - x0) = sum_j lam_j grad c_j + mu`` with ``lam >= 0`` on the active
    constraints (NNLS on the coordinates strictly inside the box) and box multipliers ``mu`` of
    the right sign; plus primal feasibility. Measured relative to ``||w^2 (x - x0)||``.
    """
    n, D = Xc.shape
    out = np.full(n, np.nan)
    have = np.all(np.isfinite(Xc), axis=1)
    if not np.any(have):
        return out
    idx = np.flatnonzero(have)
    tau = score_tau(model.scores(X0[idx]))
    S, J = model.scores_jac(Xc[idx])
    C, G = target_constraints(model, S, J, t[idx], P, tau)
    gradf = (w * w) * (Xc[idx] - X0[idx])
    from scipy.optimize import nnls

    for k, i in enumerate(idx):  # small NNLS per row (m <= K constraints)
        gnorm = np.linalg.norm(gradf[k])
        if gnorm == 0.0:
            out[i] = 0.0
            continue
        span = np.maximum(np.abs(Xc[i]), 1.0)
        at_lo = Xc[i] <= lower[i] + 1e-12 * span
        at_hi = Xc[i] >= upper[i] - 1e-12 * span
        free = ~(at_lo | at_hi)
        cscale = 1.0 + np.abs(S[k]).max()
        act = C[k] <= 1e-6 * cscale
        Ga = G[k][act]
        lam = np.zeros(0)
        if Ga.shape[0] and np.any(free):
            lam, _ = nnls(Ga[:, free].T, gradf[k][free])
        stat = gradf[k] - (Ga.T @ lam if Ga.shape[0] else 0.0)
        res = np.zeros(D)
        res[free] = stat[free]
        res[at_lo] = np.minimum(stat[at_lo], 0.0)   # needs mu_lo = stat >= 0
        res[at_hi] = np.maximum(stat[at_hi], 0.0)   # needs mu_hi = -stat >= 0
        feas = np.maximum(-C[k], 0.0).max() / cscale if C.shape[1] else 0.0
        out[i] = max(np.linalg.norm(res) / gnorm, feas)
    return out


def _pick_verified(prob: Problem, cands: np.ndarray, lower, upper, pushes=(1e-9, 1e-7, 1e-5, 1e-3)):
    """Closest candidate per row that the estimator confirms (``cands`` is ``(n, c, D)``, NaN
    entries skipped); unconfirmed ones are retried a hair farther along their direction.
    Returns ``(points (n, D), dist (n,))`` (NaN / inf where none)."""
    X0 = prob.X
    n, c, D = cands.shape
    flat = cands.reshape(n * c, D)
    ri = np.repeat(np.arange(n), c)
    fin = np.all(np.isfinite(flat), axis=1)
    flat = np.where(fin[:, None], np.clip(np.nan_to_num(flat), lower[ri], upper[ri]), np.nan)
    ok = np.zeros(n * c, dtype=bool)
    tt = prob.target[ri]
    if np.any(fin):
        ok[fin] = qualifies(prob.form, flat[fin], tt[fin], prob.P)[0]
    for eps in pushes:
        bad = np.flatnonzero(fin & ~ok)
        if len(bad) == 0:
            break
        trial = np.clip(X0[ri[bad]] + (flat[bad] - X0[ri[bad]]) * (1.0 + eps), lower[ri[bad]],
                        upper[ri[bad]])
        g = qualifies(prob.form, trial, tt[bad], prob.P)[0]
        flat[bad[g]] = trial[g]
        ok[bad[g]] = True
    dist = np.full(n * c, np.inf)
    if np.any(ok):
        dist[ok] = distance(flat[ok] - X0[ri[ok]], prob.weights, prob.norm)
    dist = dist.reshape(n, c)
    pick = np.argmin(dist, axis=1)
    r = np.arange(n)
    return flat.reshape(n, c, D)[r, pick], dist[r, pick]


def _closest_distinct(C, X0, w, norm, k):
    """``(n, k, D)``: per row the ``k`` closest distinct finite points among ``C`` (n, c, D)."""
    n, c, D = C.shape
    fin = np.all(np.isfinite(C), axis=2)
    d = np.where(fin, distance(np.nan_to_num(C) - X0[:, None, :], w, norm), np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    out = np.full((n, k, D), np.nan)
    for i in range(n):  # small: picks per row
        got = 0
        for j in order[i]:
            if not np.isfinite(d[i, j]) or got >= k:
                break
            if any(np.allclose(C[i, j], out[i, q], rtol=1e-9, atol=1e-12) for q in range(got)):
                continue
            out[i, got] = C[i, j]
            got += 1
    return out


def _is_smooth(model: ScoreModel) -> bool:
    """False for piecewise-linear networks (relu / identity), where SLSQP's quasi-Newton model
    of the constraints' curvature does not help and the SQP step is already exact per region.
    (A quantile map is piecewise linear too, but with few pieces near the answer: SLSQP still
    closes the last gap there.)"""
    if model.kind != "differentiable":
        return True
    light = getattr(model.form, "light", None)  # a light-loaded form's saved state (issue 16)
    est = light if light is not None else model.form.estimator
    est = est.steps[-1][1] if hasattr(est, "steps") else est
    return getattr(est, "activation", "relu") not in ("relu", "identity")


def solve_smooth(model: ScoreModel, prob: Problem, *, lower=None, upper=None, starts=None,
                 method: str, maxiter: int = 100, polish: int = 1, fab_iters: int = 50,
                 progress_offset: int = 0, progress_total: int | None = None) -> Answers:
    """Closest verified point for every row (module docstring).

    Parameters
    ----------
    lower, upper : (n, D), optional
        The box the solver moves in (default: the problem's; the invertible solver narrows it to
        the transform's domain).
    starts : (n, s, D), optional
        Extra starts besides the row itself (NaN entries skipped), e.g. pulled training rows or
        a feature-space projection. Every start is also a candidate answer.
    polish : int
        L1 / Linf: SLSQP runs per row, from the row itself and from the ``polish - 1`` closest
        distinct candidates (L1 / Linf have many vertex-like local optima, and SLSQP from the
        row finds sparse ones the other starts miss). L2: one SLSQP run from the best point,
        only where the SQP's KKT residual is above 1e-8 and the model is smooth. 0: none.
    """
    X0 = prob.X
    n, D = X0.shape
    lower = prob.lower if lower is None else lower
    upper = prob.upper if upper is None else upper
    ans = Answers(n, D)
    if n == 0:
        return ans
    total = progress_total if progress_total is not None else n
    pools = [X0[:, None, :]] + ([] if starts is None else [starts])
    start_pool = np.concatenate(pools, axis=1)  # (n, s, D)
    s_n = start_pool.shape[1]
    iters = np.zeros(n, dtype=np.int64)
    tau = score_tau(model.scores(X0))
    fin_s = np.all(np.isfinite(start_pool), axis=2)
    ri, si = np.nonzero(fin_s)
    fab = np.full((n, s_n, D), np.nan)
    fab[ri, si], _ = fab_search(model, prob, ri, start_pool[ri, si], lower, upper, iters=fab_iters)
    iters += fab_iters * fin_s.sum(axis=1)
    cands = [fab, start_pool]
    # SQP from every point found, in the problem's norm; for L1 / Linf also in L2 (a smooth
    # answer whose neighbourhood SLSQP then searches)
    fin_f = np.all(np.isfinite(fab), axis=2)
    rj, sj = np.nonzero(fin_f)
    for nm in ([prob.norm] if prob.norm == "l2" else [prob.norm, "l2"]):
        ref = np.full((n, s_n, D), np.nan)
        if len(rj):
            ref[rj, sj], _ = sqp(model, replace(prob, norm=nm), rj, fab[rj, sj], lower, upper)
        cands.insert(0, ref)
    allc = np.concatenate(cands, axis=1)
    xb, bestd = _pick_verified(prob, allc, lower, upper)
    have = np.isfinite(bestd)
    kkt = np.full(n, np.nan)
    if prob.norm == "l2" and np.any(have):
        kkt[have] = kkt_residual_l2(model, X0[have], xb[have], prob.target[have], prob.P,
                                    lower[have], upper[have], prob.weights)
    if prob.norm == "l2":
        redo = np.flatnonzero(have & ~(kkt <= 1e-8)) if _is_smooth(model) else np.zeros(0, np.intp)
        polish_starts = xb[:, None, :]
    else:
        redo = np.flatnonzero(have)
        # L1 / Linf have many vertex-like local optima: SLSQP also runs from the row itself
        polish_starts = np.concatenate(
            [X0[:, None, :], _closest_distinct(allc, X0, prob.weights, prob.norm, max(0, polish - 1))],
            axis=1)
    if polish and len(redo):
        pol = np.full((len(redo), polish_starts.shape[1], D), np.nan)
        for k, i in enumerate(redo):  # the documented per-row loop: SLSQP polish
            rp = _RowProblem(model, X0[i], lower[i], upper[i], prob.weights, prob.norm,
                             int(prob.target[i]), prob.P, float(tau[i]))
            for j in range(polish_starts.shape[1]):
                if np.all(np.isfinite(polish_starts[i, j])):
                    pol[k, j], it = rp.solve(polish_starts[i, j], maxiter, scale=bestd[i])
                    iters[i] += it
            if prob.progress is not None:
                prob.progress(progress_offset + k + 1, total)
        sub = Problem(form=prob.form, X=X0[redo], target=prob.target[redo], P=prob.P,
                      norm=prob.norm, lower=lower[redo], upper=upper[redo], weights=prob.weights,
                      orig=prob.orig[redo])
        xb2, d2 = _pick_verified(sub, pol, lower[redo], upper[redo])
        better = d2 < bestd[redo]
        rb = redo[better]
        xb[rb] = xb2[better]
        bestd[rb] = d2[better]
        if prob.norm == "l2" and len(rb):
            kkt[rb] = kkt_residual_l2(model, X0[rb], xb[rb], prob.target[rb], prob.P, lower[rb],
                                      upper[rb], prob.weights)
    if prob.progress is not None:
        prob.progress(progress_offset + n, total)
    n_runs = fin_s.sum(axis=1)
    backing = np.array([
        f"verified by the estimator; best of {int(r)} starts (boundary search + "
        + ("SQP" if prob.norm == "l2" else "SLSQP") + ")"
        + ("" if not np.isfinite(k) else f"; local KKT residual {k:.1e}")
        for r, k in zip(n_runs, kkt)], dtype=object)
    ans.offer(np.flatnonzero(have), xb[have], bestd[have], prob.target[have], method,
              exact=False, kkt=kkt[have], iters=iters[have], backing=backing[have])
    ans.iters[~have] += iters[~have]
    ans.fail(np.flatnonzero(~have), "no start reached a point the estimator confirms as the target")
    return ans
