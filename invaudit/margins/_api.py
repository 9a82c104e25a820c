"""``margins(form, X, ...)``: dispatch on the model form."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from invaudit.errors import InputError
from invaudit.margins._batch import MarginBatch
from invaudit.margins._common import Problem, check_norm, check_rows, perturbation_box

__all__ = ["margins"]


def margins(
    form,
    X,
    *,
    y_index=None,
    norm: str = "l2",
    constraints=None,
    X_train=None,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    time_limit: Optional[float] = None,
    max_milp_binaries: int = 20000,
    run_time_limit: Optional[float] = None,
    attack_iterations: int = 50,
    n_candidates: int = 32,
) -> MarginBatch:
    """Adversarial margin of every row: the distance to the nearest point predicted as any
    class other than the row's own prediction.

    Parameters
    ----------
    form : a model form (``invaudit.models.adapt(estimator)``)
    X : (n, D) rows.
    y_index : (n,) int, optional
        Labels as class indices; kept in the batch for :func:`summarize` (margins are measured
        from the *predicted* class either way).
    norm : "l2", "l1" or "linf"
        The metric ``||weights * delta||_norm``.
    constraints : optional
        ``invaudit.counterfactual.Constraints`` (or any object with ``lower``/``upper`` (n, D)
        bounds on the perturbed point and ``weights`` (D,)). Immutable features, one-way
        features and data ranges are all boxes; the exact solvers stay exact with them.
    X_train : (m, D), optional
        Training rows: endpoints for the boundary search of black boxes and tree ensembles.
    seed : int
        Seeds the random directions of the black-box search (results are deterministic).
    progress : callable(done, total), optional
        Called as chunks finish (the CLI draws a progress bar on stderr with it).
    time_limit : float, optional
        Tree ensembles: seconds per row for the anytime search and the MILP together (HiGHS);
        when it runs out the best verified point found is the answer, with a proven lower bound
        (default ``invaudit.margins._trees.DEFAULT_TIME_LIMIT``). Black boxes: seconds for the
        search of all rows together (they are searched together); None: no limit.
    max_milp_binaries : int
        Ensembles with more binary variables than this are not sent to the MILP (anytime search
        and bounds only).
    run_time_limit : float, optional
        Tree ensembles: seconds for the whole call; rows started after it get the anytime search
        only (still verified answers). Black boxes: stops their search as ``time_limit`` does.
    attack_iterations : int
        DeepFool-style steps for networks.
    n_candidates : int
        Boundary-search segments per row (black boxes, ensemble fallbacks).

    Returns
    -------
    MarginBatch

    What is exact
    -------------
    - linear forms: always (closed form without a box, exact breakpoint search with one);
    - single trees: always (nearest leaf box of another class);
    - tree ensembles: when the MILP proves optimality in time, else an upper bound from a verified
      point and a lower bound from leaf-exit radii;
    - networks: never; a verified attack (upper bound) and a certified lower bound
      (interval bound propagation and a global Lipschitz bound);
    - kernel machines (SVC, NuSVC): never; the verified counterfactual to the nearest other class
      (boundary search + SQP with exact kernel gradients from the row, reference rows and support
      vectors) and a Lipschitz lower bound (rbf, sigmoid, linear kernels);
    - quadratic forms (GaussianNB, QDA): ``l2`` exactly (the nearest point where each class beats
      the prediction, a one-constraint QCQP solved through its one-dimensional dual; the pairwise
      minimum is the margin) unless a box cuts the optimum; ``l1`` / ``linf``: a verified point and
      the ``l2`` lower bound;
    - k-nearest neighbours (Euclidean metric): 1-NN exactly (the nearest Voronoi cell of another
      class, one convex QP / LP per candidate cell, pruned by bisector bounds); k > 1: a verified
      search over order-k cells, never farther than the nearest training row predicted
      otherwise, with a lower bound for uniform votes; other metrics: verified search;
    - invertible-linear forms: never; the verified counterfactual to the nearest other class
      (feature-space projection refined in input space), no lower bound;
    - black boxes: never; a verified boundary point, no lower bound.

    Every perturbation is checked with the estimator's own ``predict`` before it is reported.
    """
    norm = check_norm(norm)
    X = check_rows(X, int(form.n_features))
    n = X.shape[0]
    weights, lo, hi = perturbation_box(X, constraints)
    if y_index is not None:
        y_index = np.asarray(y_index)
        if y_index.shape != (n,):
            raise InputError(f"labels must have one entry per row ({n}), got shape {y_index.shape}.")
        out_of_range = n and (y_index.min() < 0 or y_index.max() >= form.n_classes)
        if not np.issubdtype(y_index.dtype, np.integer) or out_of_range:
            raise InputError(f"label indices must be integers in 0..{form.n_classes - 1}.")
    if X_train is not None:
        X_train = check_rows(X_train, int(form.n_features))
    # the linear solver asks the estimator for the rows' classes in the same call that verifies
    # its perturbations (one predict instead of two); every other solver needs them first
    if n and form.kind == "trees":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):  # see margins._trees.solve_trees
            pred = np.asarray(form.predict_index(X), dtype=np.intp)
    elif n and form.kind != "linear":
        pred = np.asarray(form.predict_index(X), dtype=np.intp)
    else:
        pred = None if n else np.zeros(0, dtype=np.intp)
    prob = Problem(X=X, pred=pred, norm=norm, weights=weights, lo=lo, hi=hi)
    if n == 0:
        out = dict(margin=np.zeros(0), lower_bound=np.zeros(0), nearest_index=np.zeros(0, dtype=np.intp),
                   perturbation=np.zeros((0, X.shape[1])), perturbation_norm=np.zeros(0),
                   exact=np.zeros(0, dtype=bool), method=np.zeros(0, dtype=object))
    elif form.kind == "linear":
        from invaudit.margins._linear import solve_linear

        out = solve_linear(form, prob, progress)
    elif form.kind == "trees":
        from invaudit.margins._trees import DEFAULT_TIME_LIMIT, solve_trees

        out = solve_trees(form, prob, X_train=X_train, seed=seed, progress=progress,
                          time_limit=DEFAULT_TIME_LIMIT if time_limit is None else time_limit,
                          max_binaries=max_milp_binaries, n_candidates=n_candidates,
                          run_time_limit=run_time_limit)
    elif form.kind == "invertible-linear":
        from invaudit.margins._invertible import solve_invertible

        out = solve_invertible(form, prob, constraints, X_train=X_train, seed=seed, n_candidates=n_candidates,
                               progress=progress)
    elif form.kind == "kernel":
        from invaudit.margins._kernel import solve_kernel

        out = solve_kernel(form, prob, constraints, X_train=X_train, seed=seed, n_candidates=n_candidates,
                           progress=progress)
    elif form.kind == "quadratic":
        from invaudit.margins._quadratic import solve_quadratic

        out = solve_quadratic(form, prob, progress)
    elif form.kind == "neighbors":
        from invaudit.margins._neighbors import solve_neighbors

        out = solve_neighbors(form, prob, X_train=X_train, seed=seed, n_candidates=n_candidates,
                              progress=progress)
    elif form.kind == "differentiable":
        from invaudit.margins._network import solve_network

        out = solve_network(form, prob, iterations=attack_iterations, seed=seed, progress=progress)
    else:
        from invaudit.margins._blackbox import solve_blackbox

        out = solve_blackbox(form, prob, X_train=X_train, seed=seed, n_candidates=n_candidates,
                             progress=progress, time_limit=time_limit, run_time_limit=run_time_limit, refine=True)
    predicted = out.pop("predicted_index", prob.pred)
    return MarginBatch(norm=norm, predicted_index=predicted, label_index=y_index, **out)
