"""Margins of tree models: exact for single trees, MILP or bounds for ensembles.

Single trees
------------
A tree partitions the space into leaf boxes; the points predicted as another class are the
union of the boxes of leaves whose class differs, so the margin is the distance to the nearest
such box (:func:`~invaudit.margins.boxes.project_to_boxes`, intersected with the admissible box).

Ensembles
---------
Exactly, through the mixed-integer program of Kantchelian, Tygar & Joseph (2016), "Evasion and
hardening of tree ensemble classifiers", sec. 3: one binary *predicate* variable
``p_i = [x_f <= theta_i]`` per distinct split point (ordered within a feature), one leaf
variable ``z_l`` per leaf with ``z_l <= p_i`` for each upper bound of its box and
``z_l <= 1 - p_i`` for each lower bound, ``sum_{l in tree} z_l = 1``. Once the predicates are
integral each tree has exactly one consistent leaf, so the ``z_l`` may stay continuous. The class
scores are linear in ``z`` (mean of leaf probabilities for forests, ``init + scale * sum`` of leaf
values for boosting, whose link is monotone); one program per other class ``j`` asks for
``score_j - score_p >= 0``. The distance is separable over features and piecewise constant over
each feature's split intervals, so l1 and *squared* l2 are linear in the predicates
(telescoping increments; Kantchelian et al. eq. 6) and linf is one epigraph variable. Solved with
HiGHS (``scipy.optimize.milp``) under a time limit: the dual bound is a certified lower bound,
and the optimum is *exact* when the point rebuilt from its predicates is verified by the
estimator at that distance.

When the program is too large or runs out of time, the upper bound comes from verified boundary
search (training rows, random directions, points of other leaves), and the lower bound from
*leaf exits*: within radius ``eps`` only trees whose current leaf box can be left within ``eps``
(distance ``min_f w_f min(x_f - lower_f, upper_f - x_f)``) change their contribution, each by
at most its largest possible change of ``score_j - score_p``; the smallest ``eps`` at which these
changes can close the gap is a lower bound.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from threadpoolctl import threadpool_limits

from invaudit.margins._common import Problem, finalize, weighted_norm
from invaudit.margins.boxes import intersect_boxes, project_to_boxes

_CHUNK = 4_000_000


# --- the scores as a table over all leaves --------------------------------------------------------

def score_table(form):
    """``(Sc, s0, offsets)``: the class scores are ``s0 + sum_t Sc[offsets[t] + leaf_t]`` and the
    predicted class is their argmax (first index on ties), for every aggregate."""
    trees = form.trees
    V = np.concatenate([np.asarray(t.value, dtype=np.float64) for t in trees], axis=0)
    sizes = np.array([t.value.shape[0] for t in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    K = form.n_classes
    if form.aggregate == "single":
        return V, np.zeros(K), offsets
    if form.aggregate == "mean-proba":
        return V / len(trees), np.zeros(K), offsets
    init = np.asarray(form.init, dtype=np.float64).reshape(-1)
    if form.link == "sigmoid":  # binary boosting: scores (0, raw)
        Sc = np.column_stack([np.zeros(V.shape[0]), form.scale * V[:, 0]])
        return Sc, np.array([0.0, init[0]]), offsets
    return form.scale * V, init.copy(), offsets


# --- single trees ------------------------------------------------------------------------------

def _single_tree(form, prob: Problem, progress=None) -> dict:
    tree = form.trees[0]
    leaf_cls = np.argmax(np.asarray(tree.value), axis=1)
    X, p = prob.X, prob.pred
    n, d = X.shape
    margin = np.full(n, np.inf)
    point = np.full((n, d), np.nan)
    nearest_leaf = np.full(n, -1, dtype=np.intp)
    done = 0
    for k in np.unique(p):  # a loop over classes
        rows = np.flatnonzero(p == k)
        leaves = np.flatnonzero(leaf_cls != k)
        if leaves.size == 0:
            continue
        lower, upper = tree.lower[leaves], tree.upper[leaves]
        step = max(1, _CHUNK // (leaves.size * d))
        for s in range(0, rows.size, step):
            r = rows[s:s + step]
            if prob.lo is None:
                lw, up = lower, upper
            else:
                lw, up = intersect_boxes(lower, upper, X[r] + prob.lo[r], X[r] + prob.hi[r])
            pts, dist = project_to_boxes(X[r], lw, up, prob.weights, prob.norm)
            best = np.argmin(dist, axis=1)
            bd = dist[np.arange(r.size), best]
            margin[r] = bd
            has = np.isfinite(bd)
            point[r[has]] = pts[np.arange(r.size)[has], best[has]]
            nearest_leaf[r[has]] = leaves[best[has]]
            done += r.size
            if progress is not None:
                progress(done, n)
    reach = np.isfinite(margin)
    # the infimum: distance to the closed box (the returned point is one ulp inside the open side)
    inf_dist = np.full(n, np.inf)
    if reach.any():
        rr = np.flatnonzero(reach)
        lw = tree.lower[nearest_leaf[rr]]
        up = tree.upper[nearest_leaf[rr]]
        if prob.lo is not None:
            lw = np.maximum(lw, X[rr] + prob.lo[rr])
            up = np.minimum(up, X[rr] + prob.hi[rr])
        inf_dist[rr] = weighted_norm(np.clip(X[rr], lw, up) - X[rr], prob.weights, prob.norm)
    delta, verified, nearest = finalize(form, X, point, p)
    exact = verified | ~reach
    meth = np.full(n, "tree-nearest-leaf-box", dtype=object)
    meth[~reach] = "tree-nearest-leaf-box (unreachable)"
    meth[reach & ~verified] = "tree-nearest-leaf-box (unverified: the estimator disagrees with the boxes)"
    return dict(margin=np.where(exact, inf_dist, np.nan), lower_bound=np.where(exact, inf_dist, np.nan),
                nearest_index=nearest,
                perturbation=delta,
                perturbation_norm=np.where(verified, weighted_norm(np.nan_to_num(delta), prob.weights, prob.norm),
                                           np.nan),
                exact=exact, method=meth)


# --- ensembles: leaf-exit lower bound -------------------------------------------------------------

def leaf_exit_bounds(form, prob: Problem, Sc, s0, offsets):
    """``(lb (n, K), scores (n, K))``: per other class, the leaf-exit lower bound on the distance
    to a point where that class scores at least as high as the predicted one (module docstring);
    ``inf`` for the predicted class and for classes no change of leaves can lift high enough."""
    X, p = prob.X, prob.pred
    n, d = X.shape
    trees = form.trees
    T = len(trees)
    K = Sc.shape[1]
    lowers = np.concatenate([t.lower for t in trees], axis=0)
    uppers = np.concatenate([t.upper for t in trees], axis=0)
    # largest attainable score_j - score_q per tree: Mx[t, j, q]
    Mx = np.empty((T, K, K))
    for t in range(T):  # build time, once per model
        v = Sc[offsets[t]:offsets[t] + trees[t].value.shape[0]]
        Mx[t] = np.max(v[:, :, None] - v[:, None, :], axis=0)
    leaf = form.leaf_index(X) + offsets  # (n, T) global leaf ids
    lb = np.full((n, K), np.inf)
    scores = np.empty((n, K))
    step = max(1, _CHUNK // max(1, T * max(d, K)))
    for s in range(0, n, step):
        r = np.arange(s, min(n, s + step))
        x = X[r][:, None, :]
        lw, up = lowers[leaf[r]], uppers[leaf[r]]  # (c, T, D)
        with np.errstate(invalid="ignore"):
            down = x - lw  # leave through the lower face: z <= lower
            upm = up - x   # leave through the upper face: z > upper
        if prob.lo is not None:
            down = np.where(x + prob.lo[r][:, None, :] <= lw, down, np.inf)
            upm = np.where(x + prob.hi[r][:, None, :] > up, upm, np.inf)
        exit_d = np.min(prob.weights * np.minimum(down, upm), axis=2)  # (c, T)
        exit_d = np.where(np.isnan(exit_d), np.inf, exit_d)
        order = np.argsort(exit_d, axis=1, kind="stable")
        d_sorted = np.take_along_axis(exit_d, order, axis=1)
        pr = p[r]
        cur = Sc[leaf[r]]  # (c, T, K)
        scores[r] = s0 + cur.sum(axis=1)
        cur_gap = cur - cur[np.arange(r.size), :, pr][:, :, None]  # score_j - score_p per tree
        gain = Mx[:, :, pr].transpose(2, 0, 1) - cur_gap          # (c, T, K) >= 0
        gain = np.take_along_axis(gain, order[:, :, None], axis=1)
        cum = np.cumsum(gain, axis=1)
        need = scores[r, pr][:, None] - scores[r]  # (c, K), >= 0 up to rounding
        tol = 1e-9 * (1.0 + np.abs(scores[r]).max(axis=1, keepdims=True))
        hit = (cum >= (need - tol)[:, None, :]) & np.isfinite(d_sorted)[:, :, None]
        first = np.argmax(hit, axis=1)  # (c, K)
        any_hit = hit.any(axis=1)
        val = np.take_along_axis(d_sorted, first, axis=1)
        lbr = np.where(any_hit, val, np.inf)
        lbr = np.where(need <= tol, 0.0, lbr)
        lbr[np.arange(r.size), pr] = np.inf
        lb[r] = lbr
    return lb, scores


# --- ensembles: the MILP ---------------------------------------------------------------------------

class EnsembleMilp:
    """The Kantchelian et al. program for one model, built once; :meth:`solve` per row and class."""

    def __init__(self, form, Sc, s0, weights, norm):
        trees = form.trees
        self.norm = norm
        self.w = weights
        self.Sc, self.s0 = Sc, s0
        d = int(form.n_features)
        self.d = d
        lowers = np.concatenate([t.lower for t in trees], axis=0)
        uppers = np.concatenate([t.upper for t in trees], axis=0)
        L = lowers.shape[0]
        lu, fu = np.nonzero(np.isfinite(uppers))
        ll, fl = np.nonzero(np.isfinite(lowers))
        pairs = np.column_stack([np.concatenate([fu, fl]).astype(np.float64),
                                 np.concatenate([uppers[lu, fu], lowers[ll, fl]])])
        if pairs.shape[0]:
            uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
            inv = np.asarray(inv).ravel()
        else:
            uniq, inv = np.zeros((0, 2)), np.zeros(0, dtype=np.intp)
        self.feat = uniq[:, 0].astype(np.intp)
        self.theta = uniq[:, 1]
        P = self.P = uniq.shape[0]
        self.L = L
        inv_u, inv_l = inv[:lu.size], inv[lu.size:]
        same = np.flatnonzero(self.feat[1:] == self.feat[:-1])
        self.same_next = np.zeros(P, dtype=bool)
        self.same_next[same] = True
        rows, cols, vals, lb, ub = [], [], [], [], []
        r0 = 0
        # ordering: p_i <= p_{i+1} within a feature
        m = same.size
        rows += [r0 + np.arange(m)] * 2
        cols += [same, same + 1]
        vals += [np.ones(m), -np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); r0 += m
        # a leaf needs x_f <= upper: z_l <= p_i
        m = lu.size
        rows += [r0 + np.arange(m)] * 2
        cols += [P + lu, inv_u]
        vals += [np.ones(m), -np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); r0 += m
        # a leaf needs x_f > lower: z_l <= 1 - p_i
        m = ll.size
        rows += [r0 + np.arange(m)] * 2
        cols += [P + ll, inv_l]
        vals += [np.ones(m), np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.ones(m)); r0 += m
        # one leaf per tree
        tree_of_leaf = np.repeat(np.arange(len(trees)), [t.lower.shape[0] for t in trees])
        rows.append(r0 + tree_of_leaf)
        cols.append(P + np.arange(L))
        vals.append(np.ones(L))
        lb.append(np.ones(len(trees))); ub.append(np.ones(len(trees))); r0 += len(trees)
        self.n_var = P + L + (1 if norm == "linf" else 0)
        self.A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(r0, self.n_var))
        self.A_lb, self.A_ub = np.concatenate(lb), np.concatenate(ub)
        self.integrality = np.zeros(self.n_var)
        self.integrality[:P] = 1

    @property
    def n_binaries(self) -> int:
        return self.P

    def _objective(self, x0):
        """Linear objective (and constant) for l1 / squared l2; ``g`` distances for linf."""
        P = self.P
        xf = x0[self.feat]
        g = self.w[self.feat] * np.abs(xf - self.theta)
        if self.norm == "l2":
            g = g * g
        below = self.theta < xf  # p_i = 1 costs: move down to theta_i
        c = np.zeros(self.n_var)
        const = 0.0
        if self.norm == "linf":
            c[-1] = 1.0
            return c, const, g, below
        nxt = np.zeros(P)
        nb = self.same_next & np.append(below[1:], False)
        nxt[nb] = g[np.flatnonzero(nb) + 1]
        cb = g - nxt  # telescoping increments below x0 (descending thresholds)
        prv = np.zeros(P)
        above = ~below
        pa = np.append(False, self.same_next[:-1]) & np.append(False, above[:-1])
        prv[pa] = g[np.flatnonzero(pa) - 1]
        ca = g - prv  # increments above x0 (ascending thresholds), paid when p_i = 0
        c[:P] = np.where(below, cb, -ca)
        const = float(np.sum(ca[above]))
        return c, const, g, below

    def solve(self, x0, p, j, lo, hi, *, strict: float = 0.0, time_limit: float = 10.0):
        """Minimum distance from ``x0`` to a point with ``score_j - score_p >= strict`` inside
        ``x0 + [lo, hi]``. Returns ``(lower_bound, point or None, status)`` with status
        "optimal", "time-limit" or "infeasible"."""
        P = self.P
        c, const, g, below = self._objective(x0)
        cons = [LinearConstraint(self.A, self.A_lb, self.A_ub)]
        row = np.zeros(self.n_var)
        row[P:P + self.L] = self.Sc[:, j] - self.Sc[:, p]
        cons.append(LinearConstraint(row[None, :], self.s0[p] - self.s0[j] + strict, np.inf))
        if self.norm == "linf":
            m = P
            r_idx = np.concatenate([np.arange(m), np.arange(m)])
            c_idx = np.concatenate([np.full(m, self.n_var - 1), np.arange(m)])
            v = np.concatenate([np.ones(m), np.where(below, -g, g)])
            Alin = sparse.csr_matrix((v, (r_idx, c_idx)), shape=(m, self.n_var))
            lbl = np.where(below, 0.0, g)
            cons.append(LinearConstraint(Alin, lbl, np.inf))
        lbv = np.zeros(self.n_var)
        ubv = np.ones(self.n_var)
        if self.norm == "linf":
            ubv[-1] = np.inf
        xf = x0[self.feat]
        lbv[:P] = np.where(xf + hi[self.feat] <= self.theta, 1.0, 0.0)  # x <= theta forced
        ubv[:P] = np.where(xf + lo[self.feat] > self.theta, 0.0, 1.0)   # x > theta forced
        if np.any(lbv > ubv):
            return np.inf, None, "infeasible"
        res = milp(c, integrality=self.integrality, bounds=Bounds(lbv, ubv), constraints=cons,
                   options={"time_limit": max(0.05, float(time_limit)), "mip_rel_gap": 0.0,
                            "presolve": True})
        if res.status == 2:
            return np.inf, None, "infeasible"
        dual = getattr(res, "mip_dual_bound", None)
        if res.status == 0:
            dual = res.fun if dual is None or not np.isfinite(dual) else min(dual, res.fun)
        lbound = -np.inf if dual is None or not np.isfinite(dual) else dual + const
        lbound = np.sqrt(max(lbound, 0.0)) if self.norm == "l2" else max(lbound, 0.0)
        status = "optimal" if res.status == 0 else "time-limit"
        if res.x is None:
            return lbound, None, status
        pv = res.x[:P] > 0.5
        lo_int = np.full(self.d, -np.inf)
        up_int = np.full(self.d, np.inf)
        np.maximum.at(lo_int, self.feat[~pv], self.theta[~pv])
        np.minimum.at(up_int, self.feat[pv], self.theta[pv])
        point = np.minimum(np.maximum(x0, np.nextafter(lo_int, np.inf)), up_int)
        point = np.clip(point, x0 + lo, x0 + hi)
        return lbound, point, status


def _ensemble(form, prob: Problem, *, X_train, seed, progress, time_limit, max_binaries,
              n_candidates) -> dict:
    from invaudit.margins._blackbox import search

    X = prob.X
    n, d = X.shape
    Sc, s0, offsets = score_table(form)
    lb_cls, _ = leaf_exit_bounds(form, prob, Sc, s0, offsets)
    lower = lb_cls.min(axis=1)
    margin = np.full(n, np.nan)
    delta = np.full((n, d), np.nan)
    nearest = np.full(n, -1, dtype=np.intp)
    exact = np.zeros(n, dtype=bool)
    method = np.full(n, "", dtype=object)
    unreachable = ~np.isfinite(lower)
    exact[unreachable] = True
    margin[unreachable] = np.inf
    method[unreachable] = "tree-leaf-exit (unreachable)"
    model = EnsembleMilp(form, Sc, s0, prob.weights, prob.norm)
    use_milp = model.n_binaries <= max_binaries
    if use_milp:
        # one program per row and class, each verified by predicting a single point: OpenMP
        # thread start-up (HistGradientBoosting's predict) would dominate those tiny calls
        with threadpool_limits(limits=1, user_api="openmp"):
            _milp_rows(form, prob, model, Sc, lb_cls, lower, margin, delta, nearest, exact, method,
                       np.flatnonzero(~unreachable), time_limit, progress)
    todo = np.flatnonzero(np.isnan(margin))
    if todo.size:
        extra = _leaf_candidates(form, prob, todo, Sc, n_candidates)
        dl, dist, nk = search(form, prob, todo, X_train=X_train, seed=seed, n_candidates=n_candidates,
                              extra=extra)
        found = np.isfinite(dist)
        margin[todo[found]] = dist[found]
        delta[todo[found]] = dl[found]
        nearest[todo[found]] = nk[found]
        why = "MILP too large" if not use_milp else "MILP time limit"
        method[todo] = f"tree-ensemble-bounds ({why}: boundary search, leaf-exit lower bound)"
    pnorm = np.where(np.all(np.isfinite(delta), axis=1),
                     weighted_norm(np.nan_to_num(delta), prob.weights, prob.norm), np.nan)
    lower = np.where(np.isnan(margin), lower, np.minimum(lower, margin))  # inf margins keep their bound
    return dict(margin=margin, lower_bound=lower, nearest_index=nearest, perturbation=delta,
                perturbation_norm=pnorm, exact=exact, method=method)


def _milp_rows(form, prob, model, Sc, lb_cls, lower, margin, delta, nearest, exact, method, rows,
               time_limit, progress):
    """The MILP for each of ``rows`` (fills the output arrays in place)."""
    X, p = prob.X, prob.pred
    n = prob.n
    lo_all, hi_all = prob.box()
    for i in rows:  # one program per row (and other class)
        start = time.perf_counter()
        best_d, best_pt, best_k = np.inf, None, -1
        lbs = lb_cls[i].copy()
        timed_out = False
        for j in np.argsort(lb_cls[i], kind="stable"):
            if j == p[i] or not np.isfinite(lb_cls[i, j]) or lb_cls[i, j] >= best_d:
                continue
            left = time_limit - (time.perf_counter() - start)
            if left <= 0:
                timed_out = True
                break
            lbj, pt, st = model.solve(X[i], p[i], j, lo_all[i], hi_all[i], time_limit=left)
            lbs[j] = max(lbs[j], lbj)
            if st == "time-limit":
                timed_out = True
            if pt is not None:
                dl, ok, idx = finalize(form, X[i:i + 1], pt[None, :], p[i:i + 1])
                if not ok[0]:  # a tie the estimator resolves for p: ask for a strict win
                    scale = 1e-7 * (1.0 + np.abs(Sc).max())
                    _, pt, _ = model.solve(X[i], p[i], j, lo_all[i], hi_all[i], strict=scale,
                                           time_limit=max(0.05, time_limit - (time.perf_counter() - start)))
                    if pt is not None:
                        dl, ok, idx = finalize(form, X[i:i + 1], pt[None, :], p[i:i + 1])
                if pt is not None and ok[0]:
                    dist = float(weighted_norm(dl[0], prob.weights, prob.norm))
                    if dist < best_d:
                        best_d, best_pt, best_k = dist, dl[0], int(idx[0])
        lbs[p[i]] = np.inf
        lower[i] = min(np.min(lbs), best_d)  # every other class is bounded below
        if best_pt is not None:
            margin[i] = best_d
            delta[i] = best_pt
            nearest[i] = best_k
            # exact when the verified point is as near as the certified lower bound
            exact[i] = best_d <= lower[i] * (1 + 1e-9) + 1e-12
            method[i] = "tree-ensemble-milp" if exact[i] else \
                "tree-ensemble-milp (" + ("time limit" if timed_out else "tie") + ": bounds)"
        elif not np.isfinite(lower[i]):
            margin[i] = np.inf
            exact[i] = True
            method[i] = "tree-ensemble-milp (unreachable)"
        if progress is not None:
            progress(int(i) + 1, n)


def _leaf_candidates(form, prob: Problem, rows, Sc, m):
    """Endpoints for the boundary search: for each row, the nearest points of the ``m`` nearest
    leaf boxes (over all trees) whose own scores favour another class."""
    X = prob.X[rows]
    p = prob.pred[rows]
    lowers = np.concatenate([t.lower for t in form.trees], axis=0)
    uppers = np.concatenate([t.upper for t in form.trees], axis=0)
    fav = np.argmax(Sc, axis=1)
    out = np.full((rows.size, m, X.shape[1]), np.nan)
    step = max(1, _CHUNK // (lowers.shape[0] * X.shape[1]))
    for s in range(0, rows.size, step):
        r = np.arange(s, min(rows.size, s + step))
        if prob.lo is None:
            lw, up = lowers, uppers
        else:
            lw, up = intersect_boxes(lowers, uppers, X[r] + prob.lo[rows[r]], X[r] + prob.hi[rows[r]])
        pts, dist = project_to_boxes(X[r], lw, up, prob.weights, prob.norm)
        dist = np.where(fav[None, :] == p[r][:, None], np.inf, dist)
        mm = min(m, dist.shape[1])
        part = np.argsort(dist, axis=1, kind="stable")[:, :mm]
        sel = np.take_along_axis(pts, part[:, :, None], axis=1)
        sel[~np.isfinite(np.take_along_axis(dist, part, axis=1))] = np.nan
        out[r, :mm] = sel
    return out


def solve_trees(form, prob: Problem, *, X_train=None, seed=0, progress=None, time_limit=10.0,
                max_binaries=4000, n_candidates=32) -> dict:
    """Tree margins (module docstring)."""
    if form.aggregate == "single":
        return _single_tree(form, prob, progress)
    return _ensemble(form, prob, X_train=X_train, seed=seed, progress=progress,
                     time_limit=time_limit, max_binaries=max_binaries, n_candidates=n_candidates)
