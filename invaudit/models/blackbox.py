"""The black-box form: anything that answers queries, and nothing more is assumed.

A fitted object qualifies when it has ``classes_``, a declared input width (``n_features_in_``
or ``feature_names_in_``, which every fitted scikit-learn estimator sets) and at least one of
``predict_proba`` / ``decision_function`` / ``predict``. Solvers on this form can only query the
estimator, so their answers carry what they verified, never a claim of optimality.

**Predict only.** Some classifiers answer nothing but ``predict``: a hard ``VotingClassifier``
whose members are not all decision trees, ``OutputCodeClassifier``, ``NearestCentroid`` with a
metric other than the Euclidean one. They are black boxes too (:class:`PredictOnlyForm`): their
scores are the one-hot rows of ``predict`` (:func:`class_scores`), which is all the query-only
solvers need (bisection and boundary search ask for the class, never for a score). What they
cannot give: a ``--confidence`` (no probabilities), a margin lower bound, influence (no loss), and
rankings by the model's own probabilities (``mislabel`` ranks with the model-free sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import BlackBoxForm, ModelForm

__all__ = ["from_estimator", "class_scores", "PredictOnlyForm", "PREDICT_ONLY", "is_predict_only"]

PREDICT_ONLY = "predict only: one-hot scores"


def is_predict_only(obj: Any) -> bool:
    """True for a form (or an estimator) that answers ``predict`` and nothing else: neither
    ``predict_proba`` nor ``decision_function``."""
    est = obj.estimator if isinstance(obj, ModelForm) else obj  # (meta-estimators have an .estimator too)
    # hasattr, not getattr: scikit-learn hides unavailable methods (SVC(probability=False)
    # .predict_proba, a hard VotingClassifier's predict_proba) behind an AttributeError
    return hasattr(est, "predict") and not (hasattr(est, "predict_proba") or hasattr(est, "decision_function"))


@dataclass(eq=False)
class PredictOnlyForm(BlackBoxForm):
    """A black box that has only ``predict``; ``black_box`` in :meth:`describe` says so."""

    reason: str = PREDICT_ONLY

    def describe(self) -> dict:
        d = super().describe()
        d["black_box"] = self.reason
        return d


def _n_features(est) -> int | None:
    d = getattr(est, "n_features_in_", None)
    if d is not None:
        return int(d)
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else len(names)


def from_estimator(est: Any) -> BlackBoxForm | None:
    """A black-box form for any fitted classifier with ``classes_`` and ``predict_proba`` or
    ``decision_function`` (:class:`BlackBoxForm`), or with ``predict`` alone
    (:class:`PredictOnlyForm`); None for anything else (including objects that do not say how
    many features they take, and multi-output models)."""
    classes = getattr(est, "classes_", None)
    if classes is None or (isinstance(classes, list) and any(hasattr(c, "__len__") for c in classes)) \
            or np.ndim(classes) != 1:  # (a list of label arrays: multi-output)
        return None
    # hasattr, not getattr: scikit-learn hides unavailable methods (SVC(probability=False)
    # .predict_proba) behind an AttributeError, which hasattr reports as absence.
    only = is_predict_only(est)
    if not (only or hasattr(est, "predict_proba") or hasattr(est, "decision_function")):
        return None
    d = _n_features(est)
    if d is None:
        return None
    names = getattr(est, "feature_names_in_", None)
    return (PredictOnlyForm if only else BlackBoxForm)(
        estimator=est,
        classes=np.asarray(classes),
        n_features=d,
        feature_names=None if names is None else [str(s) for s in names],
    )


def class_scores(form, X) -> np.ndarray:
    """``(n, K)`` scores whose row-wise argmax ranks the classes: ``predict_proba`` when the
    estimator has it, otherwise ``decision_function`` (binary ``(n,)`` output ``s`` becomes the
    columns ``[0, s]``, as ``LinearForm.W_full`` does), otherwise the one-hot rows of
    ``predict`` (a predict-only model: the argmax is its prediction, and nothing more)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != form.n_features:
        raise InputError(f"expected rows of {form.n_features} features, got an array of shape {X.shape}.")
    est = form.estimator
    if is_predict_only(est):
        S = np.zeros((len(X), len(form.classes)))
        if len(X):
            S[np.arange(len(X)), form.predict_index(X)] = 1.0
        return S
    if hasattr(est, "predict_proba"):
        return np.asarray(est.predict_proba(X), dtype=np.float64)
    s = np.asarray(est.decision_function(X), dtype=np.float64)
    if s.ndim == 1:
        return np.column_stack([np.zeros(len(s)), s])
    return s
