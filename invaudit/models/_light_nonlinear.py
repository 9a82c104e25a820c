"""Network and tree forms of a light-loaded model (issue 16): built without importing scikit-learn.

:func:`light_form` reads the fitted state that :mod:`invaudit.io._light` parsed from the file:

- an MLPClassifier, alone or after the affine steps the differentiable form folds: the form is
  :func:`invaudit.models.differentiable.from_estimator` run on that state itself (it compares
  classes by path and reads plain attributes, so it gives the same network, link, classes,
  names and preprocessing bit for bit as the real estimator: tests/io/test_light_load_nonlinear.py);
- a DecisionTreeClassifier / ExtraTreeClassifier, RandomForestClassifier / ExtraTreesClassifier:
  the boxes are built by :mod:`invaudit.models.trees`' own functions from each tree's node
  records (:class:`~invaudit.io._light.LightTree` has the real Tree's attributes), after the
  same checks of node links and widths that the full load makes before scikit-learn's compiled
  code may read them (a tree that fails them is declined, and the full load refuses it).

Anything else gives None, and the caller adapts the real estimator as always. The forms'
``estimator`` is the real scikit-learn object, unpickled (full restricted load and checks) the
first time something reads it. Their ``predict`` / ``predict_proba`` (what solvers verify with),
and the trees' ``leaf_index`` (scikit-learn's ``apply``), replay scikit-learn 1.9's own operations
on the same arrays while scikit-learn is not imported and the rows are finite float64 (:class:`_MlpPlan`,
:class:`_TreePlan`; equal bit for bit, including rows on, and one ulp around, every threshold);
anything else asks the real estimator. Pickled for a worker process that is not forked (loky,
Dask), such a form becomes the full form of the real estimator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._light_linear import LazyEstimator, light_describe
from .base import DifferentiableForm, TreeBoxes, TreesForm

__all__ = ["LightDifferentiableForm", "LightTreesForm", "light_form"]

_LAZY = object()
_MLP = ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier")
_PIPELINE = ("sklearn.pipeline", "Pipeline")
_SINGLE = {("sklearn.tree._classes", "DecisionTreeClassifier"), ("sklearn.tree._classes", "ExtraTreeClassifier")}
_FORESTS = {("sklearn.ensemble._forest", "RandomForestClassifier"),
            ("sklearn.ensemble._forest", "ExtraTreesClassifier")}
_LABEL_BINARIZER = ("sklearn.preprocessing._label", "LabelBinarizer")


class _Lazy(LazyEstimator):
    """A light network or trees form (the estimator unpickled when first read)."""

    def __reduce__(self):
        # to a worker that is not forked (loky, Dask): the full form of the real estimator, which
        # is unpickled here first (the light state and its lazy loader stay here)
        return (_full_form, (self.estimator,))

    @property
    def has_proba(self) -> bool:
        return True  # MLPClassifier and these trees and forests always have predict_proba

    def describe(self) -> dict:
        """As :meth:`ModelForm.describe`, with the estimator's name read from the light state."""
        return light_describe(self)

    # --- the estimator's own answers, mirrored where they can be exactly ------------------------

    def _plan_for(self, X):
        """The mirrored plan when ``X`` may be answered without scikit-learn, else None. Only while
        scikit-learn is not imported (its configuration is then the default one) and the real
        estimator is not loaded; only finite float64 rows of the right width."""
        if "sklearn" in sys.modules or self.__dict__.get("_estimator") is not None:
            return None
        if self.__dict__.get("_plan", _LAZY) is _LAZY:
            try:
                self.__dict__["_plan"] = self._make_plan()
            except Exception:  # anything unexpected in the state: the real estimator answers
                self.__dict__["_plan"] = None
        plan = self.__dict__["_plan"]
        if plan is None:
            return None
        X = np.asarray(X)
        if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != plan.n_features or X.shape[0] == 0 \
                or not np.isfinite(X).all():
            return None
        return plan

    def predict(self, X):
        plan = self._plan_for(X)
        if plan is None:
            return super().predict(X)
        return plan.predict(np.asarray(X))

    def predict_proba(self, X):
        plan = self._plan_for(X)
        if plan is None:
            return super().predict_proba(X)
        return plan.predict_proba(np.asarray(X))


def _full_form(estimator):
    from invaudit.models import adapt

    return adapt(estimator)


class LightDifferentiableForm(_Lazy, DifferentiableForm):
    """A :class:`DifferentiableForm` whose estimator is unpickled only when read."""

    def _make_plan(self):
        return _mlp_plan(self.light)

    def influence_support(self) -> str:
        """:func:`invaudit.influence.supports` of a network form, without importing the influence
        code (``info``): ``"network"``."""
        return "network"


