"""Exact leave-one-out influence for GaussianNB and QuadraticDiscriminantAnalysis.

Both fit each class's Gaussian in closed form, so "refit without training row ``i``" has a
closed form too, and every training row's effect on every test row's log loss is computed
exactly (to rounding), for all rows at once, without refitting:

GaussianNB (``var_smoothing`` = ``s``)
    Class ``k`` keeps the mean ``theta_k`` and the biased variance ``v_k`` of its ``n_k`` rows,
    plus ``eps = s * max_j var(X[:, j])`` over *all* rows. Without row ``i`` (class ``k``,
    ``d = x_i - theta_k``): ``theta_k' = theta_k - d / (n_k - 1)``, ``v_k' = (n_k v_k - n_k / (n_k
    - 1) d^2) / (n_k - 1)``; ``eps'`` is recomputed from the per-feature variances without ``i``
    (the same update on the column means), which shifts every class's variances; the priors
    (when not given) become the class counts over ``n - 1``.

QuadraticDiscriminantAnalysis
    Class ``k``'s covariance ``Sigma_k`` is ``(1 - r) C_k + r I`` (``solver="svd"``,
    ``reg_param = r``), ``C_k`` (``solver="eigen"``, no shrinkage) or ``(1 - a) C_k + a tr(C_k)/D
    I`` (``solver="eigen"``, ``shrinkage = a``), with ``C_k`` the biased covariance of the class.
    Without row ``i``: ``C_k' = alpha C_k - beta d d^T`` with ``alpha = n_k / (n_k - 1)`` and
    ``beta = n_k / (n_k - 1)^2``. In the eigenbasis ``V`` of ``C_k`` (eigenvalues ``c``) every
    case is ``Sigma_k' = V (L_i - gamma u u^T) V^T`` with ``u = V^T d``, ``L_i`` diagonal
    (``(1 - r) alpha c + r``, ``alpha c``, or ``(1 - a) alpha c + a tr(C_k')/D``) and ``gamma``
    a number, so the Sherman-Morrison formula and the matrix determinant lemma give the new
    quadratic term and log-determinant of a test row in ``O(D)`` per (test row, training row)
    pair after ``O(D)`` products, done as matrix products over all pairs.

The loss is the log loss of ``predict_proba`` (the softmax of the class scores). The
preprocessing in front of the estimator (affine steps) stays fixed; ``refit_without`` fits a
real clone of the estimator on the preprocessed rows, and the tests compare against it.
Not covered (refused with a sentence): ``shrinkage="auto"`` and ``covariance_estimator`` (their
estimates are not rank-one updates), a class whose covariance would turn singular without one
of its rows (``solver="svd"`` needs more rows than features in every class), and classes with a
single row.
"""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError, UnsupportedModelError

from ._objective import Objective, _training_rows

__all__ = ["QuadraticObjective", "build_quadratic_objective", "quadratic_method", "quadratic_refusal",
           "loo_mislabel_ranking"]

#: TRAIN's recomputed class statistics must agree with the model's to this (relative to each
#: feature's largest magnitude) to be taken as its training data; to be called exact, to this.
_ACCEPT_AGREEMENT = 1e-4
_EXACT_AGREEMENT = 1e-9
_METHOD = "exact leave-one-out (each class's Gaussian refitted in closed form without the row)"


def quadratic_method(form) -> str | None:
    """The estimate :class:`QuadraticObjective` gives for ``form``, or None with the reason in
    :func:`quadratic_refusal`."""
    return _METHOD if getattr(form, "kind", None) == "quadratic" and quadratic_refusal(form) is None else None


def quadratic_refusal(form) -> str | None:
    """Why the closed-form leave-one-out does not apply to ``form``'s estimator (None: it does)."""
    final = form.final_estimator
    name = type(final).__name__
    if name == "GaussianNB":
        return None
    if name != "QuadraticDiscriminantAnalysis":
        return f"{name} is not GaussianNB or QuadraticDiscriminantAnalysis"
    if getattr(final, "covariance_estimator", None) is not None:
        return "a QuadraticDiscriminantAnalysis with a covariance_estimator has no closed-form leave-one-out"
    if getattr(final, "solver", "svd") == "eigen" and isinstance(getattr(final, "shrinkage", None), str):
        return "a QuadraticDiscriminantAnalysis with shrinkage='auto' (Ledoit-Wolf) has no closed-form leave-one-out"
    return None


