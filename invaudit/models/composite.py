"""Composite classifiers read through their members' forms (issue 15).

scikit-learn's meta-estimators combine fitted members; where every member has a form invaudit
reads and the combination is one the solvers can use, the composite gets that form:

=======================================  ==================  ==========================================
estimator                                form                why it is that form
=======================================  ==================  ==========================================
CalibratedClassifierCV, one calibrator   linear (exact)      Platt's sigmoid ``p = expit(-(a s + b))``
(``ensemble=False`` or a frozen model),                      of a linear score ``s = w x + c`` is the
``method="sigmoid"``, linear estimator                       sigmoid link of the affine score
                                                             ``-a s - b`` (binary); with K classes the
                                                             per-class sigmoids normalised by their sum
                                                             are the ``ovr`` link of ``-a_k s_k - b_k``;
``method="temperature"``, binary                             ``softmax(beta (-s, s))`` is the sigmoid
                                                             link of ``2 beta s``
StackingClassifier whose meta-features   linear (exact)      the final linear model of linear scores
are all linear ``decision_function``                         (and ``passthrough`` columns) is linear
columns, linear final estimator
AdaBoostClassifier (SAMME) of trees      trees, boosting     ``decision_function`` is a weighted sum of
                                                             the trees' class votes, i.e. a sum of leaf
                                                             vectors; ``predict_proba`` its softmax
BaggingClassifier of trees / forests     trees, mean-proba   the mean of the members' ``predict_proba``
                                                             on their feature subsets (split features
                                                             mapped back to the input columns)
VotingClassifier(voting="soft") of       trees, mean-proba   the weighted mean of the members'
trees / forests                                              ``predict_proba``
VotingClassifier(voting="hard") of       trees, mean-proba   the weighted count of the trees' votes
decision trees                                               (leaf values: one-hot of the leaf's class;
                                                             no ``predict_proba``)
Voting (soft), Bagging, Stacking,        differentiable      class probabilities composed from the
CalibratedClassifierCV (sigmoid,                             members' exact forms, exact input
temperature) over members with smooth                        gradients by the chain rule; solvers give
forms (linear models, MLPs, binary SVC                       verified answers, never ``exact``, and
decision functions, nested composites)                       margins carry no certified lower bound
anything else (isotonic calibration,     black-box           with the reason, in ``describe()``
a ``stack_method="predict"`` member, a                       (``composite``) and so in ``info``; hard
member invaudit cannot read, hard voting                     voting over other members has only
over members that are not all trees)                         ``predict``: its scores are the one-hot
                                                             rows of ``predict`` (``blackbox``)
=======================================  ==================  ==========================================

The differentiable composite form (:class:`CompositeForm`) has the interface the non-linear
solvers use (``logits``, ``logit_grad``, ``log_proba``, ``log_proba_grad``, ``link``): scores
``s(x)`` whose link is the estimator's ``predict_proba`` (binary: ``s = log p1 - log p0`` with the
sigmoid link; K classes: ``s = log p`` with softmax; a Stacking model with a linear final
estimator: that estimator's own scores and link). It is not a
:class:`~invaudit.models.base.DifferentiableForm`: it has no parameter vector, so ``influence``
does not take it for a network.

Isotonic calibration is piecewise constant in the member's score, so it has no useful gradient;
such a model is a black box here (its answers are verified, not optimal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from scipy.special import expit, log_expit, log_softmax

from invaudit.errors import InputError
from invaudit.models.base import (
    BlackBoxForm,
    LinearForm,
    ModelForm,
    TreeBoxes,
    TreesForm,
    _softmax,
    as_rows,
    class_indices,
)

__all__ = ["from_estimator", "tree_form", "CompositeForm", "CompositeLinearForm", "CompositeTreesForm",
           "CompositeBlackBoxForm", "COMPOSITES"]

COMPOSITES = ("CalibratedClassifierCV", "VotingClassifier", "StackingClassifier", "BaggingClassifier",
              "AdaBoostClassifier")
_TINY = np.finfo(np.float64).tiny


# --- forms ----------------------------------------------------------------------------------------

def _describe_with(form, base_describe) -> dict:
    d = base_describe()
    d["composite"] = form.composite
    return d


@dataclass(eq=False)
class CompositeLinearForm(LinearForm):
    """A composite that is exactly linear (module table); ``composite`` says how."""

    composite: str = ""

    def describe(self) -> dict:
        return _describe_with(self, super().describe)


@dataclass(eq=False)
class CompositeTreesForm(TreesForm):
    """A composite of trees read as one trees form (module table); ``composite`` says how."""

    composite: str = ""

    def describe(self) -> dict:
        return _describe_with(self, super().describe)


@dataclass(eq=False)
class CompositeBlackBoxForm(BlackBoxForm):
    """A composite invaudit can only query; ``composite`` says why."""

    composite: str = ""

    def describe(self) -> dict:
        return _describe_with(self, super().describe)


@dataclass(eq=False)
class CompositeForm(ModelForm):
    """Smooth composites (module docstring), with the differentiable form's input interface.

    ``logits(X)`` ``(n, M)`` and ``logit_grad(X, k)`` ``(n, D)`` (binary: ``M == 1``, score 0 is
    the constant 0); ``log_proba(X)`` ``(n, K)``, ``log_proba_grad(X, k)``; ``proba_jac(X)``:
    ``(P, J)`` the class probabilities ``(n, K)`` as the estimator computes them and their input
    Jacobian ``(n, K, D)``. ``link``: ``"sigmoid"`` (``M == 1``), ``"softmax"`` or ``"ovr"``.
    """

    estimator: Any
    logits: Callable[[np.ndarray], np.ndarray]
    log_proba: Callable[[np.ndarray], np.ndarray]
    log_proba_grad: Callable[[np.ndarray, Any], np.ndarray]
    logit_grad: Callable[[np.ndarray, Any], np.ndarray]
    proba_jac: Callable[[np.ndarray], tuple]
    link: str
    classes: np.ndarray
    n_features: int
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    composite: str = ""
    alpha: float = 0.0
    kind: str = "differentiable"

    def describe(self) -> dict:
        return _describe_with(self, super().describe)


# --- what a composite is --------------------------------------------------------------------------

def _is_composite(est) -> bool:
    t = type(est)
    return t.__name__ in COMPOSITES and t.__module__.startswith("sklearn.")


def _split(est):
    """``(pre_steps, final)`` of a Pipeline whose final step is a composite, else ``([], est)``."""
    steps = getattr(est, "steps", None)
    if steps:
        return [s for _, s in steps[:-1]], steps[-1][1]
    return [], est


def _n_features(est) -> Optional[int]:
    d = getattr(est, "n_features_in_", None)
    if d is not None:
        return int(d)
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else len(names)


def _names(est):
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(s) for s in names]


def _fitted_members(est) -> list:
    """``[(member, weight)]`` of a fitted Voting (``_weights_not_none``, dropped members left out
    of ``estimators_``) or AdaBoost model (``estimator_weights_``; ``zip`` stops at the fitted
    trees, as ``decision_function`` does)."""
    if type(est).__name__ == "VotingClassifier":
        w = est._weights_not_none
        members = list(est.estimators_)
        w = np.ones(len(members)) if w is None else np.asarray(w, dtype=np.float64)
        return list(zip(members, w))
    return list(zip(est.estimators_, est.estimator_weights_))


def _unfreeze(est):
    t = type(est)
    if t.__name__ == "FrozenEstimator" and t.__module__.startswith("sklearn."):
        return est.estimator
    return est


# --- tree composites --------------------------------------------------------------------------------

def _trees_of(member) -> Optional[list]:
    """``[(tree estimator, weight)]`` with ``member.predict_proba == sum weight * tree proba``:
    a single tree (weight 1) or a random forest / extra trees (1 / T each); None otherwise."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(member, DecisionTreeClassifier):
        if not hasattr(member, "tree_") or member.n_outputs_ != 1:
            return None
        return [(member, 1.0)]
    if isinstance(member, (RandomForestClassifier, ExtraTreesClassifier)):
        if not hasattr(member, "estimators_") or member.n_outputs_ != 1:
            return None
        T = len(member.estimators_)
        return [(t, 1.0 / T) for t in member.estimators_]
    return None


