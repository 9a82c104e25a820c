"""The linear form of a light-loaded model (issue 16): built without importing scikit-learn.

:func:`light_form` runs :func:`invaudit.models.linear.from_estimator` itself on the fitted state
that :mod:`invaudit.io._light` read from the file (that module compares classes by path and reads
plain attributes, so it gives the same ``W``, ``b``, link, classes, feature names and
preprocessing, bit for bit, as on the real estimator: tests/io/test_light_load.py). The result
is a :class:`LightLinearForm`: a :class:`~invaudit.models.base.LinearForm` whose ``estimator``
and ``final_estimator`` are the real scikit-learn objects, unpickled (full restricted load) the
first time something reads them, so any code that needs the estimator stays correct.

Its ``predict`` / ``predict_proba`` (what solvers verify answers with) replay scikit-learn's own
operations for a LogisticRegression after plain scalers, while scikit-learn is not imported and
the rows are finite float64 (:func:`sklearn_plan`; equal bit for bit, including on decision
boundaries: tests/io/test_light_load.py); anything else asks the real estimator. Pickled for a
worker process (``--jobs``), the form becomes the plain LinearForm of the real estimator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import LinearForm, to_jsonable

__all__ = ["LightLinearForm", "light_form", "light_estimator_name", "is_light", "sklearn_plan"]

_LAZY = object()


class LazyEstimator:
    """The estimator of a form built from a light state: unpickled when first read
    (``LoadedModel.estimator``). Mixed in before the form's class (linear, network, trees).

    ``light`` is the root :class:`~invaudit.io._light.LightObject` the form was built from.
    """

    light = None
    _loaded = None

    @property
    def estimator(self):
        value = self.__dict__.get("_estimator", _LAZY)
        return self._loaded.estimator if value is _LAZY else value

    @estimator.setter
    def estimator(self, value):  # the dataclass __init__ (None: lazy) or dataclasses.replace
        if value is not None:
            self.__dict__["_estimator"] = value

    @property
    def estimator_loaded(self) -> bool:
        """Whether the real estimator has been unpickled yet."""
        return "_estimator" in self.__dict__ or self._loaded.is_loaded


class LightLinearForm(LazyEstimator, LinearForm):
    """A :class:`LinearForm` whose estimator is unpickled only when read."""

    @property
    def final_estimator(self):
        value = self.__dict__.get("_final", _LAZY)
        if value is _LAZY:
            from .linear import split_pipeline

            value = split_pipeline(self.estimator)[1]
            self.__dict__["_final"] = value
        return value

    @final_estimator.setter
    def final_estimator(self, value):
        if value is not None:
            self.__dict__["_final"] = value

    def __reduce__(self):
        # to a worker process (--jobs, --scheduler), a copy: the plain LinearForm of the real
        # estimator, which is unpickled here first (a light state and its lazy loader stay here)
        import dataclasses

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(LinearForm) if f.init}
        return (_plain_form, (fields,))

    def influence_support(self):
        """:func:`invaudit.influence.supports` of this form, from the saved state: ``"logistic"``
        for a LogisticRegression with an L2 penalty or none, else None. Mirrors that function and
        its ``_penalty`` (tests/io/test_light_load.py compares them on every penalty setting)."""
        try:
            return self._influence_support()
        except Exception:  # a parameter the mirror does not read: ask the real estimator
            from invaudit.influence import supports

            return supports(self)

    def _influence_support(self):
        import math

        from invaudit.io._light import class_name

        from .linear import split_pipeline

        final = split_pipeline(self.light)[1]
        if class_name(final) != "LogisticRegression":
            return None
        pen = getattr(final, "penalty", "deprecated")
        l1_ratio = getattr(final, "l1_ratio", None)
        C = float(final.C)
        if pen == "deprecated":  # scikit-learn >= 1.8: l1_ratio and C say it
            name = ("l1" if l1_ratio == 1 else "elasticnet") if l1_ratio not in (None, 0, 0.0) else "l2"
            if math.isinf(C):
                name = "none"
        elif pen is None or pen == "none":
            name = "none"
        elif pen == "elasticnet" and l1_ratio in (None, 0, 0.0):
            name = "l2"
        else:
            name = pen
        return None if name in ("l1", "elasticnet") else "logistic"

    # --- the estimator's own answers, without unpickling it where they can be mirrored exactly ----

    def predict(self, X):
        plan = self._mirror(X)
        if plan is None:
            return super().predict(X)
        labels, _scores = _mirror_predict(plan, X)
        return labels

    def predict_proba(self, X):
        plan = self._mirror(X)
        if plan is None:
            return super().predict_proba(X)
        return _mirror_proba(plan, X)

    @property
    def has_proba(self) -> bool:
        if self.__dict__.get("_plan", _LAZY) is _LAZY:
            self.__dict__["_plan"] = sklearn_plan(self.light)
        if self.__dict__["_plan"] is not None:
            return True  # a LogisticRegression at the end
        return super().has_proba

    def _mirror(self, X):
        """The mirrored plan when ``X`` may be answered without scikit-learn, else None.

        Only while scikit-learn is not imported: then its configuration is the default one (no
        ``assume_finite``), which the mirror reproduces by leaving every non-finite input, and
        anything it does not model, to the real estimator (whose errors are scikit-learn's own).
        """
        if "sklearn" in sys.modules or self.__dict__.get("_estimator") is not None:
            return None
        if self.__dict__.get("_plan", _LAZY) is _LAZY:
            self.__dict__["_plan"] = sklearn_plan(self.light)
        plan = self.__dict__["_plan"]
        if plan is None:
            return None
        X = np.asarray(X)
        if X.dtype != np.float64 or X.ndim != 2 or X.shape[1] != plan.n_features or X.shape[0] == 0 \
                or not np.isfinite(X).all():
            return None
        return plan

    def describe(self) -> dict:
        """As :meth:`ModelForm.describe`, with the estimator's name read from the light state."""
        return light_describe(self)


def _plain_form(fields: dict) -> LinearForm:
    return LinearForm(**fields)


def light_describe(form) -> dict:
    """:meth:`ModelForm.describe` of a form built from a light state (its ``light`` attribute):
    the same fields, with the estimator's name read from that state instead of the estimator."""
    return {
        "estimator": light_estimator_name(form.light),
        "form": form.kind,
        "classes": [to_jsonable(c) for c in form.classes],
        "n_features": int(form.n_features),
        "feature_names": None if form.feature_names is None else list(form.feature_names),
        "preprocessing": list(form.preprocessing),
    }


def replay_scalers(steps, X) -> np.ndarray:
    """The affine scalers' ``transform`` replayed as scikit-learn computes it: a float64 copy of
    ``X`` (each scaler copies), then each ``(op, array)`` of ``steps`` in place, in order."""
    Z = np.array(X, dtype=np.float64)
    for op, a in steps:
        if op == "sub":
            Z -= a
        elif op == "div":
            Z /= a
        elif op == "mul":
            Z *= a
        else:
            Z += a
    return Z


def light_estimator_name(obj) -> str:
    """:func:`invaudit.models.base.estimator_name` of the object a light state stands for."""
    from invaudit.io._light import class_name

    steps = getattr(obj, "steps", None)
    if steps is not None:
        return f"{class_name(obj)}({', '.join(light_estimator_name(s) for _, s in steps)})"
    return class_name(obj)


def light_form(loaded) -> Optional[LightLinearForm]:
    """The linear form of a light-loaded model (``LoadedModel.light``), or None (then adapt the
    real estimator, ``loaded.estimator``, as always)."""
    root = getattr(loaded, "light", None)
    if root is None:
        return None
    from .linear import from_estimator

    try:
        form = from_estimator(root)
    except Exception:  # a state no fitted estimator has: the full load says what is wrong with it
        return None
    if form is None:
        return None
    out = LightLinearForm(
        estimator=None, W=form.W, b=form.b, link=form.link, classes=form.classes,
        n_features=form.n_features, feature_names=form.feature_names,
        preprocessing=form.preprocessing, final_estimator=None, pre_A=form.pre_A, pre_c=form.pre_c)
    out.light = root
    out._loaded = loaded
    return out


def is_light(form) -> bool:
    """Whether ``form`` came from a light load (its estimator may not be unpickled yet): a linear
    form here, or a network or trees form of :mod:`invaudit.models._light_nonlinear`."""
    if isinstance(form, LightLinearForm):
        return True
    light = sys.modules.get("invaudit.models._light_nonlinear")
    return light is not None and isinstance(form, (light.LightDifferentiableForm, light.LightTreesForm))


# --- scikit-learn's predict / predict_proba, mirrored operation for operation -------------------
#
# For a LogisticRegression, alone or after StandardScaler / MinMaxScaler / MaxAbsScaler /
# RobustScaler steps (copy=True, no clipping), scikit-learn 1.9's Pipeline.predict(X) with X a
# finite float64 array is: each scaler copies X (np.array, order kept) and updates it in place
# (StandardScaler: X -= mean_; X /= scale_; MinMaxScaler: X *= scale_; X += min_; MaxAbsScaler:
# X /= scale_; RobustScaler: X -= center_; X /= scale_), then LinearClassifierMixin:
# scores = X @ coef_.T + intercept_ (a 1-column result raveled), the label classes_[scores > 0]
# (binary) or classes_[argmax]; predict_proba: expit(scores) stacked as [1 - p, p] (binary,
# _predict_proba_lr) or softmax in place (max subtracted, np.exp, divided by the row sum).
# The same operations on the same arrays give the same bits; tests/io/test_light_load.py compares
# them with the real estimator on every supported layout, including points on the boundary.

_LR = ("sklearn.linear_model._logistic", "LogisticRegression")
_SCALERS = {
    ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.preprocessing._data", "MinMaxScaler"),
    ("sklearn.preprocessing._data", "MaxAbsScaler"),
    ("sklearn.preprocessing._data", "RobustScaler"),
}


@dataclass(frozen=True)
class _Plan:
    steps: tuple  # (operation, array) pairs, applied in place in order: "sub", "div", "mul", "add"
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    n_features: int


def _f64(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float64


def _scaler_ops(step):
    """In-place operations of a scaler's transform, or None when not mirrored."""
    name = step.name
    state = step.state
    if state.get("copy", True) is not True:
        return None
    if name == "StandardScaler":
        ops = []
        if state.get("with_mean", True):
            ops.append(("sub", state.get("mean_")))
        if state.get("with_std", True):
            ops.append(("div", state.get("scale_")))
    elif name == "MinMaxScaler":
        if state.get("clip", False) is not False:
            return None
        ops = [("mul", state.get("scale_")), ("add", state.get("min_"))]
    elif name == "MaxAbsScaler":
        if state.get("clip", False) is not False:
            return None
        ops = [("div", state.get("scale_"))]
    elif name == "RobustScaler":
        ops = []
        if state.get("with_centering", True):
            ops.append(("sub", state.get("center_")))
        if state.get("with_scaling", True):
            ops.append(("div", state.get("scale_")))
    else:
        return None
    if not all(_f64(a) and a.ndim == 1 for _, a in ops):
        return None
    return ops


def sklearn_plan(root) -> Optional[_Plan]:
    """What :func:`_mirror_predict` replays for a light-loaded model, or None (then the real
    estimator answers)."""
    try:
        return _plan(root)
    except Exception:  # anything unexpected in the state: the real estimator answers
        return None


def scaled_final(root):
    """``(ops, final)`` for a light-loaded estimator, bare or after scikit-learn scalers only:
    the scalers' replay operations (:func:`_scaler_ops`, in order) and the final step; None for
    anything else (another kind of step, a state that is not a dict, a scaler state it cannot
    replay)."""
    from invaudit.io._light import LightObject, class_path

    from .linear import _flatten, _is_passthrough, _is_pipeline

    steps = _flatten(root) if _is_pipeline(root) else [root]
    steps = [s for s in steps if not _is_passthrough(s)]
    if not steps or not all(isinstance(s, LightObject) and isinstance(s.state, dict) for s in steps):
        return None
    *pre, final = steps
    ops = []
    for step in pre:
        if class_path(step) not in _SCALERS:
            return None
        step_ops = _scaler_ops(step)
        if step_ops is None:
            return None
        ops.extend(step_ops)
    return ops, final


def _plan(root) -> Optional[_Plan]:
    from invaudit.io._light import class_path

    found = scaled_final(root)
    if found is None:
        return None
    ops, final = found
    if class_path(final) != _LR:
        return None
    coef, intercept, classes = (final.state.get(k) for k in ("coef_", "intercept_", "classes_"))
    if not (_f64(coef) and coef.ndim == 2 and _f64(intercept) and intercept.ndim == 1
            and isinstance(classes, np.ndarray) and classes.ndim == 1 and len(classes) >= 2
            and coef.shape[0] == (1 if len(classes) == 2 else len(classes)) == intercept.shape[0]):
        return None
    d = coef.shape[1]
    if not all(a.shape == (d,) for _, a in ops):
        return None
    return _Plan(steps=tuple(ops), coef=coef, intercept=intercept, classes=classes, n_features=d)


def _mirror_scores(plan: _Plan, X) -> np.ndarray:
    Z = np.asarray(X, dtype=np.float64)
    if plan.steps:
        Z = replay_scalers(plan.steps, Z)
    scores = Z @ plan.coef.T + plan.intercept
    return scores.reshape(-1) if scores.shape[1] == 1 else scores


def _mirror_predict(plan: _Plan, X):
    scores = _mirror_scores(plan, X)
    idx = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
    return np.take(plan.classes, idx, axis=0), scores


def _mirror_proba(plan: _Plan, X) -> np.ndarray:
    scores = _mirror_scores(plan, X)
    if scores.ndim == 1:
        from scipy.special import expit

        prob = expit(scores, out=scores)
        return np.stack([1 - prob, prob], axis=1)
    scores -= np.max(scores, axis=1).reshape(-1, 1)
    np.exp(scores, out=scores)
    scores /= np.sum(scores, axis=1).reshape(-1, 1)
    return scores
