"""Model forms: what a fitted estimator is, mathematically.

Every solver works on a *form*, never on a raw estimator. ``invaudit.models.adapt(estimator)``
returns the most exact form it can (DESIGN.md, "Model forms"). All forms share:

- ``kind``: one of ``FORM_KINDS``;
- ``estimator``: the fitted object it came from (kept so answers can be verified with the
  estimator's own ``predict`` / ``predict_proba``);
- ``classes``: the estimator's ``classes_`` (the labels users see);
- ``n_features`` and ``feature_names`` (``None`` when the estimator has no names);
- ``preprocessing``: human-readable names of the steps folded into the form;
- ``predict(X)`` / ``predict_proba(X)`` / ``has_proba``: the estimator's *own* answers.

Numerics are float64 throughout. Class *indices* (0..K-1, positions in ``classes``) are used
inside solvers; labels only at the edges.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from invaudit.errors import InputError

FORM_KINDS = ("linear", "invertible-linear", "differentiable", "kernel", "quadratic", "neighbors", "trees",
              "black-box")
LINKS = ("sigmoid", "softmax", "ovr", "none")


class ModelForm:
    """Behaviour shared by all forms. Subclasses are dataclasses with the fields below."""

    kind: str = "black-box"

    # --- the estimator's own answers (used to verify every result) ---------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        with _no_feature_name_warning():
            return self.estimator.predict(np.asarray(X, dtype=np.float64))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        with _no_feature_name_warning():
            return self.estimator.predict_proba(np.asarray(X, dtype=np.float64))

    @property
    def has_proba(self) -> bool:
        return hasattr(self.estimator, "predict_proba")

    def predict_index(self, X: np.ndarray) -> np.ndarray:
        """Predicted class *indices* according to the estimator's own ``predict``."""
        pred = self.predict(X)
        return class_indices(self.classes, pred)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        """A JSON-ready description for ``info`` and the report envelope."""
        return {
            "estimator": estimator_name(self.estimator),
            "form": self.kind,
            "classes": [to_jsonable(c) for c in self.classes],
            "n_features": int(self.n_features),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "preprocessing": list(self.preprocessing),
        }


