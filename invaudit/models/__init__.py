"""What a fitted estimator is, mathematically: ``adapt(estimator)`` returns the most exact
model form available (DESIGN.md, "Model forms").

Forms are tried in order of exactness: linear, invertible-linear, differentiable, trees,
black-box. Each lives in its own module exposing ``from_estimator(est) -> form | None``.
"""

from __future__ import annotations

import importlib

from ..errors import UnsupportedModelError
from .base import (
    FORM_KINDS,
    LINKS,
    BlackBoxForm,
    DifferentiableForm,
    InvertibleLinearForm,
    LinearForm,
    ModelForm,
    TreeBoxes,
    TreesForm,
    class_indices,
    estimator_name,
    sigmoid,
    softmax,
)

__all__ = [
    "adapt",
    "ModelForm",
    "LinearForm",
    "InvertibleLinearForm",
    "DifferentiableForm",
    "TreesForm",
    "TreeBoxes",
    "BlackBoxForm",
    "FORM_KINDS",
    "LINKS",
    "class_indices",
    "estimator_name",
    "sigmoid",
    "softmax",
]

# Most exact first. Modules are imported when reached, so adapting a linear model never
# imports the tree or network code.
_FORM_MODULES = ("linear", "invertible", "differentiable", "kernel", "quadratic", "neighbors", "trees",
                 "composite", "blackbox")


def _multilabel(estimator) -> bool:
    """Whether a classifier was fitted on a label-indicator matrix (several yes/no labels per row:
    MLPClassifier, OneVsRestClassifier, RidgeClassifier). Its ``classes_`` is one-dimensional (the
    label indices) but its ``predict`` gives one column per label: not a classifier of those classes."""
    final = estimator
    while hasattr(final, "steps") and getattr(final, "steps", None):
        final = final.steps[-1][1]
    for attr in ("_label_binarizer", "label_binarizer_"):
        y_type = getattr(getattr(final, attr, None), "y_type_", None)
        if isinstance(y_type, str) and y_type.startswith("multilabel"):
            return True
    return False


def adapt(estimator) -> ModelForm:
    """The most exact form of a fitted estimator.

    Parameters
    ----------
    estimator : object
        A fitted scikit-learn classifier or Pipeline.

    Returns
    -------
    ModelForm
        A :class:`LinearForm`, :class:`InvertibleLinearForm`, :class:`DifferentiableForm`,
        :class:`TreesForm` or :class:`BlackBoxForm` (the first whose module accepts it).

    Raises
    ------
    UnsupportedModelError
        When no form applies: the object cannot be queried for class scores, or it is not a
        fitted classifier.
    """
    classes = getattr(estimator, "classes_", None)
    if (isinstance(classes, list) and classes and all(hasattr(c, "__len__") for c in classes)) \
            or _multilabel(estimator):
        raise UnsupportedModelError(
            f"{type(estimator).__name__} predicts several labels per row (multi-output); invaudit audits "
            "classifiers with one label per row (audit each output's own classifier instead)")
    for name in _FORM_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        form = module.from_estimator(estimator)
        if form is not None:
            return form
    kind = type(estimator).__name__
    queryable = any(hasattr(estimator, m) for m in ("predict_proba", "decision_function", "predict"))
    if queryable and getattr(estimator, "classes_", None) is None:
        raise UnsupportedModelError(
            f"{kind} is not a fitted classifier (it has no classes_); invaudit cannot query it"
        )
    raise UnsupportedModelError(
        f"{kind} has neither predict_proba, decision_function nor predict; invaudit cannot query it"
    )