def _tree_boxes(tree, d: int, features: Optional[np.ndarray]):
    """Leaf boxes of a fitted ``Tree`` over the composite's ``d`` inputs; ``features[f]`` is the
    input column the tree's feature ``f`` reads (Bagging's feature subsets, repeats allowed: a
    box bound on a repeated column is the intersection, as the walk takes it)."""
    from invaudit.models.trees import boxes_from_arrays, float32_split_point

    left = tree.children_left
    is_leaf = left == -1
    thr = np.where(is_leaf, 0.0, float32_split_point(np.where(is_leaf, 0.0, tree.threshold)))
    feat = np.where(is_leaf, 0, tree.feature).astype(np.intp)
    if features is not None:
        feat = np.asarray(features, dtype=np.intp)[feat]
    lower, upper, n2l = boxes_from_arrays(left, tree.children_right, feat, thr, is_leaf, d)
    return lower, upper, n2l, np.flatnonzero(is_leaf)


def _router(parts, d: int):
    """``X -> (n, T)`` node ids: each tree's own compiled ``apply`` on ``float32`` rows (what
    ``DecisionTreeClassifier.apply`` does after its input checks), on its feature subset."""
    trees = [(p[0].tree_, None if p[1] is None else np.asarray(p[1], dtype=np.intp)) for p in parts]

    def node_ids(X):
        X32 = np.asarray(X, dtype=np.float64).astype(np.float32)
        out = np.empty((X32.shape[0], len(trees)), dtype=np.intp)
        for t, (tree, feats) in enumerate(trees):  # a loop over trees; rows routed in compiled code
            Z = X32 if feats is None else X32[:, feats]
            out[:, t] = tree.apply(np.ascontiguousarray(Z))
        return out

    return node_ids


def _mean_proba_trees(est, parts, classes, d: int, note: str, votes: bool = False):
    """A ``mean-proba`` trees form from ``parts``: ``(tree estimator, weight, features or None,
    class columns)`` with ``predict_proba = sum weight * tree proba`` (columns placed at
    ``class columns``). Values are stored as ``T * weight * fractions`` so that the form's mean
    over its ``T`` trees is that weighted sum."""
    from invaudit.models.trees import _class_fractions, _Trees

    K = len(classes)
    T = len(parts)
    boxes, maps = [], []
    for tree_est, w, feats, cols in parts:
        tree = tree_est.tree_
        lower, upper, n2l, leaf_nodes = _tree_boxes(tree, d, feats)
        frac = _class_fractions(tree, leaf_nodes)
        if votes:  # the tree's predict: the first class of largest value
            frac = np.eye(frac.shape[1])[np.argmax(tree.value[leaf_nodes, 0, :], axis=1)]
        value = np.zeros((len(leaf_nodes), K))
        value[:, cols] = frac * (T * w)
        boxes.append(TreeBoxes(lower=lower, upper=upper, value=value))
        maps.append(n2l)
    trees = _Trees(boxes, maps, d, _router([(p[0], p[2]) for p in parts], d), "mean-proba")
    return _trees_form(est, trees, classes, d, note)


