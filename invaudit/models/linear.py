"""The linear form: a fitted linear classifier (possibly behind affine preprocessing) as
``scores(x) = W x + b`` in *input* units, followed by the link its ``predict_proba`` uses.

``from_estimator(est)`` returns a :class:`~invaudit.models.base.LinearForm` or ``None`` when
``est`` is not (exactly) of this form. Links were read off scikit-learn 1.9's own
``predict_proba`` implementations:

=============================================  ===========  =======================================
estimator                                      binary link  multiclass link
=============================================  ===========  =======================================
LogisticRegression(CV) (every solver)          sigmoid      softmax (``multi_class`` is gone; a
                                                            liblinear model is always binary)
LinearDiscriminantAnalysis (svd, lsqr, eigen)  sigmoid      softmax
SGDClassifier(loss="log_loss")                 sigmoid      ovr (``_predict_proba_lr``: sigmoids
                                                            normalised to sum to one)
SGDClassifier (any other loss), LinearSVC,     none         none
RidgeClassifier(CV), Perceptron,
PassiveAggressiveClassifier
OneVsRestClassifier of binary linear models    sigmoid      ovr when every member's probability
                                                            is the sigmoid of its score, else none
=============================================  ===========  =======================================

``SGDClassifier(loss="modified_huber")`` has probabilities, ``(clip(s, -1, 1) + 1) / 2``
normalised, which are not a smooth link: the form says ``link="none"`` and keeps
``has_proba`` from the estimator, so solvers that need probabilities query it.

A :class:`~sklearn.pipeline.Pipeline` whose steps before the classifier are all affine
(StandardScaler, MinMaxScaler without ``clip``, MaxAbsScaler, RobustScaler, PCA of any rank,
with or without ``whiten``, ``"passthrough"``, an identity FunctionTransformer, nested
Pipelines of these) is folded: with ``Z = X @ A.T + c`` (``invaudit.models.affine.fold_affine``)
and the classifier's ``(W_z, b_z)``, the form has ``W = W_z @ A`` and ``b = W_z @ c + b_z``
exactly. A PCA keeping fewer components than features is affine but not invertible: it is
accepted here (the scores are still exactly linear in the input) and recorded in
``preprocessing`` as ``"PCA(k of d components)"``.
"""

from __future__ import annotations

import numpy as np

from .affine import AFFINE_STEPS, fold_affine
from .base import LinearForm

__all__ = ["from_estimator", "linear_parts", "split_pipeline", "step_name"]

# Exact classes, by (module, qualname): a user subclass may override predict_proba /
# decision_function. Compared by path so that this module imports no scikit-learn (start-up,
# issue 16) and reads a light-loaded state (invaudit.io._light) exactly as the real estimator;
# tests/io/test_light_load.py checks every path names the installed scikit-learn's class.
_LR = ("sklearn.linear_model._logistic", "LogisticRegression")
_LR_CV = ("sklearn.linear_model._logistic", "LogisticRegressionCV")
_LDA = ("sklearn.discriminant_analysis", "LinearDiscriminantAnalysis")
_SGD = ("sklearn.linear_model._stochastic_gradient", "SGDClassifier")
_OVR = ("sklearn.multiclass", "OneVsRestClassifier")
_PIPELINE = ("sklearn.pipeline", "Pipeline")
_PROBA_LINK_TYPES = frozenset({_LR, _LR_CV, _LDA})
# PassiveAggressiveClassifier: deprecated in scikit-learn 1.8, removed in 1.10
_NO_LINK_TYPES = frozenset({
    ("sklearn.svm._classes", "LinearSVC"),
    ("sklearn.linear_model._ridge", "RidgeClassifier"),
    ("sklearn.linear_model._ridge", "RidgeClassifierCV"),
    ("sklearn.linear_model._perceptron", "Perceptron"),
    ("sklearn.linear_model._passive_aggressive", "PassiveAggressiveClassifier"),
})


def _class_path(obj) -> tuple:
    """``(module, qualname)`` of ``obj``'s class (a light object's recorded class)."""
    from invaudit.io._light import class_path

    return class_path(obj)


def _class_name(obj) -> str:
    """``type(obj).__name__`` (a light object's recorded class name)."""
    from invaudit.io._light import class_name

    return class_name(obj)


def _is_pipeline(obj) -> bool:
    return _class_path(obj) == _PIPELINE


def from_estimator(est) -> LinearForm | None:
    """The linear form of a fitted estimator, or ``None`` if it is not exactly linear.

    Parameters
    ----------
    est : object
        A fitted scikit-learn classifier or Pipeline (see the module docstring for the list).

    Returns
    -------
    LinearForm or None
        ``W`` (``(M, D)``, ``M == 1`` for binary) and ``b`` in input units such that
        ``X @ W.T + b`` equals ``est.decision_function(X)`` (as 2-D), with the link that
        ``est.predict_proba`` applies to those scores.
    """
    split = split_pipeline(est)
    if split is None:
        return None
    pre, final = split
    parts = linear_parts(final)
    if parts is None:
        return None
    W_z, b_z, link = parts
    classes = np.asarray(final.classes_)
    if not all(_is_linear_affine(s) for s in pre):
        return None
    pre = [s for s in pre if not _is_identity_function(s)]
    if not pre:
        return LinearForm(
            estimator=est, W=W_z, b=b_z, link=link, classes=classes, n_features=W_z.shape[1],
            feature_names=_feature_names(est), preprocessing=[], final_estimator=final,
        )
    d = getattr(pre[0], "n_features_in_", None)
    if d is None:
        return None
    d = int(d)
    A, c = fold_affine(pre, d)
    if A.shape[0] != W_z.shape[1] or not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        return None
    # Section "Pipeline" of the module docstring: scores = W_z (A x + c) + b_z.
    W = W_z @ A
    b = W_z @ c + b_z
    return LinearForm(
        estimator=est, W=W, b=b, link=link, classes=classes, n_features=d,
        feature_names=_feature_names(est), preprocessing=[step_name(s) for s in pre],
        final_estimator=final, pre_A=A, pre_c=c,
    )


