"""How plausible a counterfactual is: how close it lies to real rows of the class it reaches.

Two figures per counterfactual, both against the training rows of its *target* class:

- ``knn_distance``: the mean distance to its ``k`` nearest such rows, in the counterfactual's own
  metric (``||weights * (x_cf - x_train)||_norm``);
- ``inlier``: whether a Local Outlier Factor (Breunig et al., "LOF: identifying density-based
  local outliers", SIGMOD 2000) fitted on those rows (``novelty=True``, in the same metric)
  calls it an inlier; ``lof_score`` is its negated LOF (``score_samples``: lower is more
  outlying, about -1 for inliers).

Dombrowski et al. ("Diffeomorphic counterfactuals with generative models", TPAMI 2023) use such
neighbourhood figures to show that latent-space counterfactuals stay on the data manifold while
the closest ones leave it.
"""

from __future__ import annotations

import warnings

import numpy as np

from invaudit.errors import InputError

__all__ = ["plausibility"]

_METRIC = {"l2": "euclidean", "l1": "manhattan", "linf": "chebyshev"}


def plausibility(form, X_cf, target_index, X_train, y_train_index=None, *, k: int = 5,
                 norm: str = "l2", weights=None, n_neighbors: int = 20) -> dict:
    """Plausibility figures of counterfactuals (module docstring). Works for every form.

    Parameters
    ----------
    form : ModelForm
        Used only when ``y_train_index`` is None (the estimator's predictions on ``X_train`` then
        define the classes' rows).
    X_cf : (n, D) counterfactual points (NaN rows where there is none).
    target_index : (n,) int class index each point reaches (``-1``: none).
    X_train : (m, D) training rows; y_train_index : (m,) int class indices, optional.
    k : int
        Neighbours averaged in ``knn_distance``.
    norm, weights : the metric (default: L2 in input units).
    n_neighbors : int
        The LOF's neighbourhood size (capped at the class's row count minus one).

    Returns
    -------
    dict of arrays of length n
        ``knn_distance`` (float, NaN where not evaluated), ``inlier`` (bool), ``lof_score``
        (float, NaN where not evaluated), ``evaluated`` (bool: the row has a point and its target
        class has at least two training rows), and ``k`` (int).
    """
    X_cf = np.asarray(X_cf, dtype=np.float64)
    if X_cf.ndim != 2:
        raise InputError("counterfactual points must form a 2-D array.")
    X_train = np.asarray(X_train, dtype=np.float64)
    n, D = X_cf.shape
    if X_train.ndim != 2 or X_train.shape[1] != D:
        raise InputError(f"training rows must have {D} features, got shape {X_train.shape}.")
    if norm not in _METRIC:
        raise InputError(f"unknown norm {norm!r}; use one of l2, l1, linf.")
    if k < 1:
        raise InputError("k must be at least 1.")
    w = np.ones(D) if weights is None else np.asarray(weights, dtype=np.float64)
    t = np.asarray(target_index, dtype=np.intp)
    if t.shape != (n,):
        raise InputError(f"target_index must have one entry per counterfactual ({n}).")
    if y_train_index is None:
        y = form.predict_index(X_train) if len(X_train) else np.zeros(0, dtype=np.intp)
    else:
        y = np.asarray(y_train_index, dtype=np.intp)
        if y.shape != (X_train.shape[0],):
            raise InputError("y_train_index must have one entry per training row.")
    knn = np.full(n, np.nan)
    lof = np.full(n, np.nan)
    inlier = np.zeros(n, dtype=bool)
    evaluated = np.zeros(n, dtype=bool)
    have = np.all(np.isfinite(X_cf), axis=1) & (t >= 0)
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

    metric = _METRIC[norm]
    for cls in np.unique(t[have]):  # a loop over classes
        rows = np.flatnonzero(have & (t == cls))
        ref = X_train[y == cls] * w
        m = ref.shape[0]
        if m < 2:
            continue
        Q = X_cf[rows] * w
        nn = NearestNeighbors(n_neighbors=min(k, m), metric=metric).fit(ref)
        dist, _ = nn.kneighbors(Q)
        knn[rows] = dist.mean(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LocalOutlierFactor(n_neighbors=min(n_neighbors, m - 1), novelty=True,
                                       metric=metric).fit(ref)
            lof[rows] = model.score_samples(Q)
            inlier[rows] = model.predict(Q) == 1
        evaluated[rows] = True
    return {"knn_distance": knn, "inlier": inlier, "lof_score": lof, "evaluated": evaluated, "k": int(k)}