def _trees_form(est, trees, classes, d, note):
    return CompositeTreesForm(
        estimator=est, trees=trees.boxes, aggregate=trees.aggregate, classes=np.asarray(classes),
        n_features=d, leaf_index=trees.leaf_index, proba_from_leaves=trees.proba_from_leaves,
        init=trees.init, scale=float(trees.scale), link=trees.link, feature_names=_names(est),
        composite=note)


def _voting_trees(est, d: int):
    members = _fitted_members(est)
    W = float(sum(w for _, w in members))
    parts = []
    K = len(est.classes_)
    hard = est.voting != "soft"
    for m, w in members:
        trees = _trees_of(m)
        if trees is None or len(m.classes_) != K or (hard and len(trees) != 1):
            return None  # hard votes of a forest are the argmax of its mean: not a sum over leaves
        parts += [(t, (w / W) * tw, None, np.arange(K)) for t, tw in trees]
    if hard:
        return _mean_proba_trees(est, parts, est.classes_, d,
                                 f"hard voting of {len(members)} decision trees: the weighted count of their "
                                 "votes (each leaf votes for its class; no predict_proba)", votes=True)
    return _mean_proba_trees(est, parts, est.classes_, d,
                             f"soft voting of {len(members)} tree models: the weighted mean of their "
                             f"predict_proba, as {len(parts)} trees")


def _bagging_trees(est, d: int):
    members = est.estimators_
    n = len(members)
    parts = []
    for m, feats in zip(members, est.estimators_features_):
        trees = _trees_of(m)
        if trees is None:
            return None
        cols = np.asarray(m.classes_, dtype=np.intp)  # Bagging fits members on encoded labels
        parts += [(t, tw / n, np.asarray(feats), cols) for t, tw in trees]
    return _mean_proba_trees(est, parts, est.classes_, d,
                             f"bagging of {n} tree models on feature subsets: the mean of their "
                             "predict_proba, split features mapped back to the input columns")


def _adaboost_trees(est, d: int):
    """SAMME (scikit-learn >= 1.6): ``decision_k = sum_t w_t (1[c_t = k] - 1[c_t != k] / (K-1))
    / sum(w)`` with ``c_t`` the class tree ``t`` predicts; ``predict_proba = softmax(decision /
    (K-1))``; binary: ``decision = 2 sum_t w_t (+1 / -1) / sum(w)``, ``p1 = expit(decision)``.
    Each tree is one boosting tree per output (K copies of its boxes for K > 2)."""
    from invaudit.models.trees import _Trees

    if getattr(est, "algorithm", "SAMME") not in ("SAMME", "deprecated"):
        return None
    classes = np.asarray(est.classes_)
    K = len(classes)
    if K < 2:
        return None
    members = _fitted_members(est)
    Wsum = float(np.sum(est.estimator_weights_))
    if not Wsum > 0:
        return None
    boxes, maps, routed = [], [], []
    M = 1 if K == 2 else K
    for m, w in members:
        trees = _trees_of(m)
        if trees is None or len(trees) != 1:
            return None
        tree = m.tree_
        lower, upper, n2l, leaf_nodes = _tree_boxes(tree, d, None)
        try:
            to_global = class_indices(classes, np.asarray(m.classes_))
        except KeyError:
            return None
        c = to_global[np.argmax(tree.value[leaf_nodes, 0, :], axis=1)]  # the tree's predict
        if K == 2:
            v = (2.0 * float(w) / Wsum) * np.where(c == 1, 1.0, -1.0)
            boxes.append(TreeBoxes(lower=lower, upper=upper, value=v[:, None]))
            maps.append(n2l)
            routed.append((m, None))
            continue
        for k in range(K):  # one copy of the tree per output
            value = np.zeros((len(leaf_nodes), K))
            value[:, k] = (float(w) / Wsum) * np.where(c == k, 1.0, -1.0 / (K - 1)) / (K - 1)
            boxes.append(TreeBoxes(lower=lower, upper=upper, value=value))
            maps.append(n2l)
            routed.append((m, None))
    link = "sigmoid" if M == 1 else "softmax"
    trees = _Trees(boxes, maps, d, _router(routed, d), "boosting", init=np.zeros(M), scale=1.0, link=link)
    return _trees_form(est, trees, classes, d,
                       f"AdaBoost (SAMME) of {len(members)} trees: weighted class votes, a sum of leaf "
                       "vectors" + ("" if K == 2 else f" (each tree once per class, {K} outputs)"))


def tree_form(est) -> Optional[CompositeTreesForm]:
    """The trees form of an AdaBoost / Bagging / soft Voting model whose members are all trees or
    forests (module table), or None. Called by :func:`invaudit.models.trees.from_estimator`, so
    a Pipeline of scalers in front of one is read too."""
    if not _is_composite(est) or not hasattr(est, "classes_"):
        return None
    d = _n_features(est)
    if d is None or np.ndim(est.classes_) != 1:
        return None
    name = type(est).__name__
    try:
        if name == "AdaBoostClassifier" and hasattr(est, "estimators_"):
            return _adaboost_trees(est, d)
        if name == "BaggingClassifier" and hasattr(est, "estimators_"):
            return _bagging_trees(est, d)
        if name == "VotingClassifier" and hasattr(est, "estimators_"):
            return _voting_trees(est, d)
    except (AttributeError, IndexError, ValueError):  # a layout this version does not know
        return None
    return None


