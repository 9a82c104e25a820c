"""The quadratic form: GaussianNB and QuadraticDiscriminantAnalysis (possibly behind affine
preprocessing) as one quadratic score per class.

Both predict ``argmax_k score_k(z)`` and give ``predict_proba = softmax(score)`` with

    score_k(z) = -1/2 || (z - m_k) @ B_k ||^2 + c_k,        z = x @ pre_A.T + pre_c

read off scikit-learn 1.9's own code:

- ``GaussianNB._joint_log_likelihood``: ``m_k = theta_[k]``, ``B_k = diag(var_[k] ** -1/2)``,
  ``c_k = log class_prior_[k] - 1/2 sum_j log(2 pi var_[k, j])``;
- ``QuadraticDiscriminantAnalysis._decision_function`` (ESL eq. 4.12): ``m_k = means_[k]``,
  ``B_k = rotations_[k] * scalings_[k] ** -1/2`` (``D x r_k``), ``c_k = log priors_[k] - 1/2
  sum log scalings_[k]``.

The precision ``P_k = B_k B_k^T`` makes ``score_j - score_c`` a quadratic function of the input
``x``, so "the nearest point where class j beats class c" is a problem with one quadratic
constraint, solved exactly through its one-dimensional dual
(:mod:`invaudit.margins._quadratic`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .affine import fold_affine
from .base import ModelForm, _softmax, apply_folded
from .linear import _feature_names, _is_identity_function, _is_linear_affine, split_pipeline, step_name

__all__ = ["QuadraticForm", "from_estimator"]


@dataclass(eq=False)
class QuadraticForm(ModelForm):
    """Per-class quadratic scores (module docstring).

    Attributes
    ----------
    means : (K, dz) the ``m_k``.
    factors : list of K arrays ``B_k`` (``(dz, r_k)``).
    consts : (K,) the ``c_k``.
    pre_A, pre_c : folded affine preprocessing (None: identity).
    """

    estimator: Any
    final_estimator: Any
    means: np.ndarray
    factors: list
    consts: np.ndarray
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    pre_A: Optional[np.ndarray] = None
    pre_c: Optional[np.ndarray] = None
    kind: str = "quadratic"

    def transform(self, X: np.ndarray) -> np.ndarray:
        return apply_folded(X, self.pre_A, self.pre_c)

    @property
    def input_map(self) -> np.ndarray:
        """``(dz, D)``: ``A`` with ``z = A x + c`` (identity without preprocessing)."""
        return np.eye(self.n_features) if self.pre_A is None else self.pre_A

    def scores(self, X: np.ndarray) -> np.ndarray:
        """``(n, K)`` class scores from the form's own parameters."""
        Z = self.transform(X)
        out = np.empty((Z.shape[0], len(self.classes)))
        for k, B in enumerate(self.factors):  # a loop over classes
            u = (Z - self.means[k]) @ B
            out[:, k] = -0.5 * np.einsum("ij,ij->i", u, u) + self.consts[k]
        return out

    def proba(self, X: np.ndarray) -> np.ndarray:
        return _softmax(self.scores(X))

    def precision(self, k: int) -> np.ndarray:
        """``P_k = B_k B_k^T`` in the model's coordinates."""
        B = self.factors[k]
        return B @ B.T


def from_estimator(est) -> QuadraticForm | None:
    """The quadratic form of a fitted GaussianNB / QuadraticDiscriminantAnalysis, alone or behind
    affine steps; ``None`` otherwise."""
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.naive_bayes import GaussianNB

    split = split_pipeline(est)
    if split is None:
        return None
    pre, final = split
    kind = type(final)
    if kind is GaussianNB:
        parts = _gnb_parts(final)
    elif kind is QuadraticDiscriminantAnalysis:
        parts = _qda_parts(final)
    else:
        return None
    if parts is None:
        return None
    means, factors, consts = parts
    if not all(_is_linear_affine(s) for s in pre):
        return None
    pre = [s for s in pre if not _is_identity_function(s)]
    classes = np.asarray(final.classes_)
    names = _feature_names(est)
    if not pre:
        return QuadraticForm(estimator=est, final_estimator=final, means=means, factors=factors,
                             consts=consts, classes=classes, n_features=means.shape[1], feature_names=names)
    d = getattr(pre[0], "n_features_in_", None)
    if d is None:
        return None
    A, c = fold_affine(pre, int(d))
    if A.shape[0] != means.shape[1] or not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        return None
    return QuadraticForm(estimator=est, final_estimator=final, means=means, factors=factors, consts=consts,
                         classes=classes, n_features=int(d), feature_names=names,
                         preprocessing=[step_name(s) for s in pre], pre_A=A, pre_c=c)


def _gnb_parts(est):
    theta = getattr(est, "theta_", None)
    var = getattr(est, "var_", None)
    prior = getattr(est, "class_prior_", None)
    if theta is None or var is None or prior is None or len(est.classes_) < 2:
        return None
    theta = np.asarray(theta, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if not (np.all(var > 0) and np.all(np.isfinite(theta)) and np.all(prior > 0)):
        return None
    factors = [np.diag(1.0 / np.sqrt(v)) for v in var]
    consts = np.log(prior) - 0.5 * np.sum(np.log(2.0 * np.pi * var), axis=1)
    return theta, factors, consts


def _qda_parts(est):
    means = getattr(est, "means_", None)
    rot = getattr(est, "rotations_", None)
    scal = getattr(est, "scalings_", None)
    priors = getattr(est, "priors_", None)
    if means is None or rot is None or scal is None or priors is None or len(est.classes_) < 2:
        return None
    means = np.asarray(means, dtype=np.float64)
    factors, consts = [], []
    for R, S, pr in zip(rot, scal, np.asarray(priors, dtype=np.float64)):  # a loop over classes
        R = np.asarray(R, dtype=np.float64)
        S = np.asarray(S, dtype=np.float64)
        if not np.all(S > 0) or pr <= 0:
            return None
        factors.append(R * S ** -0.5)
        consts.append(np.log(pr) - 0.5 * np.sum(np.log(S)))
    return means, factors, np.asarray(consts)
