"""Exact leave-one-out influence for k-nearest-neighbour classifiers.

A KNN classifier's "refit" without training row ``i`` only forgets that row: a test row's
prediction changes exactly when ``i`` is among its ``k`` nearest, and then its neighbours become
the first ``k + 1`` minus ``i``. So asking the estimator itself for every test row's ``k + 1``
nearest (its own neighbour search and distances) and re-counting the votes gives, for every
training row at once, the probabilities a real refit would give, and the change of the test
row's log loss::

    loss_change_if_removed(t, i) = loss(t | neighbours without i) - loss(t | neighbours)

which is zero for every ``i`` outside the ``k`` nearest. No approximation is involved (Koh &
Liang's influence function is the first-order stand-in for exactly this quantity). The loss is
``-log max(p, eps)`` with ``eps`` the float64 machine epsilon, because a KNN vote gives
probability 0 to classes none of the neighbours has. Ties in distance are broken by the
estimator's neighbour search; a refit breaks ties among the remaining rows the same way unless
two rows are at exactly the same distance from the test row (then which of them is "the k-th"
is the search's choice).

For the training rows themselves, the out-of-sample vote of each row (its ``k`` nearest *other*
rows) is what the estimator's ``predict_proba(None)`` returns; :func:`loo_mislabel_ranking`
ranks labels by it.
"""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError

from ._objective import Objective

__all__ = ["NeighborsObjective", "loo_mislabel_ranking", "vote_proba"]

_EPS = float(np.finfo(np.float64).eps)


def vote_proba(form, dist: np.ndarray, ind: np.ndarray) -> np.ndarray:
    """``(T, K)`` class probabilities from neighbour lists ``ind`` (``(T, k)``, nearest first) and
    their distances, as scikit-learn's ``KNeighborsClassifier.predict_proba`` computes them
    (uniform: counts / k; distance: ``1/d`` weights, and only the zero-distance neighbours when
    there are any), adding the neighbours in the same order."""
    T, k = ind.shape
    K = len(form.classes)
    y = form.fit_y[ind]
    P = np.zeros((T, K))
    rows = np.arange(T)
    if form.weights == "distance":
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        inf = np.isinf(w)
        w = np.where(inf.any(axis=1)[:, None], inf.astype(np.float64), w)
    else:
        w = np.ones((T, k))
    for j in range(k):  # a loop over neighbour positions (k is small), as scikit-learn adds them
        P[rows, y[:, j]] += w[:, j]
    norm = P.sum(axis=1, keepdims=True)
    norm[norm == 0.0] = 1.0
    return P / norm


def _log_loss(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(P[np.arange(y.size), y], _EPS))