# --- smooth members ------------------------------------------------------------------------------
#
# Every response below is ``f(X, jac) -> (values (n, C), Jacobian (n, C, d) or None)``: with
# ``jac=False`` only the values are computed (the solvers ask for scores far more often than for
# gradients).

class _Smooth:
    """Differentiable responses of one fitted member (its own ``d`` inputs): ``decision`` is
    scikit-learn's ``decision_function`` as 2-D (binary: one column), ``proba`` its
    ``predict_proba``."""

    def __init__(self, est, form):
        self.est = est
        self.form = form
        self.d = int(form.n_features)

    @staticmethod
    def of(est) -> Optional["_Smooth"]:
        from invaudit.errors import UnsupportedModelError
        from invaudit.models import adapt

        try:
            form = adapt(est)
        except (UnsupportedModelError, InputError):
            return None
        if isinstance(form, CompositeForm):
            return _CompositeSmooth(est, form)
        if form.kind in ("linear", "differentiable", "invertible-linear"):
            return _Smooth(est, form)
        if form.kind == "kernel" and form.n_classes == 2:
            return _Smooth(est, form)
        return None

    def has_decision(self) -> bool:
        if not hasattr(self.est, "decision_function"):
            return False
        return self.form.kind in ("linear", "kernel", "invertible-linear")

    def has_proba(self) -> bool:
        if not hasattr(self.est, "predict_proba"):
            return False
        k = self.form.kind
        if k == "linear":
            return self.form.link in ("sigmoid", "softmax", "ovr")
        if k == "invertible-linear":
            return self.form.linear.link in ("sigmoid", "softmax", "ovr")
        return k == "differentiable"

    def _linear_scores(self, X, jac):
        f = self.form
        if f.kind == "linear":
            J = np.broadcast_to(f.W, (X.shape[0],) + f.W.shape) if jac else None
            return f.scores(X), J, f.link
        lin = f.linear
        S = f.forward(X) @ lin.W.T + lin.b
        if not jac:
            return S, None, lin.link
        Jphi = f.jacobian(X)
        if Jphi.ndim == 2:
            Jphi = Jphi[None]
        return S, np.einsum("md,nde->nme", lin.W, Jphi), lin.link

    def decision(self, X, jac=True):
        f = self.form
        if f.kind == "kernel":
            if not jac:
                return -f.pair_values(X)[:, :1], None
            V, J = f.pair_jacobian(X)
            return -V[:, :1], -J[:, :1]
        S, J, _ = self._linear_scores(X, jac)
        return S, J

    def proba(self, X, jac=True):
        f = self.form
        if f.kind == "differentiable":  # a network: exact backpropagation, one pass per class
            P = np.exp(f.log_proba(X))
            if not jac:
                return P, None
            J = np.empty(P.shape + (X.shape[1],))
            if P.shape[1] == 2:  # p0 = 1 - p1: one backward pass
                J[:, 1] = P[:, 1, None] * f.log_proba_grad(X, 1)
                J[:, 0] = -J[:, 1]
                return P, J
            for k in range(P.shape[1]):  # a loop over classes
                J[:, k] = P[:, k, None] * f.log_proba_grad(X, k)
            return P, J
        S, JS, link = self._linear_scores(X, jac)
        return _link_proba_jac(S, JS, link)


class _CompositeSmooth(_Smooth):
    """A nested smooth composite as a member."""

    def has_decision(self) -> bool:
        return False

    def has_proba(self) -> bool:
        return hasattr(self.est, "predict_proba")

    def proba(self, X, jac=True):
        return self.form.proba_jac(X, jac)


def _link_proba_jac(S, JS, link):
    """Probabilities through ``link`` and (when ``JS`` is given) their Jacobian from scores
    ``S`` (n, M) and ``JS`` (n, M, d)."""
    if link == "sigmoid":
        p1 = expit(S[:, 0])
        P = np.column_stack([1.0 - p1, p1])
        if JS is None:
            return P, None
        J1 = (p1 * (1.0 - p1))[:, None] * JS[:, 0]
        return P, np.stack([-J1, J1], axis=1)
    if link == "softmax":
        P = _softmax(S)
    elif link == "ovr":
        P = _softmax(log_expit(S))
        if JS is not None:
            JS = expit(-S)[:, :, None] * JS  # d log expit(s) / ds = expit(-s)
    else:
        raise InputError(f"no probabilities through the {link} link")
    if JS is None:
        return P, None
    mean = np.einsum("nk,nkd->nd", P, JS)
    return P, P[:, :, None] * (JS - mean[:, None, :])


def _smooth_member(est) -> Optional[_Smooth]:
    return _Smooth.of(est)


def _add(acc, term, w=1.0):
    if term is None:
        return acc
    return w * term if acc is None else acc + w * term


# --- smooth combinations: (X (n, d), jac) -> (P (n, K), J (n, K, d) or None) ------------------------

def _voting_smooth(est, d):
    if est.voting != "soft":
        return None, "hard voting: the predicted class is a weighted vote count, piecewise constant"
    members = _fitted_members(est)
    sm = [(_smooth_member(m), w) for m, w in members]
    bad = [type(m).__name__ for (s, _), (m, _) in zip(sm, members) if s is None or not s.has_proba()]
    if bad:
        return None, f"members without a smooth predict_proba invaudit reads: {', '.join(bad)}"
    W = float(sum(w for _, w in sm))

    def proba_jac(X, jac=True):
        P = J = None
        for s, w in sm:  # a loop over members
            Pm, Jm = s.proba(X, jac)
            P, J = _add(P, Pm, w), _add(J, Jm, w)
        return P / W, (None if J is None else J / W)

    return proba_jac, f"soft voting of {len(sm)} members (" + ", ".join(
        type(m).__name__ for m, _ in members) + "): weighted mean of their probabilities"


