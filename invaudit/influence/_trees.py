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

A single tree (DecisionTreeClassifier, ExtraTreeClassifier)
    The forest case with one tree and every count 1: removing row ``i`` changes only its own
    leaf, to ``(S_l - e_{y_i}) / (N_l - 1)``. With the splits fixed this is the exact
    leave-one-out (a refit may choose other splits, which is what ``--verify-loo`` measures).

Gradient boosting (GradientBoosting, HistGradientBoosting; log loss, any number of classes)
    A leaf's value is a Newton step ``-lr * G_l / (H_l + lambda)`` over the gradients ``g_j =
    p_j - y_j`` and hessians ``h_j = p_j (1 - p_j)`` of the rows reaching it, at the raw scores
    of the stage that fitted the tree. Without row ``i`` each of its leaves becomes
    ``-lr * (G_l - g_i) / (H_l - h_i + lambda)``: Sharchilev et al.'s FastLeafInfluence with the
    other rows' gradients held fixed (the same paper's ``LeafRefit`` without the propagation to
    later trees; BoostIn, Brophy et al. 2023, makes the same first-order choice). With ``K > 2``
    classes each stage fits one tree per class ``k`` on ``g = p_k - [y = k]``, ``h = p_k (1 -
    p_k)`` of the softmax at the stage's start (GradientBoosting also multiplies the step by
    ``(K - 1) / K``, as scikit-learn does); the test row's K raw scores move by the changed
    leaves of each class's trees and its log loss is the log-softmax at the moved scores. The
    initial score is held fixed.