class LightTreesForm(_Lazy, TreesForm):
    """A :class:`TreesForm` whose estimator is unpickled only when read."""

    def _make_plan(self):
        return self.__dict__["_tree_plan"]

    def _node_ids(self, X):
        """``apply``: the estimator's own routing, mirrored on finite rows (scikit-learn's float32
        cast and ``x <= threshold``), else the real estimator's."""
        from .trees import _quiet_apply

        if self.__dict__.get("_estimator") is None and "sklearn" not in sys.modules:
            plan = self.__dict__["_tree_plan"]
            X32 = plan.rows32(X)
            if X32 is not None:
                return plan.apply(X32)
        return _quiet_apply(self.estimator, X)

    def predict(self, X):
        plan = self._plan_for(X)
        if plan is not None:
            try:
                return plan.predict(np.asarray(X))
            except _Unmirrored:
                pass
        return TreesForm.predict(self, X)

    def predict_proba(self, X):
        plan = self._plan_for(X)
        if plan is not None:
            try:
                return plan.predict_proba(np.asarray(X))
            except _Unmirrored:
                pass
        return TreesForm.predict_proba(self, X)


def light_form(loaded):
    """The network or trees form of a light-loaded model (``LoadedModel.light``), or None (then
    adapt the real estimator, ``loaded.estimator``, as always)."""
    root = getattr(loaded, "light", None)
    if root is None:
        return None
    from invaudit.io._light import LightObject

    if not isinstance(root, LightObject):
        return None
    try:
        if root.pair in _SINGLE or root.pair in _FORESTS:
            return _trees_form(root, loaded)
        return _network_form(root, loaded)
    except Exception:  # a state no fitted estimator has: the full load says what is wrong with it
        return None


# --- networks -------------------------------------------------------------------------------------

def _final(root):
    steps = getattr(root, "steps", None) if root.pair == _PIPELINE else None
    return steps[-1][1] if steps else root


def _network_form(root, loaded) -> Optional[LightDifferentiableForm]:
    from invaudit.io._light import LightObject

    from .differentiable import from_estimator

    final = _final(root)
    if not isinstance(final, LightObject) or final.pair != _MLP:
        return None
    lb = getattr(final, "_label_binarizer", None)
    if not isinstance(lb, LightObject) or lb.pair != _LABEL_BINARIZER:
        return None
    coefs, intercepts = final.coefs_, final.intercepts_
    if not (isinstance(coefs, list) and isinstance(intercepts, list) and len(coefs) == len(intercepts) >= 1
            and all(isinstance(a, np.ndarray) and a.ndim == 2 for a in coefs)
            and all(isinstance(b, np.ndarray) and b.ndim == 1 for b in intercepts)
            and all(W.shape[1] == b.shape[0] for W, b in zip(coefs, intercepts))
            and all(a.shape[1] == b.shape[0] for a, b in zip(coefs[:-1], coefs[1:]))
            and coefs[0].shape[0] == int(final.n_features_in_)):
        return None  # shapes a fitted network cannot have: the full load and adapt say what they say
    form = from_estimator(root)
    if form is None:
        return None
    fields = {name: getattr(form, name) for name in (
        "logits", "log_proba", "log_proba_grad", "logit_grad", "params", "param_grad", "hvp", "link", "alpha",
        "classes", "n_features", "feature_names", "preprocessing")}
    out = LightDifferentiableForm(estimator=None, **fields)
    out.light = root
    out._loaded = loaded
    return out


@dataclass(frozen=True)
class _MlpPlan:
    """scikit-learn 1.9's ``Pipeline.predict`` / ``MLPClassifier.predict(_proba)`` on finite float64
    rows: each scaler copies the rows and updates them in place (:func:`_light_linear._scaler_ops`),
    then ``_forward_pass_fast``: ``a = a @ coefs_[i]; a += intercepts_[i]``, the hidden activation
    in place (relu ``np.maximum(a, 0, out=a)``, tanh ``np.tanh(a, out=a)``, logistic
    ``expit(a, out=a)``), the output one (softmax: ``tmp = a - a.max(axis=1)[:, None];
    np.exp(tmp, out=a); a /= a.sum(axis=1)[:, None]``); labels by the LabelBinarizer
    (``classes_[a.ravel() > 0.5]`` binary, ``classes_[argmax]`` multiclass)."""

    steps: tuple
    coefs: tuple
    intercepts: tuple
    activation: str
    out_activation: str
    binary: bool
    classes: np.ndarray
    n_features: int

    def _forward(self, X):
        a = X
        if self.steps:  # each scaler's copy (order kept), then its operations in place
            a = np.array(X, dtype=np.float64)
            for op, v in self.steps:
                if op == "sub":
                    a -= v
                elif op == "div":
                    a /= v
                elif op == "mul":
                    a *= v
                else:
                    a += v
        last = len(self.coefs) - 1
        for i, (W, b) in enumerate(zip(self.coefs, self.intercepts)):
            a = a @ W
            a += b
            if i != last:
                _inplace(self.activation, a)
        _inplace(self.out_activation, a)
        return a.ravel() if self.binary else a

    def predict(self, X):
        y = self._forward(X)
        if self.binary:
            return self.classes[np.asarray(y > 0.5, dtype=np.intp).reshape(-1)]
        return self.classes[np.clip(np.argmax(y, axis=1), 0, self.classes.shape[0] - 1)]

    def predict_proba(self, X):
        y = self._forward(X)
        return np.vstack([1 - y, y]).T if self.binary else y