def _bagging_smooth(est, d):
    K = len(est.classes_)
    members = []
    for m, feats in zip(est.estimators_, est.estimators_features_):
        s = _smooth_member(m)
        if s is None or not s.has_proba():
            return None, (f"a member ({type(m).__name__}) without a smooth predict_proba invaudit reads "
                          "(members without predict_proba vote: piecewise constant)")
        members.append((s, np.asarray(feats, dtype=np.intp), np.asarray(m.classes_, dtype=np.intp)))
    n_est = len(members)

    def proba_jac(X, jac=True):
        n = X.shape[0]
        P = np.zeros((n, K))
        J = np.zeros((n, K, d)) if jac else None
        for s, feats, cols in members:  # a loop over members
            Pm, Jm = s.proba(X[:, feats], jac)
            P[:, cols] += Pm
            if jac:
                Jfull = np.zeros((n, Jm.shape[1], d))
                np.add.at(Jfull, (slice(None), slice(None), feats), Jm)  # repeated features add up
                J[:, cols] += Jfull
        return P / n_est, (None if J is None else J / n_est)

    return proba_jac, (f"bagging of {n_est} {type(est.estimators_[0]).__name__} members on feature subsets: "
                       "mean of their probabilities")


def _calibrated_parts(est):
    """Per calibrated classifier: ``(member, response, calibrators, class positions)``, or a reason."""
    out = []
    classes = np.asarray(est.classes_)
    for cc in est.calibrated_classifiers_:
        if cc.method not in ("sigmoid", "temperature"):
            return None, (f"{cc.method} calibration" + (" is piecewise constant in the member's score"
                                                        if cc.method == "isotonic" else " is not read yet"))
        base = _unfreeze(cc.estimator)
        s = _smooth_member(base)
        if s is None:
            return None, f"a calibrated member invaudit cannot read smoothly ({type(base).__name__})"
        if hasattr(base, "decision_function"):  # scikit-learn prefers it (_get_response_values)
            if not s.has_decision():
                return None, f"{type(base).__name__}'s decision_function is not smooth here"
            response = "decision"
        elif s.has_proba():
            response = "proba"
        else:
            return None, f"{type(base).__name__} has no smooth response"
        try:
            pos = class_indices(classes, np.asarray(base.classes_))
        except KeyError:
            return None, "a calibrated member knows a class the model does not"
        if len(classes) == 2:
            pos = np.array([1])
        out.append((s, response, list(cc.calibrators), pos, cc.method))
    return out, None


def _calibrated_smooth(est, d):
    """``_CalibratedClassifier.predict_proba``: per class ``expit(-(a v + b))`` of the member's
    response ``v``, binary ``p0 = 1 - p1``, else normalised by the sum (uniform where it is 0);
    ``CalibratedClassifierCV`` averages the folds."""
    parts, why = _calibrated_parts(est)
    if parts is None:
        return None, why
    K = len(est.classes_)

    def temperature(X, jac, s, response, beta):
        """``softmax(beta * logits)``, logits as ``_convert_to_logits`` makes them: ``(-v, v)`` for a
        binary decision value, ``log(p + 1e-12)`` for probabilities, decision values as they are
        (scikit-learn takes a batch of decision values that all lie in [0, 1] and sum to 1 per row
        for probabilities; that is not reproduced: answers are verified by the estimator)."""
        if response == "decision":
            V, JV = s.decision(X, jac)
            if V.shape[1] == 1:
                V, JV = np.hstack([-V, V]), (None if JV is None else np.concatenate([-JV, JV], axis=1))
        else:
            P0, J0 = s.proba(X, jac)
            V = np.log(P0 + 1e-12)
            JV = None if J0 is None else J0 / (P0 + 1e-12)[:, :, None]
        P = _softmax(beta * V)
        if not jac:
            return P, None
        JL = beta * JV
        return P, P[:, :, None] * (JL - np.einsum("nk,nkd->nd", P, JL)[:, None, :])

    def one(X, jac, s, response, calibrators, pos, method):
        if method == "temperature":
            return temperature(X, jac, s, response, float(calibrators[0].beta_))
        if response == "decision":
            V, JV = s.decision(X, jac)
        else:
            V, JV = s.proba(X, jac)
            if V.shape[1] == 2:
                V, JV = V[:, 1:2], (None if JV is None else JV[:, 1:2])
        n = X.shape[0]
        P = np.zeros((n, K))
        J = np.zeros((n, K, d)) if jac else None
        for j, (cal, idx) in enumerate(zip(calibrators, pos)):  # a loop over calibrators
            a, b = float(cal.a_), float(cal.b_)
            p = expit(-(a * V[:, j] + b))
            P[:, idx] = p
            if jac:
                J[:, idx] = (-a * p * (1.0 - p))[:, None] * JV[:, j]
        if K == 2:
            P[:, 0] = 1.0 - P[:, 1]
            if jac:
                J[:, 0] = -J[:, 1]
            return P, J
        S = P.sum(axis=1)
        ok = S != 0
        Q = np.full_like(P, 1.0 / K)
        Q[ok] = P[ok] / S[ok, None]
        if not jac:
            return Q, None
        JQ = np.zeros_like(J)
        JS = J[ok].sum(axis=1)  # (m, d)
        JQ[ok] = J[ok] / S[ok, None, None] - Q[ok][:, :, None] * (JS / S[ok, None])[:, None, :]
        return Q, JQ

    def proba_jac(X, jac=True):
        P = J = None
        for part in parts:  # a loop over calibrated classifiers (cv folds)
            Pm, Jm = one(X, jac, *part)
            P, J = _add(P, Pm), _add(J, Jm)
        return P / len(parts), (None if J is None else J / len(parts))

    kind = "sigmoid calibration (Platt)" if parts[0][4] == "sigmoid" else "temperature scaling"
    return proba_jac, (f"{kind} of {len(parts)} fitted "
                       f"{type(_unfreeze(est.calibrated_classifiers_[0].estimator)).__name__}"
                       + (" (mean over the cv folds)" if len(parts) > 1 else ""))