LightGBM and XGBoost boosters (``binary`` / ``multiclass``, ``binary:logistic`` /
``multi:softprob``; their trees read from their own dumps)
    The same Newton leaves with each library's own terms: XGBoost ``lambda`` and ``eta``, softmax
    hessians ``2 p (1 - p)``; LightGBM ``lambda_l2`` and ``learning_rate``, multiclass hessians
    ``K / (K - 1) p (1 - p)``, and its first stage's leaves hold the initial score (log-odds or
    log class frequencies of TRAIN's labels). Settings that change the leaves otherwise (L1,
    ``max_delta_step``, row subsampling, ``scale_pos_weight``, dart/goss/rf, path smoothing) and
    leaves read as several boxes (categorical or zero-as-missing splits) are refused
    (:func:`tree_refusal`). LightGBM rebuilds its histogram bins at every fit, so its refits
    move thresholds and carry noise of the size of the effect (see the tests' figures).

Both are checked when the objective is built: the leaf values recomputed from TRAIN must equal
the model's own (to 1e-6 relative), which also catches a TRAIN that is not the data the model was
fitted on. ``--verify-loo`` refits the estimator (same parameters and ``random_state``) without
each row and reports the correlation of predicted and real loss changes (the bootstrap draws of a
forest change with the number of rows, so its real changes carry refit noise: see the tests).
"""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError, UnsupportedModelError

from ._objective import Objective, _training_rows, light_tree_state

__all__ = ["TreeObjective", "build_tree_objective", "tree_method", "tree_refusal"]

_SINGLE = ("DecisionTreeClassifier", "ExtraTreeClassifier")
_FOREST = ("RandomForestClassifier", "ExtraTreesClassifier") + _SINGLE
_BOOST = ("GradientBoostingClassifier", "HistGradientBoostingClassifier")
_LIBRARY = ("LGBMClassifier", "XGBClassifier")
_EPS = 1e-15  # probabilities are clipped here before the log (an emptied class)


def _final(est):
    """The tree estimator itself (the last step of a Pipeline of scalers)."""
    steps = getattr(est, "steps", None)
    return steps[-1][1] if steps else est


def _read_final(form):
    """``(final estimator, its class name)``: for a light-loaded tree or forest not unpickled yet,
    its saved state (:func:`~invaudit.influence._objective.light_tree_state`: the same plain
    attributes, read without scikit-learn, so ``info`` says the same as after the full load)."""
    state = light_tree_state(form)
    if state is not None:
        return state, state.name
    est = _final(getattr(form, "estimator", None))
    return est, type(est).__name__


def tree_refusal(form) -> str | None:
    """Why :func:`build_tree_objective` does not cover ``form`` (a sentence without its full stop),
    or None when it does. The one place ``info``, ``influence`` and the audit decide it."""
    if getattr(form, "kind", None) != "trees":
        return "not a tree model"
    est, name = _read_final(form)
    if name in _LIBRARY:
        settings = _library_settings(form, est)
        return settings if isinstance(settings, str) else None
    if name not in _FOREST + _BOOST:
        return f"{name} is not a tree model influence covers"
    if getattr(est, "class_weight", None) is not None:
        return f"influence for a {name} with class_weight is not covered yet"
    if name == "GradientBoostingClassifier":
        if getattr(est, "subsample", 1.0) < 1.0:
            return "influence for GradientBoosting with subsample < 1 is not covered yet (each tree saw a subsample)"
        if getattr(est, "n_iter_no_change", None) is not None:
            return ("influence for GradientBoosting fitted with early stopping (n_iter_no_change) is not covered "
                    "(its trees saw part of the rows)")
    if name == "HistGradientBoostingClassifier" and getattr(est, "do_early_stopping_", False) and \
            getattr(est, "validation_fraction", None):
        return ("influence for HistGradientBoosting fitted with early stopping on a validation split is not "
                "covered (its trees saw part of the rows)")
    return None


def _lgb_params(est) -> dict:
    """LightGBM's effective training parameters, from the model text's ``parameters:`` block."""
    text = est.booster_.model_to_string()
    block = text[text.find("\nparameters:"):text.find("\nend of parameters")]
    out = {}
    for line in block.splitlines():
        if line.startswith("[") and ": " in line:
            key, _, value = line[1:-1].partition(": ")
            out[key] = value
    return out


def _library_settings(form, est):
    """``(lam, lr, hessian factor, first trees hold the initial score)`` of a LightGBM / XGBoost
    booster whose leaves are Newton steps ``-lr * G / (H + lam)`` on the log loss, or a sentence
    saying why its leaves are not (a setting changes them, or a leaf was read as several boxes)."""
    import json

    name = type(est).__name__
    multi = form.n_classes > 2
    n_boxes = sum(int(t.value.shape[0]) for t in form.trees)
    if name == "LGBMClassifier":
        p = _lgb_params(est)
        num = lambda k, d="0": float(p.get(k, d))  # noqa: E731 - a local reader
        changed = [k for k, ok in (
            ("boosting", p.get("boosting") == "gbdt"), ("lambda_l1", num("lambda_l1") == 0),
            ("max_delta_step", num("max_delta_step") == 0), ("path_smooth", num("path_smooth") == 0),
            ("bagging", num("bagging_freq") == 0 or num("bagging_fraction", "1") == 1),
            ("data_sample_strategy", p.get("data_sample_strategy", "bagging") == "bagging"),
            ("sigmoid", num("sigmoid", "1") == 1), ("scale_pos_weight", num("scale_pos_weight", "1") == 1),
            ("is_unbalance", p.get("is_unbalance", "0") in ("0", "false")),
            ("boost_from_average", p.get("boost_from_average", "1") in ("1", "true")),
            ("objective", p.get("objective", "").split()[0] in ("binary", "multiclass", "softmax"))) if not ok]
        if changed:
            return f"leaf refits for this LGBMClassifier are not covered (its {', '.join(changed)} setting)"
        leaves = sum(int(t["num_leaves"]) for t in est.booster_.dump_model()["tree_info"][:len(form.trees)])
        settings = (num("lambda_l2"), num("learning_rate"), form.n_classes / (form.n_classes - 1.0) if multi else 1.0,
                    True)
    else:
        booster = est.get_booster()
        config = json.loads(booster.save_config())["learner"]
        gb = config["gradient_booster"]
        if gb.get("name") != "gbtree":
            return f"leaf refits for an XGBClassifier with booster {gb.get('name')!r} are not covered"
        tp = gb.get("tree_train_param", {})
        spw = float(config.get("objective", {}).get("reg_loss_param", {}).get("scale_pos_weight", "1"))
        changed = [k for k in ("alpha", "max_delta_step") if float(tp.get(k, "0")) != 0]
        changed += [k for k, v in (("subsample", float(tp.get("subsample", "1"))), ("scale_pos_weight", spw)) if v != 1]
        if changed:
            return f"leaf refits for this XGBClassifier are not covered (its {', '.join(changed)} setting)"
        trees = json.loads(bytes(booster.save_raw(raw_format="json")))["learner"]["gradient_booster"]["model"]["trees"]
        leaves = sum(sum(1 for c in t["left_children"] if c == -1) for t in trees[:len(form.trees)])
        settings = (float(tp.get("lambda", "1")), float(tp.get("eta", "0.3")), 2.0 if multi else 1.0, False)
    if leaves != n_boxes:
        return (f"leaf refits for this {name} are not covered (some of its leaves are read as several boxes: "
                "categorical or zero-as-missing splits)")
    return settings


def tree_method(form) -> str | None:
    """The estimate :func:`build_tree_objective` gives for ``form``, or None (see
    :func:`tree_refusal`)."""
    if getattr(form, "kind", None) != "trees" or tree_refusal(form) is not None:
        return None
    name = _read_final(form)[1]
    if name in _SINGLE:
        return "leaf-refit (single tree: exact leave-one-out with its splits fixed)"
    if name in _FOREST:
        return "leaf-refit (forest, fixed tree structure)"
    if name in _LIBRARY:
        return f"fast-leaf-influence ({name}, {form.n_classes} classes, fixed tree structure)"
    return ("fast-leaf-influence (boosting, fixed tree structure)" if form.n_classes == 2 else
            f"fast-leaf-influence (boosting, {form.n_classes} classes, softmax, fixed tree structure)")


def _leaf_matrix(leaves: np.ndarray, offsets: np.ndarray, n_leaves: int, values=None):
    """``(m, sum L)`` sparse: row ``r`` has ``values[r, t]`` (default 1) at its leaf of tree t."""
    m, T = leaves.shape
    cols = (leaves + offsets[None, :]).ravel()
    rows = np.repeat(np.arange(m), T)
    data = np.ones(m * T) if values is None else np.asarray(values, dtype=np.float64).ravel()
    from scipy import sparse  # here, not at import: ``invaudit.influence`` loads without scipy

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
        self.estimator = est  # refitted whole (a Pipeline of scalers with it)
        self.final = _final(est)
        self.name = type(self.final).__name__
        self.method = tree_method(form)
        if self.method is None:
            raise UnsupportedModelError(
                f"influence needs LogisticRegression, MLPClassifier, or a tree model (DecisionTree, "
                f"RandomForest, ExtraTrees, GradientBoosting or HistGradientBoosting): {tree_refusal(form)}.")
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
        est, n, K, T = self.final, self.n_rows, int(self.form.n_classes), self.T
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

    # --- gradient boosting ---------------------------------------------------------------------
    def _boosting_terms(self):
        form, est, n, T = self.form, self.final, self.n_rows, self.T
        M = 1 if form.n_classes == 2 else int(form.n_classes)  # outputs; tree t adds to output t % M
        hfac, first_bias = 1.0, np.zeros(M)
        if self.name == "GradientBoostingClassifier":  # (tree_refusal has ruled out subsampling)
            # scikit-learn's multinomial leaf step carries a factor (K - 1) / K
            lam, lr = 0.0, float(est.learning_rate) * ((M - 1) / M if M > 1 else 1.0)
        elif self.name in _LIBRARY:
            # LightGBM: multiclass hessians carry K / (K - 1), the first stage's leaves hold the initial
            # score (log-odds / log class frequencies of the labels); XGBoost: softmax hessians 2 p (1 - p)
            lam, lr, hfac, holds_init = _library_settings(form, est)
            if holds_init:
                freq = np.bincount(self.y, minlength=form.n_classes) / n
                with np.errstate(divide="ignore"):
                    first_bias = (np.log(freq[1:2] / freq[:1]) if M == 1 else
                                  np.log(np.maximum(freq, np.finfo(float).eps)))
        else:
            lam, lr = float(est.l2_regularization), float(est.learning_rate)
        scale = float(form.scale)
        out = np.arange(T) % M
        vals = np.concatenate([np.asarray(t.value, dtype=np.float64)[:, k] for t, k in zip(form.trees, out)])
        self._vals, self._out, self._M = vals, out, M
        gl = self.leaves + self.offsets[None, :]
        raw = np.tile(np.asarray(form.init, dtype=np.float64).reshape(-1)[:M] + first_bias, (n, 1))
        Y = (self.y[:, None] == (np.arange(M) if M > 1 else np.array([1]))[None, :]).astype(np.float64)
        g = np.empty((n, T))
        h = np.empty((n, T))
        for s0 in range(0, T, M):  # stages in order: the raw scores each stage's trees were fitted at
            if M == 1:
                P = 1.0 / (1.0 + np.exp(-raw))
            else:
                Z = raw - raw.max(axis=1, keepdims=True)
                P = np.exp(Z)
                P /= P.sum(axis=1, keepdims=True)
            for t in range(s0, min(s0 + M, T)):  # one tree per output
                k = out[t]
                g[:, t], h[:, t] = P[:, k] - Y[:, k], np.maximum(hfac * P[:, k] * (1.0 - P[:, k]), 1e-16)
            for t in range(s0, min(s0 + M, T)):
                raw[:, out[t]] += scale * vals[gl[:, t]] - (first_bias[out[t]] if s0 == 0 else 0.0)
        G = np.bincount(gl.ravel(), weights=g.ravel(), minlength=self.n_leaves)
        H = np.bincount(gl.ravel(), weights=h.ravel(), minlength=self.n_leaves)
        # the stored value, in the form's units (raw += scale * value): GB multiplies by lr later
        step = lr / scale  # HistGradientBoosting folds lr into its values (scale 1)
        used = H > 0
        # LightGBM's first stage: the initial score is part of each leaf value
        sizes = np.diff(np.append(self.offsets, self.n_leaves))
        bias = np.repeat(np.where(np.arange(T) < M, first_bias[out] / scale, 0.0), sizes)
        recomputed = -step * G[used] / (H[used] + lam) + bias[used]
        if not np.allclose(recomputed, vals[used], rtol=1e-4, atol=1e-8 * max(1.0, np.abs(vals).max())):
            raise InputError("the training data does not reproduce the boosting model's leaf values; pass "
                             "the data (rows, order and labels) the model was fitted on.")
        Gl, Hl = G[gl], H[gl]
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.where(Hl - h + lam > 0, -step * (Gl - g) / (Hl - h + lam) + bias[gl], vals[gl])
        d = scale * (new - vals[gl])  # (n, T): the change of each of row i's leaves' raw contribution
        # per output: (n, sum L) sparse, the changes of row i's leaves in that output's trees
        self._draw = [_leaf_matrix(self.leaves[:, out == k], self.offsets[out == k], self.n_leaves,
                                   d[:, out == k]) for k in range(M)]

    def _raw(self, leaves) -> np.ndarray:
        """``(m, M)`` raw scores from leaf indices (``init + scale * sum`` of each output's trees)."""
        gl = leaves + self.offsets[None, :]
        per = self._vals[gl]  # (m, T)
        raw = np.tile(np.asarray(self.form.init, dtype=np.float64).reshape(-1)[:self._M], (len(leaves), 1))
        for k in range(self._M):  # a loop over outputs
            raw[:, k] += self.form.scale * per[:, self._out == k].sum(axis=1)
        return raw

    # --- the Objective interface ------------------------------------------------------------------
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
        leaves = np.asarray(self.form.leaf_index(X_test), dtype=np.intp)
        B = _leaf_matrix(leaves, self.offsets, self.n_leaves)
        m = len(y)
        if self.name in _FOREST:
            p = self.form.proba_from_leaves(leaves)
            py = p[np.arange(m), y]
            dp = np.zeros((m, cols.size))
            for k in np.unique(y):  # a loop over the test rows' classes
                r = np.flatnonzero(y == k)
                dp[r] = (B[r] @ self._delta[k][cols].T).toarray()
            return np.log(np.clip(py, _EPS, 1.0))[:, None] - np.log(np.clip(py[:, None] + dp, _EPS, 1.0))
        raw = self._raw(leaves)  # (m, M)
        if self._M == 1:
            draw = (B @ self._draw[0][cols].T).toarray()
            # log loss of the sigmoid, stably: log(1 + exp(-s)) with s the signed raw score
            sign = np.where(y == 1, 1.0, -1.0)[:, None]
            return np.logaddexp(0.0, -sign * (raw + draw)) - np.logaddexp(0.0, -sign * raw)
        # softmax: the moved scores class by class, their log-sum-exp accumulated (three (m, cols) arrays)
        lse = at_y = None
        for k in range(self._M):  # a loop over classes
            moved = raw[:, k][:, None] + (B @ self._draw[k][cols].T).toarray()
            lse = moved.copy() if lse is None else np.logaddexp(lse, moved, out=lse)
            at_y = np.where((y == k)[:, None], moved, 0.0 if at_y is None else at_y)
        old = np.logaddexp.reduce(raw, axis=1) - raw[np.arange(m), y]
        return (lse - at_y) - old[:, None]

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
        # XGBoost takes class indices only (its classes_ are 0..K-1)
        labels = self.y[keep] if self.name == "XGBClassifier" else self.classes[self.y[keep]]
        # small refits: OpenMP start-up (HistGradientBoosting) costs more than it saves, and on a
        # busy machine its spinning threads cost far more (measured 20x)
        with threadpool_limits(limits=1, user_api="openmp"):
            return est.fit(self.X[keep], labels)

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
