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
norms are exact mixed-integer *linear* programs, solved by HiGHS (``scipy.optimize.milp``)
through the program shared with the margins (:class:`invaudit.margins._trees.EnsembleMilp`:
per-row flip variables, normalisation so that the answer is exact at every feature scale,
predicates dearer than a verified answer fixed, solver tolerances made tiny). The row's box fixes
predicates (cells outside it are excluded). The answer is exact (``exact: true``,
``kkt_residual`` the relative gap to the proven lower bound, at most 1e-7) when the estimator
confirms the point and the solver's proven dual bound, in distance units, meets it. Ties in the
prediction are resolved as the estimator resolves them (the lower class index; class 1 for
binary GradientBoosting at ``raw >= 0``) for score gaps below 1e-8 of the score scale; a tuple
of leaves the estimator does not confirm is cut off and the program solved again.

Anytime. Every row has a time limit (seconds, the searches and the MILP together; default
:data:`invaudit.margins._trees.DEFAULT_TIME_LIMIT`) and gets the best verified point found when
it runs out. Before the program, searches that need no solver
(:meth:`~invaudit.margins._trees.EnsembleMilp.anytime_points`) propose points the leaf boxes say
qualify, routed through the estimator's own comparisons (thousands of candidates in
milliseconds): (a) the row projected onto the cells of the nearest qualifying ``--train`` rows,
and those rows themselves; (b) every single-feature change (the row with one feature moved across
one split point, for every split point); (c) a boundary walk that crosses one split point at a
time; the best are pulled back toward the row cell by cell. The nearest confirmed (see below) is
the incumbent: its cost fixes every dearer flip and cuts the program off, so the MILP either
improves it, proves it optimal, or stops at the limit with its dual bound as ``lower_bound``.
Points are confirmed by the form's own routing where its verdict is clear
(:meth:`~invaudit.margins._trees.EnsembleMilp.fast_qualifies`), else by the estimator; every
answer is then confirmed by the estimator's ``predict`` in one call, and a row it does not
confirm is solved again with the estimator deciding every point. So
an answer is never farther than the nearest training row the model assigns the target, the best
single-feature change, or the walk. Models over ``max_binaries`` get the searches only.

