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
HiGHS (``scipy.optimize.milp``) under a time limit.

Scale. HiGHS's tolerances are absolute (its default MIP gap is 1e-6 in objective units), so a
program whose optimum is 1e-10 (features scaled by 1e-5, squared) would be "solved" by any
point. Every program is therefore written per row in *flip* variables (``u_i = 1`` when the
point is on the other side of split ``i`` than the row: all costs non-negative, no constant
offset, the row itself costs 0) and normalised: costs are divided by a scale ``S``, first the
largest single flip cost, then the cost ``U`` of the best verified point; flips whose cost alone
exceeds ``U`` are fixed (they cannot be part of a better answer), and a program is solved again
until its optimum is at least ``0.1 S``. Both gaps are tiny (``mip_rel_gap`` 1e-10,
``mip_abs_gap`` 1e-12 in normalised units) and feasibility tolerances 1e-9. The lower bound is
the solver's proven dual bound, lowered by its tolerances (``(1 - 2e-9) dual - 1e-9`` in
normalised units), converted back to report units (the square root for l2), or the leaf-exit
bound below, never a primal value. An answer is *exact* when a point verified by the
estimator's own ``predict`` is within a relative 1e-7 of that bound (plus the few ulps a float64
point needs on the open side of a cell).

Ties. Class scores equal up to ``1e-8`` of the score scale (``max|init| + sum_t max|leaf|``)
count as ties, resolved as the estimator resolves them (the lower class index; class 1 for
binary GradientBoosting, which predicts it at ``raw >= 0``). Whatever the solver proposes is
checked by ``predict``; a tuple of leaves the estimator does not confirm is cut off
(``sum_t z_{leaf_t} <= T - 1``) and the program solved again, so no constant in score units
decides an answer. Each row is solved on its own, with its own time budget: a row alone gets
the answer it gets in a batch.

