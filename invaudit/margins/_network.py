"""Margins of networks (MLPClassifier): a verified attack above, a certified bound below.

Upper bound
-----------
1. DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, Algorithm 2): linearise every score
   difference ``f_k = s_k - s_p`` at the current point and step to the nearest linearised
   boundary, ``argmin_k |f_k| / ||grad f_k / w||_q`` (eq. 8), inside the admissible box (each
   step is the exact box-constrained halfspace projection), with a small overshoot, until the
   estimator predicts another class.
2. Bisection on the segment from the row to that point gives a boundary point ``b``.
3. Refinement along the boundary (in the spirit of FAB, Croce & Hein 2020, sec. 3): project the
   *row* onto the boundary linearised at ``b``; that point, or the nearest convex combination
   with ``b`` that the estimator still predicts otherwise (closer than ``b`` by convexity of the
   norm), is bisected back towards the row. Repeated a fixed number of times; a step is kept
   only when it is verified and closer.

Lower bound (certified)
-----------------------
The larger of two sound bounds (for affine networks, one exact one):

- *Interval bound propagation* (Gowal et al. 2018, "On the effectiveness of interval bound
  propagation", eqs. 5-6): over the ball ``||w * delta||_norm <= eps`` the first layer's
  pre-activations lie within ``h(x) +- eps ||W0_j / w||_q`` (exact per unit; for linf with a
  box the interval of the box itself), monotone activations map intervals to intervals and
  later layers use ``center @ W +- radius @ |W|``; the score difference ``s_p - s_k`` is bounded
  below in one step from the last hidden interval. ``eps`` is certified when that bound is
  positive for every ``k``; bisection on ``eps`` (certification is monotone in ``eps``).
- *Affine networks* (identity activations): the layers compose to one affine map and the
  pairwise distance of the linear solver is the bound (exact without a box).
- *Global Lipschitz*: ``|f(x + delta) - f(x)| <= L ||w * delta||`` with ``L`` the product of the
  layers' operator norms (spectral norms; the first from the weighted input norm to l2) times
  the activation's Lipschitz constant per hidden layer (1 for relu / tanh / identity, 1/4 for
  logistic) times ``||W_L[:, p] - W_L[:, k]||_2`` (Szegedy et al. 2014, sec. 4.3); the bound is
  ``min_k (s_p - s_k)(x) / L_k``.

None is tight for a non-linear network, so no row is ``exact``.
"""

from __future__ import annotations

import numpy as np

from invaudit.margins._common import (Problem, bisect_segments, dual_norm, finalize, halfspace_step, is_other,
                                      subproblem, weighted_norm)

_OVERSHOOT = 0.02
_BISECT = 30
_REFINE = 20
_ALPHAS = np.array([1.0, 0.5, 0.25, 0.125])
_CERT_STEPS = 40
_BALL = 32           # random points per row and round of ball sampling
_BALL_ROUNDS = 2
_BALL_RADIUS = 0.9   # relative to the current upper bound
_TARGETS = 3         # targeted DeepFool runs (nearest classes by linearisation)
_RESTARTS = 2        # untargeted runs from random starts
_CHUNK = 20_000_000  # float64 values of stacked gradients per chunk of rows


# --- the network as matrices --------------------------------------------------------------------

def network_parts(form):
    """``(Ws, bs, activation)`` with any affine preprocessing folded into the first layer and
    the last layer written as ``K`` class scores (binary: scores ``(0, logit)``), or None when
    the estimator's layout is not recognised."""
    light = getattr(form, "light", None)  # a light-loaded form's saved state (issue 16): the same
    est = light if light is not None else form.estimator  # attributes, read without unpickling
    steps = getattr(est, "steps", None)
    mlp = steps[-1][1] if steps else est
    if not hasattr(mlp, "coefs_"):
        return None
    Ws = [np.array(W, dtype=np.float64) for W in mlp.coefs_]
    bs = [np.array(b, dtype=np.float64) for b in mlp.intercepts_]
    if steps and len(steps) > 1:
        from invaudit.models.affine import fold_affine

        A, c = fold_affine([s for _, s in steps[:-1]], int(form.n_features))
        bs[0] = c @ Ws[0] + bs[0]
        Ws[0] = A.T @ Ws[0]
    if Ws[0].shape[0] != form.n_features:
        return None
    if form.link == "sigmoid":
        Ws[-1] = np.column_stack([np.zeros(Ws[-1].shape[0]), Ws[-1][:, 0]])
        bs[-1] = np.array([0.0, bs[-1][0]])
    return Ws, bs, mlp.activation


