"""Counterfactuals for tree models: exact for single trees, exact through a MILP for ensembles
where affordable, otherwise the nearest verified live region.

Single trees
------------
A tree partitions the input space into leaf boxes ``lower < x <= upper`` (open below, closed
above; :mod:`invaudit.models.trees` gives the exact float64 cut-offs). The counterfactual is the
nearest point of a leaf whose prediction is the target (with ``value[target] >= P`` for a
confidence), inside the row's constraint box. A box is a product of intervals, so the
coordinate-wise clip is the nearest point for every weighted l_p norm at once
(:func:`invaudit.margins.boxes.project_to_boxes`, after
:func:`~invaudit.margins.boxes.intersect_boxes` with the constraint box); enumerating all leaves
(vectorised) gives the exact optimum for L1, L2 and Linf. The certificate (``kkt_residual``) is
the relative gap between the returned distance and the infimum over the *closed* boxes (the open
side costs at most one ulp).

Ensembles
---------
The predicates ``x_j <= t`` over every split threshold ``t`` of feature ``j`` cut each axis into
cells; a point is a choice of one cell per feature. With ordered binaries ``p_{j,k} = [x_j <=
t_{j,k}]`` (``p_{j,k} <= p_{j,k+1}``) and leaf indicators ``l`` (one leaf per tree, ``l <= p``
for a leaf's upper bounds and ``l <= 1 - p`` for its lower bounds), the prediction is linear in
``l`` (Kantchelian, Tygar & Joseph, "Evasion and hardening of tree ensemble classifiers", ICML
2016, sec. 3; Cui et al., "Optimal action extraction for random forests and boosted trees", KDD
2015). Because each feature sits in exactly one cell, its distance to the row *in that cell* is a
constant, so the L1 distance and the *squared* L2 distance are linear in the cell indicators
``p_{j,c+1} - p_{j,c}``, and Linf is one more variable above every feature's term: all three
norms are exact mixed-integer *linear* programs, solved by HiGHS (``scipy.optimize.milp``). The
row's box fixes predicates (cells outside it are excluded). The optimum is exact (``exact:
true``, ``kkt_residual`` the reported MIP gap) when HiGHS proves optimality within the time
limit and the estimator confirms the point; ties in the prediction are resolved as scikit-learn
does (the lower class index wins) up to a margin of 1e-7 in the aggregated score.

Fallback (and candidate): *live regions*, the cells of the ensemble that hold reference rows
(the training data, else the batch). A reference row predicted as the target lies in the
intersection of its leaves, a box on which the ensemble is constant; projecting the row onto
every such box gives verified candidates (``exact: false``), which the black-box local search
(:func:`._nl_blackbox.local_search`) then tries to improve. Used when the MILP is too large
(``max_binaries``), stopped by the time limit (its incumbent competes; its dual bound is kept
as ``lower_bound``), or cannot express the constraint (multiclass boosting with a confidence:
the softmax threshold is not linear in the leaves).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from invaudit.counterfactual._nl_common import Answers, Problem, distance, qualifies
from invaudit.margins.boxes import intersect_boxes, project_to_boxes

__all__ = ["solve_trees", "EnsembleMilp", "live_regions"]

_MARGIN = 1e-7
_CHUNK = 4_000_000


# --- single trees -------------------------------------------------------------------------------

def _single_tree(prob: Problem) -> Answers:
    form = prob.form
    box = form.trees[0]
    L = box.lower.shape[0]
    n, D = prob.X.shape
    K = int(form.n_classes)
    ans = Answers(n, D)
    leaf_pred = np.argmax(box.value, axis=1)  # the estimator's argmax (first of ties)
    qual = leaf_pred[None, :] == np.arange(K)[:, None]  # (K, L)
    if prob.P is not None:
        qual &= box.value.T >= prob.P
    step = max(1, _CHUNK // max(1, L * D))
    dist_all = np.full((n, L), np.inf)
    lb = np.full(n, np.inf)
    for s in range(0, n, step):  # chunks of rows; every leaf at once
        sl = slice(s, s + step)
        lo, hi = intersect_boxes(box.lower, box.upper, prob.lower[sl], prob.upper[sl])
        _, dist = project_to_boxes(prob.X[sl], lo, hi, prob.weights, prob.norm)
        mask = qual[prob.target[sl]]
        dist_all[sl] = np.where(mask, dist, np.inf)
        # the infimum over the closed boxes (a lower bound: the open side adds at most an ulp)
        empty = np.any(np.nextafter(lo, np.inf) > hi, axis=-1)
        closed = np.clip(prob.X[sl][:, None, :], lo, hi)
        dc = distance(closed - prob.X[sl][:, None, :], prob.weights, prob.norm)
        lb[sl] = np.where(mask & ~empty, dc, np.inf).min(axis=1)
    order = np.argsort(dist_all, axis=1, kind="stable")
    rank = np.zeros(n, dtype=np.intp)
    pending = np.isfinite(dist_all[np.arange(n), order[:, 0]])
    ans.fail(np.flatnonzero(~pending),
             "no leaf of the target class" + ("" if prob.P is None else f" with p >= {prob.P:g}")
             + " intersects the allowed box", infeasible=True, method="tree-leaf-enumeration")
    for _ in range(8):  # estimator disagreements (float32 rounding) move on to the next leaf
        idx = np.flatnonzero(pending)
        if len(idx) == 0:
            break
        leaf = order[idx, rank[idx]]
        lo = np.maximum(box.lower[leaf], np.nextafter(prob.lower[idx], -np.inf))
        hi = np.minimum(box.upper[leaf], prob.upper[idx])
        pts = np.minimum(np.maximum(prob.X[idx], np.nextafter(lo, np.inf)), hi)
        ok = qualifies(form, pts, prob.target[idx], prob.P)[0]
        d = dist_all[idx, leaf]
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(d > 0, np.maximum(d - lb[idx], 0.0) / d, 0.0)
        ans.offer(idx[ok], pts[ok], d[ok], prob.target[idx[ok]], "tree-leaf-enumeration",
                  exact=True, kkt=gap[ok], iters=1,
                  backing="exact: nearest leaf box of the target class (all leaves enumerated)",
                  lower_bound=lb[idx[ok]])
        pending[idx[ok]] = False
        bad = idx[~ok]
        rank[bad] += 1
        more = rank[bad] < L
        still = np.zeros(len(bad), dtype=bool)
        still[more] = np.isfinite(dist_all[bad[more], order[bad[more], rank[bad[more]]]])
        pending[bad] = still
        ans.fail(bad[~still], "no leaf of the target class is confirmed by the estimator",
                 method="tree-leaf-enumeration")
    left = np.flatnonzero(pending)
    ans.fail(left, "the estimator disagrees with the leaf boxes near this row",
             method="tree-leaf-enumeration")
    return ans


# --- live regions ---------------------------------------------------------------------------------

def live_regions(form, X_ref: np.ndarray):
    """Boxes of the ensemble's cells holding the reference rows: ``(lower, upper, rows)`` with
    ``lower < x <= upper`` the intersection of the leaves a reference row falls in (duplicates
    removed; ``rows`` indexes one reference row per region)."""
    if X_ref is None or len(X_ref) == 0:
        D = form.n_features
        return np.zeros((0, D)), np.zeros((0, D)), np.zeros(0, dtype=np.intp)
    leaves = form.leaf_index(X_ref)  # (m, T)
    _, first = np.unique(leaves, axis=0, return_index=True)
    leaves = leaves[first]
    lo = np.full((len(first), form.n_features), -np.inf)
    hi = np.full((len(first), form.n_features), np.inf)
    for t, tb in enumerate(form.trees):  # a loop over trees; vectorised over regions
        lo = np.maximum(lo, tb.lower[leaves[:, t]])
        hi = np.minimum(hi, tb.upper[leaves[:, t]])
    return lo, hi, first


def _region_candidates(prob: Problem, regions, ans: Answers):
    """Offer the nearest verified live region of the target class to every row."""
    lo_r, hi_r, ref_rows = regions
    n, D = prob.X.shape
    if len(ref_rows) == 0 or n == 0:
        return
    pool = prob.pool
    for cls in np.unique(prob.target):  # a loop over classes
        ok_reg = pool.pred[ref_rows] == cls
        if prob.P is not None and pool.proba is not None:
            ok_reg &= pool.proba[ref_rows, cls] >= prob.P
        if not np.any(ok_reg):
            continue
        rl, rh = lo_r[ok_reg], hi_r[ok_reg]
        R = len(rl)
        rows = np.flatnonzero(prob.target == cls)
        step = max(1, _CHUNK // max(1, R * D))
        for s in range(0, len(rows), step):
            rr = rows[s:s + step]
            lo, hi = intersect_boxes(rl, rh, prob.lower[rr], prob.upper[rr])
            pts, dist = project_to_boxes(prob.X[rr], lo, hi, prob.weights, prob.norm)
            for _ in range(3):  # the nearest region, then the next if the estimator disagrees
                k = np.argmin(dist, axis=1)
                d = dist[np.arange(len(rr)), k]
                fin = np.isfinite(d)
                if not np.any(fin):
                    break
                p = pts[np.arange(len(rr)), k]
                ok = np.zeros(len(rr), dtype=bool)
                ok[fin] = qualifies(prob.form, p[fin], np.full(fin.sum(), cls, dtype=np.intp), prob.P)[0]
                ans.offer(rr[ok], p[ok], d[ok], cls, "tree-live-regions", exact=False, iters=1,
                          backing=f"verified by the estimator; nearest of {R} live regions of the "
                                  "target class (an upper bound)")
                dist[np.arange(len(rr))[ok | ~fin], :] = np.inf
                dist[np.arange(len(rr))[~ok & fin], k[~ok & fin]] = np.inf


# --- the ensemble MILP ----------------------------------------------------------------------------

class EnsembleMilp:
    """The predicate MILP of an ensemble (module docstring), built once per model; the objective
    and bounds change per row and the class constraints per target.

    Variables: ``p`` (one binary per distinct (feature, threshold) pair, sorted by feature then
    threshold), ``l`` (one continuous indicator per leaf), and for Linf one level ``s``.
    """

    def __init__(self, form):
        self.form = form
        trees = form.trees
        D = int(form.n_features)
        self.D = D
        self.T = len(trees)
        lower = np.concatenate([tb.lower for tb in trees], axis=0)
        upper = np.concatenate([tb.upper for tb in trees], axis=0)
        self.values = np.concatenate([tb.value for tb in trees], axis=0)
        sizes = np.array([tb.lower.shape[0] for tb in trees])
        self.leaf_tree = np.repeat(np.arange(self.T), sizes)
        self.n_leaves = len(self.leaf_tree)
        li, lf = np.nonzero(np.isfinite(lower))
        ui, uf = np.nonzero(np.isfinite(upper))
        feats = np.concatenate([lf, uf])
        vals = np.concatenate([lower[li, lf], upper[ui, uf]])
        if len(feats):
            keys = np.column_stack([feats.astype(np.float64), vals])
            uniq, inv = np.unique(keys, axis=0, return_inverse=True)
            inv = inv.ravel()
        else:
            uniq, inv = np.zeros((0, 2)), np.zeros(0, dtype=np.intp)
        self.pf = uniq[:, 0].astype(np.intp)           # feature of each predicate
        self.pt = uniq[:, 1]                            # its threshold
        self.n_pred = len(self.pf)
        self.m = np.bincount(self.pf, minlength=D)      # thresholds per feature
        self.poff = np.concatenate([[0], np.cumsum(self.m)[:-1]]).astype(np.intp)
        # cells: feature j has m_j + 1 cells (t_{c}, t_{c+1}], t_0 = -inf, t_{m+1} = inf
        self.cell_feat = np.repeat(np.arange(D), self.m + 1)
        self.cell_lo = np.insert(self.pt, self.poff, -np.inf)
        self.cell_hi = np.insert(self.pt, self.poff + self.m, np.inf)
        self.n_binaries = self.n_pred
        nv = self.n_pred + self.n_leaves
        P = self.n_pred
        rows, cols, data, lb, ub = [], [], [], [], []
        r = 0
        # ordering p_{j,k} <= p_{j,k+1}
        same = np.flatnonzero(self.pf[:-1] == self.pf[1:]) if P > 1 else np.zeros(0, np.intp)
        k = len(same)
        rows += [r + np.arange(k), r + np.arange(k)]
        cols += [same, same + 1]
        data += [np.ones(k), -np.ones(k)]
        lb.append(np.full(k, -np.inf)); ub.append(np.zeros(k))
        r += k
        # one leaf per tree
        rows.append(r + self.leaf_tree)
        cols.append(P + np.arange(self.n_leaves))
        data.append(np.ones(self.n_leaves))
        lb.append(np.ones(self.T)); ub.append(np.ones(self.T))
        r += self.T
        # a leaf's upper bound x_j <= t:  l - p <= 0
        nu = len(ui)
        up_pred = inv[len(li):]
        rows += [r + np.arange(nu), r + np.arange(nu)]
        cols += [P + ui, up_pred]
        data += [np.ones(nu), -np.ones(nu)]
        lb.append(np.full(nu, -np.inf)); ub.append(np.zeros(nu))
        r += nu
        # a leaf's lower bound x_j > t:  l + p <= 1
        nl = len(li)
        lo_pred = inv[:len(li)]
        rows += [r + np.arange(nl), r + np.arange(nl)]
        cols += [P + li, lo_pred]
        data += [np.ones(nl), np.ones(nl)]
        lb.append(np.full(nl, -np.inf)); ub.append(np.ones(nl))
        r += nl
        self.A_static = sparse.csr_matrix(
            (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(r, nv))
        self.lb_static = np.concatenate(lb)
        self.ub_static = np.concatenate(ub)
        self._class_cache = {}

    # -- what the MILP can express ------------------------------------------------------------
    def supports(self, P) -> bool:
        f = self.form
        if f.aggregate == "boosting" and f.init is not None and len(f.init) > 1 and P is not None:
            return False
        return True

    def class_rows(self, k: int, P):
        """Linear constraints on the leaf indicators making class ``k`` the prediction (and
        ``p_k >= P``): ``(A (r, n_leaves), lb, ub)``."""
        key = (k, P)
        if key in self._class_cache:
            return self._class_cache[key]
        f = self.form
        V = self.values
        K = int(f.n_classes)
        rows, lbs, ubs = [], [], []
        if f.aggregate in ("mean-proba", "single"):
            T = self.T if f.aggregate == "mean-proba" else 1.0
            for j in range(K):  # a loop over classes
                if j == k:
                    continue
                rows.append(V[:, k] - V[:, j])
                lbs.append(_MARGIN * T if j < k else 0.0)
                ubs.append(np.inf)
            if P is not None:  # p_k >= P exactly (leaf fractions sum exactly at a solution)
                rows.append(V[:, k])
                lbs.append(P * T)
                ubs.append(np.inf)
        else:  # boosting: raw_m = init_m + scale * sum of the leaves of output m
            M = V.shape[1]
            init = np.asarray(f.init, dtype=np.float64)
            sc = float(f.scale)
            out_of_leaf = self.leaf_tree % M
            contrib = sc * V[np.arange(self.n_leaves), out_of_leaf]
            if M == 1:
                thr = 0.0 if P is None else float(np.log(P) - np.log1p(-P))
                if k == 1:   # raw > max(thr, 0)
                    rows.append(contrib)
                    lbs.append(max(thr, 0.0) + _MARGIN - init[0]); ubs.append(np.inf)
                else:        # raw <= min(-thr, 0)
                    rows.append(contrib)
                    lbs.append(-np.inf); ubs.append(min(-thr, 0.0) - _MARGIN - init[0])
            else:
                for j in range(M):  # a loop over classes
                    if j == k:
                        continue
                    a = np.where(out_of_leaf == k, contrib, 0.0) - np.where(out_of_leaf == j, contrib, 0.0)
                    rows.append(a)
                    lbs.append((_MARGIN if j < k else 0.0) - (init[k] - init[j])); ubs.append(np.inf)
        out = (np.vstack(rows), np.asarray(lbs, dtype=np.float64), np.asarray(ubs, dtype=np.float64))
        self._class_cache[key] = out
        return out

    # -- one row ----------------------------------------------------------------------------------
    def cells(self, x0, lo, hi, w):
        """Per cell: nearest point coordinate, weighted distance, feasibility (within the box)."""
        cf = self.cell_feat
        left = np.maximum(np.nextafter(self.cell_lo, np.inf), lo[cf])
        right = np.minimum(self.cell_hi, hi[cf])
        feas = left <= right
        coord = np.clip(x0[cf], left, right)
        d = np.where(feas, w[cf] * np.abs(coord - x0[cf]), 0.0)
        return coord, d, feas

    def solve_row(self, x0, lo, hi, w, norm, k, P, time_limit):
        """Returns ``dict(status, x, dist, gap, bound)``; ``status`` in optimal / infeasible /
        limit (``x`` the incumbent or None) / error."""
        P_ = self.n_pred
        nL = self.n_leaves
        D = self.D
        coord, d, feas = self.cells(x0, lo, hi, w)
        e = d * d if norm == "l2" else d
        idx = np.arange(P_)
        below = idx + self.pf          # cell under predicate k (cell c = k - 1 of its feature)
        above = below + 1
        # predicate bounds from the box: cells outside it are excluded
        p_lb = np.zeros(P_)
        p_ub = np.ones(P_)
        p_ub[~feas[below] & (self.pt < lo[self.pf])] = 0.0
        p_lb[~feas[above] & (self.pt >= hi[self.pf])] = 1.0
        Ac, clb, cub = self.class_rows(k, P)
        linf = norm == "linf"
        nv = P_ + nL + (1 if linf else 0)
        A_st = self.A_static
        if linf:
            A_st = sparse.hstack([A_st, sparse.csr_matrix((A_st.shape[0], 1))]).tocsr()
        A_cls = sparse.hstack([sparse.csr_matrix((Ac.shape[0], P_)), sparse.csr_matrix(Ac),
                               sparse.csr_matrix((Ac.shape[0], nv - P_ - nL))]).tocsr()
        A_blocks = [A_st, A_cls]
        lbs = [self.lb_static, clb]
        ubs = [self.ub_static, cub]
        last_cell = self.poff + np.arange(D) + self.m
        if linf:
            # s - sum_k (d_below - d_above) p_k >= d_last  (one row per feature)
            coefp = -(d[below] - d[above])
            Lr = sparse.csr_matrix((coefp, (self.pf, idx)), shape=(D, P_ + nL))
            A_blocks.append(sparse.hstack([Lr, sparse.csr_matrix(np.ones((D, 1)))]).tocsr())
            lbs.append(d[last_cell])
            ubs.append(np.full(D, np.inf))
            c = np.zeros(nv)
            c[-1] = 1.0
            integrality = np.concatenate([np.ones(P_), np.zeros(nL + 1)])
            vlb = np.concatenate([p_lb, np.zeros(nL), [0.0]])
            vub = np.concatenate([p_ub, np.ones(nL), [np.inf]])
            const = 0.0
        else:
            c = np.concatenate([e[below] - e[above], np.zeros(nL)])
            const = float(e[last_cell].sum())
            integrality = np.concatenate([np.ones(P_), np.zeros(nL)])
            vlb = np.concatenate([p_lb, np.zeros(nL)])
            vub = np.concatenate([p_ub, np.ones(nL)])
        A = sparse.vstack(A_blocks).tocsr()
        cons = LinearConstraint(A, np.concatenate(lbs), np.concatenate(ubs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = milp(c, integrality=integrality, bounds=Bounds(vlb, vub), constraints=cons,
                       options={"time_limit": float(time_limit), "mip_rel_gap": 0.0,
                                "mip_abs_gap": 0.0, "mip_feasibility_tolerance": 1e-9,
                                "primal_feasibility_tolerance": 1e-9, "presolve": True})
        if res.status == 2:
            return {"status": "infeasible", "x": None, "dist": np.inf, "gap": 0.0, "bound": np.inf}
        bound = getattr(res, "mip_dual_bound", None)
        bound = np.nan if bound is None else float(bound) + const
        if res.x is None:
            return {"status": "limit" if res.status == 1 else "error", "x": None, "dist": np.inf,
                    "gap": np.nan, "bound": _bound_to_dist(bound, norm)}
        p = np.round(res.x[:P_])
        cnt = np.bincount(self.pf, weights=1.0 - p, minlength=D).astype(np.intp)  # cell per feature
        x = coord[self.poff + np.arange(D) + cnt]
        gap = getattr(res, "mip_gap", None)
        gap = np.nan if gap is None else float(gap)
        return {"status": "optimal" if res.status == 0 else "limit", "x": x,
                "dist": float(distance(x - x0, w, norm)), "gap": gap,
                "bound": _bound_to_dist(bound, norm)}


def _bound_to_dist(bound, norm):
    if bound is None or not np.isfinite(bound):
        return np.nan
    return float(np.sqrt(max(bound, 0.0))) if norm == "l2" else max(float(bound), 0.0)


def _ensemble(prob: Problem, *, time_limit: float, max_binaries: int, progress_offset: int,
              progress_total) -> Answers:
    form = prob.form
    n, D = prob.X.shape
    ans = Answers(n, D)
    regions = live_regions(form, prob.pool.X if prob.pool is not None else None)
    _region_candidates(prob, regions, ans)
    model = EnsembleMilp(form)
    total = progress_total if progress_total is not None else n
    use = model.n_binaries <= max_binaries and model.supports(prob.P)
    if not use:
        why = ("the MILP would need more than {} binaries".format(max_binaries)
               if model.n_binaries > max_binaries else
               "a softmax confidence is not linear in the leaves")
        _refine_by_queries(prob, ans)
        ans.backing[ans.state == "found"] = np.array(
            [f"{b}; MILP not used: {why}" for b in ans.backing[ans.state == "found"]], dtype=object)
        ans.fail(np.arange(n), "no live region of the target class (pass --train) and " + why,
                 method="tree-live-regions")
        if prob.progress is not None:
            prob.progress(progress_offset + n, total)
        return ans
    for i in range(n):  # the documented per-row loop of the MILP
        k = int(prob.target[i])
        out = model.solve_row(prob.X[i], prob.lower[i], prob.upper[i], prob.weights, prob.norm, k,
                              prob.P, time_limit)
        if out["status"] == "infeasible":
            ans.fail([i], "the MILP proves that no point within the constraints reaches the target"
                     + ("" if prob.P is None else f" at p >= {prob.P:g}"), infeasible=True,
                     method="tree-ensemble-milp")
            ans.exact[i] = True
        elif out["x"] is not None:
            x = np.clip(out["x"], prob.lower[i], prob.upper[i])
            ok = qualifies(form, x[None, :], np.array([k]), prob.P)[0][0]
            optimal = out["status"] == "optimal"
            if ok:
                if optimal and out["dist"] <= ans.dist[i] * (1.0 + 1e-12):
                    ans.dist[i] = np.inf  # the proven optimum replaces any region candidate
                else:
                    optimal = False  # a region is closer: the tie margin excluded it
                ans.offer([i], x[None, :], out["dist"], k,
                          "tree-ensemble-milp" if optimal else "tree-ensemble-milp (time limit)",
                          exact=optimal, kkt=out["gap"] if optimal else np.nan, iters=1,
                          backing=("exact: MILP optimal (HiGHS), MIP gap "
                                   f"{out['gap']:.1e}" if optimal else
                                   "verified by the estimator; MILP incumbent at the time limit"),
                          lower_bound=out["bound"])
            if not optimal:
                ans.lower_bound[i] = out["bound"]
                if ans.state[i] == "found" and not ans.exact[i]:
                    ans.backing[i] = f"{ans.backing[i]}; MILP stopped at the time limit " \
                                     f"(lower bound {out['bound']:.4g})"
        else:
            ans.lower_bound[i] = out["bound"]
            if ans.state[i] != "found":
                ans.fail([i], "the MILP found no point within the time limit and no live region "
                              "of the target class is reachable", method="tree-ensemble-milp")
        if prob.progress is not None:
            prob.progress(progress_offset + i + 1, total)
    return ans


def _refine_by_queries(prob: Problem, ans: Answers) -> None:
    """Improve non-exact answers by the black-box local search (verified queries)."""
    from invaudit.counterfactual._nl_blackbox import local_search

    rows = np.flatnonzero((ans.state == "found") & ~ans.exact)
    if len(rows) == 0:
        return
    sub = prob.subset(rows)
    B, dB = local_search(sub, ans.x_cf[rows], ans.dist[rows], rounds=15)
    better = dB < ans.dist[rows]
    r = rows[better]
    ans.x_cf[r] = B[better]
    ans.dist[r] = dB[better]
    ans.method[r] = "tree-live-regions+local-search"


def solve_trees(prob: Problem, *, time_limit: float = 10.0, max_binaries: int = 20000,
                progress_offset: int = 0, progress_total=None) -> Answers:
    """Counterfactuals for a TreesForm (module docstring)."""
    if prob.n == 0:
        return Answers(0, prob.d)
    if prob.form.aggregate == "single":
        ans = _single_tree(prob)
        if prob.progress is not None:
            prob.progress(progress_offset + prob.n, progress_total or prob.n)
        return ans
    return _ensemble(prob, time_limit=time_limit, max_binaries=max_binaries,
                     progress_offset=progress_offset, progress_total=progress_total)
