"""The only place the explanation search talks to the model.

A *mutant* of row ``x`` for a boolean mask ``m`` keeps ``x[f]`` where ``m[f]`` and sets every
other feature to the baseline. The oracle answers "is this mutant sufficient for the row's
label?" for a whole batch of (row, mask) pairs with one model call per chunk of ``max_batch``
mutants, and counts how many mutants each row cost.
"""

from __future__ import annotations

import numpy as np


def default_batch(n_features: int) -> int:
    """Mutants per model call: about 32 MB of float64, at least 1024."""
    return max(1024, 4_000_000 // max(int(n_features), 1))


class SufficiencyOracle:
    """Batched sufficiency test for mutants of several rows.

    Parameters
    ----------
    form : ModelForm
        Anything with ``predict``, ``predict_proba`` (if ``confidence`` is given) and ``classes``.
    X : ndarray of shape (n, D)
        The rows being explained.
    baseline : ndarray of shape (D,) or (n, D)
        The value of every feature that a mutant does not keep: one baseline for every row, or
        one per row (row ``i``'s mutants use ``baseline[i]``).
    labels : ndarray of shape (n,)
        Class index (into ``form.classes``) that each row's mutants must keep.
    confidence : float or None
        ``None``: sufficient means ``form.predict(mutant) == classes[label]`` (the estimator's own
        predict). A float ``P``: the probability of the label must be the largest and at least
        ``P`` (one ``predict_proba`` call instead of ``predict``; the final verification in
        :func:`verify` uses both).
    max_batch : int, optional
        Largest number of mutants sent to the model in one call (bounds memory); default about
        32 MB of float64 mutants.
    """

    def __init__(self, form, X, baseline, labels, confidence=None, max_batch=None):
        self.form = form
        self.X = X
        self.baseline = baseline
        self.labels = labels
        self.label_values = np.asarray(form.classes)[labels]
        self.confidence = confidence
        self.max_batch = int(max_batch or default_batch(X.shape[1]))
        self.queries = np.zeros(X.shape[0], dtype=np.int64)
        self.calls = 0

    def mutants(self, rid: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.where(masks, self.X[rid], row_baseline(self.baseline, rid))

    def __call__(self, rid: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(m,)`` bool: is the mutant of row ``rid[j]`` keeping ``masks[j]`` sufficient?"""
        rid = np.asarray(rid, dtype=np.intp)
        m = rid.shape[0]
        out = np.zeros(m, dtype=bool)
        if m == 0:
            return out
        self.queries += np.bincount(rid, minlength=self.queries.shape[0])
        for start in range(0, m, self.max_batch):
            sl = slice(start, start + self.max_batch)
            Xm = self.mutants(rid[sl], masks[sl])
            self.calls += 1
            if self.confidence is None:
                out[sl] = np.asarray(self.form.predict(Xm)) == self.label_values[rid[sl]]
            else:
                P = np.asarray(self.form.predict_proba(Xm), dtype=np.float64)
                lab = self.labels[rid[sl]]
                pk = P[np.arange(P.shape[0]), lab]
                out[sl] = (np.argmax(P, axis=1) == lab) & (pk >= self.confidence)
        return out


def row_baseline(baseline: np.ndarray, rid: np.ndarray) -> np.ndarray:
    """The baseline of each row in ``rid``: ``baseline`` itself when it is ``(D,)`` (broadcast),
    ``baseline[rid]`` when it is one baseline per row, ``(n, D)``."""
    return baseline[rid] if baseline.ndim == 2 else baseline


def verify(form, X, baseline, labels, rid, masks, confidence=None, max_batch=None):
    """Check mutants with the model's own ``predict`` (and ``predict_proba`` when it has one).

    Returns
    -------
    sufficient : ndarray of bool, shape (m,)
        ``predict(mutant) == classes[label]`` and, when ``confidence`` is given,
        ``predict_proba(mutant)[label] >= confidence``.
    proba : ndarray of float, shape (m,)
        ``predict_proba(mutant)[label]``, NaN when the model has no ``predict_proba``.
    """
    rid = np.asarray(rid, dtype=np.intp)
    max_batch = int(max_batch or default_batch(X.shape[1]))
    m = rid.shape[0]
    suff = np.zeros(m, dtype=bool)
    proba = np.full(m, np.nan)
    label_values = np.asarray(form.classes)[labels]
    has_proba = bool(getattr(form, "has_proba", True))
    for start in range(0, m, max_batch):
        sl = slice(start, start + max_batch)
        Xm = np.where(masks[sl], X[rid[sl]], row_baseline(baseline, rid[sl]))
        ok = np.asarray(form.predict(Xm)) == label_values[rid[sl]]
        if has_proba:
            P = np.asarray(form.predict_proba(Xm), dtype=np.float64)
            proba[sl] = P[np.arange(P.shape[0]), labels[rid[sl]]]
            if confidence is not None:
                ok &= proba[sl] >= confidence
        suff[sl] = ok
    return suff, proba