@dataclass(eq=False)
class LinearForm(ModelForm):
    """An affine score map in *input* units, followed by a link.

    ``scores(X) = X @ W.T + b`` with ``W`` of shape ``(M, D)``; ``M == 1`` for a binary model
    (a positive score means ``classes[1]``), ``M == K`` otherwise. Affine preprocessing
    (scalers, full-rank PCA) is already folded into ``W`` and ``b``.

    ``link``:
      - ``"sigmoid"``: binary, p(classes[1]) = sigmoid(score);
      - ``"softmax"``: multiclass, p = softmax(scores);
      - ``"ovr"``: one-vs-rest, p_k = sigmoid(s_k) / sum_j sigmoid(s_j);
      - ``"none"``: no probabilities (LinearSVC, RidgeClassifier, hinge SGD); the predicted class
        is the argmax of the scores (binary: the sign).

    ``W_full`` / ``b_full`` give a uniform K-row view for solvers: ``argmax(X @ W_full.T +
    b_full)`` is the predicted class index for every link, and for ``sigmoid``
    ``softmax(X @ W_full.T + b_full) == predict_proba`` (rows ``[0, w]``, ``[0, b]``).

    ``pre_A``, ``pre_c``: the folded affine preprocessing, ``Z = X @ pre_A.T + pre_c`` is what the
    final estimator sees (identity when there is none). ``final_estimator`` is that estimator
    (e.g. the LogisticRegression at the end of a Pipeline); influence uses it with ``Z``.
    """

    estimator: Any
    W: np.ndarray
    b: np.ndarray
    link: str
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    final_estimator: Any = None
    pre_A: Optional[np.ndarray] = None
    pre_c: Optional[np.ndarray] = None
    kind: str = "linear"

    @property
    def is_binary(self) -> bool:
        return self.W.shape[0] == 1

    @property
    def W_full(self) -> np.ndarray:
        if self.is_binary:
            return np.vstack([np.zeros_like(self.W[0]), self.W[0]])
        return self.W

    @property
    def b_full(self) -> np.ndarray:
        if self.is_binary:
            return np.array([0.0, self.b[0]])
        return self.b

    def scores(self, X: np.ndarray) -> np.ndarray:
        """``(n, M)`` affine scores (the estimator's decision_function, as 2-D)."""
        return np.asarray(X, dtype=np.float64) @ self.W.T + self.b

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Same shape as scikit-learn's: ``(n,)`` for binary, ``(n, K)`` otherwise."""
        s = self.scores(X)
        return s[:, 0] if self.is_binary else s

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities through the link, computed from W and b (not via the estimator)."""
        s = self.scores(X)
        if self.link == "sigmoid":
            p1 = _sigmoid(s[:, 0])
            return np.column_stack([1.0 - p1, p1])
        if self.link == "softmax":
            return _softmax(s)
        if self.link == "ovr":
            # p_k = sigmoid(s_k) / sum_j sigmoid(s_j) = softmax(log sigmoid(s)); exact where every
            # sigmoid underflows to 0 (scores below about -745), where the naive ratio is 0/0.
            return _softmax(-np.logaddexp(0.0, -s))
        raise ValueError("this linear model has no probability link")

    def preprocess(self, X: np.ndarray) -> np.ndarray:
        """What the final estimator sees: ``X @ pre_A.T + pre_c`` (or ``X`` itself)."""
        return apply_folded(X, self.pre_A, self.pre_c)


@dataclass(eq=False)
class InvertibleLinearForm(ModelForm):
    """An invertible (possibly non-linear) map ``phi`` into feature space, then a linear model.

    ``forward(X) -> Z`` and ``inverse(Z) -> X`` are exact inverses on the map's domain;
    ``jacobian(X)`` is ``(n, D, D)`` with ``J[i] = d forward(X)[i] / d X[i]``;
    ``vjp(X, G)`` returns ``G[i] @ J[i]`` for each row (``(n, D)``) without forming ``J``.
    ``linear`` is a :class:`LinearForm` *in feature space* (``W``, ``b`` act on ``Z``).
    ``domain_lower`` / ``domain_upper`` (``(D,)``, may be +-inf) bound where ``inverse`` is
    defined and meaningful (e.g. QuantileTransformer's range of the training data).
    """

    estimator: Any
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    jacobian: Callable[[np.ndarray], np.ndarray]
    vjp: Callable[[np.ndarray, np.ndarray], np.ndarray]
    linear: LinearForm
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    domain_lower: Optional[np.ndarray] = None
    domain_upper: Optional[np.ndarray] = None
    kind: str = "invertible-linear"


@dataclass(eq=False)
class DifferentiableForm(ModelForm):
    """A network (MLPClassifier, possibly after affine preprocessing) with exact backprop.

    ``logits(X)``: ``(n, M)`` pre-link outputs (``M == 1`` for binary with a logistic output,
    ``M == K`` with softmax); ``link`` is ``"sigmoid"`` or ``"softmax"``.
    ``log_proba(X)``: ``(n, K)``.
    ``log_proba_grad(X, k)``: ``(n, D)``, gradient of ``log p(class index k | x)`` w.r.t. ``x``
    (``k`` an int or an ``(n,)`` array of indices).
    ``logit_grad(X, k)``: ``(n, D)``, gradient of ``W_full``-style class score ``k`` (for
    binary, score 0 is the constant 0 and score 1 is the logit).
    ``params()``: flat float64 vector of all network parameters (coefs then intercepts, layer by
    layer); ``param_grad(X, y_idx)``: ``(n, P)`` per-row gradient of the log loss (no penalty)
    w.r.t. ``params()``; ``hvp(X, y_idx, v)``: Hessian-vector product of the *summed* log loss
    w.r.t. params. ``alpha``: the estimator's L2 penalty (objective as scikit-learn defines it).
    """

    estimator: Any
    logits: Callable[[np.ndarray], np.ndarray]
    log_proba: Callable[[np.ndarray], np.ndarray]
    log_proba_grad: Callable[[np.ndarray, Any], np.ndarray]
    logit_grad: Callable[[np.ndarray, Any], np.ndarray]
    params: Callable[[], np.ndarray]
    param_grad: Callable[[np.ndarray, np.ndarray], np.ndarray]
    hvp: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    link: str
    alpha: float
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    kind: str = "differentiable"


@dataclass(eq=False)
class TreeBoxes:
    """One tree as leaf boxes. A point ``x`` is in leaf ``l`` iff for every feature ``f``:
    ``lower[l, f] < x[f] <= upper[l, f]`` (open below, closed above; +-inf where a feature is
    unconstrained). The bounds are the exact float64 cut-offs, which are not always the stored
    thresholds: scikit-learn's trees compare in float32 (see ``invaudit.models.trees``).
    ``value[l]``: ``(V,)`` what the leaf contributes (class fractions for forests, a raw score
    per output for boosting; see ``TreesForm.aggregate``)."""

    lower: np.ndarray  # (L, D)
    upper: np.ndarray  # (L, D)
    value: np.ndarray  # (L, V)


@dataclass(eq=False)
class TreesForm(ModelForm):
    """Tree models as unions of boxes.

    ``aggregate``:
      - ``"single"``: one tree; ``value`` rows are class probabilities;
      - ``"mean-proba"``: random forests / extra trees, probabilities are the mean over trees;
      - ``"boosting"``: raw score = ``init + scale * sum of leaf values`` (``init``: ``(M,)``),
        then ``link`` (``"sigmoid"`` for binary, ``M == 1``; ``"softmax"`` otherwise).
    ``leaf_index(X)``: ``(n, T)`` index of the leaf (into each tree's boxes) each row falls in.
    ``proba_from_leaves(leaf_idx)``: probabilities from the boxes alone (tests check it equals
    the estimator's ``predict_proba``).
    """

    estimator: Any
    trees: list
    aggregate: str
    classes: np.ndarray
    n_features: int
    leaf_index: Callable[[np.ndarray], np.ndarray]
    proba_from_leaves: Callable[[np.ndarray], np.ndarray]
    init: Optional[np.ndarray] = None
    scale: float = 1.0
    link: str = "none"
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    kind: str = "trees"


@dataclass(eq=False)
class BlackBoxForm(ModelForm):
    """Queries only. ``predict_proba`` may be missing; then ``decision_function`` is used to rank
    classes."""

    estimator: Any
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    kind: str = "black-box"


# --- helpers shared by forms and solvers ----------------------------------------------------

def as_rows(X, d: int) -> np.ndarray:
    """``X`` as a float64 ``(n, d)`` array (one row may come as a vector); any other shape is a
    one-sentence :class:`~invaudit.errors.InputError`."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != d:
        raise InputError(f"expected rows of {d} features, got an array of shape {X.shape}.")
    return X


def apply_folded(X, A: Optional[np.ndarray], c: Optional[np.ndarray]) -> np.ndarray:
    """Rows through a form's folded affine preprocessing: ``X @ A.T + c`` (``X`` itself when
    ``A`` is None), in float64."""
    X = np.asarray(X, dtype=np.float64)
    return X if A is None else X @ A.T + c


@contextlib.contextmanager
def _no_feature_name_warning():
    """Forms feed arrays with columns already matched by name (invaudit.io), so scikit-learn's
    warning that an array has no feature names is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        yield


def _sigmoid(s: np.ndarray) -> np.ndarray:
    out = np.empty_like(s, dtype=np.float64)
    pos = s >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-s[pos]))
    e = np.exp(s[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softmax(s: np.ndarray) -> np.ndarray:
    z = s - s.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


sigmoid = _sigmoid
softmax = _softmax


def class_indices(classes: np.ndarray, labels) -> np.ndarray:
    """Positions of ``labels`` in ``classes`` (vectorised); ``KeyError`` names an unknown label."""
    classes = np.asarray(classes)
    labels = np.asarray(labels)
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    try:
        pos = np.searchsorted(sorted_classes, labels)
    except TypeError:  # labels of another kind than the classes (e.g. strings vs ints)
        raise KeyError(labels.flat[0] if labels.size else None) from None
    pos = np.clip(pos, 0, len(classes) - 1)
    ok = sorted_classes[pos] == labels
    if not np.all(ok):
        raise KeyError(to_jsonable(labels[~ok][0]))
    return order[pos].astype(np.intp)


def to_jsonable(v):
    """A numpy scalar (or plain value) as a JSON-ready Python value."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def estimator_name(est) -> str:
    """``Pipeline(StandardScaler, LogisticRegression)`` style name."""
    steps = getattr(est, "steps", None)
    if steps is not None:
        return f"{type(est).__name__}({', '.join(estimator_name(s) for _, s in steps)})"
    return type(est).__name__