def _act(name, h):
    if name == "relu":
        return np.maximum(h, 0.0)
    if name == "tanh":
        return np.tanh(h)
    if name == "logistic":
        from scipy.special import expit  # imported when used: start-up (issue 16)

        return expit(h)
    return h


def _forward_scores(parts, X):
    Ws, bs, act = parts
    a = X
    for W, b in zip(Ws[:-1], bs[:-1]):
        a = _act(act, a @ W + b)
    return a @ Ws[-1] + bs[-1]


def class_scores(form, X) -> np.ndarray:
    """``(n, K)`` scores whose argmax is the prediction (binary: ``(0, logit)``)."""
    s = form.logits(X)
    return np.column_stack([np.zeros(s.shape[0]), s[:, 0]]) if form.link == "sigmoid" else s


def _score_grads(form, Z) -> np.ndarray:
    """``(n, K, D)`` gradients of every class score (a loop over classes)."""
    K = form.n_classes
    G = np.empty((Z.shape[0], K, Z.shape[1]))
    for k in range(K):
        G[:, k] = 0.0 if (form.link == "sigmoid" and k == 0) else form.logit_grad(Z, k)
    return G


# --- the attack ---------------------------------------------------------------------------------

def _deepfool(form, X, p, w, norm, lo_all, hi_all, *, target, start, iterations: int):
    """Adversarial points (NaN rows where none was found within ``iterations``), from ``start``;
    ``target[i] >= 0`` restricts row ``i`` to that class (targeted DeepFool), -1 takes the
    nearest linearised boundary of any class. ``lo_all`` / ``hi_all``: box on the perturbation
    (or None)."""
    n, d = X.shape
    K = form.n_classes
    boxed = lo_all is not None
    Z = start.copy()
    found = np.zeros(n, dtype=bool)
    active = np.arange(n)
    for _ in range(iterations):
        if active.size == 0:
            break
        Za = Z[active]
        pa = p[active]
        ta = target[active]
        S = class_scores(form, Za)
        G = _score_grads(form, Za)
        ra = np.arange(active.size)
        f = S - S[ra, pa][:, None]          # (a, K), negative while p still wins
        gk = G - G[ra, pa][:, None, :]      # (a, K, D)
        moved = Za - X[active]
        lo = lo_all[active] - moved if boxed else None
        hi = hi_all[active] - moved if boxed else None
        best_d = np.full(active.size, np.inf)
        best_step = np.zeros((active.size, d))
        for k in range(K):  # a loop over classes
            use = (pa != k) & ((ta < 0) | (ta == k))
            if not use.any():
                continue
            need = -f[:, k]
            r = need + _OVERSHOOT * np.abs(need) + 1e-12 * (1.0 + np.abs(S).max(axis=1))
            step, dist, _ = halfspace_step(gk[:, k], r, w, norm, lo, hi)
            better = use & (dist < best_d)
            best_d = np.where(better, dist, best_d)
            best_step[better] = step[better]
        stuck = ~np.isfinite(best_d)
        Za = Za + best_step
        if boxed:
            Za = np.clip(Za, X[active] + lo_all[active], X[active] + hi_all[active])
        Z[active] = Za
        other, _ = is_other(form, Za, pa)
        found[active[other]] = True
        active = active[~other & ~stuck]
    Z[~found] = np.nan
    return Z, found


def _refine(form, X, p, w, norm, lo_all, hi_all, B: np.ndarray, rounds: int):
    """Move verified boundary points ``B`` closer to their rows ``X`` (module docstring)."""
    dist = weighted_norm(B - X, w, norm)
    n = X.shape[0]
    active = np.arange(n)
    for _ in range(rounds):
        if active.size == 0:
            break
        Xa, pa, Ba = X[active], p[active], B[active]
        S = class_scores(form, Ba)
        ra = np.arange(active.size)
        c = np.argmax(np.where(np.arange(S.shape[1])[None, :] == pa[:, None], -np.inf, S), axis=1)
        G = _score_grads(form, Ba)
        g = G[ra, c] - G[ra, pa]
        f = S[ra, c] - S[ra, pa]
        r = np.einsum("ij,ij->i", g, Ba - Xa) - f
        r = r + 1e-9 * np.abs(r)
        step, sd, _ = halfspace_step(g, r, w, norm, None if lo_all is None else lo_all[active],
                                     None if lo_all is None else hi_all[active])
        cand = (r > 0) & np.isfinite(sd) & (sd < dist[active] * (1 - 1e-9))
        if not cand.any():
            break
        ci = np.flatnonzero(cand)
        Y = Xa[ci] + step[ci]
        # candidates b + alpha (y - b), alpha from 1 down; all closer than b by convexity
        P = Ba[ci][:, None, :] + _ALPHAS[None, :, None] * (Y - Ba[ci])[:, None, :]
        m = _ALPHAS.size
        other, _ = is_other(form, P.reshape(-1, P.shape[2]), np.repeat(pa[ci], m))
        other = other.reshape(ci.size, m)
        has = other.any(axis=1)
        first = np.argmax(other, axis=1)
        ok = ci[has]
        improved = np.zeros(active.size, dtype=bool)
        if ok.size:
            E = P[np.flatnonzero(has), first[has]]
            nb, _ = bisect_segments(form, Xa[ok], E, pa[ok], steps=_BISECT)
            nd = weighted_norm(nb - Xa[ok], w, norm)
            better = nd < dist[active[ok]] * (1 - 1e-6)
            B[active[ok[better]]] = nb[better]
            dist[active[ok[better]]] = np.minimum(dist[active[ok[better]]], nd[better])
            improved[ok[better]] = True
        active = active[improved]  # rows that stopped improving are done
    return B, dist


