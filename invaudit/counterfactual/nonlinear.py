"""Counterfactuals beyond linear models: each form gets the best answer its mathematics allows,
and says which it is (DESIGN.md, "Model forms"; issue 4).

=====================  ============================================  ===========================
form                   method                                        exact
=====================  ============================================  ===========================
invertible-linear      feature-space projection (Zhuang et al.),     no: a verified local
                       mapped back, refined by boundary search +     optimum with its KKT
                       SQP (+ SLSQP) with the transform's Jacobian   residual (L2)
differentiable (MLP)   boundary search + SQP (+ SLSQP) with exact    no: verified, best of
                       backprop, from the row and from pulled        several starts, KKT
                       target-class rows                             residual (L2)
kernel (SVC, NuSVC)    the same on "the target wins all its one-vs-  no: verified, best of
                       one machines", exact kernel gradients, from   several starts
                       pulled rows and support vectors
quadratic (GaussianNB, one quadratic constraint per class pair,      yes (L2, optimum inside
QDA)                   exact one-dimensional dual; SLSQP beyond      the box, the pair optimum
                                                                     confirmed); else bound
neighbours (KNN)       1-NN: nearest Voronoi cell of the target      1-NN, Euclidean: yes (L1,
                       class (QP / LP per cell, pruned); k > 1:      L2, Linf); otherwise no
                       verified search over order-k cells
trees, single tree     nearest target leaf box (enumeration)         yes (L1, L2, Linf)
trees, ensembles       MILP over split predicates (HiGHS; L1, L2,    yes when it proves
                       Linf) within a size and time limit; else      optimality in time
                       nearest live region (boxes that hold
                       --train rows, or reached from the row
                       through leaf boxes) + local search by queries
black-box              segment search toward target rows,            no: verified upper bound
                       bisection, local random search
any form + manifold    gradient ascent of log p(target) in latent    no
                       coordinates (Dombrowski et al.)
=====================  ============================================  ===========================

``found`` is only ever reported where the estimator's own ``predict`` (and ``predict_proba``
with a confidence) confirms the point, and every point honours the constraints' box exactly.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from invaudit.counterfactual._nl_common import (
    Answers,
    Pool,
    Problem,
    assemble,
    check_confidence,
    check_constraints,
    check_norm,
    check_rows,
    merge_other,
    qualifies,
)
from invaudit.counterfactual._common import check_target
from invaudit.counterfactual._nl_plausibility import plausibility
from invaudit.counterfactual.result import CounterfactualBatch
from invaudit.errors import InputError, UnsupportedModelError

__all__ = ["counterfactuals_nonlinear", "counterfactuals_nonlinear_with_extras", "plausibility",
           "feature_importance"]

_KINDS = ("linear", "invertible-linear", "differentiable", "kernel", "quadratic", "neighbors", "trees", "black-box")


def feature_importance(form, X, X_cf, original_index, target_index) -> Optional[np.ndarray]:
    """First-order Taylor decomposition of the move to the counterfactual, per feature.

    ``importance[i, j] = g_j(x_i) * (x_cf[i, j] - x_i[j])`` with ``g`` the input gradient, at the
    row, of the target's log-odds against the original class (``sign * logit`` for binary
    models, ``s_t - s_o`` for multiclass ones): the summed terms are the first-order change of
    that score along the move (Zhuang et al., "Decision explanation and feature importance for
    invertible networks", ICCVW 2019, sec. 3.2).

    Parameters
    ----------
    form : a linear, invertible-linear or differentiable form
    X, X_cf : (n, D) rows and their counterfactuals (NaN rows where none)
    original_index, target_index : (n,) class indices (``-1``: no target)

    Returns
    -------
    (n, D) array, NaN rows where there is no counterfactual and zeros where the row already is
    the target; ``None`` for forms without input gradients (trees, black boxes).
    """
    if form.kind not in ("linear", "invertible-linear", "differentiable"):
        return None
    from invaudit.counterfactual._nl_smooth import ScoreModel

    X = np.asarray(X, dtype=np.float64)
    X_cf = np.asarray(X_cf, dtype=np.float64)
    n, D = X.shape
    out = np.full((n, D), np.nan)
    t = np.asarray(target_index, dtype=np.intp)
    o = np.asarray(original_index, dtype=np.intp)
    have = np.all(np.isfinite(X_cf), axis=1) & (t >= 0)
    same = have & (t == o)
    out[same] = 0.0
    go = have & ~same
    if np.any(go):
        g = ScoreModel(form).margin_grad(X[go], t[go], o[go])
        out[go] = g * (X_cf[go] - X[go])
    return out


def counterfactuals_nonlinear(form, X, *, target, confidence=None, norm="l2", constraints=None,
                              X_train=None, y_train_index=None, manifold=None, seed=0,
                              progress=None, **options) -> CounterfactualBatch:
    """Closest counterfactuals for any model form; see
    :func:`counterfactuals_nonlinear_with_extras` (this returns its batch only, and skips the
    feature importance and plausibility work)."""
    batch, _ = counterfactuals_nonlinear_with_extras(
        form, X, target=target, confidence=confidence, norm=norm, constraints=constraints,
        X_train=X_train, y_train_index=y_train_index, manifold=manifold, seed=seed,
        progress=progress, _extras=False, **options)
    return batch


def counterfactuals_nonlinear_with_extras(
    form,
    X,
    *,
    target,
    confidence: Optional[float] = None,
    norm: str = "l2",
    constraints=None,
    X_train=None,
    y_train_index=None,
    manifold=None,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    time_limit: Optional[float] = None,
    max_milp_binaries: int = 20000,
    run_time_limit: Optional[float] = None,
    n_starts: int = 3,
    n_other: int = 3,
    k_plausibility: int = 5,
    _extras: bool = True,
):
    """Closest counterfactual of every row for a non-linear (or any) model form.

    Parameters
    ----------
    form : ModelForm
        ``invaudit.models.adapt(estimator)``. Linear forms without ``manifold`` are handed to the
        exact linear solver (:func:`invaudit.counterfactual.counterfactuals`).
    X : (n, D) rows.
    target : (n,) int class indices, a scalar index, or ``"other"`` (for each row the closest
        class other than its prediction; for networks and pipelines the ``n_other`` classes
        whose linearised distance is smallest are solved).
    confidence : float in (0, 1), optional
        Also ask for ``p(target | x_cf) >= confidence``.
    norm : {"l2", "l1", "linf"}
        The metric ``||weights * (x_cf - x)||``.
    constraints : Constraints, optional
        Per-row bounds on the point and metric weights (``--immutable``, ``--bounds``,
        ``--scale``, ``--increase-only``, ``--decrease-only``); honoured exactly by every method.
    X_train : (m, D), optional
        Reference rows: endpoints of segment searches and the live regions of tree ensembles
        (without it, the batch itself serves as endpoints, except for trees, whose fallback then
        uses only the model's leaf boxes and the row, so that the answer does not depend on the
        batch), the data a manifold is fitted on, and the data plausibility is measured against
        (only when given).
    y_train_index : (m,) int, optional
        Labels of ``X_train`` as class indices, for plausibility (the estimator's predictions
        on ``X_train`` are used without them).
    manifold : {"pca", "quantile"} or a fitted transformer, optional
        Diffeomorphic counterfactuals (:mod:`._nl_manifold`): gradient ascent in latent
        coordinates. A transformer needs ``transform`` and ``inverse_transform`` (the CLI loads
        ``--manifold PATH`` and passes the object). Needs ``X_train`` for "pca" / "quantile".
    seed : int
        Seeds the random parts (black-box local search); results are deterministic.
    progress : callable(done, total), optional
        Called as rows finish in the per-row solvers (SLSQP, MILP) and as rounds finish in the
        vectorised searches.
    time_limit : float, optional
        Tree ensembles: seconds per row for the anytime search and the MILP together; when it
        runs out the best verified point found is the answer (not exact, with the MILP's proven
        lower bound). Default ``invaudit.margins._trees.DEFAULT_TIME_LIMIT``.
    run_time_limit : float, optional
        Tree ensembles: seconds for the whole call; rows after it get the anytime search only.
    max_milp_binaries : int
        Ensembles whose MILP would have more binary variables are not sent to it.
    n_starts : int
        SLSQP starts per row (networks, pipelines) and pulled reference rows per row.
    n_other : int
        Classes tried per row for ``target="other"`` on networks and pipelines.
    k_plausibility : int
        Neighbours for the plausibility distance.

    Returns
    -------
    (CounterfactualBatch, dict)
        The batch (fields as in :mod:`invaudit.counterfactual.result`), and extras:

        - ``feature_importance``: ``(n, D)`` (:func:`feature_importance`) or None;
        - ``plausibility``: :func:`plausibility` of the counterfactuals, or None without
          ``X_train``;
        - ``backing``: ``(n,)`` what stands behind each answer, in words (None without one);
        - ``lower_bound``: ``(n,)`` a certified lower bound on the optimal distance where a
          method gives one (tree-ensemble MILPs stopped by the time limit), else NaN;
        - ``seed``: invertible pipelines only, the feature-space projection mapped back
          (``point`` (n, D), ``verified`` (n,), ``distance`` (n,)), else None;
        - ``manifold``: the name of the latent map used, or None.

    Raises
    ------
    InputError
        Malformed rows, targets, confidence, constraints or training data.
    UnsupportedModelError
        A form this module does not know.
    """
    # The solvers work on many small matrices; on a shared machine the start-up of BLAS and
    # OpenMP thread pools costs more than it saves (measured 2x slower on 2 busy cores), so
    # they run single-threaded for the duration of the call.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _counterfactuals(
            form, X, target=target, confidence=confidence, norm=norm, constraints=constraints,
            X_train=X_train, y_train_index=y_train_index, manifold=manifold, seed=seed,
            progress=progress, time_limit=time_limit, max_milp_binaries=max_milp_binaries,
            run_time_limit=run_time_limit, n_starts=n_starts, n_other=n_other, k_plausibility=k_plausibility if _extras else None)


def _counterfactuals(form, X, *, target, confidence, norm, constraints, X_train, y_train_index,
                     manifold, seed, progress, time_limit, max_milp_binaries, n_starts, n_other,
                     k_plausibility, run_time_limit=None):
    """The work of :func:`counterfactuals_nonlinear_with_extras` (``k_plausibility=None``: the
    batch only, no feature importance or plausibility)."""
    kind = getattr(form, "kind", None)
    if kind not in _KINDS:
        raise UnsupportedModelError(f"counterfactuals for the {kind} form are not available")
    norm = check_norm(norm)
    X = check_rows(X, int(form.n_features))
    n, D = X.shape
    K = int(form.n_classes)
    tgt = check_target(target, n, K)
    P = check_confidence(confidence, form)
    cons = check_constraints(constraints, X)
    if X_train is not None:
        X_train = check_rows(X_train, D)
        if y_train_index is not None:
            y_train_index = np.asarray(y_train_index)
            if y_train_index.shape != (X_train.shape[0],):
                raise InputError(f"training labels must have one entry per training row "
                                 f"({X_train.shape[0]}), got shape {y_train_index.shape}.")
            if not np.issubdtype(y_train_index.dtype, np.integer) or (
                    len(y_train_index) and (y_train_index.min() < 0 or y_train_index.max() >= K)):
                raise InputError(f"training labels must be class indices in 0..{K - 1}.")
    if manifold is not None and isinstance(manifold, str) and X_train is None:
        raise InputError(f"--manifold {manifold} needs --train TRAIN (the map is fitted on it).")
    if manifold is not None and not isinstance(manifold, str):
        if not (hasattr(manifold, "transform") and hasattr(manifold, "inverse_transform")):
            raise InputError("a manifold must have transform and inverse_transform.")

    extras = {"feature_importance": None, "plausibility": None,
              "backing": np.full(n, None, dtype=object), "lower_bound": np.full(n, np.nan),
              "seed": None, "manifold": None}

    if kind == "linear" and manifold is None:
        from invaudit.counterfactual.solve import counterfactuals as linear_counterfactuals

        batch = linear_counterfactuals(form, X, target=target if tgt is None else tgt,
                                       confidence=P, norm=norm, constraints=cons)
        extras["backing"] = np.where(batch.exact, "exact: KKT residual / LP gap <= 1e-9, verified",
                                     np.where(batch.status == "found", "verified by the estimator",
                                              None)).astype(object)
        return batch, _finish_extras(form, X, batch, extras, X_train, y_train_index, norm, cons,
                                     k_plausibility)

    orig = form.predict_index(X) if n else np.zeros(0, dtype=np.intp)
    if tgt is not None and n:
        already = qualifies(form, X, tgt, P)[0]
    else:
        already = np.zeros(n, dtype=bool)
    # reference rows: the training data, else the batch itself, except for tree models, whose
    # fallback takes candidates from the model's own leaf boxes instead, so that a row's answer
    # never depends on the other rows of the batch
    pool = Pool(form, X_train if X_train is not None else (None if kind == "trees" else X))
    base = Problem(form=form, X=X, target=orig.copy() if tgt is None else tgt, P=P, norm=norm,
                   lower=cons.lower, upper=cons.upper, weights=cons.weights, orig=orig, pool=pool,
                   seed=int(seed), progress=progress)
    # a row whose every feature is frozen cannot move: certified unreachable, for every form
    frozen = np.all(cons.lower == cons.upper, axis=1) & ~already if n else np.zeros(0, dtype=bool)
    todo = np.flatnonzero(~already & ~frozen)
    given_limit = time_limit  # black boxes: only a limit the caller gave stops their (bounded) search
    if time_limit is None:
        from invaudit.margins._trees import DEFAULT_TIME_LIMIT as time_limit
    import time

    opts = dict(time_limit=float(time_limit), max_binaries=int(max_milp_binaries),
                n_starts=max(1, int(n_starts)),
                run_deadline=None if run_time_limit is None else time.perf_counter() + float(run_time_limit))
    # black boxes search their rows together: a limit the caller gave ends the whole call (every
    # candidate class of target "other" included), as the run's deadline does
    stops = [t for t in (opts["run_deadline"], None if given_limit is None else time.perf_counter() + float(given_limit))
             if t is not None]
    opts["blackbox_deadline"] = min(stops) if stops else None

    if manifold is not None:
        from invaudit.counterfactual._nl_manifold import solve_manifold

        ans, name = solve_manifold(base, todo, tgt, manifold, X_train)
        extras["manifold"] = name
    elif tgt is not None:
        sub = base.subset(todo)
        a, info = _solve_form(sub, opts, 0, len(todo))
        ans = _scatter(a, todo, n, D)
        if info is not None:
            extras["seed"] = _scatter_seed(info, todo, X, cons, norm, n, D)
    else:
        ans = _solve_other(base, todo, opts, n_other)

    if np.any(frozen):
        ans.fail(np.flatnonzero(frozen), "every feature is frozen, so the prediction cannot change",
                 infeasible=True, method="check")
    batch = assemble(form, X, orig, tgt, P, norm, cons, ans, already)
    extras["backing"] = np.where(batch.status == "found", ans.backing,
                                 np.where(batch.status == "already-target",
                                          "the row already qualifies", None)).astype(object)
    extras["lower_bound"] = np.where(batch.status == "found", ans.lower_bound, np.nan)
    return batch, _finish_extras(form, X, batch, extras, X_train, y_train_index, norm, cons,
                                 k_plausibility)


# --- dispatch ------------------------------------------------------------------------------------

def _solve_form(prob: Problem, opts: dict, offset: int, total: int):
    """Answers for a problem whose rows all need solving; ``(answers, seed info or None)``."""
    kind = prob.form.kind
    if prob.n == 0:
        return Answers(0, prob.d), None
    if kind in ("invertible-linear", "linear"):
        from invaudit.counterfactual._nl_invertible import solve_invertible

        if kind == "linear":
            from invaudit.counterfactual._nl_smooth import ScoreModel, solve_smooth

            return solve_smooth(ScoreModel(prob.form), prob, method="linear-slsqp"), None
        return solve_invertible(prob, progress_offset=offset, progress_total=total)
    if kind == "kernel":
        from invaudit.counterfactual._nl_kernel import solve_kernel

        return solve_kernel(prob, n_pull=opts["n_starts"], progress_offset=offset,
                            progress_total=total), None
    if kind == "quadratic":
        from invaudit.counterfactual._nl_quadratic import solve_quadratic

        return solve_quadratic(prob, progress_offset=offset, progress_total=total), None
    if kind == "neighbors":
        from invaudit.counterfactual._nl_neighbors import solve_neighbors

        return solve_neighbors(prob, progress_offset=offset, progress_total=total), None
    if kind == "differentiable":
        from invaudit.counterfactual._nl_mlp import solve_mlp

        return solve_mlp(prob, n_pull=opts["n_starts"], progress_offset=offset,
                         progress_total=total), None
    if kind == "trees":
        from invaudit.counterfactual._nl_trees import solve_trees

        return solve_trees(prob, time_limit=opts["time_limit"], max_binaries=opts["max_binaries"],
                           progress_offset=offset, progress_total=total,
                           run_deadline=opts.get("run_deadline")), None
    from invaudit.counterfactual._nl_blackbox import solve_blackbox

    return solve_blackbox(prob, progress_offset=offset, progress_total=total,
                          deadline=opts.get("blackbox_deadline")), None


def _scatter(a: Answers, rows, n: int, d: int) -> Answers:
    out = Answers(n, d)
    for name in ("x_cf", "dist", "state", "reason", "exact", "method", "kkt", "iters", "target",
                 "backing", "lower_bound"):
        getattr(out, name)[rows] = getattr(a, name)
    return out


def _scatter_seed(info, rows, X, cons, norm, n, d):
    from invaudit.counterfactual._nl_common import distance

    point = np.full((n, d), np.nan)
    point[rows] = info["point"]
    verified = np.zeros(n, dtype=bool)
    verified[rows] = info["verified"]
    dist = distance(point - X, cons.weights, norm)
    return {"point": point, "verified": verified, "distance": dist}


def _solve_other(base: Problem, todo, opts, n_other: int) -> Answers:
    """``target="other"``: solve each candidate class for the rows predicted otherwise, keep the
    closest verified answer (:func:`._nl_common.merge_other`)."""
    n, D, K = base.n, base.d, int(base.form.n_classes)
    if base.form.kind in ("quadratic", "neighbors") and base.P is None:
        # one solve over every other class at once (exact where the per-class answers are not)
        from importlib import import_module

        name = "_nl_quadratic" if base.form.kind == "quadratic" else "_nl_neighbors"
        solve = getattr(import_module(f"invaudit.counterfactual.{name}"), f"solve_{base.form.kind}_other")
        return _scatter(solve(base.subset(todo)), todo, n, D)
    cand = np.ones((n, K), dtype=bool)
    cand[np.arange(n), base.orig] = False
    if base.form.kind in ("invertible-linear", "differentiable") and len(todo):
        from invaudit.counterfactual._nl_smooth import ScoreModel, rank_other_classes

        sub = base.subset(todo)
        cand[todo] = rank_other_classes(ScoreModel(base.form), sub, n_other)
    mask = np.zeros(n, dtype=bool)
    mask[todo] = True
    total = int(cand[mask].sum())
    parts, offset = [], 0
    for k in range(K):  # a loop over classes
        rows = np.flatnonzero(mask & cand[:, k])
        if len(rows) == 0:
            continue
        a, _ = _solve_form(base.subset(rows, target=k), opts, offset, total)
        offset += len(rows)
        parts.append((rows, a))
    ans = merge_other(parts, n, D)
    return ans


def _finish_extras(form, X, batch, extras, X_train, y_train_index, norm, cons, k):
    if k is None:
        return extras
    has = np.all(np.isfinite(batch.x_cf), axis=1)
    if form.kind in ("linear", "invertible-linear", "differentiable"):
        extras["feature_importance"] = feature_importance(form, X, batch.x_cf, batch.original_index,
                                                         np.where(has, batch.target_index, -1))
    if X_train is not None:
        extras["plausibility"] = plausibility(
            form, batch.x_cf, np.where(has, batch.target_index, -1), X_train, y_train_index, k=k,
            norm=norm, weights=cons.weights)
    return extras
