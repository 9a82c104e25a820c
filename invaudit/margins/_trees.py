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

Speed. The first program of a row, with every flip free, is the expensive one (HiGHS spends
most of it at the root on cuts and sub-MIP heuristics). So before it, a verified starting point
is sought without the solver (:meth:`EnsembleMilp.start_point`: from the row, step into the leaf
box that raises the smallest constraint slack most per unit of distance until the boxes say the
point qualifies, then move features back toward the row, cell by cell, while it still
qualifies; the estimator then confirms it). Its cost ``U`` normalises the first program, fixes
every flip dearer than ``U`` and enters as a cutoff row (``sum c u <= U``; for linf, the level's
upper bound): "infeasible" then proves that nothing is cheaper than ``U`` (up to the deflated
tolerances), and a start that meets the leaf-exit bound needs no program at all. HiGHS sees
only what can still move: the flips fixed at 0, the leaves they put out of reach (a leaf bounded
by a fixed predicate on the far side of the row) and the static rows left empty are dropped, which
changes neither the optimum nor the bound (those variables are 0 in every feasible point; the
dropped rows hold at the row's own cell). From a good incumbent a 100-tree depth-8 forest's
program shrinks from ~56,000 rows to ~1,400 and HiGHS's own time from ~0.5 s to milliseconds
(measured): the first programs used to spend their whole budget before presolve had emptied
them. HiGHS looks at its time limit only after its set-up and after presolve (2-5 s on ~60,000
nonzeros given 0.5 s, measured): a program is presolved only when its nonzeros are at most
40,000 per second left, and not started at all above 150,000 per second left (it would neither
improve the incumbent nor bound it in time). HiGHS 1.12 reports "optimal" with a dual bound of
-inf when presolve proves that nothing beats the starting solution; the bound is then the
optimum less the MIP gaps. HiGHS is called
through scipy's own binding where available (``scipy.optimize.milp`` re-validates every option
on each call, which costs as much as these small programs take to solve), with
``scipy.optimize.milp`` as the fallback. A model's program (boxes, split points, static rows,
routing tables, the training rows' classes) is built once per form and kept while the form lives
(:meth:`EnsembleMilp.for_form`): the CLI solves rows in chunks and a binary ``other`` target in
two calls per chunk.

Verification. Candidate points (from the searches and the programs) are judged by the form's
own routing (:meth:`EnsembleMilp.fast_class`: the leaves the estimator's comparisons reach, on
stacked node arrays, and the class their scores give) wherever the winning score leads by more
than ``1e-7`` of the score scale (``1e-4`` for LightGBM / XGBoost, which add leaf values in
float32): microseconds, against ~0.1 s for one ``predict`` of a 100-tree forest. Closer calls go
to the estimator. Every answer is then confirmed by the estimator's own ``predict`` in one call
per batch; a row it does not confirm is solved again with the estimator deciding every point.