When the program is too large or runs out of time, the upper bound comes from verified boundary
search toward endpoints that depend only on the row (points of the nearest leaves favouring
another class and the nearest training rows predicted otherwise), and the lower bound from
*leaf exits*: within radius ``eps`` only trees whose current leaf box can be left within ``eps``
(distance ``min_f w_f min(x_f - lower_f, upper_f - x_f)``) change their contribution, each by
at most its largest possible change of ``score_j - score_p``; the smallest ``eps`` at which these
changes can close the gap is a lower bound.
"""

from __future__ import annotations

import time
import warnings

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

_REL = 1e-7      # exact: the verified distance is within this relative gap of the proven bound
_TIE = 1e-8      # a score gap below this fraction of the score scale counts as a tie
_DEFLATE = 2e-9  # solver tolerances: proven bounds are lowered by this fraction before use
_ABS = 1e-9      # ... and by this much in a program's normalised units
_SETTLED = 0.1   # a program whose optimum is at least this fraction of its scale is settled
_ROUNDS = 40     # solves per (row, class): rescaling rounds plus cuts of unconfirmed leaf tuples
_HIGHS = {"presolve": True, "mip_rel_gap": 1e-10, "mip_abs_gap": 1e-12,
          "mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9,
          "dual_feasibility_tolerance": 1e-9}


def _ulps(x0, point, w, norm) -> float:
    """What float64 adds to a cell's closed distance: the open side of a cell is one ulp away
    and verification may push a point a few ulps outward (:func:`finalize`), on the features
    that move."""
    moved = point != x0
    return float(weighted_norm(np.where(moved, 64 * np.spacing(np.abs(x0) + np.abs(point)), 0.0), w, norm))


def score_scale(Sc, s0) -> float:
    """The size of the class scores: ``max |s0| + sum_t max_leaf |Sc|`` (ties are measured in it)."""
    return float(np.abs(s0).max(initial=0.0) + np.abs(Sc).max(axis=1).sum()) or 1.0


def wins_ties(form, a: int, b: int) -> bool:
    """Whether class ``a`` is predicted over class ``b`` when their scores are equal: the lower
    index (``argmax``), except for binary GradientBoosting, which predicts class 1 at ``raw >= 0``."""
    est = type(getattr(form, "estimator", None)).__name__
    if form.aggregate == "boosting" and form.link == "sigmoid" and est == "GradientBoostingClassifier":
        return a == 1
    return a < b


def beat_row(form, Sc, s0, a: int, b: int, sigma: float):
    """``(row over leaves, lower bound)``: class ``a`` is predicted over class ``b`` iff
    ``row . z >= lb`` (scores divided by ``sigma``; a tie the estimator resolves for ``b``
    needs a gap of ``_TIE``)."""
    row = (Sc[:, a] - Sc[:, b]) / sigma
    lb = (s0[b] - s0[a]) / sigma + (0.0 if wins_ties(form, a, b) else _TIE)
    return row, lb


class EnsembleMilp:
    """The Kantchelian et al. program for one model, built once; :meth:`minimize` per row.

    Variables: one binary per distinct split point (sorted by feature, then threshold), one
    continuous indicator per leaf, and for linf one level. Per row the binaries are written as
    *flips* ``u_i = |p_i - p_i(x0)|`` so that every cost is non-negative and the row itself costs
    0: there is no large constant whose difference with the objective would lose the optimum to
    cancellation. Each program is normalised by a per-row scale (module docstring, "Scale").
    """

    def __init__(self, form):
        trees = form.trees
        self.form = form
        self.T = len(trees)
        d = int(form.n_features)
        self.d = d
        lowers = np.concatenate([t.lower for t in trees], axis=0)
        uppers = np.concatenate([t.upper for t in trees], axis=0)
        L = lowers.shape[0]
        self.L = L
        sizes = np.array([t.lower.shape[0] for t in trees])
        self.leaf_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        self.leaf_tree = np.repeat(np.arange(self.T), sizes)
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
        inv_u, inv_l = inv[:lu.size], inv[lu.size:]
        same = np.flatnonzero(self.feat[1:] == self.feat[:-1])
        self.same_next = np.zeros(P, dtype=bool)
        self.same_next[same] = True
        self.same_prev = np.zeros(P, dtype=bool)
        self.same_prev[same + 1] = True
        rows, cols, vals, lb, ub = [], [], [], [], []
        r0 = 0
        m = same.size  # ordering: p_i <= p_{i+1} within a feature
        rows += [r0 + np.arange(m)] * 2
        cols += [same, same + 1]
        vals += [np.ones(m), -np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); r0 += m
        m = lu.size  # a leaf needs x_f <= upper: z_l <= p_i
        rows += [r0 + np.arange(m)] * 2
        cols += [P + lu, inv_u]
        vals += [np.ones(m), -np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); r0 += m
        m = ll.size  # a leaf needs x_f > lower: z_l <= 1 - p_i
        rows += [r0 + np.arange(m)] * 2
        cols += [P + ll, inv_l]
        vals += [np.ones(m), np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.ones(m)); r0 += m
        rows.append(r0 + self.leaf_tree)  # one leaf per tree
        cols.append(P + np.arange(L))
        vals.append(np.ones(L))
        lb.append(np.ones(self.T)); ub.append(np.ones(self.T)); r0 += self.T
        self.A = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(r0, P + L))
        self.A_lb, self.A_ub = np.concatenate(lb), np.concatenate(ub)
        self.col_nnz = np.diff(self.A.indptr)

    @property
    def n_binaries(self) -> int:
        return self.P

    # -- one row ------------------------------------------------------------------------------
    def _row(self, x0, blo, bhi, w, norm):
        """Per predicate: its value at ``x0``, the closed distance of flipping it alone (report
        units), whether the box forbids the flip, and the telescoping cost increment."""
        xf, th = x0[self.feat], self.theta
        s = xf <= th
        g = w[self.feat] * np.abs(xf - th)
        blocked = np.where(s, bhi[self.feat] <= th, blo[self.feat] > th)
        h = g * g if norm == "l2" else g  # cost units: squared distance for l2
        inc = h.copy()
        if norm != "linf":
            # below x0 (p = 0, thresholds descending from x0): the next closer one is i + 1
            nb = ~s & self.same_next & np.append(~s[1:], False)
            inc[nb] -= h[np.flatnonzero(nb) + 1]
            # above x0 (p = 1, ascending): the previous closer one is i - 1
            pa = s & self.same_prev & np.append(False, s[:-1])
            inc[pa] -= h[np.flatnonzero(pa) - 1]
            inc = np.maximum(inc, 0.0)
        return s, g, h, blocked, inc

    def _point(self, x0, s, u, blo, bhi):
        """The nearest point of the cell the flips ``u`` select (one ulp inside its open side)."""
        pv = s ^ u
        lo_int = np.full(self.d, -np.inf)
        up_int = np.full(self.d, np.inf)
        np.maximum.at(lo_int, self.feat[~pv], self.theta[~pv])
        np.minimum.at(up_int, self.feat[pv], self.theta[pv])
        point = np.minimum(np.maximum(x0, np.nextafter(lo_int, np.inf)), up_int)
        return np.clip(point, blo, bhi)

    def minimize(self, x0, blo, bhi, w, norm, C, clb, verify, *, time_limit, cap=np.inf):
        """Minimum distance from ``x0`` to a point of ``[blo, bhi]`` whose leaf indicators ``z``
        satisfy ``C z >= clb`` and that ``verify`` confirms.

        ``verify(point) -> (ok, point, leaves)``: the estimator's verdict at the (possibly
        adjusted) point, and the global leaf ids it reaches there. ``cap``: a distance (report
        units) beyond which answers are not wanted; with it, "nothing at most cap" proves a lower
        bound of ``cap``.

        Returns ``dict(point, dist, lb, status, exact)``: ``point`` verified (or None), ``dist``
        its distance, ``lb`` a proven lower bound (report units, never above ``dist``), status
        "optimal", "infeasible", "limit" or "unverified".
        """
        start = time.perf_counter()
        P, L = self.P, self.L
        sq = norm == "l2"
        to_cost = (lambda v: v * v) if sq else (lambda v: v)
        to_dist = (lambda v: np.sqrt(max(v, 0.0))) if sq else (lambda v: max(v, 0.0))
        s, g, h, blocked, inc = self._row(x0, blo, bhi, w, norm)
        # p = s + sgn * u: the static rows in the flip variables
        sgn = np.where(s, -1.0, 1.0)
        scale = np.concatenate([sgn, np.ones(L)])
        A = self.A.copy()
        A.data = A.data * np.repeat(scale, self.col_nnz)
        shift = self.A[:, :P] @ s.astype(np.float64)
        A_lb, A_ub = self.A_lb - shift, self.A_ub - shift
        Cz = sparse.hstack([sparse.csr_matrix((C.shape[0], P)), sparse.csr_matrix(C)])
        cuts = []
        linf = norm == "linf"
        best_pt, best_cost, best_dist = None, np.inf, np.inf
        U = to_cost(cap) if np.isfinite(cap) else np.inf  # verified (or wanted) cost bound
        lb_cost = 0.0
        status = "limit"
        done = False
        for _ in range(_ROUNDS):
            left = time_limit - (time.perf_counter() - start)
            if left <= 0:
                break
            # a flip dearer on its own than a known answer is never part of a better one
            free = ~blocked & ~(h > U * (1 + 1e-9))
            if not free.any():
                status = "infeasible" if best_pt is None else "optimal"
                lb_cost = max(lb_cost, U)
                done = True
                break
            S = U if np.isfinite(U) and U > 0 else float(h[free].max())
            if not S > 0:
                S = 1.0
            nv = P + L + (1 if linf else 0)
            c = np.zeros(nv)
            vub = np.concatenate([free.astype(np.float64), np.ones(L), [np.inf] if linf else []])
            blocks = [A, Cz] + cuts
            lbs = [A_lb, clb] + [np.array([-np.inf])] * len(cuts)
            ubs = [A_ub, np.full(clb.size, np.inf)] + [np.array([self.T - 1.0])] * len(cuts)
            if linf:
                blocks = [sparse.hstack([b, sparse.csr_matrix((b.shape[0], 1))]) for b in blocks]
                fi = np.flatnonzero(free & (g > 0))
                m = fi.size
                blocks.append(sparse.csr_matrix(
                    (np.concatenate([np.ones(m), -g[fi] / S]),
                     (np.concatenate([np.arange(m)] * 2), np.concatenate([np.full(m, nv - 1), fi]))),
                    shape=(m, nv)))
                lbs.append(np.zeros(m)); ubs.append(np.full(m, np.inf))
                c[-1] = 1.0
            else:
                c[:P] = np.where(free, inc / S, 0.0)
            integrality = np.zeros(nv)
            integrality[:P] = 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # options scipy passes to HiGHS verbatim
                res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(nv), vub),
                           constraints=LinearConstraint(sparse.vstack(blocks).tocsr(),
                                                        np.concatenate(lbs), np.concatenate(ubs)),
                           options={**_HIGHS, "time_limit": max(0.01, float(left))})
            if res.status == 2:  # nothing (better than U): proven
                lb_cost = max(lb_cost, U) if np.isfinite(U) else np.inf
                status = "optimal" if best_pt is not None else "infeasible"
                done = True
                break
            dual = getattr(res, "mip_dual_bound", None)
            if dual is not None and np.isfinite(dual):
                # valid for every answer of cost <= U (the only ones wanted); the solver's
                # tolerances are absolute in this program's units, so the bound is only as good
                # as the normalisation: an optimum far below S needs another round
                lb_cost = max(lb_cost, min(max(dual * (1 - _DEFLATE) - _ABS, 0.0) * S, U))
            if res.x is None:
                status = "limit" if res.status == 1 else "error"
                break
            u = res.x[:P] > 0.5
            point = self._point(x0, s, u, blo, bhi)
            ok, point, leaves = verify(point)
            if not ok:
                combo = np.flatnonzero(res.x[P:P + L] > 0.5)
                if leaves is None or combo.size != self.T or not np.array_equal(np.sort(leaves), combo):
                    status = "unverified"  # the estimator disagrees with the boxes here
                    break
                # this tuple of leaves is confirmed not to qualify: cut it off and solve again
                cut = np.zeros((1, nv if not linf else nv - 1))
                cut[0, P + combo] = 1.0
                cuts.append(sparse.csr_matrix(cut))
                continue
            dist = float(weighted_norm(point - x0, w, norm))
            cost = to_cost(dist)
            if dist < best_dist:
                best_pt, best_dist, best_cost = point, dist, cost
            U = min(U, best_cost)
            if res.status != 0:
                status = "limit"
                break
            status = "optimal"
            slack = _ulps(x0, best_pt, w, norm)
            if best_dist <= to_dist(lb_cost) * (1 + _REL) + slack:
                done = True
                break
            if best_cost >= _SETTLED * S:  # the optimum is O(1) in this program's units: settled
                break
            # else: solve again, normalised by the answer found (more flips fixed)
        lbd = to_dist(lb_cost)
        if best_pt is not None:
            lbd = min(lbd, best_dist)
            slack = _ulps(x0, best_pt, w, norm)
            exact = status == "optimal" and best_dist <= lbd * (1 + _REL) + slack
        else:
            exact = status == "infeasible" and done
        return dict(point=best_pt, dist=best_dist, lb=lbd, status=status, exact=bool(exact))


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
    model = EnsembleMilp(form)
    use_milp = model.n_binaries <= max_binaries
    if use_milp:
        # one program per row and class, each verified by predicting a single point: OpenMP
        # thread start-up (HistGradientBoosting's predict) would dominate those tiny calls
        with threadpool_limits(limits=1, user_api="openmp"):
            _milp_rows(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact,
                       method, np.flatnonzero(~unreachable), time_limit, progress)
    todo = np.flatnonzero(np.isnan(margin))
    if todo.size:
        # endpoints that depend on nothing but the row (and X_train): the nearest points of
        # other-class leaves and the nearest training rows predicted otherwise; no random
        # directions, whose draws (and spread) would depend on the other rows of the batch
        extra = [_leaf_candidates(form, prob, todo, Sc, n_candidates)]
        if X_train is not None and X_train.shape[0]:
            from invaudit.margins._blackbox import _nearest_candidates

            idx = _nearest_candidates(X[todo], prob.pred[todo], X_train, form.predict_index(X_train),
                                      prob.weights, prob.norm, n_candidates)
            extra.append(np.where((idx >= 0)[:, :, None], X_train[np.maximum(idx, 0)], np.nan))
        dl, dist, nk = search(form, prob, todo, X_train=None, seed=seed, n_candidates=0,
                              extra=np.concatenate(extra, axis=1))
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


def _milp_rows(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact, method,
               rows, time_limit, progress):
    """The MILP for each of ``rows`` (fills the output arrays in place). Every row is solved on
    its own, with its own time budget: nothing carries over from one row to the next."""
    X, p = prob.X, prob.pred
    n = prob.n
    lo_all, hi_all = prob.box()
    sigma = score_scale(Sc, s0)
    for i in rows:  # one program per row (and other class)
        start = time.perf_counter()
        x0 = X[i]
        blo, bhi = x0 + lo_all[i], x0 + hi_all[i]
        pi = p[i:i + 1]

        def verify(pt, x0=x0, pi=pi):
            dl, ok, _ = finalize(form, x0[None, :], pt[None, :], pi)
            if ok[0]:
                return True, x0 + dl[0], None
            return False, pt, form.leaf_index(pt[None, :])[0] + model.leaf_offsets

        best_d, best_dl, best_k = np.inf, None, -1
        lbs = lb_cls[i].copy()
        stopped = None
        for j in np.argsort(lb_cls[i], kind="stable"):
            if j == p[i] or not np.isfinite(lb_cls[i, j]) or lb_cls[i, j] >= best_d:
                continue
            left = time_limit - (time.perf_counter() - start)
            if left <= 0:
                stopped = "time limit"
                break
            row, lbv = beat_row(form, Sc, s0, int(j), int(p[i]), sigma)
            out = model.minimize(x0, blo, bhi, prob.weights, prob.norm, row[None, :], np.array([lbv]),
                                 verify, time_limit=left, cap=best_d)
            lbs[j] = max(lbs[j], out["lb"])
            if out["status"] in ("limit", "error"):
                stopped = "time limit"
            elif out["status"] == "unverified":
                stopped = "the estimator disagrees with the leaf boxes"
            if out["point"] is not None:
                dl, ok, idx = finalize(form, x0[None, :], out["point"][None, :], pi)
                if ok[0]:
                    dist = float(weighted_norm(dl[0], prob.weights, prob.norm))
                    if dist < best_d:
                        best_d, best_dl, best_k = dist, dl[0], int(idx[0])
        lbs[p[i]] = np.inf
        lower[i] = min(np.min(lbs), best_d)  # every other class is bounded below
        if best_dl is not None:
            margin[i] = best_d
            delta[i] = best_dl
            nearest[i] = best_k
            # exact when the verified point is as near as the proven lower bound
            slack = _ulps(x0, x0 + best_dl, prob.weights, prob.norm)
            exact[i] = best_d <= lower[i] * (1 + _REL) + slack
            method[i] = "tree-ensemble-milp" if exact[i] else \
                f"tree-ensemble-milp ({stopped or 'gap'}: bounds)"
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