def _inplace(name: str, a) -> None:
    if name == "relu":
        np.maximum(a, 0, out=a)
    elif name == "tanh":
        np.tanh(a, out=a)
    elif name == "logistic":
        from scipy.special import expit

        expit(a, out=a)
    elif name == "softmax":
        tmp = a - a.max(axis=1)[:, np.newaxis]
        np.exp(tmp, out=a)
        a /= a.sum(axis=1)[:, np.newaxis]
    elif name != "identity":
        raise ValueError(name)


def _mlp_plan(root) -> Optional[_MlpPlan]:
    from ._light_linear import scaled_final

    found = scaled_final(root)
    if found is None:
        return None
    ops, mlp = found
    if mlp.pair != _MLP:
        return None
    coefs, intercepts = tuple(mlp.coefs_), tuple(mlp.intercepts_)
    if not all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in coefs + intercepts):
        return None
    if mlp.activation not in ("identity", "logistic", "tanh", "relu") or int(mlp.n_layers_) != len(coefs) + 1:
        return None
    lb = mlp._label_binarizer
    if lb.pair != _LABEL_BINARIZER or lb.state.get("sparse_input_", False) is not False \
            or lb.pos_label != 1 or lb.neg_label != 0:
        return None
    classes = lb.classes_
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        return None
    if lb.y_type_ == "binary" and mlp.out_activation_ == "logistic" and int(mlp.n_outputs_) == 1 \
            and len(classes) == 2 and coefs[-1].shape[1] == 1:
        binary = True
    elif lb.y_type_ == "multiclass" and mlp.out_activation_ == "softmax" and len(classes) >= 3 \
            and coefs[-1].shape[1] == len(classes):
        binary = False
    else:
        return None
    d = coefs[0].shape[0]
    if not all(a.shape == (d,) for _, a in ops):
        return None
    return _MlpPlan(steps=tuple(ops), coefs=coefs, intercepts=intercepts, activation=mlp.activation,
                    out_activation=mlp.out_activation_, binary=binary, classes=classes, n_features=d)


# --- trees ----------------------------------------------------------------------------------------

def _tree_ok(tree, width: int) -> bool:
    """The full load's checks of a compiled tree (model_file._tree_problem), and a single output."""
    from invaudit.io._light import LightTree
    from invaudit.io.model_file import _tree_problem

    return isinstance(tree, LightTree) and int(tree.n_outputs) == 1 and _tree_problem(tree, width) is None


def _trees_form(root, loaded) -> Optional[LightTreesForm]:
    from invaudit.io._light import LightObject

    from .trees import _class_fractions, _make_form, _sk_tree_boxes, _Trees

    d = root.n_features_in_
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or int(root.n_outputs_) != 1:
        return None
    d = int(d)
    if root.pair in _SINGLE:
        members = [root]
        aggregate = "single"
    else:
        members = root.estimators_
        if not isinstance(members, list) or not members:
            return None
        aggregate = "mean-proba"
    classes = root.classes_
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) < 1:
        return None
    K = len(classes)
    trees = []
    for m in members:
        if not isinstance(m, LightObject) or m.pair not in _SINGLE:
            return None
        width = m.state.get("n_features_in_")
        if not isinstance(width, (int, np.integer)) or int(width) != d:
            return None
        tree = m.state.get("tree_")
        if not _tree_ok(tree, d) or tree.max_n_classes != K or int(m.n_classes_) != K:
            return None
        trees.append(tree)
    boxes, maps = [], []
    for tree in trees:
        lower, upper, n2l, leaf_nodes = _sk_tree_boxes(tree, d)
        boxes.append(TreeBoxes(lower=lower, upper=upper, value=_class_fractions(tree, leaf_nodes)))
        maps.append(n2l)
    # a forest with n_jobs > 1 adds its trees' probabilities in threads, in any order: its
    # predict_proba is not mirrored (the routing is)
    plan = _TreePlan.build(trees, classes, d, aggregate == "single",
                           ordered=getattr(root, "n_jobs", None) in (None, 1))
    holder = {}

    def node_ids(X):
        return holder["form"]._node_ids(X)

    full = _make_form(root, _Trees(boxes, maps, d, node_ids, aggregate), classes, d)
    fields = {f: getattr(full, f) for f in ("trees", "aggregate", "classes", "n_features", "leaf_index",
                                             "proba_from_leaves", "init", "scale", "link", "feature_names",
                                             "preprocessing")}
    out = LightTreesForm(estimator=None, **fields)
    out.light = root
    out._loaded = loaded
    out.__dict__["_tree_plan"] = plan
    holder["form"] = out
    return out


