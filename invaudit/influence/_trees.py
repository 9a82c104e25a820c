"""Influence of training rows for tree ensembles: leaf refits with the trees' structure fixed.

Never exact: a refit without a row may grow different trees; this estimate keeps every tree's
splits and recomputes only the leaf values the row took part in, then evaluates the test row's
log loss exactly at the changed leaves.

Forests (RandomForest, ExtraTrees; any number of classes)
    A leaf's value is the weighted class fraction of the in-bag rows that reach it,
    ``v_l = sum_j c_j e_{y_j} / sum_j c_j`` (``c_j`` the row's bootstrap count times its sample
    weight). Without row ``i`` it is ``(S_l - c_i e_{y_i}) / (N_l - c_i)``, so the change of
    ``p(y | x)`` is a sum over the trees where ``x`` and ``i`` share a leaf, each term of size
    ``c_i / (N_l - c_i)`` times ``v_l - e_{y_i}``: leaf co-occurrence weighted by leaf size (as
    in forest proximities), made exact for a fixed structure. This is LeafRefit of Sharchilev et
    al., "Finding influential training samples for gradient boosted decision trees" (ICML 2018,
    sec. 4), applied to forests, where it needs no further approximation.

Binary gradient boosting (GradientBoosting, HistGradientBoosting; log loss)
    A leaf's value is a Newton step ``-lr * G_l / (H_l + lambda)`` over the gradients ``g_j =
    p_j - y_j`` and hessians ``h_j = p_j (1 - p_j)`` of the rows reaching it, at the raw scores
    of the stage that fitted the tree. Without row ``i`` each of its leaves becomes
    ``-lr * (G_l - g_i) / (H_l - h_i + lambda)``: Sharchilev et al.'s FastLeafInfluence with the
    other rows' gradients held fixed (the same paper's ``LeafRefit`` without the propagation to
    later trees; BoostIn, Brophy et al. 2023, makes the same first-order choice).

Both are checked when the objective is built: the leaf values recomputed from TRAIN must equal
the model's own (to 1e-6 relative), which also catches a TRAIN that is not the data the model was
fitted on. ``--verify-loo`` refits the estimator (same parameters and ``random_state``) without
each row and reports the correlation of predicted and real loss changes (the bootstrap draws of a
forest change with the number of rows, so its real changes carry refit noise: see the tests).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from invaudit.errors import InputError, UnsupportedModelError

from ._objective import Objective, _check_rows, _training_rows

__all__ = ["TreeObjective", "build_tree_objective", "tree_method"]

_FOREST = ("RandomForestClassifier", "ExtraTreesClassifier")
_BOOST = ("GradientBoostingClassifier", "HistGradientBoostingClassifier")
_EPS = 1e-15  # probabilities are clipped here before the log (an emptied class)


def tree_method(form) -> str | None:
    """The estimate :func:`build_tree_objective` gives for ``form``, or None."""
    if getattr(form, "kind", None) != "trees":
        return None
    name = type(getattr(form, "estimator", None)).__name__
    if name in _FOREST:
        return "leaf-refit (forest, fixed tree structure)"
    if name in _BOOST and form.n_classes == 2:
        return "fast-leaf-influence (boosting, fixed tree structure)"
    return None


def _leaf_matrix(leaves: np.ndarray, offsets: np.ndarray, n_leaves: int, values=None):
    """``(m, sum L)`` sparse: row ``r`` has ``values[r, t]`` (default 1) at its leaf of tree t."""
    m, T = leaves.shape
    cols = (leaves + offsets[None, :]).ravel()
    rows = np.repeat(np.arange(m), T)
    data = np.ones(m * T) if values is None else np.asarray(values, dtype=np.float64).ravel()
    return sparse.csr_matrix((data, (rows, cols)), shape=(m, n_leaves))


class TreeObjective(Objective):
    """The :class:`~invaudit.influence.Objective` interface for tree ensembles (module
    docstring), so :func:`~invaudit.influence.influence` and
    :func:`~invaudit.influence.verify_loo` work unchanged."""

    kind = "trees"
    convex = False
    exact = False
    stationarity = 0.0
    estimates = ("leaf-refit",)
    thread_safe = True

    def __init__(self, form, X_train, y_train):
        est = form.estimator
        self.form = form
        self.estimator = est
        self.name = type(est).__name__
        self.method = tree_method(form)
        if self.method is None:
            raise UnsupportedModelError(
                f"influence needs LogisticRegression, MLPClassifier, or a tree ensemble (RandomForest or "
                f"ExtraTrees with any classes, binary GradientBoosting or HistGradientBoosting); this "
                f"{self.name} with {form.n_classes} classes is not covered yet.")
        X, y = _training_rows(X_train, y_train, form.n_features, form.n_classes)
        self.X, self.y = X, y
        self.n_rows = X.shape[0]
        self.classes = np.asarray(form.classes)
        sizes = np.array([t.value.shape[0] for t in form.trees])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        self.n_leaves = int(sizes.sum())
        self.n_params = self.n_leaves
        self.T = len(form.trees)
        self.leaves = np.asarray(form.leaf_index(X), dtype=np.intp)  # (n, T)
        if self.name in _FOREST:
            self._forest_terms()
        else:
            self._boosting_terms()
        self.notes = (
            f"{self.method}: every tree keeps its splits; only the leaf values a row took part in "
            "are recomputed without it (Sharchilev et al. 2018), so this is an estimate, never exact; "
            "--verify-loo N refits the estimator to measure it",)

    # --- forests ------------------------------------------------------------------------------
    def _forest_terms(self):
        est, n, K, T = self.estimator, self.n_rows, int(self.form.n_classes), self.T
        if getattr(est, "class_weight", None) is not None:
            raise UnsupportedModelError("influence for forests with class_weight is not covered yet.")
        counts = np.ones((T, n))
        if getattr(est, "bootstrap", False):
            try:
                samples = est.estimators_samples_
            except Exception as exc:  # noqa: BLE001 - a forest whose draws cannot be replayed
                raise UnsupportedModelError(f"the forest's bootstrap draws cannot be replayed ({exc}).") from None
            if len(samples) != T or any(np.max(s, initial=-1) >= n for s in samples):
                raise InputError("the training data has fewer rows than the forest was fitted on; "
                                 "pass the data the model was fitted on.")
            counts = np.stack([np.bincount(s, minlength=n)[:n] for s in samples]).astype(np.float64)
        # per (row, tree): weighted count c and the leaf's totals N_l, S_l (K,)
        c = counts.T  # (n, T)
        gl = self.leaves + self.offsets[None, :]
        N = np.bincount(gl.ravel(), weights=c.ravel(), minlength=self.n_leaves)
        S = np.zeros((self.n_leaves, K))
        for k in range(K):  # a loop over classes
            S[:, k] = np.bincount(gl.ravel(), weights=(c * (self.y == k)[:, None]).ravel(),
                                  minlength=self.n_leaves)
        V = np.concatenate([np.asarray(t.value, dtype=np.float64) for t in self.form.trees])
        used = N > 0
        recomputed = S[used] / N[used][:, None]
        if not np.allclose(recomputed, V[used], rtol=1e-6, atol=1e-9):
            raise InputError("the training data does not reproduce the forest's leaf values; pass the "
                             "data (rows, order and labels) the model was fitted on.")
        self.V = V
        # change of each leaf value of row i's leaves without it: (v' - v) per class, / T
        Nl = N[gl]  # (n, T)
        rest = Nl - c
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where((c > 0) & (rest > 0), c / rest, 0.0)  # an emptied leaf keeps its value
        self._delta = []  # per class k: (n, sum L) sparse, (v'_k - v_k) / T at row i's leaves
        for k in range(K):  # a loop over classes
            d = scale * (V[gl, k] - (self.y == k)[:, None]) / T
            self._delta.append(_leaf_matrix(self.leaves, self.offsets, self.n_leaves, d))

    # --- binary boosting ------------------------------------------------------------------------
    def _boosting_terms(self):
        form, est, n, T = self.form, self.estimator, self.n_rows, self.T
        if self.name == "GradientBoostingClassifier":
            if getattr(est, "subsample", 1.0) < 1.0:
                raise UnsupportedModelError("influence for GradientBoosting with subsample < 1 is not covered yet.")
            lam, lr = 0.0, float(est.learning_rate)
        else:
            if getattr(est, "do_early_stopping_", False) and getattr(est, "validation_fraction", None):
                raise UnsupportedModelError("influence for HistGradientBoosting fitted with early stopping on a "
                                            "validation split is not covered (its trees saw part of the rows).")
            lam, lr = float(est.l2_regularization), float(est.learning_rate)
        scale = float(form.scale)
        vals = np.concatenate([np.asarray(t.value, dtype=np.float64)[:, 0] for t in form.trees])
        gl = self.leaves + self.offsets[None, :]
        raw = np.full(n, float(np.asarray(form.init).reshape(-1)[0]))
        yb = (self.y == 1).astype(np.float64)
        g = np.empty((n, T))
        h = np.empty((n, T))
        for t in range(T):  # stages in order: the raw scores each tree was fitted at
            p = 1.0 / (1.0 + np.exp(-raw))
            g[:, t], h[:, t] = p - yb, p * (1.0 - p)
            raw += scale * vals[gl[:, t]]
        G = np.bincount(gl.ravel(), weights=g.ravel(), minlength=self.n_leaves)
        H = np.bincount(gl.ravel(), weights=h.ravel(), minlength=self.n_leaves)
        # the stored value, in the form's units (raw += scale * value): GB multiplies by lr later
        step = lr / scale  # HistGradientBoosting folds lr into its values (scale 1)
        used = H > 0
        recomputed = -step * G[used] / (H[used] + lam)
        if not np.allclose(recomputed, vals[used], rtol=1e-4, atol=1e-8 * max(1.0, np.abs(vals).max())):
            raise InputError("the training data does not reproduce the boosting model's leaf values; pass "
                             "the data (rows, order and labels) the model was fitted on.")
        Gl, Hl = G[gl], H[gl]
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.where(Hl - h + lam > 0, -step * (Gl - g) / (Hl - h + lam), vals[gl])
        self._draw = _leaf_matrix(self.leaves, self.offsets, self.n_leaves, scale * (new - vals[gl]))

    # --- the Objective interface ------------------------------------------------------------------
    def check_test(self, X_test, y_test):
        X, y = _check_rows(X_test, y_test, int(self.form.n_features), "the test rows")
        if y is not None and y.size and (y.min() < 0 or y.max() >= self.form.n_classes):
            raise InputError(f"test labels must be class indices in 0..{self.form.n_classes - 1}.")
        return X, y

    def proba(self, X) -> np.ndarray:
        return self.form.proba_from_leaves(self.form.leaf_index(X))

    def losses(self, X, y) -> np.ndarray:
        p = self.proba(X)
        return -np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))

    def predicted_index(self, X) -> np.ndarray:
        return np.asarray(self.form.predict_index(X), dtype=np.intp)

    def loss_changes(self, X_test, y_test, estimate, rows=None, U=None) -> np.ndarray:
        """``(T, m)``: the test rows' log-loss change if each training row (``rows``, default
        all) were removed, the trees' structure kept (positive: the row helped)."""
        X_test = np.asarray(X_test, dtype=np.float64)
        y = np.asarray(y_test, dtype=np.intp)
        cols = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.intp)
        B = _leaf_matrix(np.asarray(self.form.leaf_index(X_test), dtype=np.intp), self.offsets,
                         self.n_leaves)
        p = self.form.proba_from_leaves(self.form.leaf_index(X_test))
        if self.name in _FOREST:
            py = p[np.arange(len(y)), y]
            dp = np.zeros((len(y), cols.size))
            for k in np.unique(y):  # a loop over the test rows' classes
                r = np.flatnonzero(y == k)
                dp[r] = (B[r] @ self._delta[k][cols].T).toarray()
            new = py[:, None] + dp
        else:
            raw = np.log(np.clip(p[:, 1], _EPS, 1.0)) - np.log(np.clip(p[:, 0], _EPS, 1.0))
            draw = (B @ self._draw[cols].T).toarray()
            p1 = 1.0 / (1.0 + np.exp(-(raw[:, None] + draw)))
            new = np.where(y[:, None] == 1, p1, 1.0 - p1)
            py = p[np.arange(len(y)), y]
        return np.log(np.clip(py, _EPS, 1.0))[:, None] - np.log(np.clip(new, _EPS, 1.0))

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        S = self.loss_changes(X_test, y_test, estimate)
        return S, lambda idx: np.take_along_axis(S, idx, axis=1)

    def solve(self, G):
        raise InputError("--features (feature gradients) needs a differentiable model; trees have none.")

    def test_gradients(self, X, y):
        raise InputError("--features (feature gradients) needs a differentiable model; trees have none.")

    def refit_without(self, rows, *, tol=1e-10, max_iter=None):
        """The estimator refitted (same parameters, same ``random_state``) without ``rows``."""
        from sklearn.base import clone
        from threadpoolctl import threadpool_limits

        keep = np.setdiff1d(np.arange(self.n_rows), np.asarray(rows, dtype=np.intp))
        est = clone(self.estimator)
        if "n_jobs" in est.get_params():
            est.set_params(n_jobs=1)
        # small refits: OpenMP start-up (HistGradientBoosting) costs more than it saves, and on a
        # busy machine its spinning threads cost far more (measured 20x)
        with threadpool_limits(limits=1, user_api="openmp"):
            return est.fit(self.X[keep], self.classes[self.y[keep]])

    def refit_losses(self, fitted, X, y) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            p = fitted.predict_proba(np.asarray(X, dtype=np.float64))
        col = np.searchsorted(fitted.classes_, self.classes[np.asarray(y, dtype=np.intp)])
        return -np.log(np.clip(p[np.arange(len(y)), col], _EPS, 1.0))

    def group_prediction(self, rows, X_test, y_test):
        raise InputError("--group is not available for tree ensembles yet.")


def build_tree_objective(form, X_train, y_train) -> TreeObjective:
    """The leaf-refit influence objective of a tree ensemble (module docstring)."""
    return TreeObjective(form, X_train, y_train)
