"""The neighbours form: a fitted ``KNeighborsClassifier`` (possibly behind affine preprocessing)
as its stored training points, their labels, ``k``, the vote weighting and the metric.

``from_estimator(est)`` returns a :class:`NeighborsForm` or ``None``. Accepted:

- ``KNeighborsClassifier`` with ``weights="uniform"`` or ``"distance"`` (a callable weighting
  is code the form cannot read: black box), any built-in metric except ``"precomputed"``, fitted
  on a dense array;
- a :class:`~sklearn.pipeline.Pipeline` of affine steps (the ones the linear form folds:
  scalers, PCA of any rank, identity FunctionTransformers) in front of one. With
  ``Z = X @ pre_A.T + pre_c`` the model sees ``Z``; every bisector of two training points
  ``||z - t|| = ||z - s||`` is a hyperplane in ``Z`` and therefore in ``X``.

What is exact depends on the metric (``exact_geometry``): for the Euclidean metric
(``"euclidean"``, or ``"minkowski"`` with ``p=2`` and no weights) the Voronoi cell of a training
point is a polyhedron in input units, so 1-NN margins and counterfactuals are convex programmes
solved exactly (:mod:`invaudit.margins._neighbors`). Other metrics get verified searches.
Leave-one-out effects are exact for every metric and every ``k``
(:mod:`invaudit.influence._neighbors`): they only re-count votes among the estimator's own
``kneighbors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp

from .affine import fold_affine
from .base import ModelForm, _no_feature_name_warning, apply_folded
from .linear import _feature_names, _is_identity_function, _is_linear_affine, split_pipeline, step_name

__all__ = ["NeighborsForm", "from_estimator"]


@dataclass(eq=False)
class NeighborsForm(ModelForm):
    """A k-nearest-neighbours classifier in the coordinates it measures distances in.

    Attributes
    ----------
    fit_Z : (m, dz) float64
        The stored training points (what ``final_estimator`` measures distances to).
    fit_y : (m,) int
        Their class indices (positions in ``classes``).
    k : int
        ``n_neighbors``.
    weights : ``"uniform"`` or ``"distance"``.
    metric : str
        The metric's name as scikit-learn resolved it (``effective_metric_``).
    p : float or None
        The Minkowski power when the metric is a Minkowski one (2 for Euclidean, 1 for
        Manhattan, ``inf`` for Chebyshev), else None.
    pre_A, pre_c : the folded affine preprocessing, ``Z = X @ pre_A.T + pre_c`` (None: identity).
    final_estimator : the fitted ``KNeighborsClassifier``.
    """

    estimator: Any
    final_estimator: Any
    fit_Z: np.ndarray
    fit_y: np.ndarray
    k: int
    weights: str
    metric: str
    p: Optional[float]
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    pre_A: Optional[np.ndarray] = None
    pre_c: Optional[np.ndarray] = None
    kind: str = "neighbors"

    @property
    def exact_geometry(self) -> bool:
        """True for the Euclidean metric: Voronoi cells are polyhedra (1-NN answers are exact)."""
        return self.p == 2.0

    @property
    def n_train(self) -> int:
        return self.fit_Z.shape[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """What the neighbours search sees: ``X @ pre_A.T + pre_c`` (or ``X`` itself)."""
        return apply_folded(X, self.pre_A, self.pre_c)

    def train_inputs(self) -> Optional[np.ndarray]:
        """The stored training points in *input* units, or None when the preprocessing cannot
        be inverted (a PCA keeping fewer components than features)."""
        if self.pre_A is None:
            return self.fit_Z.copy()
        A = self.pre_A
        if A.shape[0] != A.shape[1]:
            return None
        try:
            return np.linalg.solve(A, (self.fit_Z - self.pre_c).T).T
        except np.linalg.LinAlgError:
            return None

    def kneighbors(self, Z: np.ndarray, n_neighbors: int):
        """``(dist, ind)`` from the estimator's own neighbour search on model-space rows ``Z``
        (its tie-breaking and its distance arithmetic, which a refit reproduces)."""
        n_neighbors = int(min(n_neighbors, self.n_train))
        with _no_feature_name_warning():
            return self.final_estimator.kneighbors(np.asarray(Z, dtype=np.float64), n_neighbors)


def from_estimator(est) -> NeighborsForm | None:
    """The neighbours form of a fitted ``KNeighborsClassifier`` (or an affine Pipeline ending in
    one), else ``None`` (see the module docstring)."""
    from sklearn.neighbors import KNeighborsClassifier

    split = split_pipeline(est)
    if split is None:
        return None
    pre, final = split
    if type(final) is not KNeighborsClassifier:  # exact type: a subclass may change the vote
        return None
    if getattr(final, "outputs_2d_", False) or getattr(final, "_fit_X", None) is None:
        return None
    if final.weights not in ("uniform", "distance", None):
        return None
    metric = getattr(final, "effective_metric_", final.metric)
    if not isinstance(metric, str) or metric == "precomputed":
        return None
    fit_X = final._fit_X
    if sp.issparse(fit_X):
        return None
    if not all(_is_linear_affine(s) for s in pre):
        return None
    pre = [s for s in pre if not _is_identity_function(s)]
    fit_Z = np.asarray(fit_X, dtype=np.float64)
    classes = np.asarray(final.classes_)
    fit_y = np.asarray(final._y, dtype=np.intp).ravel()
    params = getattr(final, "effective_metric_params_", None) or {}
    p = None
    if metric == "euclidean" and params.get("w") is None:
        p = 2.0
    elif metric == "minkowski" and params.get("w") is None:
        p = float(params.get("p", final.p))
    elif metric in ("manhattan", "cityblock", "l1"):
        p = 1.0
    elif metric in ("chebyshev", "infinity"):
        p = float("inf")
    names = _feature_names(est)
    if not pre:
        return NeighborsForm(estimator=est, final_estimator=final, fit_Z=fit_Z, fit_y=fit_y,
                             k=int(final.n_neighbors), weights=final.weights or "uniform", metric=metric,
                             p=p, classes=classes, n_features=fit_Z.shape[1], feature_names=names)
    d = getattr(pre[0], "n_features_in_", None)
    if d is None:
        return None
    A, c = fold_affine(pre, int(d))
    if A.shape[0] != fit_Z.shape[1] or not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        return None
    return NeighborsForm(estimator=est, final_estimator=final, fit_Z=fit_Z, fit_y=fit_y,
                         k=int(final.n_neighbors), weights=final.weights or "uniform", metric=metric, p=p,
                         classes=classes, n_features=int(d), feature_names=names,
                         preprocessing=[step_name(s) for s in pre], pre_A=A, pre_c=c)
