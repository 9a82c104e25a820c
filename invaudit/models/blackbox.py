"""The black-box form: anything that answers queries, and nothing more is assumed.

A fitted object qualifies when it has ``classes_``, a declared input width (``n_features_in_``
or ``feature_names_in_``, which every fitted scikit-learn estimator sets) and at least one of
``predict_proba`` / ``decision_function``. Solvers on this form can only query the estimator, so
their answers carry what they verified, never a claim of optimality.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import BlackBoxForm

__all__ = ["from_estimator", "class_scores"]


def _n_features(est) -> int | None:
    d = getattr(est, "n_features_in_", None)
    if d is not None:
        return int(d)
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else len(names)


def from_estimator(est: Any) -> BlackBoxForm | None:
    """A black-box form for any fitted classifier with ``classes_`` and ``predict_proba`` or
    ``decision_function``; None for anything else (including objects that do not say how many
    features they take)."""
    classes = getattr(est, "classes_", None)
    if classes is None:
        return None
    # hasattr, not getattr: scikit-learn hides unavailable methods (SVC(probability=False)
    # .predict_proba) behind an AttributeError, which hasattr reports as absence.
    if not (hasattr(est, "predict_proba") or hasattr(est, "decision_function")):
        return None
    d = _n_features(est)
    if d is None:
        return None
    names = getattr(est, "feature_names_in_", None)
    return BlackBoxForm(
        estimator=est,
        classes=np.asarray(classes),
        n_features=d,
        feature_names=None if names is None else [str(s) for s in names],
    )


def class_scores(form, X) -> np.ndarray:
    """``(n, K)`` scores whose row-wise argmax ranks the classes: ``predict_proba`` when the
    estimator has it, otherwise ``decision_function`` (binary ``(n,)`` output ``s`` becomes the
    columns ``[0, s]``, as ``LinearForm.W_full`` does)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != form.n_features:
        raise InputError(f"expected rows of {form.n_features} features, got an array of shape {X.shape}.")
    est = form.estimator
    if hasattr(est, "predict_proba"):
        return np.asarray(est.predict_proba(X), dtype=np.float64)
    s = np.asarray(est.decision_function(X), dtype=np.float64)
    if s.ndim == 1:
        return np.column_stack([np.zeros(len(s)), s])
    return s