def _stacking_meta(est, d):
    """``(meta, linear, reason)``: ``meta(X, jac) -> (Z (n, Dz), JZ (n, Dz, d) or None)``, the
    final estimator's input; ``linear``: ``(A (Dz, d), c (Dz,))`` when every column is a linear
    decision value or passthrough (``Z = X A.T + c``), else None."""
    K = len(est.classes_)
    cols = []
    lin_parts = []
    linear = True
    kept = [(m, meth) for m, meth in zip(est.estimators_, est.stack_method_)
            if not (isinstance(m, str) and m == "drop")]
    for m, meth in kept:
        if meth == "predict":
            return None, None, f"{type(m).__name__} is stacked by its predict (piecewise constant)"
        s = _smooth_member(m)
        if s is None or (meth == "decision_function" and not s.has_decision()) or (
                meth == "predict_proba" and not s.has_proba()):
            return None, None, f"a stacked member invaudit cannot read smoothly ({type(m).__name__}, {meth})"
        cols.append((s, meth))
        if meth == "decision_function" and s.form.kind == "linear":
            lin_parts.append((s.form.W, s.form.b))
        else:
            linear = False
    passthrough = bool(est.passthrough)
    if passthrough:
        lin_parts.append((np.eye(d), np.zeros(d)))

    def meta(X, jac=True):
        Zs, Js = [], []
        for s, meth in cols:  # a loop over members
            if meth == "decision_function":
                V, JV = s.decision(X, jac)
            else:
                V, JV = s.proba(X, jac)
                if K == 2:  # scikit-learn drops the first probability column
                    V, JV = V[:, 1:], (None if JV is None else JV[:, 1:])
            Zs.append(V)
            Js.append(JV)
        if passthrough:
            Zs.append(X)
            Js.append(np.broadcast_to(np.eye(d), (X.shape[0], d, d)) if jac else None)
        return np.concatenate(Zs, axis=1), (np.concatenate(Js, axis=1) if jac else None)

    lin = None
    if linear and lin_parts:
        lin = (np.vstack([A for A, _ in lin_parts]), np.concatenate([c for _, c in lin_parts]))
    return meta, lin, None


def _stacking(est, d):
    """``(kind, payload, note)``: ``("linear", (W, b, link), note)``, ``("scores", (fn, link), note)``
    with ``fn(X, jac) -> (S, JS)``, ``("proba", fn, note)``, or ``(None, None, reason)``."""
    meta, lin, why = _stacking_meta(est, d)
    if meta is None:
        return None, None, why
    final = est.final_estimator_
    from invaudit.models.linear import from_estimator as linear_form

    ff = linear_form(final)
    names = ", ".join(type(m).__name__ for m in est.estimators_ if not (isinstance(m, str) and m == "drop"))
    note = (f"stacking of {names} ({', '.join(est.stack_method_)})"
            + (" with passthrough" if est.passthrough else "") + f", final {type(final).__name__}")
    if ff is not None:
        if lin is not None:
            A, c = lin
            return "linear", (ff.W @ A, ff.W @ c + ff.b, ff.link), note + ": linear in the members' linear scores"
        Wf, bf = ff.W, ff.b
        # a final model without probabilities (link none) ranks classes by its scores; the link
        # here only shapes the scores for the solvers (binary: one score, positive = class 1)
        link = ff.link if ff.link != "none" else ("sigmoid" if len(est.classes_) == 2 else "softmax")

        def scores(X, jac=True):
            Z, JZ = meta(X, jac)
            return Z @ Wf.T + bf, (np.einsum("md,nde->nme", Wf, JZ) if jac else None)

        return "scores", (scores, link), note
    fs = _smooth_member(final)
    if fs is None or not fs.has_proba():
        return None, None, f"a final estimator invaudit cannot read smoothly ({type(final).__name__})"

    def proba_jac(X, jac=True):
        Z, JZ = meta(X, jac)
        P, JP = fs.proba(Z, jac)
        return P, (np.einsum("nkz,nzd->nkd", JP, JZ) if jac else None)

    return "proba", proba_jac, note


# --- scores from probabilities, the form ----------------------------------------------------------

def _scores_from_proba(proba_jac, K):
    """``(S, JS)`` with the link's probabilities equal to ``proba_jac``'s (binary: ``log p1 -
    log p0``; K classes: ``log p``); probabilities below the smallest normal double are taken
    at it (their class is far from winning)."""
    def scores(X, jac=True):
        P, J = proba_jac(X, jac)
        Pc = np.maximum(P, _TINY)
        if K == 2:
            S = (np.log(Pc[:, 1]) - np.log(Pc[:, 0]))[:, None]
        else:
            S = np.log(Pc)
        if not jac:
            return S, None
        G = J / Pc[:, :, None]
        return S, ((G[:, 1] - G[:, 0])[:, None] if K == 2 else G)

    return scores