Fallback: *live regions*, cells of the ensemble on which it predicts the target. A training
row (``--train``) predicted as the target lies in the intersection of its leaves, a box on which
the ensemble is constant; projecting the row onto every such box gives verified candidates
(``exact: false``). Without ``--train`` (and besides it) the candidates come from the model and
the row alone: a walk from the row through leaf boxes and the boundary on the segments to the
nearest leaf boxes favouring the target. A local search by verified queries then tries to
improve them, each row with random draws of its own. So a row's answer never depends on the other
rows of the batch. Used only for rows the anytime search and the MILP left without a verified
point, and for what the program cannot express (multiclass boosting with a confidence: the
softmax threshold is not linear in the leaves).
"""

from __future__ import annotations

import time

import numpy as np

from invaudit.counterfactual._nl_common import Answers, Problem, bisect_to_target, distance, qualifies
from invaudit.margins._trees import DEFAULT_TIME_LIMIT, EnsembleMilp, beat_row, score_scale, score_table
from invaudit.margins.boxes import intersect_boxes, project_to_boxes

__all__ = ["solve_trees", "EnsembleMilp", "live_regions"]

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

def _target_rows(form, Sc, s0, sigma, k: int, P):
    """Rows ``C z >= clb`` over the leaf indicators making class ``k`` the prediction (every
    other class beaten, ties as the estimator resolves them) and, with a confidence, ``p_k >= P``
    (linear for forests, and for binary boosting as ``raw >= logit(P)``)."""
    K = int(form.n_classes)
    rows, lbs = [], []
    for j in range(K):  # a loop over classes
        if j != k:
            r, lb = beat_row(form, Sc, s0, k, j, sigma)
            rows.append(r)
            lbs.append(lb)
    if P is not None:
        if form.aggregate == "mean-proba":
            rows.append(Sc[:, k] / sigma)
            lbs.append(P / sigma)
        else:  # binary boosting (multiclass boosting with a confidence never comes here)
            logit = float(np.log(P) - np.log1p(-P))
            rows.append((Sc[:, k] - Sc[:, 1 - k]) / sigma)
            lbs.append((logit - (s0[k] - s0[1 - k])) / sigma)
    return np.vstack(rows), np.asarray(lbs, dtype=np.float64)


def _supports(form, P) -> bool:
    """The MILP expresses every target except a softmax confidence (multiclass boosting)."""
    return not (form.aggregate == "boosting" and form.link == "softmax" and P is not None)


def _reference_rows(prob: Problem, k: int):
    """The reference rows (``--train``) that qualify for target ``k`` (with the confidence)."""
    pool = prob.pool
    if pool is None or pool.X is None or len(pool.X) == 0:
        return None
    ok = pool.pred == k
    if prob.P is not None and pool.proba is not None:
        ok &= pool.proba[:, k] >= prob.P
    return pool.X[ok]


def _ensemble(prob: Problem, *, time_limit: float, max_binaries: int, progress_offset: int,
              progress_total, run_deadline=None) -> Answers:
    form = prob.form
    n, D = prob.X.shape
    ans = Answers(n, D)
    model = EnsembleMilp.for_form(form)
    total = progress_total if progress_total is not None else n
    if not _supports(form, prob.P):
        why = "a softmax confidence is not linear in the leaves"
        regions = live_regions(form, prob.pool.X if prob.pool is not None else None)
        _fallback(prob, model, regions, ans)
        ans.backing[ans.state == "found"] = np.array(
            [f"{b}; MILP not used: {why}" for b in ans.backing[ans.state == "found"]], dtype=object)
        ans.fail(np.arange(n), "no live region of the target class (pass --train) and " + why,
                 method="tree-live-regions")
        if prob.progress is not None:
            prob.progress(progress_offset + n, total)
        return ans
    use = model.n_binaries <= max_binaries
    too_large = f"MILP not used: it would need more than {max_binaries} binaries"
    Sc, s0, sigma = model.Sc, model.s0, model.sigma
    milp_lb = np.full(n, np.nan)
    why_not = np.full(n, None, dtype=object)
    refs = {}

    def solve_row(i, use_fast):
        """One row: the anytime search and the MILP. Candidate points are confirmed by the
        form's own routing where its verdict is clear (:meth:`EnsembleMilp.fast_qualifies`),
        else by the estimator; returns whether the answer still needs the estimator's word."""
        k = int(prob.target[i])
        if k not in refs:
            refs[k] = _reference_rows(prob, k)
        C, clb = _target_rows(form, Sc, s0, sigma, k, prob.P)
        x0 = prob.X[i]
        budget = float(time_limit)
        if run_deadline is not None:  # the run's own limit: afterwards, the searches only
            budget = min(budget, run_deadline - time.perf_counter())
        by_routing = set()

        def verify(pt, k=k):
            if use_fast:
                verdict, leaves = model.fast_qualifies(pt, C, clb)
                if verdict:
                    by_routing.add(pt.tobytes())
                    return True, pt, None
                if verdict is False:
                    return False, pt, leaves
            ok = qualifies(form, pt[None, :], np.array([k]), prob.P)[0][0]
            return ok, pt, None if ok else model.walker(pt[None, :])[0]

        out = model.minimize(x0, prob.lower[i], prob.upper[i], prob.weights, prob.norm, C, clb,
                             verify, time_limit=max(budget, 0.0), refs=refs[k],
                             milp=use and budget > 0)
        milp_lb[i] = out["lb"]
        if out["status"] == "infeasible" and out["exact"]:
            ans.fail([i], "the MILP proves that no point within the constraints reaches the target"
                     + ("" if prob.P is None else f" at p >= {prob.P:g}"), infeasible=True,
                     method="tree-ensemble-milp")
            ans.exact[i] = True
        elif out["point"] is not None:
            d = out["dist"]
            gap = max(d - out["lb"], 0.0) / d if d > 0 else 0.0
            if out["exact"]:
                ans.offer([i], out["point"][None, :], d, k, "tree-ensemble-milp", exact=True,
                          kkt=gap, iters=1, lower_bound=out["lb"],
                          backing=f"exact: MILP optimal (HiGHS), relative gap {gap:.1e} to the "
                                  "proven lower bound, verified by the estimator")
            elif out["status"] == "skipped":
                why_not[i] = too_large if not use else "the run's time limit"
                ans.offer([i], out["point"][None, :], d, k, "tree-ensemble-anytime", iters=1,
                          lower_bound=out["lb"],
                          backing="verified by the estimator; anytime search (cells of the nearest "
                                  "qualifying --train rows, single-feature changes, boundary walk); "
                                  f"{why_not[i]}; lower bound {out['lb']:.4g}")
            else:
                why_not[i] = ("time limit" if out["status"] == "limit" else
                              "the estimator disagrees with the leaf boxes" if out["status"] == "unverified"
                              else "gap")
                ans.offer([i], out["point"][None, :], d, k, f"tree-ensemble-milp ({why_not[i]})",
                          iters=1, lower_bound=out["lb"],
                          backing=f"verified by the estimator; anytime search, then the MILP stopped "
                                  f"({why_not[i]}) with lower bound {out['lb']:.4g}")
            return out["point"].tobytes() in by_routing
        else:
            why_not[i] = (too_large if not use else
                          "time limit" if out["status"] in ("limit", "error", "skipped") else
                          "the estimator disagrees with the leaf boxes")
        return False

    pending = np.zeros(n, dtype=bool)  # answers the estimator has yet to confirm
    for i in range(n):  # the documented per-row loop of the MILP: each row on its own
        pending[i] = solve_row(i, True)
        if prob.progress is not None:
            prob.progress(progress_offset + i + 1, total)
    chk = np.flatnonzero(pending & (ans.state == "found"))
    if len(chk):  # the estimator's own verdict on those answers, in one call
        if prob.P is None:
            ok = np.asarray(form.predict_index(ans.x_cf[chk]), dtype=np.intp) == prob.target[chk]
        else:
            ok = qualifies(form, ans.x_cf[chk], prob.target[chk], prob.P)[0]
        for i in chk[~ok]:  # a loop over rows it did not confirm (never seen): solved again
            ans.x_cf[i], ans.dist[i], ans.state[i], ans.exact[i] = np.nan, np.inf, "failed", False
            ans.method[i], ans.backing[i], ans.lower_bound[i], ans.target[i] = "", None, np.nan, -1
            solve_row(int(i), False)
    # rows left without a verified point: live regions and local search may still find one
    rest = np.flatnonzero(~ans.exact & ~np.isin(ans.state, ("found", "infeasible")))
    if len(rest):
        regions = live_regions(form, prob.pool.X if prob.pool is not None else None)
        sub = prob.subset(rest)
        sa = Answers(len(rest), D)
        for name in ("x_cf", "dist", "state", "reason", "exact", "method", "kkt", "iters", "target",
                     "backing", "lower_bound"):
            getattr(sa, name)[:] = getattr(ans, name)[rest]
        _fallback(sub, model, regions, sa)
        for name in ("x_cf", "dist", "state", "reason", "exact", "method", "kkt", "iters", "target",
                     "backing", "lower_bound"):
            getattr(ans, name)[rest] = getattr(sa, name)
        # the MILP's proven bound stays (never above the answer)
        ans.lower_bound[rest] = np.fmin(milp_lb[rest], ans.dist[rest])
        ans.exact[rest] = False
        nf = rest[ans.state[rest] != "found"]
        for i in nf:  # a loop over failed rows only, to word the reason
            ans.fail([i], f"no verified point ({why_not[i] or 'no point'}; lower bound "
                          f"{milp_lb[i]:.4g}) and no live region of the target class is reachable",
                     method="tree-ensemble-milp")
    return ans