def attack(form, prob: Problem, *, iterations: int = 50, targets: int = _TARGETS, restarts: int = _RESTARTS,
           seed: int = 0):
    """Verified upper bounds: untargeted DeepFool, targeted DeepFool towards the ``targets``
    classes nearest by linearisation, and ``restarts`` runs from random starts, each bisected to
    the boundary and refined; the nearest verified point per row. Returns ``(B, found)``."""
    X, p, w, norm = prob.X, prob.pred, prob.weights, prob.norm
    n, d = X.shape
    K = form.n_classes
    lo_all, hi_all = (prob.lo, prob.hi)
    # which classes to target: the nearest linearised boundaries at x
    S = class_scores(form, X)
    G = _score_grads(form, X)
    ra = np.arange(n)
    lin = np.full((n, K), np.inf)
    for k in range(K):  # a loop over classes
        gk = G[:, k] - G[ra, p]
        q = {"l2": 2, "l1": np.inf, "linf": 1}[norm]
        nq = np.linalg.norm(gk / w, q, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lin[:, k] = np.where(p != k, (S[ra, p] - S[:, k]) / nq, np.inf)
    order = np.argsort(lin, axis=1, kind="stable")[:, :max(0, min(targets, K - 1))]
    tg = [np.full(n, -1)] + [order[:, t] for t in range(order.shape[1])]
    rng = np.random.default_rng(seed)
    starts = [X] * len(tg)
    spread = np.where(np.isfinite(lin.min(axis=1)), lin.min(axis=1), 1.0)[:, None]
    for _ in range(restarts):
        noise = rng.standard_normal((n, d)) / w
        noise *= 0.5 * spread / np.maximum(weighted_norm(noise, w, norm)[:, None], 1e-300)
        if lo_all is not None:
            noise = np.clip(noise, lo_all, hi_all)
        tg.append(np.full(n, -1))
        starts.append(X + noise)
    m = len(tg)
    rep = np.tile(np.arange(n), m)
    Xs, ps = X[rep], p[rep]
    los = None if lo_all is None else lo_all[rep]
    his = None if hi_all is None else hi_all[rep]
    Z, found = _deepfool(form, Xs, ps, w, norm, los, his, target=np.concatenate(tg),
                         start=np.concatenate(starts), iterations=iterations)
    rows = np.flatnonzero(found)
    B = np.full((n * m, d), np.nan)
    dist = np.full(n * m, np.inf)
    if rows.size:
        Bf, _ = bisect_segments(form, Xs[rows], Z[rows], ps[rows], steps=_BISECT)
        Bf, df = _refine(form, Xs[rows], ps[rows], w, norm, None if los is None else los[rows],
                         None if his is None else his[rows], Bf, _REFINE)
        B[rows], dist[rows] = Bf, df
    dist = dist.reshape(m, n)
    best = np.argmin(dist, axis=0)
    has = np.isfinite(dist[best, ra])
    out = B.reshape(m, n, d)[best, ra]
    out[~has] = np.nan
    ub = dist[best, ra]
    # ball sampling: random points strictly inside the current bound that are already predicted
    # otherwise reveal nearer regions the gradient path missed; bisect and refine from them
    for _ in range(_BALL_ROUNDS):
        rows = np.flatnonzero(has)
        if rows.size == 0:
            break
        dirs = rng.standard_normal((rows.size, _BALL, d)) / w
        dirs /= np.maximum(weighted_norm(dirs, w, norm)[:, :, None], 1e-300)
        P = X[rows][:, None, :] + dirs * (_BALL_RADIUS * ub[rows])[:, None, None]
        if lo_all is not None:
            P = np.clip(P, (X[rows] + lo_all[rows])[:, None, :], (X[rows] + hi_all[rows])[:, None, :])
        other, _ = is_other(form, P.reshape(-1, d), np.repeat(p[rows], _BALL))
        other = other.reshape(rows.size, _BALL)
        hit = other.any(axis=1)
        if not hit.any():
            break
        hr = rows[hit]
        E = P[np.flatnonzero(hit), np.argmax(other[hit], axis=1)]
        Bh, _ = bisect_segments(form, X[hr], E, p[hr], steps=_BISECT)
        Bh, dh = _refine(form, X[hr], p[hr], w, norm, None if lo_all is None else lo_all[hr],
                         None if hi_all is None else hi_all[hr], Bh, _REFINE)
        better = dh < ub[hr]
        out[hr[better]] = Bh[better]
        ub[hr[better]] = dh[better]
    return out, has


# --- the certified lower bound ----------------------------------------------------------------------

def _ibp_margin_lower(parts, X, p, eps, w, norm, lo, hi):
    """Lower bound of ``min_{k != p} s_p - s_k`` over the ``eps``-ball (and box, for linf)."""
    Ws, bs, act = parts
    W0 = Ws[0]
    if norm == "linf":
        l = np.maximum(-eps[:, None] / w, lo)
        u = np.minimum(eps[:, None] / w, hi)
        center = (X + 0.5 * (l + u)) @ W0 + bs[0]
        rad = (0.5 * (u - l)) @ np.abs(W0)
    else:
        Mw = W0 / w[:, None]
        col = np.sqrt(np.sum(Mw * Mw, axis=0)) if norm == "l2" else np.max(np.abs(Mw), axis=0)
        center = X @ W0 + bs[0]
        rad = eps[:, None] * col[None, :]
    if len(Ws) == 1:
        raise ValueError("a network without hidden layers")
    for layer in range(1, len(Ws)):
        a_l, a_u = _act(act, center - rad), _act(act, center + rad)  # monotone activations
        center, rad = 0.5 * (a_l + a_u), 0.5 * (a_u - a_l)
        if layer < len(Ws) - 1:
            center, rad = center @ Ws[layer] + bs[layer], rad @ np.abs(Ws[layer])
    Wl, bl = Ws[-1], bs[-1]
    K = Wl.shape[1]
    worst = np.full(X.shape[0], np.inf)
    Wp = Wl.T[p]
    for k in range(K):  # a loop over classes
        v = Wp - Wl[:, k]
        lowk = np.einsum("ij,ij->i", center, v) + bl[p] - bl[k] - np.einsum("ij,ij->i", rad, np.abs(v))
        tol = 1e-10 * (1.0 + np.einsum("ij,ij->i", np.abs(center), np.abs(v)) + np.abs(bl[p] - bl[k]))
        worst = np.where(p != k, np.minimum(worst, lowk - tol), worst)
    return worst


def _lipschitz_lower(parts, S, p, w, norm):
    Ws, bs, act = parts
    Mw = Ws[0] / w[:, None]
    if norm == "l2":
        first = np.linalg.norm(Mw, 2)
    elif norm == "l1":
        first = np.max(np.sqrt(np.sum(Mw * Mw, axis=1)))
    else:
        first = min(np.sqrt(Mw.shape[0]) * np.linalg.norm(Mw, 2),
                    np.sqrt(np.sum(np.sum(np.abs(Mw), axis=0) ** 2)))
    lip = first
    for W in Ws[1:-1]:
        lip *= np.linalg.norm(W, 2)
    lip *= (0.25 if act == "logistic" else 1.0) ** (len(Ws) - 1)
    Wl = Ws[-1]
    K = Wl.shape[1]
    n = S.shape[0]
    ra = np.arange(n)
    out = np.full(n, np.inf)
    for k in range(K):  # a loop over classes
        v = Wl.T[p] - Wl[:, k]
        Lk = lip * np.sqrt(np.sum(v * v, axis=1))
        gap = S[ra, p] - S[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            bk = np.where(Lk > 0, np.maximum(gap, 0.0) / Lk, np.where(gap > 0, np.inf, 0.0))
        out = np.where(p != k, np.minimum(out, bk), out)
    return out * (1.0 - 1e-9)


def certified_lower_bound(form, prob: Problem, upper: np.ndarray) -> np.ndarray:
    """The larger of the IBP and Lipschitz lower bounds (module docstring); NaN when the
    network's layout is not recognised."""
    parts = network_parts(form)
    n = prob.n
    if parts is None or len(parts[0]) < 2:
        return np.full(n, np.nan)
    X, p, w, norm = prob.X, prob.pred, prob.weights, prob.norm
    S = _forward_scores(parts, X)
    ref = class_scores(form, X)
    if not np.allclose(S, ref, rtol=1e-9, atol=1e-9 * (1.0 + np.abs(ref).max())):
        return np.full(n, np.nan)  # the matrices do not reproduce the form: certify nothing
    if parts[2] == "identity":
        # an affine network: compose the layers; the pairwise distance is then exact without a
        # box and a lower bound with one (see invaudit.margins._linear)
        Weff, beff = parts[0][0], parts[1][0]
        for W, b in zip(parts[0][1:], parts[1][1:]):
            Weff, beff = Weff @ W, beff @ W + b
        ra = np.arange(n)
        out = np.full(n, np.inf)
        for k in range(Weff.shape[1]):  # a loop over classes
            v = Weff.T[p] - Weff[:, k]
            nq = dual_norm(v, w, norm)
            gap = np.maximum(S[ra, p] - S[:, k], 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                bk = np.where(nq > 0, gap / nq, np.where(gap > 0, np.inf, 0.0))
            out = np.where(p != k, np.minimum(out, bk), out)
        return out * (1.0 - 1e-9)
    lip = _lipschitz_lower(parts, S, p, w, norm)
    lo, hi = prob.box()
    # bisection on eps for IBP, between 0 and the verified upper bound (or a doubling bracket)
    e_lo = np.zeros(n)
    e_hi = np.where(np.isfinite(upper), upper, np.nan)
    unknown = np.isnan(e_hi)
    if unknown.any():
        e_hi[unknown] = np.maximum(lip[unknown], 1e-6) * 2.0
        for _ in range(60):
            rows = np.flatnonzero(unknown)
            if rows.size == 0:
                break
            ok = _ibp_margin_lower(parts, X[rows], p[rows], e_hi[rows], w, norm, lo[rows], hi[rows]) > 0
            e_lo[rows[ok]] = e_hi[rows[ok]]
            e_hi[rows[ok]] *= 2.0
            unknown[rows[~ok]] = False
    for _ in range(_CERT_STEPS):
        mid = 0.5 * (e_lo + e_hi)
        ok = _ibp_margin_lower(parts, X, p, mid, w, norm, lo, hi) > 0
        e_lo = np.where(ok, mid, e_lo)
        e_hi = np.where(ok, e_hi, mid)
    return np.maximum(e_lo, np.where(np.isfinite(lip), lip, 0.0))


def solve_network(form, prob: Problem, *, iterations: int = 50, seed: int = 0, progress=None) -> dict:
    """Upper bound by a verified attack, certified lower bound (module docstring)."""
    X, p = prob.X, prob.pred
    n, d = X.shape
    # the attack holds (rows x runs x classes x features) gradients: work in chunks of rows
    runs = 1 + min(_TARGETS, form.n_classes - 1) + _RESTARTS
    step = max(1, _CHUNK // (runs * form.n_classes * d))
    B = np.full((n, d), np.nan)
    found = np.zeros(n, dtype=bool)
    for s in range(0, n, step):
        r = np.arange(s, min(n, s + step))
        B[r], found[r] = attack(form, subproblem(prob, r), iterations=iterations, seed=seed + s)
        if progress is not None:
            progress(int(r[-1]) + 1, n + n // 4)
    rows = np.flatnonzero(found)
    delta = np.full((n, d), np.nan)
    dist = np.full(n, np.nan)
    nearest = np.full(n, -1, dtype=np.intp)
    if rows.size:
        dl, other, idx = finalize(form, X[rows], B[rows], p[rows])  # checks exactly what is reported
        ok = rows[other]
        delta[ok] = dl[other]
        nearest[ok] = idx[other]
        dist[ok] = weighted_norm(delta[ok], prob.weights, prob.norm)
    lower = certified_lower_bound(form, prob, dist)
    lower = np.where(np.isnan(dist), lower, np.minimum(lower, dist))
    if progress is not None:
        progress(n + n // 4, n + n // 4)
    method = np.full(n, "deepfool+boundary-refinement; ibp/lipschitz lower bound", dtype=object)
    method[np.isnan(dist)] = "deepfool (no other class reached); ibp/lipschitz lower bound"
    return dict(margin=dist, lower_bound=lower, nearest_index=nearest, perturbation=delta,
                perturbation_norm=dist.copy(), exact=np.zeros(n, dtype=bool), method=method)