class NeighborsObjective(Objective):
    """The :class:`~invaudit.influence.Objective` interface for a neighbours form: every answer
    is an exact leave-one-out (module docstring); ``refit_without`` fits a real clone for the
    checks."""

    kind = "neighbors"
    convex = True
    exact = True
    method = "exact leave-one-out (votes re-counted among the estimator's own k + 1 nearest)"
    stationarity = 0.0
    estimates = ("exact-loo",)
    thread_safe = True
    n_params = 0

    def __init__(self, form, X_train, y_train):
        X = np.asarray(X_train, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != form.n_features:
            raise InputError(f"the training data must have {form.n_features} features, got shape {X.shape}.")
        y = np.asarray(y_train)
        if y.shape != (X.shape[0],):
            raise InputError("the training data needs one label per row.")
        y = y.astype(np.intp)
        Z = form.transform(X)
        same = Z.shape == form.fit_Z.shape and np.allclose(Z, form.fit_Z, rtol=1e-9, atol=1e-12 * (
            1.0 + float(np.max(np.abs(form.fit_Z))) if form.fit_Z.size else 1.0))
        if not same or not np.array_equal(y, form.fit_y):
            raise InputError(
                "the training data is not the data this KNeighborsClassifier stores (same rows, same order, "
                "same labels); leave-one-out effects are about the rows the model keeps.")
        if form.k + 1 > form.n_train:
            raise InputError(f"leave-one-out needs more than k = {form.k} training rows.")
        self.form = form
        self.X = X
        self.y = y
        self.n_rows = X.shape[0]
        self.classes = form.classes
        self.notes = ("leave-one-out effects are exact: removing a row changes only the test rows it is one of "
                      f"the {form.k} nearest of, whose votes are re-counted",
                      "the loss is -log max(p, machine epsilon): a vote gives probability 0 to absent classes")

    # --- the interface ---------------------------------------------------------------------
    def check_test(self, X_test, y_test):
        X = np.asarray(X_test, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.form.n_features:
            raise InputError(f"the test rows must have {self.form.n_features} features, got shape {X.shape}.")
        if not np.all(np.isfinite(X)):
            raise InputError("the test rows contain NaN or infinite values.")
        if y_test is not None:
            y_test = np.asarray(y_test).astype(np.intp)
            if y_test.shape != (X.shape[0],):
                raise InputError("the test rows need one label each.")
        return X, y_test

    def predicted_index(self, X) -> np.ndarray:
        return self.form.predict_index(X)

    def _neighbours(self, X, extra: int = 1):
        return self.form.kneighbors(self.form.transform(X), self.form.k + extra)

    def losses(self, X, y) -> np.ndarray:
        dist, ind = self._neighbours(X, 0)
        return _log_loss(vote_proba(self.form, dist, ind), np.asarray(y, dtype=np.intp))

    def _changes(self, X, y):
        """``(ind (T, k), change (T, k))``: the ``k`` nearest training rows of each test row and
        the exact change of its loss if each were removed."""
        k = self.form.k
        y = np.asarray(y, dtype=np.intp)
        dist, ind = self._neighbours(X, 1)
        base = _log_loss(vote_proba(self.form, dist[:, :k], ind[:, :k]), y)
        change = np.empty((X.shape[0], k))
        cols = np.arange(k + 1)
        for j in range(k):  # remove the j-th nearest: the others, in order, are the new neighbours
            keep = cols[cols != j]
            change[:, j] = _log_loss(vote_proba(self.form, dist[:, keep], ind[:, keep]), y) - base
        return ind[:, :k], change

    def loss_changes(self, X_test, y_test, estimate="exact-loo", rows=None, U=None) -> np.ndarray:
        ind, change = self._changes(X_test, y_test)
        T = ind.shape[0]
        full = np.zeros((T, self.n_rows))
        full[np.repeat(np.arange(T), ind.shape[1]), ind.ravel()] = change.ravel()
        return full if rows is None else full[:, np.asarray(rows, dtype=np.intp)]

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        S = self.loss_changes(X_test, y_test)
        return S, lambda idx: np.take_along_axis(S, idx, axis=1)

    def solve(self, G):  # pragma: no cover - no Hessian here
        raise InputError("KNN influence has no gradients (--features is not available).")

    def test_gradients(self, X, y):
        raise InputError("--features needs a differentiable model; a KNN's influence is an exact "
                         "leave-one-out without gradients.")

    def feature_gradients(self, u, rows):  # pragma: no cover - guarded by test_gradients
        raise InputError("--features is not available for KNN.")

    def refit_without(self, rows, *, tol=1e-10, max_iter=None):
        """A real clone of the classifier fitted without ``rows`` (on the stored points)."""
        from sklearn.base import clone

        keep = np.ones(self.n_rows, dtype=bool)
        keep[np.asarray(rows, dtype=np.intp)] = False
        est = clone(self.form.final_estimator)
        return est.fit(self.form.fit_Z[keep], self.form.classes[self.y[keep]])

    def refit_losses(self, fitted, X, y) -> np.ndarray:
        from invaudit.models.base import _no_feature_name_warning

        with _no_feature_name_warning():
            P = fitted.predict_proba(self.form.transform(X))
        # a refit may have lost a class altogether: map its columns onto the model's classes
        full = np.zeros((P.shape[0], len(self.classes)))
        pos = np.searchsorted(self.classes, fitted.classes_)
        full[:, pos] = P
        return _log_loss(full, np.asarray(y, dtype=np.intp))

    def group_prediction(self, rows, X_test, y_test):
        """Exact effect of removing all ``rows`` together: the first ``k`` of the ``k + |rows|``
        nearest that are not removed. Returned as ``(exact, None)``."""
        rows = np.unique(np.asarray(rows, dtype=np.intp))
        k = self.form.k
        if self.n_rows - rows.size < k:
            raise InputError(f"removing {rows.size} rows leaves fewer than k = {k} training rows.")
        y = np.asarray(y_test, dtype=np.intp)
        dist, ind = self._neighbours(X_test, rows.size)
        base = _log_loss(vote_proba(self.form, dist[:, :k], ind[:, :k]), y)
        gone = np.isin(ind, rows)
        order = np.argsort(gone, axis=1, kind="stable")[:, :k]  # kept rows first, in distance order
        new = _log_loss(vote_proba(self.form, np.take_along_axis(dist, order, axis=1),
                                   np.take_along_axis(ind, order, axis=1)), y)
        return new - base, None


def loo_mislabel_ranking(form, X, y):
    """Every training row scored by its exact out-of-sample log loss: the vote of its ``k``
    nearest *other* training rows (the estimator's ``predict_proba(None)``, which is what a refit
    without the row predicts for it). Returns a :class:`~invaudit.triage.MislabelRanking`."""
    from invaudit.models.base import _no_feature_name_warning
    from invaudit.triage._rank import MislabelRanking

    obj = NeighborsObjective(form, X, y)  # checks that the rows are the stored ones
    with _no_feature_name_warning():
        dist, ind = form.final_estimator.kneighbors(None, form.k)
    P = vote_proba(form, dist, ind)
    score = _log_loss(P, obj.y)
    order = np.lexsort((np.arange(score.size), -score))
    return MislabelRanking(order=order, score=score, given=obj.y, suggested=np.argmax(P, axis=1).astype(np.intp),
                           method="loo-loss", exact=True, classes=np.asarray(form.classes),
                           notes=("exact leave-one-out: each row scored by the vote of its "
                                  f"{form.k} nearest other training rows",))