def _log_softmax_at(S: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``-log softmax(S)[..., y]`` along the last axis; ``y`` indexes the first axis' rows."""
    top = S.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(S - top).sum(axis=-1)) + top[..., 0]
    idx = y.reshape((-1,) + (1,) * (S.ndim - 1))
    return lse - np.take_along_axis(S, idx, axis=-1)[..., 0]


class QuadraticObjective(Objective):
    """The :class:`~invaudit.influence.Objective` interface for GaussianNB / QDA: every loss
    change is the exact leave-one-out (module docstring)."""

    kind = "quadratic"
    convex = True
    exact = True
    method = _METHOD
    stationarity = 0.0
    estimates = ("exact-loo",)
    thread_safe = True

    def __init__(self, form, X_train, y_train):
        why = quadratic_refusal(form)
        if why is not None:
            raise UnsupportedModelError(f"influence: {why}.")
        K = len(form.classes)
        X, y = _training_rows(X_train, y_train, form.n_features, K)
        self.form = form
        self.final = form.final_estimator
        self.name = type(self.final).__name__
        self.X, self.y = X, y
        self.n_rows = n = X.shape[0]
        self.classes = np.asarray(form.classes)
        Z = form.transform(X)
        self.Z = Z
        D = Z.shape[1]
        counts = np.bincount(y, minlength=K).astype(np.float64)
        if np.any(counts < 2):
            k = int(np.argmin(counts))
            raise UnsupportedModelError(f"leave-one-out needs at least two training rows of every class; class "
                             f"{self.classes[k]!r} has {int(counts[k])}.")
        self.counts = counts
        self.members = [np.flatnonzero(y == k) for k in range(K)]
        means = np.stack([Z[m].mean(axis=0) for m in self.members])
        model_means = np.asarray(self.final.theta_ if self.name == "GaussianNB" else self.final.means_,
                                 dtype=np.float64)
        if model_means.shape != means.shape:
            raise InputError("the training data does not have the model's classes; pass the data (rows and "
                             "labels) the model was fitted on.")
        big = np.abs(Z).max(axis=0)
        self._unit = np.where(big > 0, big, 1.0)  # each feature's largest magnitude
        self.mismatch = 0.0
        self._agree("class means", means, model_means, self._unit)
        self.means = means
        given = getattr(self.final, "priors", None)
        self.fixed_priors = None if given is None else np.asarray(given, dtype=np.float64)
        if given is None:
            fitted = self.final.class_prior_ if self.name == "GaussianNB" else self.final.priors_
            self._agree("class priors (label counts)", counts / n, np.asarray(fitted, dtype=np.float64), 1.0)
        if self.name == "GaussianNB":
            self._gnb_terms()
            self.n_params = 2 * K * D
        else:
            self._qda_terms()
            self.n_params = K * (D + D * (D + 1) // 2)
        notes = [f"{_METHOD}: exact for the estimator, not an approximation"]
        if form.preprocessing:
            notes.append("the affine preprocessing in front of the estimator stays fixed")
        if self.mismatch > _EXACT_AGREEMENT:
            self.exact = False
            notes.append(f"TRAIN reproduces the model's fitted statistics only to {self.mismatch:.1g} of each "
                         "feature's scale (rounded values?): the effects are exact refits on TRAIN as given, "
                         "which is not exactly the data the model saw, so they are not marked exact")
        self.notes = tuple(notes)

    def _agree(self, what, ours, model, unit):
        """Check the statistics recomputed from TRAIN against the model's (relative to ``unit``,
        each feature's largest magnitude or its square); record the worst disagreement."""
        rel = float(np.max(np.abs(ours - model) / unit, initial=0.0))
        if not np.isfinite(rel) or rel > _ACCEPT_AGREEMENT:
            raise InputError(f"the training data does not reproduce the model's {what}; pass the data (rows, "
                             "order and labels) the model was fitted on.")
        self.mismatch = max(self.mismatch, rel)

    # --- the fitted statistics ------------------------------------------------------------------
    def _gnb_terms(self):
        Z, K = self.Z, len(self.classes)
        self.raw_var = np.stack([Z[m].var(axis=0) for m in self.members])  # (K, D) biased
        self.col_mean = Z.mean(axis=0)
        self.col_var = Z.var(axis=0)
        self.smoothing = float(self.final.var_smoothing)
        self.eps = self.smoothing * float(self.col_var.max())
        var = self.raw_var + self.eps
        # (var_smoothing's epsilon is relative to the largest variance: it sets the scale too)
        self._agree("class variances", var, np.asarray(self.final.var_, dtype=np.float64), self._unit ** 2 + self.eps)
        n = self.n_rows
        # eps without each row: the column variances without it, as GaussianNB computes them
        dc = Z - self.col_mean
        v_wo = (n * self.col_var - n / (n - 1) * dc * dc) / (n - 1)
        self.eps_wo = self.smoothing * v_wo.max(axis=1)  # (n,)

    def _qda_terms(self):
        f = self.final
        solver = getattr(f, "solver", "svd")
        Z, D = self.Z, self.Z.shape[1]
        if solver == "svd":
            small = [k for k, m in enumerate(self.members) if m.size - 1 <= D]
            if small:
                k = small[0]
                raise UnsupportedModelError(
                    f"class {self.classes[k]!r} has {self.members[k].size} training rows for {D} features: without "
                    "one of them its covariance is singular and a refit fails (solver='svd' needs more rows than "
                    "features in every class), so leave-one-out is not defined.")
            r, a = float(f.reg_param), None
        else:
            sh = getattr(f, "shrinkage", None)
            r, a = 0.0, (0.0 if sh is None else float(sh))
        self.reg, self.shrink = r, a
        self.eig, self.rot, self.cov_trace = [], [], []
        for k, m in enumerate(self.members):  # a loop over classes
            C = np.cov(Z[m], rowvar=False, bias=True).reshape(D, D)
            c, V = np.linalg.eigh(C)
            self.eig.append(np.maximum(c, 0.0))
            self.rot.append(V)
            self.cov_trace.append(float(np.trace(C)))
        # check the model's own covariances (rotation * scaling * rotation^T)
        for k in range(len(self.classes)):  # a loop over classes
            lam = self._lam(k, None)
            Sigma = (self.rot[k] * lam) @ self.rot[k].T
            R = np.asarray(f.rotations_[k], dtype=np.float64)
            S = np.asarray(f.scalings_[k], dtype=np.float64)
            model = (R * S) @ R.T
            self._agree("class covariances", Sigma, model, np.outer(self._unit, self._unit))

    def _lam(self, k, rows_trace=None):
        """Eigenvalues of class ``k``'s covariance in its eigenbasis: the fitted ones ``(D,)``
        (``rows_trace`` None), else ``(m, D)`` for the class without each of ``m`` of its rows,
        whose biased covariances have traces ``rows_trace``."""
        c = self.eig[k]
        if rows_trace is None:
            alpha, tr = 1.0, self.cov_trace[k]
        else:
            nk = self.members[k].size
            alpha, tr = nk / (nk - 1.0), np.asarray(rows_trace, dtype=np.float64)[:, None]
        if self.shrink is None:  # svd: (1 - r) C + r I
            lam = (1.0 - self.reg) * alpha * c + self.reg
            return lam if rows_trace is None else np.broadcast_to(lam, (tr.shape[0], c.size))
        return (1.0 - self.shrink) * alpha * c + self.shrink * tr / c.size

    # --- class scores ----------------------------------------------------------------------------
    def base_scores(self, Zt) -> np.ndarray:
        """``(T, K)`` class scores of the fitted model (from the recomputed statistics)."""
        K = len(self.classes)
        logp = np.log(self.fixed_priors if self.fixed_priors is not None else self.counts / self.n_rows)
        out = np.empty((Zt.shape[0], K))
        for k in range(K):  # a loop over classes
            A = Zt - self.means[k]
            if self.name == "GaussianNB":
                var = self.raw_var[k] + self.eps
                out[:, k] = -0.5 * (A * A / var).sum(axis=1) - 0.5 * np.log(2 * np.pi * var).sum()
            else:
                lam = self._lam(k)
                W = A @ self.rot[k]
                out[:, k] = -0.5 * ((W * W / lam).sum(axis=1) + np.log(lam).sum())
        return out + logp

    def _class_without(self, k, rows):
        """Class ``k``'s Gaussian without each of ``rows`` (``(m,)``), as the pieces both
        :meth:`scores_without` and :meth:`_diagonal_scores` combine: ``(shift (m, D), R (m, D),
        const (m,), U (m, D), gamma (m,), denom (m,))`` with ``z - theta' = (z - theta) + shift``,
        ``R`` the inverse variances (GaussianNB) or inverse eigenvalues ``L_i^-1`` (QDA, in the
        eigenbasis; ``U``, ``gamma``, ``denom`` the rank-one part), ``const`` the log-determinant
        part of the score (times -1/2 included)."""
        nk = float(self.members[k].size)
        own = self.y[rows] == k
        d = self.Z[rows] - self.means[k]
        shift = np.where(own[:, None], d / (nk - 1.0), 0.0)
        if self.name == "GaussianNB":
            raw = np.where(own[:, None], (nk * self.raw_var[k] - nk / (nk - 1.0) * d * d) / (nk - 1.0),
                           self.raw_var[k][None, :])
            var = raw + self.eps_wo[rows][:, None]
            if np.any(var <= 0):
                raise UnsupportedModelError("leave-one-out would leave a class variance of 0 (var_smoothing is 0).")
            return shift, 1.0 / var, -0.5 * np.log(2 * np.pi * var).sum(axis=1), None, None, None
        V = self.rot[k]
        U = np.where(own[:, None], d @ V, 0.0)
        beta = nk / (nk - 1.0) ** 2
        tr_wo = nk / (nk - 1.0) * self.cov_trace[k] - beta * (d * d).sum(axis=1)
        lam = np.where(own[:, None], self._lam(k, tr_wo), self._lam(k)[None, :])
        Ri = 1.0 / lam
        gamma = np.where(own, (1.0 - (self.reg if self.shrink is None else self.shrink)) * beta, 0.0)
        denom = 1.0 - gamma * (U * U * Ri).sum(axis=1)
        if np.any(denom <= 1e-12):
            raise UnsupportedModelError(f"without one of its rows class {self.classes[k]!r}'s covariance is singular; "
                             "leave-one-out is not defined for this model.")
        return shift @ V, Ri, -0.5 * (np.log(lam).sum(axis=1) + np.log(denom)), U, gamma, denom

    def _log_priors_without(self, rows):
        m, K = rows.size, len(self.classes)
        if self.fixed_priors is not None:
            return np.broadcast_to(np.log(self.fixed_priors), (m, K))
        cnt = np.broadcast_to(self.counts, (m, K)).copy()
        cnt[np.arange(m), self.y[rows]] -= 1.0
        return np.log(cnt / (self.n_rows - 1.0))

    def scores_without(self, Zt, rows) -> np.ndarray:
        """``(T, m, K)``: the class scores of each test row after the exact refit without each of
        ``rows`` (module docstring); matrix products over all (test row, training row) pairs."""
        K = len(self.classes)
        rows = np.asarray(rows, dtype=np.intp)
        out = np.empty((Zt.shape[0], rows.size, K))
        for k in range(K):  # a loop over classes: (T x D) @ (D x m) products inside
            shift, R, const, U, gamma, denom = self._class_without(k, rows)
            A = Zt - self.means[k]
            if self.name != "GaussianNB":
                A = A @ self.rot[k]  # the eigenbasis (shift is in it already)
            quad = (A * A) @ R.T + 2.0 * A @ (shift * R).T + (shift * shift * R).sum(axis=1)[None, :]
            if U is not None:  # Sherman-Morrison: + gamma (w^T L^-1 u)^2 / (1 - gamma u^T L^-1 u)
                p = A @ (U * R).T + (shift * U * R).sum(axis=1)[None, :]
                quad += gamma[None, :] * p * p / denom[None, :]
            out[:, :, k] = -0.5 * quad + const[None, :]
        return out + self._log_priors_without(rows)[None, :, :]

    def _diagonal_scores(self, rows) -> np.ndarray:
        """``(m, K)``: each of ``rows``' own class scores under the refit without it."""
        rows = np.asarray(rows, dtype=np.intp)
        out = np.empty((rows.size, len(self.classes)))
        for k in range(len(self.classes)):  # a loop over classes, elementwise inside
            shift, R, const, U, gamma, denom = self._class_without(k, rows)
            A = self.Z[rows] - self.means[k]
            if self.name != "GaussianNB":
                A = A @ self.rot[k]
            w = A + shift
            quad = (w * w * R).sum(axis=1)
            if U is not None:
                p = (w * U * R).sum(axis=1)
                quad += gamma * p * p / denom
            out[:, k] = -0.5 * quad + const
        return out + self._log_priors_without(rows)

    # --- the Objective interface ---------------------------------------------------------------
    def predicted_index(self, X) -> np.ndarray:
        return np.argmax(self.form.scores(np.asarray(X, dtype=np.float64)), axis=1).astype(np.intp)

    def losses(self, X, y) -> np.ndarray:
        """The model's own log loss (its fitted parameters)."""
        return _log_softmax_at(self.form.scores(np.asarray(X, dtype=np.float64)), np.asarray(y, dtype=np.intp))

    def loss_changes(self, X_test, y_test, estimate="exact-loo", rows=None, U=None) -> np.ndarray:
        """``(T, m)``: the exact change of each test row's log loss if each training row (``rows``,
        default all) were removed and the estimator refitted (positive: the row helped)."""
        Zt = self.form.transform(np.asarray(X_test, dtype=np.float64))
        y = np.asarray(y_test, dtype=np.intp)
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.intp)
        base = _log_softmax_at(self.base_scores(Zt), y)
        out = np.empty((Zt.shape[0], rows.size))
        step = max(1, 2_000_000 // max(1, Zt.shape[0] * len(self.classes)))
        for lo in range(0, rows.size, step):  # blocks of training rows bound the (T, m, K) scores
            S = self.scores_without(Zt, rows[lo:lo + step])
            out[:, lo:lo + step] = _log_softmax_at(S, y) - base[:, None]
        return out

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        S = self.loss_changes(X_test, y_test, estimate)
        return S, lambda idx: np.take_along_axis(S, idx, axis=1)

    def self_loo_scores(self) -> np.ndarray:
        """``(n, K)``: each training row's class scores under the estimator refitted without it."""
        out = np.empty((self.n_rows, len(self.classes)))
        for lo in range(0, self.n_rows, 4096):  # blocks of rows bound the (m, D) temporaries
            r = np.arange(lo, min(lo + 4096, self.n_rows))
            out[r] = self._diagonal_scores(r)
        return out

    def self_loo_losses(self) -> np.ndarray:
        """``(n,)``: each training row's log loss under the estimator refitted without it."""
        return _log_softmax_at(self.self_loo_scores(), self.y)

    def solve(self, G):  # pragma: no cover - no Hessian here
        raise InputError("--features needs feature gradients; GaussianNB / QDA influence is an exact "
                         "leave-one-out without them.")

    def test_gradients(self, X, y):
        raise InputError("--features is not available for GaussianNB / QDA: their influence is an exact "
                         "leave-one-out, computed without gradients.")

    def feature_gradients(self, u, rows):  # pragma: no cover - guarded by test_gradients
        raise InputError("--features is not available for GaussianNB / QDA.")

    def refit_without(self, rows, *, tol=1e-10, max_iter=None):
        """A real clone of the estimator fitted without ``rows`` (on the preprocessed rows)."""
        from sklearn.base import clone

        keep = np.ones(self.n_rows, dtype=bool)
        keep[np.asarray(rows, dtype=np.intp)] = False
        return clone(self.final).fit(self.Z[keep], self.classes[self.y[keep]])

    def refit_losses(self, fitted, X, y) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            P = fitted.predict_proba(self.form.transform(np.asarray(X, dtype=np.float64)))
        full = np.zeros((P.shape[0], len(self.classes)))
        full[:, np.searchsorted(self.classes, fitted.classes_)] = P
        return -np.log(np.maximum(full[np.arange(len(y)), np.asarray(y, dtype=np.intp)], np.finfo(float).tiny))

    def group_prediction(self, rows, X_test, y_test):
        """Exact effect of removing all ``rows``: the estimator's own closed-form fit without them
        (milliseconds). Returned as ``(exact, None)``."""
        rows = np.asarray(rows, dtype=np.intp)
        left = np.bincount(np.delete(self.y, rows), minlength=len(self.classes))
        if np.any(left < 2):
            raise InputError("removing the group leaves a class with fewer than two training rows.")
        y = np.asarray(y_test, dtype=np.intp)
        fitted = self.refit_without(rows)
        return self.refit_losses(fitted, X_test, y) - self.losses(X_test, y), None


def build_quadratic_objective(form, X_train, y_train) -> QuadraticObjective:
    """The exact leave-one-out objective of a GaussianNB / QDA form (module docstring)."""
    return QuadraticObjective(form, X_train, y_train)


def loo_mislabel_ranking(form, X, y):
    """Every training row scored by its exact leave-one-out log loss (the estimator refitted
    without it, in closed form). Returns a :class:`~invaudit.triage.MislabelRanking`."""
    from invaudit.triage._rank import MislabelRanking

    obj = QuadraticObjective(form, X, y)
    S = obj.self_loo_scores()
    score = _log_softmax_at(S, obj.y)
    order = np.lexsort((np.arange(score.size), -score))
    suggested = np.argmax(S, axis=1).astype(np.intp)  # what the model without the row predicts for it
    return MislabelRanking(order=order, score=score, given=obj.y, suggested=suggested, method="loo-loss",
                           exact=bool(obj.exact), classes=np.asarray(form.classes),
                           notes=(f"{_METHOD}: each row scored by its own log loss under the model fitted "
                                  "without it",) + obj.notes[1:])
