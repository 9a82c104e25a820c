"""Margins and the counterfactual core of k-nearest-neighbour classifiers.

1-NN, Euclidean metric: exact
-----------------------------
A 1-NN classifier predicts ``y_t`` on the Voronoi cell ``V_t = {z : ||z - t|| <= ||z - s|| for
every training point s}``. With ``z = z0 + A delta`` (the folded affine preprocessing) and
``v = w * delta`` (the metric's weights) each condition is a halfspace,

    2 (s - t)^T A W^-1 v <= ||z0 - s||^2 - ||z0 - t||^2,

so the nearest point of ``V_t`` (inside the box) is a convex QP for the ``l2`` metric and an LP
for ``l1`` / ``linf``. The distance to the region of the other classes is the minimum over their
cells. Each cell is solved exactly: the QP as a least-distance programme through Lawson &
Hanson's NNLS (*Solving Least Squares Problems*, 1974, ch. 23), polished on its active set and
certified by its dual value; the LPs by HiGHS. Cells are generated lazily: a cell starts with
the bisectors of ``t``'s nearest training points and of the row's, the solution is checked
against every bisector and the violated ones are added (a relaxation's optimum that satisfies
every constraint is the optimum). Candidates are taken in increasing order of a lower bound,
the distance to the bisector halfspace ``{||z - t|| <= ||z - s||}`` for the row's nearest points
``s`` (every such halfspace contains ``V_t``), and the search stops when that bound reaches the
best distance found: the answer is the exact minimum over all cells.

k > 1, or another metric: verified search
-----------------------------------------
Segments from the row to the nearest training rows the model puts in the target class, bisected
with the estimator's own ``predict`` (so an answer is never farther than the nearest such row),
then, for the Euclidean metric, a walk over order-k Voronoi cells: the region where a given set
``S`` of ``k`` points are the nearest is again a polyhedron (``||z - s|| <= ||z - u||`` for
``s`` in ``S``, ``u`` outside), its nearest point is a QP, and with uniform votes the
prediction is constant on it. For uniform votes a lower bound is certified: the prediction can
only change when a point of another class than the row's enters its ``k`` nearest, which needs
``||z - t|| <= ||z - s||`` for one of the current neighbours ``s``.

Ties (a point equally far from two training points) are broken by scikit-learn's own neighbour
search; answers are verified with the estimator's ``predict``, and points exactly on a bisector
are moved into the cell's interior before they are reported.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, nnls

from invaudit.margins._common import Problem, finalize, weighted_norm

__all__ = ["CellSolver", "solve_neighbors", "neighbor_rows"]

_EXACT_RTOL = 1e-9
_N_ROW = 8       # the row's nearest points whose bisectors bound every candidate cell
_N_CELL = 24     # bisectors a cell starts with (the candidate's nearest training points)
_ROUNDS = 60     # constraint-generation rounds per cell
_ADD = 32        # most violated bisectors added per round
_Q = {"l2": 2, "l1": np.inf, "linf": 1}


class CellSolver:
    """Per-run precomputation for one neighbours form, metric and weights."""

    def __init__(self, form, weights: np.ndarray, norm: str):
        self.form = form
        self.Z = form.fit_Z
        self.y = form.fit_y
        self.m, dz = self.Z.shape
        A = np.eye(form.n_features) if form.pre_A is None else form.pre_A
        self.w = np.asarray(weights, dtype=np.float64)
        self.M = A / self.w                       # dz = M v
        self.norm = norm
        self._near = None

    def near(self) -> np.ndarray:
        """``(m, N)``: each training point's nearest other training points (in model space)."""
        if self._near is None:
            N = min(_N_CELL + 1, self.m)
            _, ind = self.form.kneighbors(self.Z, N)
            self._near = ind
        return self._near

    # --- one polyhedron ------------------------------------------------------------------------
    def solve_poly(self, G, h, vlo, vhi):
        """``min ||v||_norm`` s.t. ``G v <= h``, ``vlo <= v <= vhi``. Returns ``(v, dist, lower)``
        (``v`` None when infeasible; ``lower`` a certified lower bound, ``dist`` for ``l2``)."""
        D = G.shape[1]
        if self.norm == "l2":
            return _ldp(G, h, vlo, vhi)
        if self.norm == "l1":
            c = np.ones(2 * D)
            A_ub = np.hstack([G, -G])
            bounds = [(0, None if not np.isfinite(b) else max(b, 0.0)) for b in vhi] + \
                     [(0, None if not np.isfinite(a) else max(-a, 0.0)) for a in vlo]
        else:
            c = np.zeros(D + 1)
            c[D] = 1.0
            I = np.eye(D)
            A_ub = np.vstack([np.hstack([G, np.zeros((G.shape[0], 1))]),
                              np.hstack([I, -np.ones((D, 1))]), np.hstack([-I, -np.ones((D, 1))])])
            h = np.concatenate([h, np.zeros(2 * D)])
            bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
                      for a, b in zip(vlo, vhi)] + [(0, None)]
        res = linprog(c, A_ub=A_ub, b_ub=h, bounds=bounds, method="highs",
                      options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        if res.status == 2:
            return None, np.inf, np.inf
        if res.status != 0:
            return None, np.nan, 0.0
        v = res.x[:D] - res.x[D:] if self.norm == "l1" else res.x[:D]
        return v, float(res.fun), float(res.fun)

    def cell(self, z0, d2, t: int, extra, vlo, vhi):
        """Nearest point of the 1-NN cell of training point ``t`` (module docstring), with lazy
        constraint generation. Returns ``(v, dist, lower, certified)``."""
        Z, M = self.Z, self.M
        cand = np.unique(np.concatenate([self.near()[t], extra]))
        cand = cand[cand != t]
        zt = Z[t]
        for _ in range(_ROUNDS):
            G = 2.0 * (Z[cand] - zt) @ M
            h = d2[cand] - d2[t]
            v, dist, low = self.solve_poly(G, h, vlo, vhi)
            if v is None:
                return None, dist, low, bool(np.isinf(low))
            u = M @ v
            # every bisector at the solution, relative to its scale
            lhs = 2.0 * (Z - zt) @ u
            rhs = d2 - d2[t]
            scale = np.abs(rhs) + np.abs(lhs) + 1e-300
            viol = (lhs - rhs) / scale
            viol[t] = -np.inf
            bad = np.flatnonzero(viol > 1e-11)
            if bad.size == 0:
                return v, dist, low, True
            new = bad[np.argsort(-viol[bad])[:_ADD]]
            new = new[~np.isin(new, cand)]
            if new.size == 0:
                return v, dist, low, False
            cand = np.concatenate([cand, new])
        return v, dist, low, False

    def order_k_cell(self, z0, d2, members, vlo, vhi):
        """Nearest point of the region where ``members`` are the ``k`` nearest training points.
        Returns ``(v, dist)`` (``v`` None when the search does not settle)."""
        Z, M = self.Z, self.M
        mem = np.asarray(members)
        is_mem = np.zeros(self.m, dtype=bool)
        is_mem[mem] = True
        near = np.unique(self.near()[mem].ravel())
        outs = near[~is_mem[near]]
        for _ in range(_ROUNDS):
            if outs.size == 0:
                return np.zeros(M.shape[1]), 0.0
            S, U = np.meshgrid(mem, outs, indexing="ij")
            G = (2.0 * (Z[U.ravel()] - Z[S.ravel()])) @ M
            h = d2[U.ravel()] - d2[S.ravel()]
            v, dist, _ = self.solve_poly(G, h, vlo, vhi)
            if v is None:
                return None, np.inf
            z = z0 + M @ v
            dd = np.sum((Z - z) ** 2, axis=1)
            far = dd[mem].max()
            bad = np.flatnonzero(~is_mem & (dd < far * (1 - 1e-12)))
            bad = bad[~np.isin(bad, outs)]
            if bad.size == 0:
                return v, dist
            outs = np.concatenate([outs, bad[np.argsort(dd[bad])[:_ADD]]])
        return None, np.inf


def fast_votes(form, points: np.ndarray) -> np.ndarray:
    """``(n, K)`` vote shares of the ``k`` nearest training points, by brute force in numpy
    (scikit-learn's ``predict`` costs milliseconds per call, and searches make thousands). Used
    inside searches only; every reported point is confirmed by the estimator itself."""
    Zp = form.transform(points)
    Z = form.fit_Z
    K = len(form.classes)
    k = min(form.k, Z.shape[0])
    out = np.zeros((Zp.shape[0], K))
    step = max(1, 2_000_000 // max(1, Z.shape[0]))
    for a in range(0, Zp.shape[0], step):
        Q = Zp[a:a + step]
        if form.p in (None, 2.0):
            d = np.sqrt(np.maximum(np.sum(Q * Q, axis=1)[:, None] + np.sum(Z * Z, axis=1)[None, :]
                                   - 2.0 * Q @ Z.T, 0.0))
        else:
            diff = np.abs(Q[:, None, :] - Z[None, :, :])
            d = diff.max(axis=2) if np.isinf(form.p) else np.sum(diff ** form.p, axis=2) ** (1.0 / form.p)
        nb = np.argpartition(d, k - 1, axis=1)[:, :k] if k < Z.shape[0] else np.broadcast_to(
            np.arange(Z.shape[0]), d.shape)
        dn = np.take_along_axis(d, nb, axis=1)
        if form.weights == "distance":
            with np.errstate(divide="ignore"):
                wt = 1.0 / dn
            inf = np.isinf(wt)
            wt = np.where(inf.any(axis=1)[:, None], inf.astype(float), wt)
        else:
            wt = np.ones_like(dn)
        rows = np.repeat(np.arange(Q.shape[0]), k)
        np.add.at(out[a:a + step], (rows, form.fit_y[nb].ravel()), wt.ravel())
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-300)


def _ldp(G, h, vlo, vhi):
    """Least-distance programme ``min ||v||_2`` s.t. ``G v <= h`` and the box, exactly:
    Lawson & Hanson's reduction to NNLS (ch. 23), the active set's equality-constrained
    minimum-norm point as polish, and the dual value as certificate."""
    fixed = (vlo == 0) & (vhi == 0)
    if fixed.any():  # frozen coordinates leave the problem (as box rows they make it degenerate)
        free = ~fixed
        v = np.zeros(G.shape[1])
        if not free.any():
            return (v, 0.0, 0.0) if np.all(h >= 0) else (None, np.inf, np.inf)
        vf, dist, lower = _ldp(G[:, free], h, vlo[free], vhi[free])
        if vf is None:
            return None, dist, lower
        v[free] = vf
        return v, dist, lower
    D = G.shape[1]
    rows_G, rows_h = [G], [h]
    fin_hi = np.isfinite(vhi)
    fin_lo = np.isfinite(vlo)
    if fin_hi.any():
        rows_G.append(np.eye(D)[fin_hi])
        rows_h.append(vhi[fin_hi])
    if fin_lo.any():
        rows_G.append(-np.eye(D)[fin_lo])
        rows_h.append(-vlo[fin_lo])
    Gf = np.vstack(rows_G)
    hf = np.concatenate(rows_h)
    if np.all(hf >= 0):
        return np.zeros(D), 0.0, 0.0
    # distances in units of the farthest violated halfspace: NNLS's residual has last component
    # about -1 / (1 + ||v||^2), which the infeasibility test below (1e-14) would read as
    # "infeasible" for ||v|| ~ 1e7 in the caller's units (features at scale 1e7)
    neg = hf < 0
    gn = np.sqrt(np.sum(Gf[neg] * Gf[neg], axis=1))
    if not np.all(gn > 0):
        return None, np.inf, np.inf  # 0 <= h < 0: certified infeasible
    unit = float(np.max(-hf[neg] / gn))
    if not (np.isfinite(unit) and unit > 0):
        return None, np.nan, 0.0
    v, dist, lower = _ldp_unit(Gf, hf / unit, D)
    if v is None:
        return None, dist, lower
    return np.clip(v * unit, vlo, vhi), dist * unit, lower * unit


def _ldp_unit(Gf, hf, D):
    """:func:`_ldp` for a problem whose farthest violated halfspace is at distance 1."""
    # row scaling keeps NNLS well conditioned
    s = np.sqrt(np.sum(Gf * Gf, axis=1)) + np.abs(hf)
    s = np.where(s > 0, s, 1.0)
    Gs, hs = Gf / s[:, None], hf / s
    E = np.vstack([-Gs.T, -hs[None, :]])
    f = np.zeros(D + 1)
    f[D] = 1.0
    try:
        u, _ = nnls(E, f, maxiter=50 * E.shape[1])
    except RuntimeError:
        return None, np.nan, 0.0
    r = E @ u - f
    if abs(r[D]) < 1e-14:  # infeasible (Lawson & Hanson, theorem 23.4), or a very far optimum:
        # the certificate is HiGHS's
        res = linprog(np.zeros(D), A_ub=Gs, b_ub=hs, bounds=[(None, None)] * D, method="highs")
        return (None, np.inf, np.inf) if res.status == 2 else (None, np.nan, 0.0)
    v = -r[:D] / r[D]
    if np.any(Gs @ v - hs > 1e-9):
        # NNLS ended near the infeasibility test's threshold: decide feasibility by an LP (HiGHS)
        res = linprog(np.zeros(D), A_ub=Gs, b_ub=hs, bounds=[(None, None)] * D, method="highs")
        if res.status == 2:
            return None, np.inf, np.inf
        return None, np.nan, 0.0
    # polish on the active set: v = -G_a^T lam with G_a v = h_a
    lams = [_dual_from_nnls(u, r)]
    act = np.flatnonzero(u > 0)
    if act.size:
        Ga, ha = Gs[act], hs[act]
        lam, *_ = np.linalg.lstsq(Ga @ Ga.T, -ha, rcond=None)
        vp = -Ga.T @ lam
        viol = Gs @ vp - hs
        if np.all(lam >= -1e-12) and np.all(viol <= 1e-13):
            v = vp
            lam_full = np.zeros(hs.size)
            lam_full[act] = np.maximum(lam, 0.0)
            lams.append(lam_full)
    # dual value: q(lam) = -1/2 ||G^T lam||^2 - h^T lam <= 1/2 ||v*||^2 for every lam >= 0
    q = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for lam_full in lams:
            g = Gs.T @ lam_full
            qq = -0.5 * g @ g - hs @ lam_full
            if np.isfinite(qq):
                q = max(q, qq)
    lower = float(np.sqrt(max(2.0 * q, 0.0)))
    dist = float(np.sqrt(v @ v))
    return v, dist, lower


def _dual_from_nnls(u, r):
    """Multipliers of the LDP from the NNLS solution (``lam = u / -r_{n+1}``)."""
    return np.maximum(u / max(-r[-1], 1e-300), 0.0)


def neighbor_rows(form, X, orig, target, *, lo, hi, weights, norm, P=None, X_train=None, seed=0, progress=None):
    """The nearest point of each row predicted as ``target`` (``-1``: any class but ``orig``).

    Returns a dict of ``(n,)`` / ``(n, D)`` arrays: ``point`` (verified by the estimator, NaN
    rows: none), ``dist`` (its distance), ``opt`` (the certified optimum for exact rows, else
    NaN), ``lower`` (a certified lower bound, NaN without one), ``exact``, ``nearest`` (the class
    reached), ``method``, ``unreachable`` (certified: nothing qualifies). ``progress(done, n)`` is
    called as rows finish.
    """
    from invaudit.counterfactual._nl_common import qualifies

    X = np.asarray(X, dtype=np.float64)
    n, D = X.shape
    out = dict(point=np.full((n, D), np.nan), dist=np.full(n, np.inf), opt=np.full(n, np.nan),
               lower=np.full(n, np.nan), exact=np.zeros(n, dtype=bool), nearest=np.full(n, -1, dtype=np.intp),
               method=np.full(n, "", dtype=object), unreachable=np.zeros(n, dtype=bool))
    if n == 0:
        return out
    solver = CellSolver(form, weights, norm)
    w = solver.w
    Z0 = form.transform(X)
    target = np.broadcast_to(np.asarray(target, dtype=np.intp), (n,))
    exact_1nn = form.exact_geometry and form.k == 1

    def ok_at(points, rows):
        t = target[rows]
        if np.all(t >= 0):
            return qualifies(form, points, t, P)[0]
        pred = form.predict_index(points)
        return np.where(t >= 0, pred == t, pred != orig[rows])

    if exact_1nn:
        for i in range(n):  # one branch-and-bound per row (the exact solver's unit of work)
            _one_nn_row(solver, form, X, Z0, i, orig, target, lo, hi, w, norm, out, ok_at)
            if progress is not None:
                progress(i + 1, n)
    todo = np.flatnonzero(~out["exact"] & ~out["unreachable"])
    if todo.size:
        done = n - todo.size

        def tick(j):
            if progress is not None:
                progress(done + j, n)

        _search_rows(solver, form, X, Z0, todo, orig, target, lo, hi, w, norm, P, out, ok_at, X_train, seed, tick)
    if progress is not None:
        progress(n, n)
    return out


def _halfspace_lower(solver, d2, cand, S, norm):
    """For each candidate ``t``: the largest distance from the row (``v = 0``) to a bisector
    halfspace ``{||z - t|| <= ||z - s||}``, ``s`` in ``S`` (a lower bound on its cell's distance)."""
    Z, M = solver.Z, solver.M
    best = np.zeros(cand.size)
    for s in S:  # a loop over the row's few nearest points
        a = 2.0 * (Z[s] - Z[cand]) @ M                         # (c, D)
        b = d2[s] - d2[cand]
        qn = np.linalg.norm(a, ord=_Q[norm], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(b < 0, np.where(qn > 0, -b / qn, np.inf), 0.0)
        dist[cand == s] = 0.0
        best = np.maximum(best, dist)
    return best


def _one_nn_row(solver, form, X, Z0, i, orig, target, lo, hi, w, norm, out, ok_at):
    Z = solver.Z
    z0 = Z0[i]
    d2 = np.sum((Z - z0) ** 2, axis=1)
    is_cand = (solver.y != orig[i]) if target[i] < 0 else (solver.y == target[i])
    cand = np.flatnonzero(is_cand)
    if cand.size == 0:
        out["unreachable"][i] = True
        out["exact"][i] = True
        out["lower"][i] = np.inf
        out["method"][i] = "1-NN Voronoi cells (exact): no training point of the target class"
        return
    S = np.argsort(d2, kind="stable")[:_N_ROW]
    lb = _halfspace_lower(solver, d2, cand, S, norm)
    order = np.argsort(lb, kind="stable")
    vlo, vhi = lo[i] * w, hi[i] * w
    best, best_v, best_t, best_cert = np.inf, None, -1, False
    loose = []  # certified lower bounds of the cells not solved to optimality (a relaxation's dual)
    for j in order:  # branch and bound over candidate cells
        if lb[j] >= best:
            break
        t = cand[j]
        v, dist, low, cert = solver.cell(z0, d2, int(t), S, vlo, vhi)
        if v is None:
            if not cert:
                loose.append(max(low, lb[j]) if np.isfinite(low) else lb[j])
            continue
        ok = cert and (dist - low <= _EXACT_RTOL * max(dist, 1e-300) + 1e-300)
        if dist < best:
            if best_v is not None and not best_cert:
                loose.append(best_low)
            best, best_v, best_t, best_cert, best_low = dist, v, int(t), ok, max(low, lb[j])
        elif not ok:
            loose.append(max(low, lb[j]))
    # exact: the best cell is solved to optimality and every other cell's bound is at least as far
    certified = best_cert and all(b >= best * (1.0 - _EXACT_RTOL) for b in loose)
    if best_v is None:
        certified = not loose
    if best_v is None:
        if certified:
            out["unreachable"][i] = True
            out["exact"][i] = True
            out["lower"][i] = np.inf
            out["method"][i] = "1-NN Voronoi cells (exact): unreachable within the constraints"
        return
    # a verified point: the optimum, else the optimum of the cell shrunk a hair, else a step
    # toward the training point (the cell is convex and the point is inside it)
    d = best_v / w
    x = X[i] + d
    pts = [x]
    t_in = form.train_inputs()
    if t_in is not None:
        for eta in (1e-12, 1e-10, 1e-8, 1e-6, 1e-4):
            pts.append(np.clip(x + eta * (t_in[best_t] - x), X[i] + lo[i], X[i] + hi[i]))
    d2 = np.sum((Z - Z0[i]) ** 2, axis=1)
    for eps in (1e-12, 1e-9, 1e-6):
        cand_c = np.unique(np.concatenate([solver.near()[best_t], np.argsort(d2)[:_N_ROW]]))
        cand_c = cand_c[cand_c != best_t]
        G = 2.0 * (Z[cand_c] - Z[best_t]) @ solver.M
        h = d2[cand_c] - d2[best_t]
        h = h - eps * (np.abs(h) + np.linalg.norm(G, axis=1) * best + 1e-300)
        v2, _, _ = solver.solve_poly(G, h, lo[i] * w, hi[i] * w)
        if v2 is not None:
            pts.append(X[i] + v2 / w)
    P = np.array(pts)
    good = ok_at(P, np.full(len(P), i))
    if not good.any():
        return
    dist = weighted_norm(P - X[i], w, norm)
    k = np.flatnonzero(good)[np.argmin(dist[good])]
    out["point"][i] = P[k]
    out["dist"][i] = dist[k]
    out["nearest"][i] = form.predict_index(P[k][None, :])[0]
    out["method"][i] = "1-NN Voronoi cells: " + ("QP (NNLS, dual-certified)" if norm == "l2" else "LP (HiGHS)")
    # a lower bound over every cell: the unvisited ones are at least ``best`` away, the visited
    # ones at least their certified bounds (``best`` itself is only an upper bound unless the
    # best cell was solved to optimality)
    out["lower"][i] = min([best if best_cert else min(best, best_low)] + loose)
    if certified:
        out["exact"][i] = True
        out["opt"][i] = best


def _search_rows(solver, form, X, Z0, rows, orig, target, lo, hi, w, norm, P, out, ok_at, X_train, seed,
                 tick=lambda j: None):
    """Verified search (module docstring) for ``rows``."""
    ref = form.train_inputs()
    if ref is None:
        ref = X_train
    if ref is None or len(ref) == 0:
        ref = None
    ref_pred = form.predict_index(ref) if ref is not None else None
    for j, i in enumerate(rows):  # per row: endpoints, bisection, cell walk
        tick(j)
        x0 = X[i]
        box_lo, box_hi = x0 + lo[i], x0 + hi[i]
        t = target[i]
        best_p, best_d = None, np.inf
        fallback = (None, np.inf)
        if ref is not None:
            mask = (ref_pred != orig[i]) if t < 0 else (ref_pred == t)
            E = np.clip(ref[mask], box_lo, box_hi)
            if E.shape[0]:
                dd = weighted_norm(E - x0, w, norm)
                E = E[np.argsort(dd, kind="stable")[:8]]
                good = ok_at(E, np.full(len(E), i))
                E = E[good]
                if E.shape[0]:
                    tt = np.full(len(E), t if t >= 0 else -1)
                    pts = _bisect(form, x0, E, tt, orig[i], P)
                    dd = weighted_norm(pts - x0, w, norm)
                    k = int(np.argmin(dd))
                    best_p, best_d = pts[k], dd[k]
                    e_d = weighted_norm(E - x0, w, norm)
                    fallback = (E[int(np.argmin(e_d))], float(e_d.min()))  # verified above
                    starts = [pts[j] for j in np.argsort(dd, kind="stable")[:3]]
        if form.exact_geometry and form.k > 1:
            tt1 = np.array([t if t >= 0 else -1])
            extra = _bisector_starts(solver, form, Z0[i], x0, w, lo[i], hi[i], tt1, orig[i], P)
            if best_p is None and not extra:
                continue
            seeds = ([] if best_p is None else starts) + extra
            for p0 in seeds:  # a few starts: the walk is local
                d0 = float(weighted_norm(p0 - x0, w, norm))
                p1, d1 = _walk(solver, form, X, Z0, i, p0, d0, lo, hi, w, norm, orig, t, P, ok_at)
                if d1 < best_d:
                    best_p, best_d = p1, d1
        if best_p is None:
            continue
        # the estimator's own check; a point a hair inside the boundary by the fast count may sit
        # on the other side of it for the estimator's distance arithmetic: push it outward
        push = x0 + (best_p - x0) * (1.0 + np.array([0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2]))[:, None]
        push = np.clip(push, box_lo, box_hi)
        good = ok_at(push, np.full(len(push), i))
        if good.any():
            best_p = push[int(np.argmax(good))]
            best_d = float(weighted_norm(best_p - x0, w, norm))
        else:
            best_p, best_d = fallback
            if best_p is None:
                continue
        out["point"][i] = best_p
        out["dist"][i] = best_d
        out["nearest"][i] = form.predict_index(best_p[None, :])[0]
        out["method"][i] = ("order-k Voronoi walk from bisected training rows (verified)" if form.exact_geometry
                            and form.k > 1 else "bisection toward training rows (verified)")
    if form.weights == "uniform" and form.exact_geometry:
        out["lower"][rows] = _uniform_lower(solver, form, Z0[rows], orig[rows], norm)


def _fast_ok(form, points, t, c, P):
    """The target test by :func:`fast_votes` (``t`` -1: any class but ``c``)."""
    votes = fast_votes(form, points)
    pred = np.argmax(votes, axis=1)
    t = np.broadcast_to(np.asarray(t), (len(points),))
    ok = np.where(t >= 0, pred == t, pred != c)
    if P is not None:
        ok &= votes[np.arange(len(points)), np.maximum(t, 0)] >= P
    return ok


def _bisect(form, x0, E, t, c, P, steps=50):
    """Pull endpoints ``E`` toward ``x0``, keeping the far end on the target side (by the fast
    vote count): target ``t`` (-1: not ``c``)."""
    a_lo = np.zeros(len(E))
    a_hi = np.ones(len(E))
    Dv = E - x0
    for _ in range(steps):
        mid = 0.5 * (a_lo + a_hi)
        ok = _fast_ok(form, x0 + mid[:, None] * Dv, t, c, P)
        a_hi = np.where(ok, mid, a_hi)
        a_lo = np.where(ok, a_lo, mid)
    return x0 + a_hi[:, None] * Dv


def _bisector_starts(solver, form, z0, x0, w, lo_i, hi_i, tt, c, P, m=16):
    """Target points just past the nearest bisectors through which a point of another class
    enters the row's ``k`` nearest (the halfspaces of the uniform lower bound), by the fast
    count; ``[]`` when none qualifies."""
    k = form.k
    d2 = np.sum((solver.Z - z0) ** 2, axis=1)
    nb = np.argsort(d2, kind="stable")[:k]
    cand = np.flatnonzero(solver.y != c)
    cand = cand[~np.isin(cand, nb)]
    if cand.size == 0:
        return []
    S, T = np.meshgrid(nb, cand, indexing="ij")
    a = 2.0 * (solver.Z[S.ravel()] - solver.Z[T.ravel()]) @ solver.M
    b = d2[S.ravel()] - d2[T.ravel()]
    nn = np.sum(a * a, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(nn > 0, -b / nn, np.inf)
    order = np.argsort(np.where(b < 0, step * np.sqrt(nn), np.inf), kind="stable")[:m]
    V = -(a[order] * step[order, None]) * 1.01   # v beyond the bisector a.v = b, a little
    V = V[np.all(np.isfinite(V), axis=1)]
    if V.shape[0] == 0:
        return []
    Pts = np.clip(x0 + V / w, x0 + lo_i, x0 + hi_i)
    good = _fast_ok(form, Pts, np.full(len(Pts), tt[0]), c, P)
    return [p for p in Pts[good][:4]]


def _walk(solver, form, X, Z0, i, p, dp, lo, hi, w, norm, orig, t, P, ok_at, rounds=12):
    """Order-k cell walk from the verified point ``p`` (module docstring)."""
    x0 = X[i]
    z0 = Z0[i]
    d2 = np.sum((solver.Z - z0) ** 2, axis=1)
    vlo, vhi = lo[i] * w, hi[i] * w
    for _ in range(rounds):
        dd = np.sum((solver.Z - form.transform(p[None, :])[0]) ** 2, axis=1)
        members = np.argsort(dd, kind="stable")[None, :form.k]
        v, dist = solver.order_k_cell(z0, d2, members[0], vlo, vhi)
        if v is None or dist >= dp * (1 - 1e-12):
            break
        q = x0 + v / w
        # the segment from q to p lies in the (convex) cell; bisect toward q keeping p's side
        tt = np.array([t if t >= 0 else -1])
        cand = _bisect(form, q, p[None, :], tt, orig[i], P, steps=40)[0]
        dc = float(weighted_norm(cand - x0, w, norm))
        if not _fast_ok(form, cand[None, :], tt, orig[i], P)[0] or dc >= dp * (1 - 1e-12):
            break
        p, dp = cand, dc
        # step a little past the cell's nearest point toward the row: the next cell
        nxt = np.clip(q + 1e-6 * (x0 - q), x0 + lo[i], x0 + hi[i])
        if _fast_ok(form, nxt[None, :], tt, orig[i], P)[0]:
            dn = float(weighted_norm(nxt - x0, w, norm))
            if dn < dp:
                p, dp = nxt, dn
    return p, dp


def _uniform_lower(solver, form, Z0, orig, norm):
    """Certified lower bounds for uniform votes (module docstring): the distance to the nearest
    bisector halfspace through which a point of another class enters the ``k`` nearest."""
    k = form.k
    _, nb = form.kneighbors(Z0, k)
    out = np.zeros(Z0.shape[0])
    for r in range(Z0.shape[0]):  # per row: (m x k) halfspace distances
        d2 = np.sum((solver.Z - Z0[r]) ** 2, axis=1)
        cand = np.flatnonzero(solver.y != orig[r])
        cand = cand[~np.isin(cand, nb[r])]
        if cand.size == 0:
            out[r] = np.inf
            continue
        worst = np.full(cand.size, np.inf)
        for s in nb[r]:  # t enters by beating one of the current neighbours
            a = 2.0 * (solver.Z[s] - solver.Z[cand]) @ solver.M
            b = d2[s] - d2[cand]
            qn = np.linalg.norm(a, ord=_Q[norm], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                dist = np.where(b < 0, np.where(qn > 0, -b / qn, np.inf), 0.0)
            worst = np.minimum(worst, dist)
        out[r] = worst.min()
    return out


def solve_neighbors(form, prob: Problem, *, X_train=None, seed: int = 0, n_candidates: int = 32,
                    progress=None) -> dict:
    """Margins of a neighbours form (module docstring)."""
    n, D = prob.X.shape
    lo, hi = prob.box()
    res = neighbor_rows(form, prob.X, prob.pred, np.full(n, -1), lo=lo, hi=hi, weights=prob.weights,
                        norm=prob.norm, X_train=X_train, seed=seed, progress=progress)
    found = np.all(np.isfinite(res["point"]), axis=1)
    delta, ok, idx = finalize(form, prob.X, np.where(found[:, None], res["point"], np.nan), prob.pred)
    margin = np.where(ok, weighted_norm(np.nan_to_num(delta), prob.weights, prob.norm), np.nan)
    exact = res["exact"] & ok
    margin[exact] = res["opt"][exact]
    lower = res["lower"].copy()
    lower[exact] = res["opt"][exact]
    unreach = res["unreachable"]
    margin[unreach] = np.inf
    lower[unreach] = np.inf
    exact = exact | unreach
    pnorm = np.where(ok, weighted_norm(np.nan_to_num(delta), prob.weights, prob.norm), np.nan)
    method = res["method"].copy()
    method[~ok & ~unreach] = np.where(method[~ok & ~unreach] == "", "neighbour search (no verified point)",
                                      method[~ok & ~unreach])
    return dict(margin=margin, lower_bound=lower, nearest_index=np.where(ok, idx, -1), perturbation=delta,
                perturbation_norm=pnorm, exact=exact, method=method)