Anytime. A row's time limit (default :data:`DEFAULT_TIME_LIMIT`) covers everything. Before
any program, :meth:`EnsembleMilp.anytime_points` proposes points the leaf boxes say qualify,
scored through the estimator's own comparisons on stacked node arrays (:class:`_Walker`): (a) the
row projected onto the cells of the nearest ``--train`` rows of the wanted class, and those rows;
(b) every single-feature change across one split point; (c) a boundary walk crossing one split
point at a time (a change is re-routed only in the trees whose path tests that feature at a
split point it crosses, from the first such node; on a plateau only the split points beyond
those already looked at are scored); the best are moved back toward the row cell by cell. The
nearest one confirmed (above) is the incumbent (its cost the cutoff of the program, every dearer
flip fixed). So an answer is never farther than the nearest training row of the wanted class, the
best single-feature change or the walk, whether or not the program runs (models over
``max_binaries`` get the searches only; so do rows after a run's ``run_time_limit``). When the
program stops at the limit, its dual bound is the reported lower bound.

Ties. Class scores equal up to ``1e-8`` of the score scale (``max|init| + sum_t max|leaf|``)
count as ties, resolved as the estimator resolves them (the lower class index; class 1 for
binary GradientBoosting, which predicts it at ``raw >= 0``), where the estimator's own
arithmetic keeps exact ties exact; where it may not (composites that add other numbers than the
leaf values, e.g. hard voting with weights ``[0.1, 0.2, 0.3]``: :func:`ties_resolved`) near-ties
are admitted both ways and the estimator decides them. Whatever the solver proposes is
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

import hashlib
import time
import warnings
import weakref

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from invaudit._native_stdout import native_stdout_silenced
from invaudit.margins._common import Problem, finalize, weighted_norm
from invaudit.margins.boxes import intersect_boxes, project_to_boxes

_CHUNK = 4_000_000
_CONTROLLER = {}


def one_openmp_thread():
    """``threadpool_limits(limits=1, user_api="openmp")`` through a controller kept between
    calls (building one scans every loaded library, ~20 ms; it is built again when modules
    were imported since, as they may have loaded a library)."""
    import sys

    from threadpoolctl import ThreadpoolController

    key = len(sys.modules)
    if _CONTROLLER.get("key") != key:
        _CONTROLLER.update(key=key, ctl=ThreadpoolController())
    return _CONTROLLER["ctl"].limit(limits=1, user_api="openmp")


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



# --- the estimator's own routing, vectorised over (point, tree) pairs -------------------------------

def _saved(form):
    """The form's estimator; for a light-loaded form (issue 16) its saved state, which has the same
    class names and tree attributes and is read without unpickling the estimator."""
    light = getattr(form, "light", None)
    return light if light is not None else getattr(form, "estimator", None)


def _node_arrays(est):
    """Per tree ``(left, right, feature, split, is_leaf)`` with ``x <= split`` going left, as the
    estimator compares (float32 rounding made exact for scikit-learn trees), or None for an
    estimator whose trees this module does not read (then :class:`_Walker` asks ``leaf_index``)."""
    from invaudit.models.trees import float32_split_point

    from invaudit.io._light import class_name

    name = class_name(est)  # a light-loaded state's recorded class (issue 16)
    if name in ("DecisionTreeClassifier", "ExtraTreeClassifier"):
        trees = [est.tree_]
    elif name in ("RandomForestClassifier", "ExtraTreesClassifier"):
        trees = [e.tree_ for e in est.estimators_]
    elif name == "GradientBoostingClassifier":
        trees = [e.tree_ for e in np.asarray(est.estimators_).ravel()]
    elif name == "HistGradientBoostingClassifier":
        out = []
        for it in est._predictors:
            for p in it:
                nd = p.nodes
                out.append((nd["left"].astype(np.intp), nd["right"].astype(np.intp),
                            nd["feature_idx"].astype(np.intp), nd["num_threshold"].astype(np.float64),
                            nd["is_leaf"].astype(bool)))
        return out
    else:
        return None
    out = []
    for t in trees:
        leaf = t.children_left == -1
        thr = np.where(leaf, 0.0, float32_split_point(np.where(leaf, 0.0, t.threshold)))
        out.append((t.children_left.astype(np.intp), t.children_right.astype(np.intp),
                    np.maximum(t.feature, 0).astype(np.intp), thr, leaf))
    return out


class _Walker:
    """``Y (m, D) -> (m, T)`` global leaf ids (``leaf_offsets[t] +`` the leaf's number in tree
    ``t``), routed by the estimator's own comparisons on stacked node arrays: one vectorised step
    per tree level for all points and trees at once. The estimator's ``predict`` costs a fixed
    0.1 s on a 100-tree forest (joblib dispatch per tree) however few the points; this costs
    microseconds per (point, tree), so the anytime search can score thousands of candidate
    points a row. It only *proposes*: every answer is still confirmed by ``predict``. Checked
    against ``form.leaf_index`` on probe points at build; any disagreement (or an estimator it
    does not read) falls back to ``form.leaf_index``."""

    def __init__(self, form, leaf_offsets):
        self.form = form
        self.leaf_offsets = leaf_offsets
        self.fast = False
        arrays = _node_arrays(_saved(form)) if form is not None else None
        if arrays is None or len(arrays) != len(form.trees):
            return
        sizes = np.array([len(a[0]) for a in arrays])
        off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        left = np.concatenate([a[0] + o for a, o in zip(arrays, off)])
        right = np.concatenate([a[1] + o for a, o in zip(arrays, off)])
        feat = np.concatenate([a[2] for a in arrays])
        thr = np.concatenate([a[3] for a in arrays])
        leaf = np.concatenate([a[4] for a in arrays])
        idx = np.arange(leaf.size)
        # leaves point to themselves and always "go left": a fixed number of steps suffices
        self.left = np.where(leaf, idx, left)
        self.right = np.where(leaf, idx, right)
        self.feat = np.where(leaf, 0, feat)
        self.thr = np.where(leaf, np.inf, thr)
        rank = np.cumsum(leaf) - 1  # leaves numbered in increasing node id within each tree
        first = np.concatenate([[0], np.cumsum([a[4].sum() for a in arrays])[:-1]])
        tree_of = np.repeat(np.arange(len(arrays)), sizes)
        self.node_leaf = np.where(leaf, rank - first[tree_of] + leaf_offsets[tree_of], -1)
        self.roots = off
        steps, frontier = 0, off  # the deepest leaf: one level of every tree at a time
        while True:
            inner = frontier[~leaf[frontier]]
            if inner.size == 0:
                break
            frontier = np.concatenate([left[inner], right[inner]])
            steps += 1
        self.steps = steps
        rng = np.random.default_rng(0)
        d = int(form.n_features)
        probe = np.vstack([np.zeros(d), rng.normal(size=(6, d)) * np.maximum(np.abs(thr).max(initial=1.0), 1.0)])
        probe = np.vstack([probe, thr[rng.integers(0, thr.size, size=(6, d))]])
        self.fast = True
        try:
            ok = np.array_equal(self(probe), form.leaf_index(probe) + leaf_offsets)
        except Exception:  # noqa: BLE001 - any mismatch: use the form's own lookup
            ok = False
        self.fast = ok

    def path(self, y) -> tuple:
        """``(leaves (T,), tests)`` for one point: its global leaf per tree, and the tests on its
        paths (for :meth:`moved`): per feature, the thresholds of the inner nodes on the
        point's paths that test it (a ``(D, m)`` table padded with NaN) and, for each, the
        node, its depth and its tree. The last point's answer is kept (the searches ask about
        one point several times in a row)."""
        key = y.tobytes()
        last = getattr(self, "_last_path", None)
        if last is not None and last[0] == key:
            return last[1]
        out = self._path(y)
        self._last_path = (key, out)
        return out

    def _path(self, y) -> tuple:
        T, d = self.roots.size, y.shape[0]
        node = self.roots
        levels = []
        for _ in range(self.steps):
            levels.append(node)
            node = np.where(y[self.feat[node]] <= self.thr[node], self.left[node], self.right[node])
        leaves = self.node_leaf[node]
        nodes = np.concatenate(levels) if levels else np.zeros(0, dtype=np.intp)  # level-major
        e = np.flatnonzero(np.isfinite(self.thr[nodes]))
        en = nodes[e]
        ef = self.feat[en]
        order = np.argsort(ef, kind="stable")
        counts = np.bincount(ef, minlength=d)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(e.size) - np.repeat(starts, counts)
        m = int(counts.max(initial=0))
        tab_th = np.full((d, max(m, 1)), np.nan)
        tab_e = np.zeros((d, max(m, 1)), dtype=np.intp)
        tab_th[ef[order], slot] = self.thr[en[order]]
        tab_e[ef[order], slot] = order
        return leaves, (tab_th, tab_e, en, e // max(T, 1), e % max(T, 1))

    def moved(self, y, base, tests, feats, vals) -> tuple:
        """Leaves of the points ``y`` with feature ``feats[c]`` set to ``vals[c]`` (one change
        each): only the trees whose path has a node testing that feature at a threshold the
        change crosses can change leaf, and they are re-routed from the first such node (the
        paths agree above it). ``(cand, tree, leaf)`` for every (candidate, tree) pair whose
        leaf differs from ``base``."""
        tab_th, tab_e, en, ed, et = tests
        empty = (np.zeros(0, dtype=np.intp),) * 3
        if en.size == 0 or feats.size == 0:
            return empty
        yf = y[feats]
        lo, hi = np.minimum(yf, vals), np.maximum(yf, vals)  # crossed: lo <= threshold < hi
        th = tab_th[feats]
        with np.errstate(invalid="ignore"):
            c, k = np.nonzero((lo[:, None] <= th) & (th < hi[:, None]))
        if c.size == 0:
            return empty
        eid = tab_e[feats[c], k]
        t = et[eid]
        first = np.lexsort((ed[eid], t, c))  # per (candidate, tree), the shallowest crossing
        c, t, eid = c[first], t[first], eid[first]
        keep = np.concatenate([[True], (c[1:] != c[:-1]) | (t[1:] != t[:-1])])
        c, t, n0 = c[keep], t[keep], en[eid[keep]]
        fc, vc = feats[c], vals[c]
        went_left = y[self.feat[n0]] <= self.thr[n0]
        node = np.where(went_left, self.right[n0], self.left[n0])  # the other way at the crossing
        live = np.flatnonzero(np.isfinite(self.thr[node]))  # pairs not yet at a leaf
        for _ in range(self.steps):
            if live.size == 0:
                break
            nd = node[live]
            f = self.feat[nd]
            x = np.where(f == fc[live], vc[live], y[f])
            nd = np.where(x <= self.thr[nd], self.left[nd], self.right[nd])
            node[live] = nd
            live = live[np.isfinite(self.thr[nd])]
        leaf = self.node_leaf[node]
        ch = leaf != base[t]
        return c[ch], t[ch], leaf[ch]

    def __call__(self, Y) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        if not self.fast:
            return self.form.leaf_index(Y) + self.leaf_offsets
        m, T = Y.shape[0], self.roots.size
        out = np.empty((m, T), dtype=np.intp)
        step = max(1, _CHUNK // max(1, T))
        d = Y.shape[1]
        for a in range(0, m, step):
            Yc = Y[a:a + step]
            mc = Yc.shape[0]
            node = np.tile(self.roots, mc)
            base = np.repeat(np.arange(mc) * d, T)
            flat = Yc.ravel()
            for _ in range(self.steps):
                go = flat[base + self.feat[node]] <= self.thr[node]
                node = np.where(go, self.left[node], self.right[node])
            out[a:a + mc] = self.node_leaf[node].reshape(mc, T)
        return out


# --- ensembles: the MILP ---------------------------------------------------------------------------

_REL = 1e-7      # exact: the verified distance is within this relative gap of the proven bound
_TIE = 1e-8      # a score gap below this fraction of the score scale counts as a tie
_DEFLATE = 2e-9  # solver tolerances: proven bounds are lowered by this fraction before use
_ABS = 1e-9      # ... and by this much in a program's normalised units
_SETTLED = 0.1   # a program whose optimum is at least this fraction of its scale is settled
_ROUNDS = 40     # solves per (row, class): rescaling rounds plus cuts of unconfirmed leaf tuples
_START_BUDGET = 40_000_000  # box tests the solver-free starting point may spend per program
# the form's own routing decides a class only when the scores are at least this far apart
# (fraction of the score scale): far above float64's rounding of a sum of leaf values; libraries
# that add leaf values in float32 (LightGBM, XGBoost) get a wider margin. Closer calls, and every
# answer at the end, go to the estimator's own predict.
_CLEAR = 1e-7
_CLEAR_FLOAT32 = 1e-4
_PRESOLVE_NNZ_PER_S = 40_000  # HiGHS presolves a program when its nonzeros are at most this x seconds left
_SETUP_NNZ_PER_S = 150_000  # ... and starts it at all when they are at most this x seconds left
_PUSHES = 6  # ulp pushes outward before a point is given up (:func:`finalize`'s ``tries``)
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
    from invaudit.io._light import class_name

    est = class_name(_saved(form))
    if form.aggregate == "boosting" and form.link == "sigmoid" and est == "GradientBoostingClassifier":
        return a == 1
    return a < b


def ties_resolved(form) -> bool:
    """Whether scores that tie in exact arithmetic also tie in the estimator's own arithmetic, so
    that :func:`wins_ties` decides them. Not so for the composites whose estimator adds numbers
    other than the form's leaf values: hard voting sums its weights with ``bincount``
    (``0.1 + 0.2 > 0.3``: weights ``[0.1, 0.2, 0.3]`` let two trees outvote the third in floats
    while the form's votes tie), soft voting and Bagging average rounded probabilities, AdaBoost
    sums logarithmic tree weights. Hard voting with integer weights adds exactly."""
    if type(form).__name__ != "CompositeTreesForm":
        return True
    est = getattr(form, "estimator", None)
    steps = getattr(est, "steps", None)
    if steps:
        est = steps[-1][1]
    if type(est).__name__ == "VotingClassifier" and getattr(est, "voting", None) == "hard":
        w = getattr(est, "_weights_not_none", None)
        w = np.ones(1) if w is None else np.asarray(w, dtype=np.float64)
        return bool(np.all(w == np.round(w)) and np.abs(w).sum() < 2.0 ** 52)
    return False


def beat_row(form, Sc, s0, a: int, b: int, sigma: float):
    """``(row over leaves, lower bound)``: class ``a`` is predicted over class ``b`` iff
    ``row . z >= lb`` (scores divided by ``sigma``; a tie the estimator resolves for ``b``
    needs a gap of ``_TIE``). Where the estimator's arithmetic may break a tie either way
    (:func:`ties_resolved`), ties within ``_TIE`` are admitted both ways: the program is then a
    relaxation, and the estimator's ``predict`` confirms each answer or cuts its leaves off."""
    row = (Sc[:, a] - Sc[:, b]) / sigma
    if not ties_resolved(form):
        return row, (s0[b] - s0[a]) / sigma - _TIE
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

    _cache = weakref.WeakKeyDictionary()

    @classmethod
    def for_form(cls, form) -> "EnsembleMilp":
        """The program of ``form``, built once per form and kept while the form lives (its
        arrays, the static constraints and the routing tables do not depend on the rows)."""
        try:
            model = cls._cache.get(form)
        except TypeError:  # a form that cannot be weakly referenced: no cache
            return cls(form)
        if model is None:
            model = cls(form)
            cls._cache[form] = model
        return model

    def __init__(self, form):
        trees = form.trees
        self.form = form
        Sc, s0, _ = score_table(form)
        self.Sc, self.s0, self.sigma = Sc, s0, score_scale(Sc, s0)
        from invaudit.io._light import class_path

        mod = class_path(_saved(form))[0] or ""
        inner = getattr(_saved(form), "steps", None)
        if inner:
            mod = class_path(inner[-1][1])[0] or ""
        self.clear_tol = _CLEAR if mod.startswith("sklearn.") else _CLEAR_FLOAT32
        self._train = None  # (key, the estimator's classes of the training rows)
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
        self._same = same
        self._lowers, self._uppers = lowers, uppers
        self._leafrows = (lu, inv_u, ll, inv_l)
        self._A = None

    def _static(self):
        """The row-independent constraints in the predicates ``p`` and leaves ``z``: ordering
        within a feature, ``z_l <= p_i`` / ``z_l <= 1 - p_i`` per leaf bound, one leaf per tree.
        Built on first use, so a model too large for the program never pays for it. (The
        aggregated per-split rows of Misic, "Optimization of tree ensembles", 2020, have a
        tighter relaxation but made HiGHS slower on the benchmark's models: measured.)"""
        if self._A is not None:
            return self._A
        P, L = self.P, self.L
        rows, cols, vals, lb, ub = [], [], [], [], []
        r0 = 0
        same = self._same
        m = same.size  # ordering: p_i <= p_{i+1} within a feature
        rows += [r0 + np.arange(m)] * 2
        cols += [same, same + 1]
        vals += [np.ones(m), -np.ones(m)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); r0 += m
        lu, inv_u, ll, inv_l = self._leafrows
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
        self._A = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(r0, P + L))
        self.A_lb, self.A_ub = np.concatenate(lb), np.concatenate(ub)
        self.col_nnz = np.diff(self._A.indptr)
        self._A_rows = self._A.tocsr()  # what each row's program starts from
        self._A_pred = self._A_rows[:, :P]
        return self._A

    @property
    def A(self):
        return self._static()

    @property
    def A_rows(self):
        self._static()
        return self._A_rows

    @property
    def n_binaries(self) -> int:
        return self.P

    # -- the form's own verdicts (proposals; the estimator has the last word) -------------------
    def fast_class(self, Y):
        """``(leaves (m, T), cls (m,), clear (m,))`` at the points ``Y``: the global leaves the
        estimator's own comparisons reach (:class:`_Walker`), the class their scores give, and
        whether that class leads every other by more than ``clear_tol`` of the score scale (so
        float rounding and tie rules cannot change it). Callers ask the estimator when not
        clear, and confirm every final answer with it."""
        G = self.walker(np.atleast_2d(Y))
        S = self.s0 + self.Sc[G].sum(axis=1)  # (m, K)
        cls = np.argmax(S, axis=1)
        if S.shape[1] > 1:
            top = np.take_along_axis(S, cls[:, None], axis=1)[:, 0]
            rest = np.where(np.arange(S.shape[1])[None, :] == cls[:, None], -np.inf, S).max(axis=1)
            clear = top - rest > self.clear_tol * self.sigma
        else:
            clear = np.ones(S.shape[0], dtype=bool)
        return G, cls, clear

    def fast_qualifies(self, y, C, clb) -> tuple:
        """``(verdict, leaves)`` at the point ``y``: ``True`` / ``False`` when the leaves it
        reaches satisfy / violate ``C z >= clb`` by more than ``clear_tol`` (rows of ``C`` in
        units of the score scale), ``None`` for a close call (the estimator decides)."""
        G = self.walker(y[None, :])[0]
        slack = float((C[:, G].sum(axis=1) - clb).min())
        if slack > self.clear_tol:
            return True, G
        return (False if slack < -self.clear_tol else None), G

    def train_classes(self, X_train) -> np.ndarray:
        """The estimator's class indices of ``X_train``, computed once per model and data."""
        X_train = np.ascontiguousarray(X_train, dtype=np.float64)
        key = (X_train.shape, hashlib.blake2b(X_train.tobytes(), digest_size=16).digest())
        if self._train is None or self._train[0] != key:
            with one_openmp_thread():
                pred = np.asarray(self.form.predict_index(X_train), dtype=np.intp)
            self._train = (key, pred)
        return self._train[1]

    def _reachable(self, free, s) -> np.ndarray:
        """``(L,)``: the leaves a point can reach when only the predicates ``free`` may flip
        from the row's sides ``s`` (a leaf bounded by a fixed predicate on the other side of
        the row is out of reach)."""
        lu, inv_u, ll, inv_l = self._leafrows
        out = np.ones(self.L, dtype=bool)
        out[lu[~free[inv_u] & ~s[inv_u]]] = False  # needs x <= theta, the row is above it
        out[ll[~free[inv_l] & s[inv_l]]] = False   # needs x > theta, the row is at or below it
        return out

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

    # -- a verified starting point: greedy leaf moves, then undoing moves (no solver) ----------
    def _qual(self, Y, C, clb):
        """The boxes' verdict on points ``Y`` (m, D): ``(ok (m,), slack (m,))`` with ``slack`` the
        smallest ``C z - clb`` (the estimator decides later; this only proposes)."""
        m = Y.shape[0]
        slack = np.empty(m)
        step = max(1, _CHUNK // max(1, self.L * self.d))
        for a in range(0, m, step):
            y = Y[a:a + step, None, :]
            Z = np.all((self._lowers < y) & (y <= self._uppers), axis=2)
            slack[a:a + step] = np.min(Z.astype(np.float64) @ C.T - clb, axis=1)
        return slack >= 0, slack

    def _cells(self):
        if getattr(self, "_by_feat", None) is None:
            cut = np.searchsorted(self.feat, np.arange(self.d + 1))
            self._by_feat = [self.theta[cut[f]:cut[f + 1]] for f in range(self.d)]
        return self._by_feat

    def start_point(self, x0, blo, bhi, w, norm, C, clb, budget=_START_BUDGET):
        """A point of ``[blo, bhi]`` that the leaf boxes say satisfies ``C z >= clb`` (None if the
        heuristic finds none): from the row, repeatedly step into the leaf box that raises the
        smallest slack most per unit of distance; then, feature by feature, move back toward
        the row to the nearest cell that still qualifies, while it helps. Costs at most about
        ``budget`` box tests; deterministic, and a function of the row alone."""
        L, d = self.L, self.d
        per = L * d  # box tests per point
        if per * L > budget:
            return None
        work = 0
        lo_in = np.nextafter(self._lowers, np.inf)
        ok_box = np.all((np.maximum(lo_in, blo) <= np.minimum(self._uppers, bhi)), axis=1)
        lo_c = np.maximum(lo_in[ok_box], blo)
        up_c = np.minimum(self._uppers[ok_box], bhi)
        y = x0.copy()
        ok, sl = self._qual(y[None, :], C, clb)
        cur = float(weighted_norm(np.zeros(d), w, norm))
        for _ in range(self.T + 2):
            if ok[0]:
                break
            cand = np.minimum(np.maximum(y, lo_c), up_c)
            work += per * cand.shape[0]
            if work > budget:
                return None
            okc, slc = self._qual(cand, C, clb)
            gain = slc - sl[0]
            dist = weighted_norm(cand - x0, w, norm)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(gain > 0, gain / np.maximum(dist - cur, 1e-300 + 0 * dist), -np.inf)
            if okc.any():  # the nearest qualifying step ends the walk
                k = np.flatnonzero(okc)[np.argmin(dist[okc])]
            elif np.isfinite(ratio).any() and ratio.max() > -np.inf:
                k = int(np.argmax(ratio))
            else:
                return None
            y, cur = cand[k], float(dist[k])
            ok, sl = okc[k:k + 1], slc[k:k + 1]
        if not ok[0]:
            return None
        cells = self._cells()
        for _ in range(self.P + d):  # undo: move one feature back to a nearer cell
            vals, feats = [], []
            for f in range(d):
                if y[f] == x0[f]:
                    continue
                th = cells[f]
                if y[f] > x0[f]:
                    v = np.nextafter(th[(th >= x0[f]) & (th < y[f])], np.inf)
                else:
                    v = th[(th < x0[f]) & (th >= y[f])]
                v = np.append(v, x0[f])
                vals.append(v)
                feats.append(np.full(v.size, f))
            if not vals:
                break
            vals, feats = np.concatenate(vals), np.concatenate(feats)
            Y = np.repeat(y[None, :], vals.size, axis=0)
            Y[np.arange(vals.size), feats] = vals
            dist = weighted_norm(Y - x0, w, norm)
            better = dist < cur
            work += per * int(better.sum())
            if not better.any() or work > budget:
                break
            okc, _ = self._qual(Y[better], C, clb)
            if not okc.any():
                break
            k = np.flatnonzero(better)[np.flatnonzero(okc)[np.argmin(dist[better][okc])]]
            y, cur = Y[k], float(dist[k])
        return y

    # -- the anytime search: verified-by-boxes candidates in milliseconds, no solver ---------------
    @property
    def walker(self) -> "_Walker":
        if getattr(self, "_walker", None) is None:
            self._walker = _Walker(self.form, self.leaf_offsets)
        return self._walker

    def slack_moves(self, y, feats, vals, C, clb) -> np.ndarray:
        """:meth:`slack` of the points ``y`` with one feature changed each (``y[feats[c]] =
        vals[c]``), scoring only the trees whose leaf changes (:meth:`_Walker.moved`)."""
        wk = self.walker
        feats = np.asarray(feats, dtype=np.intp)
        vals = np.asarray(vals, dtype=np.float64)
        if not wk.fast or feats.size == 0:
            Y = np.repeat(y[None, :], feats.size, axis=0)
            Y[np.arange(feats.size), feats] = vals
            return self.slack(Y, C, clb) if feats.size else np.zeros(0)
        base, tests = wk.path(y)
        s0 = C[:, base].sum(axis=1) - clb  # (r,)
        out = np.empty(feats.size)
        step = max(1, _CHUNK // max(1, self.T))
        for a in range(0, feats.size, step):
            c, t, leaf = wk.moved(y, base, tests, feats[a:a + step], vals[a:a + step])
            m = min(step, feats.size - a)
            dv = np.zeros((C.shape[0], m))
            for r in range(C.shape[0]):  # a loop over constraint rows (classes)
                dv[r] = np.bincount(c, weights=C[r, leaf] - C[r, base[t]], minlength=m)
            out[a:a + m] = (s0[:, None] + dv).min(axis=0)
        return out

    def slack(self, Y, C, clb) -> np.ndarray:
        """``(m,)``: the smallest ``C z - clb`` at each point of ``Y`` (``>= 0``: the boxes say it
        qualifies), with ``z`` the leaves the estimator's routing reaches (:class:`_Walker`)."""
        G = self.walker(Y)
        return (C[:, G].sum(axis=2) - clb[:, None]).min(axis=0)

    def cells(self, X_ref) -> tuple:
        """``(lower, upper)`` of the ensemble cell holding each reference row: the intersection of
        the leaf boxes it reaches (``lower < x <= upper``), on which every tree's leaf, and so the
        prediction, is that of the row."""
        X_ref = np.asarray(X_ref, dtype=np.float64)
        m = X_ref.shape[0]
        lo = np.full((m, self.d), -np.inf)
        hi = np.full((m, self.d), np.inf)
        step = max(1, _CHUNK // max(1, self.T * self.d))
        for a in range(0, m, step):
            G = self.walker(X_ref[a:a + step])
            lo[a:a + step] = self._lowers[G].max(axis=1)
            hi[a:a + step] = self._uppers[G].min(axis=1)
        return lo, hi

    def _moves(self, y, blo, bhi, k, k0=0):
        """``(feats, vals)``: moves of one feature of ``y`` across the next ``k`` split points of
        that feature, up and down (``k=None``: all of them), leaving out the nearest ``k0``
        (those already looked at), inside ``[blo, bhi]``; by feature, then the moves up
        (nearest first), then down (nearest first). Vectorised over the split points
        (``theta`` is sorted by feature, then value)."""
        d, P = self.d, self.P
        if P == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        cut = self._cut()
        below = self.theta < y[self.feat]  # crossing one of these goes down
        j = cut[:-1] + np.bincount(self.feat[below], minlength=d)  # first split point >= y_f
        if k is None:
            idx = np.arange(P)
            if k0:  # how many split points lie between y_f and each one, in its direction
                jf = j[self.feat]
                idx = idx[np.where(below, jf - 1 - idx, idx - jf) >= k0]
            # by feature; ups before downs; ups ascending, downs descending (nearest first)
            idx = idx[np.lexsort((np.where(below[idx], -idx, idx), below[idx], self.feat[idx]))]
            up = ~below[idx]
        else:
            off = np.arange(k0, k)
            iu = j[:, None] + off[None, :]
            idn = j[:, None] - 1 - off[None, :]
            idx = np.concatenate([iu, idn], axis=1)  # (d, 2k): per feature, ups then downs
            ok = np.concatenate([iu < cut[1:, None], idn >= cut[:-1, None]], axis=1)
            up = np.concatenate([np.ones_like(iu, dtype=bool), np.zeros_like(idn, dtype=bool)], axis=1)
            idx, up = idx[ok], up[ok]
        f = self.feat[idx]
        v = np.where(up, np.nextafter(self.theta[idx], np.inf), self.theta[idx])
        keep = (v >= blo[f]) & (v <= bhi[f])
        return f[keep], v[keep]

    def _cut(self):
        if getattr(self, "_cut_arr", None) is None:
            self._cut_arr = np.searchsorted(self.feat, np.arange(self.d + 1))
        return self._cut_arr

    @staticmethod
    def _move_dist(y, x0, w, norm, feats, vals):
        """Distances from ``x0`` of ``y`` with one feature changed each (vectorised)."""
        dy = np.abs(w * (y - x0))
        dn = np.abs(w[feats] * (vals - x0[feats]))
        if norm == "l1":
            return dy.sum() - dy[feats] + dn
        if norm == "l2":
            q = dy * dy
            return np.sqrt(np.maximum(q.sum() - q[feats] + dn * dn, 0.0))
        # linf: the largest of the other features and the moved one
        order = np.argsort(dy)[::-1]
        top, second = dy[order[0]], (dy[order[1]] if dy.size > 1 else 0.0)
        rest = np.where(feats == order[0], second, top)
        return np.maximum(rest, dn)

    def _prune(self, y, x0, w, norm, C, clb, deadline):
        """Move features of a qualifying ``y`` back toward the row: first whole features back to
        the row's value (the move that saves most, while one qualifies), then cell by cell (the
        nearest qualifying point of all single moves, repeated while it helps)."""
        cells = self._cells()
        cur = float(weighted_norm(y - x0, w, norm))
        for _ in range(self.d):  # whole features back
            f = np.flatnonzero(y != x0)
            if f.size == 0 or time.perf_counter() > deadline:
                break
            ok = self.slack_moves(y, f, x0[f], C, clb) >= 0
            if not ok.any():
                break
            dist = self._move_dist(y, x0, w, norm, f, x0[f])
            j = np.flatnonzero(ok)[np.argmin(dist[ok])]
            y = y.copy()
            y[f[j]] = x0[f[j]]
            cur = float(dist[j])
        for _ in range(self.P + self.d):  # then cell by cell
            if time.perf_counter() > deadline:
                break
            vals, feats = [], []
            for f in np.flatnonzero(y != x0):  # a loop over moved features
                th = cells[f]
                if y[f] > x0[f]:
                    v = np.nextafter(th[(th >= x0[f]) & (th < y[f])], np.inf)
                else:
                    v = th[(th < x0[f]) & (th >= y[f])]
                v = v[v != y[f]]
                vals.append(v)
                feats.append(np.full(v.size, f))
            if not vals:
                break
            vals, feats = np.concatenate(vals), np.concatenate(feats)
            dist = self._move_dist(y, x0, w, norm, feats, vals)
            better = dist < cur
            if not better.any():
                break
            feats, vals, dist = feats[better], vals[better], dist[better]
            ok = self.slack_moves(y, feats, vals, C, clb) >= 0
            if not ok.any():
                break
            j = np.flatnonzero(ok)[np.argmin(dist[ok])]
            y = y.copy()
            y[feats[j]] = vals[j]
            cur = float(dist[j])
        return y

    def _boundary_walk(self, x0, blo, bhi, w, norm, C, clb, deadline, max_steps=400):
        """From the row, cross one split point at a time: the move that raises the smallest slack
        most per unit of added distance (moves that shorten the distance and raise it first),
        looking at the next split point of each feature (further ones when no move helps). Any
        qualifying move seen on the way is remembered; the walk goes on while it is still
        nearer than the best of them. Deterministic; None if nothing qualifies in time."""
        y = x0.copy()
        sl = float(self.slack(y[None, :], C, clb)[0])
        if sl >= 0:
            return y
        cur = 0.0
        best, best_d = None, np.inf
        k, k0 = 1, 0
        for _ in range(max_steps):
            if time.perf_counter() > deadline or cur >= best_d:
                break
            # on a plateau only the split points beyond those already looked at (the nearer
            # ones neither qualified nor helped, and nothing has moved since)
            feats, vals = self._moves(y, blo, bhi, k, k0)
            if feats.size == 0:
                if k is None:
                    break
                k, k0 = (None if k >= 64 else 4 * k), k
                continue
            slc = self.slack_moves(y, feats, vals, C, clb)
            dist = self._move_dist(y, x0, w, norm, feats, vals)
            ok = slc >= 0
            if ok.any():
                j = np.flatnonzero(ok)[np.argmin(dist[ok])]
                if dist[j] < best_d:
                    best = y.copy()
                    best[feats[j]] = vals[j]
                    best_d = float(dist[j])
            gain = slc - sl
            dc = dist - cur
            up = (gain > 1e-15 * (1.0 + abs(sl))) & ~ok & (dist < best_d)
            if not up.any():
                if k is None or ok.any():
                    break
                k, k0 = (None if k >= 64 else 4 * k), k  # a plateau: look further along
                continue
            free = up & (dc <= 0)
            if free.any():
                j = np.flatnonzero(free)[np.argmax(gain[free])]
            else:
                ratio = np.where(up, gain / np.maximum(dc, 1e-300), -np.inf)
                j = int(np.argmax(ratio))
            y = y.copy()
            y[feats[j]] = vals[j]
            sl, cur = float(slc[j]), float(dist[j])
            k, k0 = 1, 0
        return best

    def anytime_points(self, x0, blo, bhi, w, norm, C, clb, *, refs=None, deadline=np.inf,
                       max_points=2):
        """Candidate answers the leaf boxes say qualify (``C z >= clb``), nearest first, from
        three searches that need no solver (each answer is then confirmed by the estimator):

        (a) the reference rows ``refs`` (training rows that qualify): the row projected onto
            the cells of the nearest ones, and those rows themselves;
        (b) every single-feature change: the row with one feature moved across one split point,
            for every split point of the model (all ``P`` at once);
        (c) the boundary walk (:meth:`_boundary_walk`), one split point at a time;

        the best of each is then pulled back toward the row cell by cell (:meth:`_prune`). So an
        answer built from these is never farther than the nearest qualifying reference row, the
        best single-feature change, or the walk."""
        cand = []
        best = np.inf
        if refs is not None and refs.shape[0]:
            pts = refs
            # the cells of the 16 nearest reference rows (a cell is never farther than its row)
            near = np.argsort(weighted_norm(pts - x0, w, norm), kind="stable")[:16]
            pts = pts[near]
            rlo, rhi = self.cells(pts)
            lo = np.maximum(rlo, np.nextafter(blo, -np.inf))
            hi = np.minimum(rhi, bhi)
            proj = np.minimum(np.maximum(x0, np.nextafter(lo, np.inf)), hi)
            empty = np.any(proj > hi, axis=1) | np.any(proj <= lo, axis=1)
            dp = np.where(empty, np.inf, weighted_norm(proj - x0, w, norm))
            inbox = np.all((pts >= blo) & (pts <= bhi), axis=1)
            dr = np.where(inbox, weighted_norm(pts - x0, w, norm), np.inf)
            a = np.argsort(dp, kind="stable")[:8]
            b = np.argsort(dr, kind="stable")[:4]
            Y = np.vstack([proj[a][np.isfinite(dp[a])], pts[b][np.isfinite(dr[b])]])
            if Y.shape[0]:
                ok = self.slack(Y, C, clb) >= 0
                Y = Y[ok]
                dist = weighted_norm(Y - x0, w, norm)
                for j in np.argsort(dist, kind="stable")[:3]:
                    cand.append(Y[j])
                if ok.any():
                    best = float(dist.min())
        # (c) one split point at a time; with nothing else in hand it runs past the deadline
        # (up to its step cap): an answer late beats none
        y = self._boundary_walk(x0, blo, bhi, w, norm, C, clb, deadline if cand else np.inf)
        if y is not None:
            cand.append(y)
            best = min(best, float(weighted_norm(y - x0, w, norm)))
        # (b) every split point, one feature at a time (only those nearer than the best so far)
        xf, th = x0[self.feat], self.theta
        v = np.where(xf <= th, np.nextafter(th, np.inf), th)
        keep = (v >= blo[self.feat]) & (v <= bhi[self.feat]) & (w[self.feat] * np.abs(v - xf) < best)
        if keep.any():
            idx = np.flatnonzero(keep)
            ok = self.slack_moves(x0, self.feat[idx], v[idx], C, clb) >= 0
            if ok.any():
                dist = w[self.feat[idx]] * np.abs(v[idx] - xf[idx])
                j = np.flatnonzero(ok)[np.argmin(dist[ok])]
                y = x0.copy()
                y[self.feat[idx[j]]] = v[idx[j]]
                cand.append(y)
        if not cand:
            return []
        Y = np.vstack(cand)
        dist = weighted_norm(Y - x0, w, norm)
        out = []
        for j in np.argsort(dist, kind="stable")[:max_points]:
            out.append(self._prune(Y[j], x0, w, norm, C, clb, deadline))
        dist = [float(weighted_norm(p - x0, w, norm)) for p in out]
        return [out[j] for j in np.argsort(dist, kind="stable")]

    def minimize(self, x0, blo, bhi, w, norm, C, clb, verify, *, time_limit, cap=np.inf,
                 known_lb=0.0, start=True, refs=None, milp=True):
        """Minimum distance from ``x0`` to a point of ``[blo, bhi]`` whose leaf indicators ``z``
        satisfy ``C z >= clb`` and that ``verify`` confirms. Anytime: whatever stops it (the time
        limit, ``milp=False``), it returns the best verified point it has.

        ``verify(point) -> (ok, point, leaves)``: the estimator's verdict at the (possibly
        adjusted) point, and the global leaf ids it reaches there. ``cap``: a distance (report
        units) beyond which answers are not wanted; with it, "nothing at most cap" proves a lower
        bound of ``cap``. ``known_lb``: a proven lower bound (report units) from elsewhere (the
        leaf-exit bound): a verified point that meets it needs no solver. ``start``: first look
        for verified points without the solver (:meth:`anytime_points`, with ``refs`` the
        qualifying reference rows and their cells; and :meth:`start_point` where it is cheap),
        so that the first program already has the best cost as a cutoff and every flip dearer
        than it fixed. ``time_limit`` (seconds) covers all of it. ``milp=False``: the searches
        only (a model too large for the program).

        Returns ``dict(point, dist, lb, status, exact)``: ``point`` verified (or None), ``dist``
        its distance, ``lb`` a proven lower bound (report units, never above ``dist``), status
        "optimal", "infeasible", "limit", "skipped" (``milp=False``) or "unverified".
        """
        t0 = time.perf_counter()
        P, L = self.P, self.L
        sq = norm == "l2"
        to_cost = (lambda v: v * v) if sq else (lambda v: v)
        to_dist = (lambda v: np.sqrt(max(v, 0.0))) if sq else (lambda v: max(v, 0.0))
        linf = norm == "linf"
        best_pt, best_cost, best_dist = None, np.inf, np.inf
        U = to_cost(cap) if np.isfinite(cap) else np.inf  # verified (or wanted) cost bound
        lb_cost = to_cost(max(float(known_lb), 0.0)) if np.isfinite(known_lb) else 0.0
        lb_cost = min(lb_cost, U)

        def finish(status, done):
            lbd = to_dist(lb_cost)
            if best_pt is not None:
                lbd = min(lbd, best_dist)
                slack = _ulps(x0, best_pt, w, norm)
                exact = status == "optimal" and best_dist <= lbd * (1 + _REL) + slack
            else:
                exact = status == "infeasible" and done
            return dict(point=best_pt, dist=best_dist, lb=lbd, status=status, exact=bool(exact))

        if start:
            # the searches may use all of the time: the program is small and fast only from a
            # good incumbent (every flip dearer than it is fixed), so a walk cut short costs
            # more than it saves (measured: a 40% share left answers 1.3x farther, loaded);
            # the program gets what is left
            ys = self.anytime_points(x0, blo, bhi, w, norm, C, clb, refs=refs,
                                     deadline=t0 + max(float(time_limit), 0.0))
            y = self.start_point(x0, blo, bhi, w, norm, C, clb)
            if y is not None:
                ys.append(y)
            ys.sort(key=lambda q: float(weighted_norm(q - x0, w, norm)))
            for y in ys[:4]:  # nearest first; the first the estimator confirms is the incumbent
                ok, point, _ = verify(y)
                if not ok:
                    continue
                dist = float(weighted_norm(point - x0, w, norm))
                if dist < best_dist and to_cost(dist) <= U:
                    best_pt, best_dist, best_cost = point, dist, to_cost(dist)
                    U = best_cost
                    if best_dist <= to_dist(lb_cost) * (1 + _REL) + _ulps(x0, best_pt, w, norm):
                        return finish("optimal", True)
                break
        if not milp:
            return finish("skipped", False)
        if time_limit - (time.perf_counter() - t0) <= 0:
            return finish("limit", False)
        s, g, h, blocked, inc = self._row(x0, blo, bhi, w, norm)
        A0 = self.A_rows  # CSR, static
        # p = s + sgn * u: the static rows in the flip variables (a sign per column)
        sgn = np.concatenate([np.where(s, -1.0, 1.0), np.ones(L)])
        A = sparse.csr_matrix((A0.data * sgn[A0.indices], A0.indices, A0.indptr), shape=A0.shape)
        shift = self._A_pred @ s.astype(np.float64)
        A_lb, A_ub = self.A_lb - shift, self.A_ub - shift
        Cz = sparse.csr_matrix(np.hstack([np.zeros((C.shape[0], P)), C]))
        cuts = []
        status = "limit"
        done = False
        nv = P + L + (1 if linf else 0)
        for _ in range(_ROUNDS):
            left = time_limit - (time.perf_counter() - t0)
            if left <= 0:
                break
            # a flip dearer on its own than a known answer is never part of a better one
            free = ~blocked & ~(h > U * (1 + 1e-9))
            if not free.any():  # only the row's own cell is left, and it does not qualify
                status = "infeasible" if best_pt is None else "optimal"
                lb_cost = max(lb_cost, U)
                done = True
                break
            S = U if np.isfinite(U) and U > 0 else float(h[free].max())
            if not S > 0:
                S = 1.0
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
                if np.isfinite(U):  # the cutoff: no worse than the best known answer
                    vub[-1] = 1.0
            else:
                c[:P] = np.where(free, inc / S, 0.0)
                if np.isfinite(U):  # the cutoff: no worse than the best known answer
                    fi = np.flatnonzero(c[:P] > 0)
                    blocks.append(sparse.csr_matrix((c[fi], (np.zeros(fi.size, dtype=np.intp), fi)),
                                                    shape=(1, nv)))
                    lbs.append(np.array([-np.inf])); ubs.append(np.array([1.0]))
            x_start = None
            if best_pt is not None:  # the incumbent as HiGHS's starting solution (a MIP warm start)
                u0 = ((best_pt[self.feat] <= self.theta) != s).astype(np.float64)
                if np.all(u0 <= vub[:P]):
                    x_start = np.zeros(nv)
                    x_start[:P] = u0
                    x_start[P + self.walker(best_pt[None, :])[0]] = 1.0
                    if linf:
                        x_start[-1] = float(np.max(g * u0, initial=0.0)) / S
            # the program HiGHS sees: without the flips fixed at 0 and the leaves they make
            # unreachable (all exactly 0 in every feasible point), and without the static rows
            # left empty (0 at the row's own cell, where they hold); the same optimum and bound
            keep = np.concatenate([vub[:P] > 0, self._reachable(vub[:P] > 0, s), [True] if linf else []])
            cols = np.flatnonzero(keep)
            M = sparse.vstack(blocks, format="csr")[:, cols]
            nz = np.diff(M.indptr) > 0
            nz[A.shape[0]:A.shape[0] + Cz.shape[0]] = True  # the class rows stay, empty or not
            if linf or np.isfinite(U):
                nz[A.shape[0] + Cz.shape[0] + len(cuts):] = True  # so do the level and cutoff rows
            M = M[nz]
            # HiGHS looks at the clock only after its set-up, and after presolve (measured,
            # 100-tree forest, 200-round boosting: presolve 2-5 s on ~60,000 nonzeros given
            # 0.5 s; the set-up without it ~0.5 s on ~110,000): a program too large for the time
            # left is not started (it would neither improve the incumbent nor bound it); small
            # programs, which presolve empties in milliseconds, keep presolve; larger ones run
            # without it unless the time allows
            if M.nnz > _SETUP_NNZ_PER_S * left:
                status = "limit"
                break
            res = _solve(c[cols], int(np.count_nonzero(vub[:P] > 0)), vub[cols], M,
                         np.concatenate(lbs)[nz], np.concatenate(ubs)[nz], left,
                         start=None if x_start is None else x_start[cols],
                         presolve=M.nnz <= _PRESOLVE_NNZ_PER_S * left)
            if res.x is not None:
                full = np.zeros(nv)
                full[cols] = res.x
                res.x = full
            if res.status == 2:  # nothing (better than U): proven, up to the solver's tolerances
                if np.isfinite(U):
                    lb_cost = max(lb_cost, max(U * (1 - _DEFLATE) - _ABS * S, 0.0))
                else:
                    lb_cost = np.inf
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
            same = best_pt is not None and np.array_equal(u, (best_pt[self.feat] <= self.theta) != s)
            near = self._point(x0, s, u, blo, bhi)
            if same and float(weighted_norm(near - x0, w, norm)) >= best_dist:
                ok, point = True, best_pt  # the cell of the verified point, met at its nearest
            else:
                # the incumbent may lie deeper in this cell than its nearest point (verification
                # rounds x0 + delta, which can land a point found for another cell in this one)
                ok, point, leaves = verify(near)
                if not ok and same:  # confirmed at the incumbent: never cut a qualifying cell
                    ok, point = True, best_pt
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
        return finish(status, done)


# --- HiGHS, called directly ---------------------------------------------------------------------

class _Result:
    __slots__ = ("status", "x", "mip_dual_bound")

    def __init__(self, status, x, dual):
        self.status, self.x, self.mip_dual_bound = status, x, dual


_DIRECT = {"ok": None}


def _direct_core():
    """scipy's own HiGHS binding (``scipy.optimize._highspy._core``), or None when this scipy
    does not have the pieces used here (then :func:`scipy.optimize.milp` is called instead)."""
    if _DIRECT["ok"] is None:
        try:
            from scipy.optimize._highspy import _core as h

            opts = h.HighsOptions()
            for key, val in _HIGHS.items():
                setattr(opts, key, ("on" if val else "off") if key == "presolve" else val)
            opts.log_to_console = False
            opts.output_flag = False
            h.HighsLp, h.MatrixFormat.kRowwise, h.HighsVarType.kInteger, h._Highs  # noqa: B018
            _DIRECT.update(ok=True, h=h, opts=opts)
        except Exception:  # an older or newer scipy: the public API does the same, slower
            _DIRECT["ok"] = False
    return _DIRECT.get("h") if _DIRECT["ok"] else None


def _solve(c, n_int, vub, A, rlo, rhi, time_limit, start=None, presolve=True):
    """``min c x`` over ``0 <= x <= vub``, ``rlo <= A x <= rhi`` (``A`` CSR), the first ``n_int``
    variables integral, with the options in ``_HIGHS`` (``presolve=False``: without HiGHS's
    presolve, which does not look at the time limit until it is done). Returns ``status`` as
    :func:`scipy.optimize.milp` does (0 optimal, 1 a limit, 2 infeasible, 4 other), ``x`` (or
    None) and the proven dual bound. Calls scipy's HiGHS binding directly where it can (its
    Python wrapper re-validates every option on each call, a few ms for a program solved in
    a few ms), else :func:`scipy.optimize.milp`."""
    nv = c.size
    h = _direct_core()
    if h is None:
        integrality = np.zeros(nv)
        integrality[:n_int] = 1
        with warnings.catch_warnings(), native_stdout_silenced():
            warnings.simplefilter("ignore")  # options scipy passes to HiGHS verbatim
            return milp(c, integrality=integrality, bounds=Bounds(np.zeros(nv), vub),
                        constraints=LinearConstraint(A, rlo, rhi),
                        options={**_HIGHS, "presolve": bool(presolve),
                                 "time_limit": max(0.01, float(time_limit))})
    lp = h.HighsLp()
    lp.num_col_ = nv
    lp.num_row_ = A.shape[0]
    lp.col_cost_ = np.ascontiguousarray(c, dtype=np.float64)
    lp.col_lower_ = np.zeros(nv)
    lp.col_upper_ = np.ascontiguousarray(vub, dtype=np.float64)
    lp.row_lower_ = np.ascontiguousarray(rlo, dtype=np.float64)
    lp.row_upper_ = np.ascontiguousarray(rhi, dtype=np.float64)
    am = lp.a_matrix_
    am.format_ = h.MatrixFormat.kRowwise
    am.num_col_ = nv
    am.num_row_ = A.shape[0]
    am.start_ = A.indptr.astype(np.int32)
    am.index_ = A.indices.astype(np.int32)
    am.value_ = A.data.astype(np.float64)
    lp.integrality_ = [h.HighsVarType.kInteger] * n_int + [h.HighsVarType.kContinuous] * (nv - n_int)
    highs = h._Highs()
    opts = _DIRECT["opts"]
    opts.time_limit = max(0.01, float(time_limit))
    opts.presolve = "on" if presolve else "off"
    if highs.passOptions(opts) == h.HighsStatus.kError or highs.passModel(lp) == h.HighsStatus.kError:
        return _Result(4, None, None)
    if start is not None:  # a feasible point HiGHS may use as its first incumbent (it checks it)
        sol = h.HighsSolution()
        sol.col_value = np.ascontiguousarray(start, dtype=np.float64)
        sol.value_valid = True
        highs.setSolution(sol)
    with native_stdout_silenced():   # HiGHS printf()s debug lines whatever output_flag says
        run_status = highs.run()
    if run_status == h.HighsStatus.kError:
        return _Result(4, None, None)
    ms = highs.getModelStatus()
    info = highs.getInfo()
    dual = float(info.mip_dual_bound)
    M = h.HighsModelStatus
    if ms == M.kOptimal:
        status = 0
    elif ms in (M.kInfeasible, M.kUnboundedOrInfeasible):  # costs >= 0, x >= 0: never unbounded
        return _Result(2, None, dual)
    elif ms in (M.kTimeLimit, M.kIterationLimit, M.kSolutionLimit, M.kInterrupt):
        status = 1
    else:
        return _Result(4, None, dual)
    x = None
    if info.objective_function_value < h.kHighsInf and \
            int(info.primal_solution_status) == int(h.kSolutionStatusFeasible):
        x = np.asarray(highs.getSolution().col_value, dtype=np.float64)
    if status == 0 and x is not None and not np.isfinite(dual):
        # "optimal" with no dual bound: presolve found nothing better than the starting
        # solution (HiGHS 1.12 leaves the bound at -inf then); optimal means within the gaps
        obj = float(info.objective_function_value)
        dual = obj - max(opts.mip_abs_gap, opts.mip_rel_gap * abs(obj))
    return _Result(status, x, dual)


def _ensemble(form, prob: Problem, *, X_train, seed, progress, time_limit, max_binaries,
              n_candidates, run_time_limit=None) -> dict:
    from invaudit.margins._blackbox import search

    started = time.perf_counter()
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
    model = EnsembleMilp.for_form(form)
    use_milp = model.n_binaries <= max_binaries
    refs = None
    has_train = X_train is not None and X_train.shape[0] > 0
    if has_train:
        # the cells of the training rows, by the class the estimator gives them: (a) of the
        # anytime search (never farther than the nearest training row of another class)
        pred_train = model.train_classes(X_train)
        refs = {int(k): X_train[pred_train == k] for k in range(form.n_classes)}
    deadline = None if run_time_limit is None else started + float(run_time_limit)
    # one program per row and class, each verified by predicting a single point: OpenMP
    # thread start-up (HistGradientBoosting's predict) would dominate those tiny calls
    with one_openmp_thread():
        _milp_rows(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact,
                   method, np.flatnonzero(~unreachable), time_limit, progress, use_milp=use_milp,
                   refs=refs, deadline=deadline)
    todo = np.flatnonzero(np.isnan(margin))
    if todo.size:
        # rows the anytime search left without a point: boundary search toward endpoints that
        # depend on nothing but the row (and X_train): the nearest points of other-class leaves
        # and the nearest training rows predicted otherwise; no random directions, whose draws
        # (and spread) would depend on the other rows of the batch
        extra = [_leaf_candidates(form, prob, todo, Sc, n_candidates)]
        if has_train:
            from invaudit.margins._blackbox import _nearest_candidates

            idx = _nearest_candidates(X[todo], prob.pred[todo], X_train, pred_train,
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
               rows, time_limit, progress, *, use_milp=True, refs=None, deadline=None):
    """The anytime search and the MILP for each of ``rows`` (fills the output arrays in place).
    Every row is solved on its own, with its own time budget (``time_limit`` seconds, shared by
    its other classes; less when the run's ``deadline`` is nearer): nothing carries over from
    one row to the next. After the run's deadline a row gets the searches only.

    Candidate points are confirmed by the form's own routing (:meth:`EnsembleMilp.fast_class`,
    microseconds) where the class it gives is clear, else by the estimator's ``predict``; the
    answers are then confirmed by the estimator in one call, and a row it does not confirm is
    solved again with the estimator deciding every point (the answer is the same whichever
    way it was found, as every point is finally the estimator's)."""
    n = prob.n
    fast = np.zeros(n, dtype=bool)  # answers accepted by the form's own routing
    for i in rows:  # one program per row (and other class)
        fast[i] = _margin_row(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact,
                              method, int(i), time_limit, use_milp, refs, deadline, use_fast=True)
        if progress is not None:
            progress(int(i) + 1, n)
    chk = np.flatnonzero(fast & np.isfinite(margin))
    if chk.size:  # the estimator's own predict on every such answer, in one call
        idx = np.asarray(form.predict_index(prob.X[chk] + delta[chk]), dtype=np.intp)
        good = idx != prob.pred[chk]
        nearest[chk[good]] = idx[good]
        for i in chk[~good]:  # a loop over rows the estimator did not confirm (never seen)
            margin[i], delta[i], nearest[i], exact[i], method[i] = np.nan, np.nan, -1, False, ""
            _margin_row(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact,
                        method, int(i), time_limit, use_milp, refs, deadline, use_fast=False)


def _margin_row(form, prob, model, Sc, s0, lb_cls, lower, margin, delta, nearest, exact, method,
                i, time_limit, use_milp, refs, deadline, *, use_fast) -> bool:
    """One row of :func:`_milp_rows`; returns whether its answer was accepted by the form's own
    routing (so still to be confirmed by the estimator)."""
    X, p = prob.X, prob.pred
    lo_i, hi_i = prob.box([i])
    sigma = model.sigma
    start = time.perf_counter()
    budget = float(time_limit)
    run_over = False
    if deadline is not None:
        budget = min(budget, deadline - start)
        run_over = budget <= 0
    x0 = X[i]
    blo, bhi = x0 + lo_i[0], x0 + hi_i[0]
    pi = p[i:i + 1]

    seen = {}  # verified points: their perturbation, class and whether the routing decided

    def verify(pt, x0=x0, pi=pi, seen=seen):
        if use_fast:  # finalize's steps, each point judged by the routing while it is clear
            dl = pt - x0
            ulp = np.spacing(np.abs(x0) + np.abs(dl))
            for k in range(_PUSHES + 1):
                if k:
                    dl = dl + np.sign(dl) * ulp * 2.0 ** (k - 1)
                q = x0 + dl  # what the report's perturbation gives back
                G, cls, clear = model.fast_class(q[None, :])
                if not clear[0]:
                    break  # a close call: the estimator decides
                if cls[0] != pi[0]:
                    seen[q.tobytes()] = (dl, int(cls[0]), True)
                    return True, q, None
            else:  # clearly the row's class wherever finalize would look
                return False, pt, model.walker(pt[None, :])[0]
        dl, ok, idx = finalize(form, x0[None, :], pt[None, :], pi, tries=_PUSHES)
        if ok[0]:
            q = x0 + dl[0]
            seen[q.tobytes()] = (dl[0], int(idx[0]), False)
            return True, q, None
        return False, pt, model.walker(pt[None, :])[0]

    best_d, best_dl, best_k, best_fast = np.inf, None, -1, False
    lbs = lb_cls[i].copy()
    stopped = None
    for j in np.argsort(lb_cls[i], kind="stable"):
        if j == p[i] or not np.isfinite(lb_cls[i, j]) or lb_cls[i, j] >= best_d:
            continue
        left = budget - (time.perf_counter() - start)
        row, lbv = beat_row(form, Sc, s0, int(j), int(p[i]), sigma)
        out = model.minimize(x0, blo, bhi, prob.weights, prob.norm, row[None, :], np.array([lbv]),
                             verify, time_limit=max(left, 0.0), cap=best_d,
                             known_lb=lb_cls[i, j], refs=None if refs is None else refs[int(j)],
                             milp=use_milp and not run_over and left > 0)
        lbs[j] = max(lbs[j], out["lb"])
        if out["status"] in ("limit", "error"):
            stopped = "time limit"
        elif out["status"] == "skipped" and stopped is None:
            stopped = "MILP too large" if not use_milp else "run time limit"
        elif out["status"] == "unverified":
            stopped = "the estimator disagrees with the leaf boxes"
        if out["point"] is not None:
            dl, k, was_fast = seen[out["point"].tobytes()]
            dist = float(weighted_norm(dl, prob.weights, prob.norm))
            if dist < best_d:
                best_d, best_dl, best_k, best_fast = dist, dl, k, was_fast
    lbs[p[i]] = np.inf
    lower[i] = min(np.min(lbs), best_d)  # every other class is bounded below
    if best_dl is not None:
        margin[i] = best_d
        delta[i] = best_dl
        nearest[i] = best_k
        # exact when the verified point is as near as the proven lower bound
        slack = _ulps(x0, x0 + best_dl, prob.weights, prob.norm)
        exact[i] = best_d <= lower[i] * (1 + _REL) + slack
        if exact[i]:
            method[i] = "tree-ensemble-milp" if use_milp and not run_over \
                else "tree-ensemble-anytime (meets the leaf-exit lower bound)"
        elif stopped in ("MILP too large", "run time limit"):
            method[i] = f"tree-ensemble-anytime ({stopped}: verified search, leaf-exit lower bound)"
        else:
            method[i] = f"tree-ensemble-milp ({stopped or 'gap'}: bounds)"
    elif not np.isfinite(lower[i]):
        margin[i] = np.inf
        exact[i] = True
        method[i] = "tree-ensemble-milp (unreachable)"
    return bool(best_dl is not None and best_fast)


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


#: Seconds per row (searches and MILP together) when the caller names none: the 100-tree
#: forests and 200-round boosting of benchmarks/trees_anytime.py answer within 1 s a row.
DEFAULT_TIME_LIMIT = 0.6


def solve_trees(form, prob: Problem, *, X_train=None, seed=0, progress=None,
                time_limit=DEFAULT_TIME_LIMIT, max_binaries=20000, n_candidates=32,
                run_time_limit=None) -> dict:
    """Tree margins (module docstring)."""
    if form.aggregate == "single":
        return _single_tree(form, prob, progress)
    # many small predict calls: OpenMP start-up (HistGradientBoosting) would dominate them, and
    # on a busy machine its spinning threads cost seconds a call (measured)
    with one_openmp_thread():
        return _ensemble(form, prob, X_train=X_train, seed=seed, progress=progress,
                         time_limit=time_limit, max_binaries=max_binaries,
                         n_candidates=n_candidates, run_time_limit=run_time_limit)