class _TreePlan:
    """The trees' node records stacked (leaves point to themselves), for scikit-learn's routing
    (``Tree.apply``: ``float32(x)[feature] <= threshold`` goes left, compared in double) and its
    ``predict_proba`` (each tree's ``value.take(apply(X), axis=0, mode="clip")`` cut to the
    classes; a forest adds them to zeros in tree order and divides by the number of trees) and
    ``predict`` (``classes_.take(argmax)``)."""

    def __init__(self):
        self.n_features = 0

    @classmethod
    def build(cls, trees, classes, d: int, single: bool, ordered: bool):
        self = cls()
        self.n_features = d
        self.classes = classes
        self.single = single
        self.ordered = ordered  # a forest that adds its trees in order (n_jobs None or 1)
        self.values = [t.value for t in trees]
        self.K = len(classes)
        sizes = np.array([t.node_count for t in trees])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        left = np.concatenate([np.asarray(t.children_left, dtype=np.intp) for t in trees])
        right = np.concatenate([np.asarray(t.children_right, dtype=np.intp) for t in trees])
        leaf = left == -1
        shift = np.repeat(self.offsets, sizes)
        idx = np.arange(left.size)
        self.left = np.where(leaf, idx, left + shift)
        self.right = np.where(leaf, idx, right + shift)
        self.feat = np.where(leaf, 0, np.concatenate([np.asarray(t.feature, dtype=np.intp) for t in trees]))
        self.thr = np.concatenate([np.asarray(t.threshold, dtype=np.float64) for t in trees])
        self.leaf = leaf
        # the deepest path: every inner node's child has a larger id (checked), so at most
        # max node count steps; the walk stops as soon as every (row, tree) sits on a leaf
        self.steps = int(sizes.max())
        return self

    def rows32(self, X):
        """The float32 rows scikit-learn's check_array makes of ``X``, or None where it would
        refuse them (or allow NaN): then the real estimator answers."""
        X = np.asarray(X)
        if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != self.n_features or not np.isfinite(X).all():
            return None
        with np.errstate(over="ignore"):
            X32 = X.astype(np.float32)
        return X32 if np.isfinite(X32).all() else None

    def apply(self, X32) -> np.ndarray:
        n, T = X32.shape[0], len(self.offsets)
        node = np.tile(self.offsets, n)  # flat (n * T,): entry i is row i // T, tree i % T
        todo = np.arange(n * T)
        flat = X32.ravel()  # a copy if X32 is not C-contiguous; the values are the same
        d = X32.shape[1]
        for _ in range(self.steps):
            at = node[todo]
            inner = ~self.leaf[at]
            todo, at = todo[inner], at[inner]
            if todo.size == 0:
                break
            x = flat[(todo // T) * d + self.feat[at]]
            node[todo] = np.where(x <= self.thr[at], self.left[at], self.right[at])
        out = node.reshape(n, T) - self.offsets
        return out[:, 0] if self.single else out

    def _proba(self, X):
        ids = self.apply(self.rows32(X))
        n = ids.shape[0]
        if self.single:
            v = self.values[0]
            return v.take(ids, axis=0, mode="clip").reshape(n, v.shape[2])[:, :self.K]
        out = np.zeros((n, self.K), dtype=np.float64)
        for t, v in enumerate(self.values):
            out += v.take(ids[:, t], axis=0, mode="clip").reshape(n, v.shape[2])[:, :self.K]
        out /= len(self.values)
        return out

    def predict_proba(self, X):
        if not self.ordered or self.rows32(X) is None:
            raise _Unmirrored
        return self._proba(X)

    def predict(self, X):
        return self.classes.take(np.argmax(self.predict_proba(X), axis=1), axis=0)


class _Unmirrored(Exception):
    """The mirror does not model this call: the real estimator answers."""