def _walk_candidates(prob: Problem, model, Sc, s0, sigma, ans: Answers, m: int = 8):
    """Verified candidates from the model and the row alone (no other row of the batch): the
    solver-free walk through leaf boxes (:meth:`EnsembleMilp.start_point`), and the nearest
    points of the ``m`` nearest leaf boxes whose own values favour the target, pulled toward the
    row by bisection. Every candidate is checked by the estimator."""
    form = prob.form
    n, D = prob.X.shape
    if n == 0:
        return
    P_rows = prob.P if _supports(form, prob.P) else None  # a softmax confidence: checked below
    walk = np.full((n, D), np.nan)
    for i in range(n):  # the documented per-row loop: each row on its own
        C, clb = _target_rows(form, Sc, s0, sigma, int(prob.target[i]), P_rows)
        y = model.start_point(prob.X[i], prob.lower[i], prob.upper[i], prob.weights, prob.norm, C, clb)
        if y is not None:
            walk[i] = y
    has = np.flatnonzero(np.all(np.isfinite(walk), axis=1))
    if len(has):
        ok = qualifies(form, walk[has], prob.target[has], prob.P)[0]
        r = has[ok]
        ans.offer(r, walk[r], distance(walk[r] - prob.X[r], prob.weights, prob.norm), prob.target[r],
                  "tree-live-regions", exact=False, iters=1,
                  backing="verified by the estimator; a cell of the ensemble reached by a walk "
                          "through leaf boxes from the row (an upper bound)")
    # the nearest leaf boxes favouring the target, one row at a time in chunks (vectorised)
    fav = np.argmax(Sc, axis=1)
    lowers, uppers = model._lowers, model._uppers
    L = lowers.shape[0]
    step = max(1, _CHUNK // max(1, L * D))
    for s in range(0, n, step):
        rr = np.arange(s, min(n, s + step))
        lo, hi = intersect_boxes(lowers, uppers, prob.lower[rr], prob.upper[rr])
        pts, dist = project_to_boxes(prob.X[rr], lo, hi, prob.weights, prob.norm)
        dist = np.where(fav[None, :] == prob.target[rr][:, None], dist, np.inf)
        mm = min(m, L)
        part = np.argsort(dist, axis=1, kind="stable")[:, :mm]
        E = np.take_along_axis(pts, part[:, :, None], axis=1).reshape(-1, D)
        fin = np.isfinite(np.take_along_axis(dist, part, axis=1)).ravel()
        ri = np.repeat(rr, mm)
        E, ri = E[fin], ri[fin]
        if len(ri) == 0:
            continue
        ok = qualifies(form, E, prob.target[ri], prob.P)[0]
        E, ri = E[ok], ri[ok]
        if len(ri) == 0:
            continue
        B, _ = bisect_to_target(form, prob.X[ri], E, prob.target[ri], prob.P, steps=20)
        dB = distance(B - prob.X[ri], prob.weights, prob.norm)
        order = np.lexsort((dB, ri))  # per row, the nearest first
        first = order[np.r_[True, ri[order][1:] != ri[order][:-1]]]
        ans.offer(ri[first], B[first], dB[first], prob.target[ri[first]], "tree-live-regions",
                  exact=False, iters=1,
                  backing="verified by the estimator; the boundary on the segment to the nearest "
                          "point of a leaf box favouring the target (an upper bound)")


def _fallback(prob: Problem, model, regions, ans: Answers) -> None:
    """Verified upper bounds for rows the MILP does not settle. A row's answer depends on the
    row, the model and ``--train`` only: the live regions come from the training rows (never from
    the batch), the other candidates from the model's own leaf boxes, and the local search runs
    one row at a time (its random draws are the row's own)."""
    Sc, s0, _ = score_table(prob.form)
    sigma = score_scale(Sc, s0)
    _region_candidates(prob, regions, ans)
    _walk_candidates(prob, model, Sc, s0, sigma, ans)
    _refine_by_queries(prob, ans)


def _refine_by_queries(prob: Problem, ans: Answers, *, rounds: int = 15, n_proposals: int = 12,
                       steps: int = 14) -> None:
    """Improve non-exact answers by verified queries: the local search of
    :func:`._nl_blackbox.local_search`, every row drawing from its own generator, so a row's
    answer does not depend on the batch."""
    from invaudit.counterfactual._nl_blackbox import local_search

    todo = (ans.state == "found") & ~ans.exact
    dB = np.where(todo, ans.dist, np.nan)
    B, dB = local_search(prob, ans.x_cf, dB, rounds=rounds, n_proposals=n_proposals, steps=steps,
                         per_row_rng=True)
    r = np.flatnonzero(todo & (dB < ans.dist))
    ans.x_cf[r] = B[r]
    ans.dist[r] = dB[r]
    ans.method[r] = "tree-live-regions+local-search"


def solve_trees(prob: Problem, *, time_limit: float = DEFAULT_TIME_LIMIT, max_binaries: int = 20000,
                progress_offset: int = 0, progress_total=None, run_deadline=None) -> Answers:
    """Counterfactuals for a TreesForm (module docstring). ``run_deadline``: a
    ``time.perf_counter()`` value after which rows get the anytime search only."""
    if prob.n == 0:
        return Answers(0, prob.d)
    if prob.form.aggregate == "single":
        ans = _single_tree(prob)
        if prob.progress is not None:
            prob.progress(progress_offset + prob.n, progress_total or prob.n)
        return ans
    return _ensemble(prob, time_limit=time_limit, max_binaries=max_binaries,
                     progress_offset=progress_offset, progress_total=progress_total,
                     run_deadline=run_deadline)