def _class_vector(k, n, K):
    k = np.asarray(k)
    if k.ndim == 0:
        k = np.full(n, int(k), dtype=np.intp)
    k = k.astype(np.intp)
    if k.shape != (n,) or (k.size and (k.min() < 0 or k.max() >= K)):
        raise InputError(f"class indices must be one or one per row ({n}) in 0..{K - 1}.")
    return k


def _make_smooth_form(est, scores, link, proba_jac, K, d, A, c, note, preprocessing):
    """The :class:`CompositeForm` of scores ``S(z)`` (``z = A x + c``, identity when ``A`` is None).

    Jacobians are computed once per distinct row: the solvers ask for one class's gradient at
    a time on rows repeated once per class (``ScoreModel.scores_jac``)."""
    def on_input(X):
        X = as_rows(X, d)
        return X if A is None else X @ A.T + c

    def sj(X):
        X = as_rows(X, d)
        U, inv = np.unique(X, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        S, J = scores(on_input(U), True)
        J = J if A is None else J @ A
        return S[inv], J[inv]

    def logits(X):
        return scores(on_input(X), False)[0]

    def log_proba_from(S):
        if link == "sigmoid":
            return np.column_stack([log_expit(-S[:, 0]), log_expit(S[:, 0])])
        if link == "ovr":
            return log_softmax(log_expit(S), axis=1)
        return log_softmax(S, axis=1)

    def log_proba(X):
        return log_proba_from(logits(X))

    def logit_grad(X, k):
        S, J = sj(X)
        k = _class_vector(k, S.shape[0], K)
        if link == "sigmoid":
            return np.where((k == 1)[:, None], J[:, 0], 0.0)
        return J[np.arange(S.shape[0]), k]

    def log_proba_grad(X, k):
        S, J = sj(X)
        n = S.shape[0]
        k = _class_vector(k, n, K)
        if link == "sigmoid":
            s = S[:, 0]
            return np.where(k == 1, expit(-s), -expit(s))[:, None] * J[:, 0]
        if link == "ovr":
            J = expit(-S)[:, :, None] * J
            S = log_expit(S)
        P = _softmax(S)
        return J[np.arange(n), k] - np.einsum("nk,nkd->nd", P, J)

    def proba_jac_input(X, jac=True):
        """``(P, J)``: the estimator's probabilities ``(n, K)`` and their input Jacobian
        ``(n, K, D)`` (None with ``jac=False``)."""
        Z = on_input(X)
        if proba_jac is not None:
            P, J = proba_jac(Z, jac)
        else:
            S, JS = scores(Z, jac)
            P, J = _link_proba_jac(S, JS, link)
        return P, (None if J is None else (J if A is None else J @ A))

    return CompositeForm(
        estimator=est, logits=logits, log_proba=log_proba, log_proba_grad=log_proba_grad,
        logit_grad=logit_grad, proba_jac=proba_jac_input, link=link, classes=np.asarray(est.classes_),
        n_features=d, feature_names=_names(est), preprocessing=preprocessing, composite=note)


# --- the exact case: one sigmoid calibrator over a linear model ------------------------------------

def _calibrated_linear(est):
    """``(W, b, link, note)`` when every probability is one sigmoid calibration of a linear model's
    scores (one calibrated classifier), else None (module table)."""
    if len(est.calibrated_classifiers_) != 1:
        return None
    cc = est.calibrated_classifiers_[0]
    if cc.method not in ("sigmoid", "temperature"):
        return None
    base = _unfreeze(cc.estimator)
    if not hasattr(base, "decision_function"):
        return None
    from invaudit.models.linear import from_estimator as linear_form

    lf = linear_form(base)
    if lf is None:
        return None
    classes = np.asarray(est.classes_)
    K = len(classes)
    if cc.method == "temperature":
        # binary: softmax(beta (-s, s)) gives p1 = expit(2 beta s); with K classes scikit-learn
        # reads decision values that look like probabilities as probabilities (batch-dependent),
        # so only the binary case is exactly linear
        if K != 2 or lf.W.shape[0] != 1:
            return None
        beta = float(cc.calibrators[0].beta_)
        return 2.0 * beta * lf.W, 2.0 * beta * lf.b, "sigmoid"
    a = np.array([float(c.a_) for c in cc.calibrators])
    b = np.array([float(c.b_) for c in cc.calibrators])
    if K == 2:
        if lf.W.shape[0] != 1 or len(a) != 1:
            return None
        # p1 = expit(-(a s + b)) with s = w x + c: the sigmoid link of -a w x - (a c + b)
        return -a[0] * lf.W, -(a[0] * lf.b + b[0]), "sigmoid"
    # K > 2: p_k = expit(-(a_k s_k + b_k)) normalised, and predict is the argmax of those
    # probabilities. Mathematically that is the argmax of the calibrated scores, but expit is
    # exactly 1.0 above ~36.7, so far from the data two classes tie and predict picks the first:
    # a linear argmax would then disagree with the estimator (an unearned `exact`, found by
    # tests/exactness/test_exact_calibrated_saturation.py). The composed smooth form is used
    # instead (answers verified by the estimator, exact: false).
    return None


# --- entry point ---------------------------------------------------------------------------------

def from_estimator(est: Any) -> Optional[ModelForm]:
    """The form of a composite (or a Pipeline of affine steps ending in one): linear where that
    is exact, trees for tree composites, :class:`CompositeForm` for smooth ones, else a
    :class:`CompositeBlackBoxForm` saying why. None for anything that is not a composite."""
    pre, final = _split(est)
    if not _is_composite(final) or not hasattr(final, "classes_") or np.ndim(final.classes_) != 1:
        return None
    d = _n_features(est)
    if d is None:
        return None
    A = c = None
    preprocessing = []
    why = None
    if pre:
        from invaudit.models.affine import fold_affine, is_affine_step
        from invaudit.models.linear import step_name

        if all(is_affine_step(s) for s in pre):
            A, c = fold_affine(pre, d)
            if A.shape[0] != _n_features(final):
                A = None
                why = "the preprocessing does not match the composite's inputs"
            preprocessing = [step_name(s) for s in pre if not (s is None or isinstance(s, str))]
        else:
            why = "preprocessing other than affine steps in front of the composite"
    try:
        form = None if why else _smooth_or_linear(est, final, d, A, c, preprocessing)
    except (AttributeError, IndexError, ValueError, TypeError) as exc:  # an unknown layout
        form, why = None, f"an internal layout this version does not read ({type(exc).__name__})"
    if isinstance(form, str):
        form, why = None, form
    if form is not None:
        return form
    from invaudit.models.blackbox import PREDICT_ONLY, is_predict_only

    if is_predict_only(est):  # hard voting over members that are not all decision trees
        return CompositeBlackBoxForm(estimator=est, classes=np.asarray(final.classes_), n_features=d,
                                     feature_names=_names(est),
                                     composite=f"queried as a black box: {why}; {PREDICT_ONLY} (hard voting is "
                                               "read as trees when every member is a decision tree)")
    return CompositeBlackBoxForm(estimator=est, classes=np.asarray(final.classes_), n_features=d,
                                 feature_names=_names(est), composite=f"queried as a black box: {why}")


def _smooth_or_linear(est, final, d, A, c, preprocessing):
    """A form, or a string saying why there is none."""
    name = type(final).__name__
    K = len(final.classes_)
    dz = _n_features(final)
    if name == "CalibratedClassifierCV":
        lin = _calibrated_linear(final)
        if lin is not None:
            W, b, link = lin
            if A is not None:
                W, b = W @ A, W @ c + b
            return CompositeLinearForm(
                estimator=est, W=W, b=b, link=link, classes=np.asarray(final.classes_), n_features=d,
                feature_names=_names(est), preprocessing=preprocessing,
                composite=("temperature scaling" if final.calibrated_classifiers_[0].method == "temperature"
                           else "sigmoid calibration") + " of one linear model: the calibrated probability is the "
                          + ("sigmoid" if link == "sigmoid" else "one-vs-rest sigmoid") + " of an affine score "
                          "(exact)")
        proba_jac, note = _calibrated_smooth(final, dz)
    elif name == "VotingClassifier":
        proba_jac, note = _voting_smooth(final, dz)
    elif name == "BaggingClassifier":
        proba_jac, note = _bagging_smooth(final, dz)
    elif name == "StackingClassifier":
        kind, payload, note = _stacking(final, dz)
        if kind is None:
            return note
        if kind == "linear":
            W, b, link = payload
            if A is not None:
                W, b = W @ A, W @ c + b
            return CompositeLinearForm(
                estimator=est, W=W, b=b, link=link, classes=np.asarray(final.classes_), n_features=d,
                feature_names=_names(est), preprocessing=preprocessing, composite=note + " (exact)")
        if kind == "scores":
            scores, link = payload
            return _make_smooth_form(est, scores, link, None, K, d, A, c,
                                     note + ": the final model's scores of the members' smooth outputs", preprocessing)
        proba_jac = payload
    else:  # AdaBoost of non-trees
        return "AdaBoost over members that are not decision trees (its votes are piecewise constant)"
    if proba_jac is None:
        return note
    link = "sigmoid" if K == 2 else "softmax"
    return _make_smooth_form(est, _scores_from_proba(proba_jac, K), link, proba_jac, K, d, A, c,
                             note + "; exact input gradients by the chain rule", preprocessing)



# --- what info says ------------------------------------------------------------------------------

def composite_capabilities(form, caps: list, Capability) -> list:
    """``info``'s rows for a composite: what it was read as, in each method; no influence (the
    composite's members were fitted separately, on folds or bootstrap samples, so no single
    twice-differentiable objective stands behind it)."""
    note = form.composite
    out = []
    for c in caps:
        if c.command in ("counterfactual", "margin"):
            method = c.method
            if isinstance(form, CompositeForm):
                method = ("boundary search and SQP with the composed exact input gradients, from several starts, "
                          "verified" if c.command == "counterfactual" else
                          "DeepFool-style attack on the composed scores (verified upper bound; no certified lower "
                          "bound for composites)")
            out.append(Capability(c.command, c.available, c.exact, f"{note}. {method}"))
        elif c.command == "influence":
            out.append(Capability("influence", "no", "-", "not for composites: the members were fitted separately "
                                  "(folds, bootstrap samples, a calibrator on held-out scores), so no single "
                                  "twice-differentiable objective stands behind the model"))
        elif c.command == "mislabel" and not form.has_proba:  # hard voting
            from invaudit.models.capabilities import _COMBINED_NO_MODEL

            out.append(Capability("mislabel", "yes", "-", f"{_COMBINED_NO_MODEL}; knn, reference, mixture, boosting "
                                  "(out-of-sample confidence needs predict_proba, which hard voting lacks)"))
        else:
            out.append(c)
    return out