def linear_parts(est) -> tuple[np.ndarray, np.ndarray, str] | None:
    """``(W, b, link)`` of a single fitted linear classifier (not a Pipeline), else ``None``.

    ``W`` is ``(M, D)`` float64, ``b`` is ``(M,)``; ``M == 1`` when there are two classes.
    """
    classes = getattr(est, "classes_", None)
    if classes is None or isinstance(classes, list) or np.ndim(classes) != 1:
        return None  # unfitted, multi-output or multilabel
    K = len(classes)
    if K < 2:
        return None
    kind = _class_path(est)
    if kind == _OVR:
        return _ovr_parts(est, K)
    if kind in _PROBA_LINK_TYPES:
        link = "sigmoid" if K == 2 else "softmax"
    elif kind == _SGD:
        if est.loss == "log_loss":
            link = "sigmoid" if K == 2 else "ovr"
        else:
            link = "none"
    elif kind in _NO_LINK_TYPES:
        lb = getattr(est, "_label_binarizer", None)  # RidgeClassifier fitted on multilabel y
        if lb is not None and getattr(lb, "y_type_", "") == "multilabel-indicator":
            return None
        link = "none"
    else:
        return None
    W, b = _coef(est)
    if W is None or W.shape[0] != (1 if K == 2 else K):
        return None
    return W, b, link


def split_pipeline(est):
    """``(pre_steps, final)`` of a Pipeline (nested ones flattened, passthrough dropped), or
    ``([], est)`` for a plain estimator; ``None`` when the last step is not an estimator."""
    if not _is_pipeline(est):
        return [], est
    steps = _flatten(est)
    if not steps:
        return None
    *pre, final = steps
    if final is None or isinstance(final, str):
        return None
    return [s for s in pre if not _is_passthrough(s)], final


def step_name(step) -> str:
    """Human-readable name of a preprocessing step for ``LinearForm.preprocessing``."""
    name = _class_name(step)
    if name == "PCA":
        comp = step.components_
        details = []
        if comp.shape[0] < comp.shape[1]:
            details.append(f"{comp.shape[0]} of {comp.shape[1]} components")
        if getattr(step, "whiten", False):
            details.append("whiten")
        return f"PCA({', '.join(details)})" if details else "PCA"
    return name


# --- helpers ------------------------------------------------------------------------------

def _coef(est) -> tuple[np.ndarray | None, np.ndarray | None]:
    coef = getattr(est, "coef_", None)
    intercept = getattr(est, "intercept_", None)
    if coef is None or intercept is None:
        return None, None
    if not isinstance(coef, np.ndarray):
        import scipy.sparse as sp

        if sp.issparse(coef):  # after .sparsify()
            coef = coef.toarray()
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64)).copy()
    b = np.broadcast_to(np.asarray(intercept, dtype=np.float64).ravel(), (W.shape[0],)).copy()
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        return None, None
    return W, b


def _ovr_parts(est, K: int):
    """OneVsRestClassifier: one row per member (each a binary linear model, possibly a
    Pipeline); scikit-learn's predict_proba divides the members' ``predict_proba[:, 1]`` by
    their sum, which is the ``"ovr"`` link when each of those is ``sigmoid(score)``."""
    lb = getattr(est, "label_binarizer_", None)
    if lb is None or lb.y_type_ not in ("binary", "multiclass"):
        return None
    members = getattr(est, "estimators_", None)
    if members is None or len(members) != (1 if K == 2 else K):
        return None
    rows, offsets, links = [], [], []
    for member in members:  # a loop over classes
        form = from_estimator(member)
        if form is None or not form.is_binary:
            return None
        if not np.array_equal(np.asarray(form.classes), [0, 1]):
            return None
        rows.append(form.W[0])
        offsets.append(form.b[0])
        links.append(form.link)
    if len({r.shape for r in rows}) != 1:
        return None
    sig = all(link == "sigmoid" for link in links)
    link = ("sigmoid" if K == 2 else "ovr") if sig else "none"
    return np.vstack(rows), np.asarray(offsets, dtype=np.float64), link


def _flatten(pipe) -> list:
    out = []
    for _, step in pipe.steps:
        if _is_pipeline(step):
            out.extend(_flatten(step))
        else:
            out.append(step)
    return out


def _is_passthrough(step) -> bool:
    return step is None or (isinstance(step, str) and step == "passthrough")


def _is_identity_function(step) -> bool:
    return (
        _class_name(step) == "FunctionTransformer"
        and step.func is None
        and not step.kw_args
    )


def _is_linear_affine(step) -> bool:
    """Affine for the linear form: fold_affine's steps, PCA of any rank, MinMaxScaler only
    without ``clip`` (clipping is piecewise, not affine), an identity FunctionTransformer."""
    if _is_identity_function(step):
        return True
    name = _class_name(step)
    if name not in AFFINE_STEPS:
        return False
    if name == "MinMaxScaler" and getattr(step, "clip", False):
        return False
    return True


def _feature_names(est) -> list | None:
    candidates = [est]
    if _is_pipeline(est):
        candidates += _flatten(est)[:1]
    for obj in candidates:
        try:
            names = getattr(obj, "feature_names_in_", None)
        except AttributeError:
            names = None
        if names is not None:
            return [str(n) for n in names]
    return None
