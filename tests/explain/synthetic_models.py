"""Synthetic black boxes and brute-force helpers shared by the explain tests."""

from __future__ import annotations

import numpy as np

from invaudit.models.base import BlackBoxForm


class RegionModel:
    """A synthetic black box with a known answer.

    Class 1 when region A is intact (every feature of A equals the reference row) OR / AND when
    region B is intact; class 0 otherwise. ``proba=False`` hides ``predict_proba``.
    """

    def __init__(self, x, A, B, mode="or", p=0.9):
        self.x = np.asarray(x, dtype=float)
        self.A = np.asarray(A)
        self.B = np.asarray(B)
        self.mode = mode
        self.p = p
        self.classes_ = np.array([0, 1])

    def _label(self, X):
        X = np.asarray(X, dtype=float)
        a = np.all(X[:, self.A] == self.x[self.A], axis=1)
        b = np.all(X[:, self.B] == self.x[self.B], axis=1)
        return (a | b) if self.mode == "or" else (a & b)

    def predict_proba(self, X):
        p1 = np.where(self._label(X), self.p, 1.0 - self.p)
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X):
        return self.classes_[self._label(X).astype(int)]


class PredictOnly:
    def __init__(self, inner):
        self.inner = inner
        self.classes_ = inner.classes_

    def predict(self, X):
        return self.inner.predict(X)


def black_box(est, D):
    return BlackBoxForm(estimator=est, classes=est.classes_, n_features=D)


def brute_force_table(form, x, baseline, label, confidence=None):
    """Sufficiency of every subset of features (bitmask order), with the model's own predict."""
    D = x.size
    codes = np.arange(1 << D)
    masks = ((codes[:, None] >> np.arange(D)[None, :]) & 1).astype(bool)
    X = np.where(masks, x, baseline)
    ok = np.asarray(form.predict(X)) == form.classes[label]
    if confidence is not None:
        ok &= form.predict_proba(X)[:, label] >= confidence
    return ok, masks


def code_of(features):
    return int(sum(1 << int(f) for f in features))
