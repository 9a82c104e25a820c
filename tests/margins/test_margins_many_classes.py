"""Many classes (issue 19): exact linear margins where many rows sit within rounding of a tie
between two classes (only those class pairs are recomputed exactly), against the closed form
evaluated in exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from invaudit.margins import margins
from invaudit.models.base import LinearForm


class _Scores:
    def __init__(self, W, b):
        self.coef_, self.intercept_ = W, b
        self.classes_ = np.arange(W.shape[0])

    def decision_function(self, X):
        return np.asarray(X) @ self.coef_.T + self.intercept_

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def test_margins_near_ties_with_many_classes_match_exact_arithmetic():
    rng = np.random.default_rng(7)
    K, D, n = 30, 8, 40
    W = rng.normal(size=(K, D)) * np.logspace(-3, 3, D)
    b = rng.normal(size=K)
    form = LinearForm(estimator=_Scores(W, b), W=W.copy(), b=b.copy(), link="none",
                      classes=np.arange(K), n_features=D)
    X = rng.normal(size=(n, D))
    S = X @ W.T + b
    top2 = np.argsort(-S, axis=1)[:, :2]
    for i in range(0, n, 2):  # put half the rows a hair off the boundary of their top two
        a = W[top2[i, 0]] - W[top2[i, 1]]
        gap = S[i, top2[i, 0]] - S[i, top2[i, 1]]
        X[i] -= ((gap * (1 - 1e-9)) / (a @ a)) * a
    r = margins(form, X)
    pred = form.predict_index(X)
    for i in range(n):
        p = pred[i]
        best = None
        for j in range(K):
            if j == p:
                continue
            g = sum(Fraction(float(u)) * Fraction(float(v)) for u, v in zip(W[p], X[i]))
            g -= sum(Fraction(float(u)) * Fraction(float(v)) for u, v in zip(W[j], X[i]))
            g += Fraction(float(b[p])) - Fraction(float(b[j]))
            d = float(g) / np.linalg.norm(W[p] - W[j])
            if best is None or d < best[0]:
                best = (d, j)
        assert r.exact[i]
        np.testing.assert_allclose(r.margin[i], best[0], rtol=1e-9)
        assert r.nearest_index[i] == best[1]
