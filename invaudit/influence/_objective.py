"""The training objective of a fitted model, built once per run and shared by influence and triage.

An :class:`Objective` holds what every influence question needs: the features the final
estimator sees, the per-row loss terms at the fitted parameters, the Hessian of the estimator's
*own* training objective and its factorisation (or a conjugate-gradient solver), and a way to
refit a clone without some rows (the independent reference the estimates are checked against).

Two objectives are modelled:

- :class:`LogisticObjective` for scikit-learn's ``LogisticRegression`` (binary and multinomial;
  L2 penalty or none; ``C``; ``fit_intercept``; ``class_weight`` including ``"balanced"``), alone
  or at the end of a Pipeline whose preprocessing stays fixed. scikit-learn minimises (every
  solver, ``sklearn/linear_model/_logistic.py``)::

      F(theta) = sum_i s_i * l_i(theta) + (lam / 2) * sum_{k, d} R_d * Theta[k, d] ** 2

  with ``s_i`` the class weight of row ``i``, ``lam = 1 / C`` (0 without a penalty), ``l_i`` the
  log loss, ``Theta`` the ``(M, D + 1)`` matrix ``[coef_, intercept_]`` (``M = 1`` binary with a
  sigmoid, ``M = K`` multinomial with a softmax) and ``R_d = 1`` on coefficients, ``0`` on the
  intercept (liblinear penalises its synthetic intercept feature: ``R = 1 / intercept_scaling**2``).
  This is ``C * sum_i s_i l_i + 1/2 ||w||^2`` divided by ``C``, so it has the same minimiser.
  The softmax is over-parametrised: adding one vector to every class row of ``Theta`` leaves the
  probabilities unchanged, so along every unpenalised column (the intercept; every column without
  a penalty) the Hessian is singular. Every gradient of a log loss is orthogonal to those
  directions, so adding ``c * N N^T`` (``N``: the orthonormal null directions) gives a positive
  definite ``H_hat`` with ``H_hat^-1 g = H^+ g`` for every gradient ``g`` — the pseudo-inverse on
  the identifiable subspace — and a Cholesky factorisation can be used.

- :class:`NetworkObjective` for ``MLPClassifier`` (through :class:`~invaudit.models.base.
  DifferentiableForm`): ``F = sum_i l_i + (alpha / 2) ||coefs||^2`` (scikit-learn's mean loss
  times ``n``), Hessian-vector products from the form, damping ``damping * n * I``, and conjugate
  gradients. Non-convex: every answer is ``exact = False``.

References
----------
Koh & Liang (2017), "Understanding black-box predictions via influence functions", ICML,
eq. (2) (``H^-1`` of the empirical risk) and section 3 (conjugate gradients, damping).
Cook & Weisberg (1982), "Residuals and influence in regression" (leave-one-out via a rank-one
update); Sherman & Morrison (1950); Woodbury (1950).
"""

from __future__ import annotations

import copy
import functools
import sys
import warnings
from typing import Callable, Optional

import numpy as np

from invaudit.errors import InputError, SolverError, UnsupportedModelError
from invaudit.models.affine import fold_affine, is_affine_step
from invaudit.models.base import DifferentiableForm, ModelForm

from ._parallel import dense, row_ranges, run_blocks

__all__ = ["Objective", "LogisticObjective", "NetworkObjective", "build_objective",
           "SUPPORTED_MESSAGE", "ESTIMATES"]

SUPPORTED_MESSAGE = ("influence needs LogisticRegression or MLPClassifier (optionally after "
                     "preprocessing)")
ESTIMATES = ("first-order", "leverage-corrected")
#: Largest parameter count for which the Hessian is formed and factorised (P x P doubles).
MAX_DIRECT_PARAMS = 4000
#: Above ``MAX_DIRECT_PARAMS`` and up to this many parameters the Hessian is still formed (from
#: its class-pair x feature-pair blocks) and Cholesky-factorised, without the explicit inverse:
#: first-order solves are two triangular solves instead of conjugate gradients (many classes:
#: K = 50 classes on 100 features is 5,050 parameters, a 0.2 GB factor; K = 100 is 10,100, a
#: 0.8 GB factor whose formation and factorisation take a few tens of seconds, still far less
#: than conjugate gradients for a hundred test rows).
MAX_FACTOR_PARAMS = 12_000
#: Class-rows per chunk of removed training rows in the softmax loss changes (each chunk's
#: block of score shifts is exponentiated and summed while it is still in cache).
_SHIFT_CHUNK = 1024
#: Training rows per chunk of :meth:`LogisticObjective.score_shifts` (their ``M x M`` blocks).
_SHIFT_ROWS = 4096
#: Below this many (training rows x parameters) first-order loss changes use the gradient
#: matrix itself; above it, chunks of rows (:meth:`LogisticObjective._first_order_products`).
_FIRST_ORDER_DIRECT = 4_000_000
#: A fitted model whose objective gradient (mean scale, like scikit-learn's ``tol``) exceeds
#: this is not at its optimum; influence is then not exact.
STATIONARY_TOL = 1e-4
PRE_FIXED_NOTE = "the preprocessing ({}) stays fixed; influence is for the final estimator's parameters"


def _final_and_pre(estimator):
    steps = getattr(estimator, "steps", None)
    if steps:
        return steps[-1][1], estimator[:-1]
    return estimator, None


def _model_parts(form):
    """``(final, pre)`` of ``form``'s estimator, as :func:`_final_and_pre` gives them; for a
    light-loaded LogisticRegression (alone or after scalers whose transform is mirrored,
    :func:`invaudit.models._light_linear.sklearn_plan`) whose estimator is not unpickled yet,
    its saved state instead (a :class:`~invaudit.io._light.LightObject`, read through the same
    attributes) and :class:`_LightPre`: building the objective then imports no scikit-learn."""
    if getattr(form, "estimator_loaded", True) is False:
        parts = _light_parts(form)
        if parts is not None:
            return parts
    return _final_and_pre(getattr(form, "estimator", None))


def light_tree_state(form):
    """The saved state of a light-loaded DecisionTree / ExtraTree / RandomForest / ExtraTrees
    classifier (:class:`invaudit.models._light_nonlinear.LightTreesForm`) whose estimator is not
    unpickled yet: a :class:`~invaudit.io._light.LightObject` holding exactly the real estimator's
    ``__dict__`` (its parameters ``class_weight``, ``bootstrap``, ... and fitted attributes), so
    that what :func:`supports` and :func:`invaudit.influence._trees.tree_refusal` read of the
    estimator (its class name and plain attributes) is read from it, without scikit-learn. Else
    None (then the estimator itself is read, unpickled if need be)."""
    light = sys.modules.get("invaudit.models._light_nonlinear")  # no light tree form without it
    if light is None or not isinstance(form, light.LightTreesForm) or form.estimator_loaded:
        return None
    from invaudit.io._light import LightObject

    root = form.light
    return root if type(root) is LightObject else None


def _light_parts(form):
    from invaudit.io._light import LightObject, class_path
    from invaudit.models._light_linear import sklearn_plan

    root = getattr(form, "light", None)
    if type(root) is not LightObject:
        return None
    plan = sklearn_plan(root)
    if plan is None:
        return None
    if class_path(root) == ("sklearn.linear_model._logistic", "LogisticRegression"):
        return root, None
    steps = getattr(root, "steps", None)
    # a flat Pipeline (no nested one, no passthrough) of light objects: the plan's operations are
    # then those of ``steps[:-1]``, what ``estimator[:-1]`` holds
    if not (isinstance(steps, list) and len(steps) >= 2
            and all(isinstance(t, tuple) and len(t) == 2 and type(t[1]) is LightObject
                    and class_path(t[1]) != ("sklearn.pipeline", "Pipeline") for t in steps)):
        return None
    return steps[-1][1], _LightPre(form, steps[:-1], plan.steps)


class _LightPre:
    """The fixed preprocessing (scalers) of a light-loaded pipeline: ``transform`` replays
    scikit-learn's own operations (a copy, then in place, step by step: the same bits,
    tests/cli/test_mislabel_light.py) on finite float64 rows and hands anything else to the real
    steps; ``steps`` are the light steps (names and classes, for notes)."""

    def __init__(self, form, steps, ops):
        self.form, self.steps, self._ops = form, list(steps), tuple(ops)

    @property
    def real(self):
        """The real preprocessing (the estimator unpickled on first use)."""
        return _final_and_pre(self.form.estimator)[1]

    def transform(self, X):
        X = np.asarray(X)
        if X.dtype != np.float64 or X.ndim != 2 or not np.isfinite(X).all():
            return self.real.transform(X)
        from invaudit.models._light_linear import replay_scalers

        return replay_scalers(self._ops, X)


def _real_parts(obj):
    """``obj.estimator`` and ``obj.pre`` of an objective as real scikit-learn objects (the
    estimator unpickled where the objective was built from a light state)."""
    from invaudit.io._light import LightObject

    final, pre = obj.estimator, obj.pre
    if type(final) is LightObject or isinstance(pre, _LightPre):
        real_final, real_pre = _final_and_pre(obj.form.estimator)
        final = real_final if type(final) is LightObject else final
        pre = real_pre if isinstance(pre, _LightPre) else pre
    return final, pre


def supports(form) -> str | None:
    """Which objective :func:`build_objective` would model for ``form``: ``"logistic"`` (convex,
    exact Hessian), ``"network"`` (damped, approximate), ``"kernel"`` (SVC / NuSVC: a smoothed-hinge
    surrogate, :mod:`._kernel`) or ``None`` (no twice-differentiable loss
    invaudit models). The one place ``info``, ``mislabel`` and ``influence`` decide support."""
    if isinstance(form, DifferentiableForm):
        return "network"
    from invaudit.io._light import class_name

    final = light_tree_state(form)  # a light-loaded tree or forest: its saved state (no unpickling)
    if final is None:
        final, _pre = _model_parts(form)  # a light-loaded LogisticRegression: its saved state
    if class_name(final) in ("SVC", "NuSVC"):  # smoothed-hinge surrogate (influence/_kernel.py)
        from ._kernel import is_svm

        return "kernel" if is_svm(form) else None
    if class_name(final) != "LogisticRegression":
        return None
    try:
        _penalty(final)
    except UnsupportedModelError:  # an L1 or elastic-net penalty
        return None
    return "logistic"


def _check_rows(X, y, n_features, what):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"{what} must be a 2-D array of features, got shape {X.shape}.")
    if X.shape[1] != n_features:
        raise InputError(f"{what} has {X.shape[1]} features but the model expects {n_features}.")
    if not np.all(np.isfinite(X)):
        raise InputError(f"{what} contains NaN or infinite values.")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise InputError(f"{what} has {X.shape[0]} rows but {y.shape[0] if y.ndim else 0} labels.")
        if not np.issubdtype(y.dtype, np.integer):
            if np.all(np.mod(y, 1) == 0):
                y = y.astype(np.intp)
            else:
                raise InputError(f"the labels of {what} must be class indices (0..K-1).")
        y = y.astype(np.intp)
    return X, y


class Objective:
    """Interface shared by the two objectives (see the module docstring).

    Attributes
    ----------
    kind : ``"logistic"`` or ``"network"``.
    form : the model form it was built from.
    X, y : the training rows (input units) and their class indices.
    n_rows, n_params : sizes.
    convex : whether the objective is convex (influence is then well defined globally).
    exact : True when the Hessian solve is a Cholesky factorisation at a stationary point of a
        convex objective, so ``H^-1 g`` is exact to rounding.
    method : ``"cholesky"`` or ``"conjugate-gradient"``.
    stationarity : max-abs gradient of the objective at the fitted parameters, divided by the
        summed row weights (scikit-learn's ``tol`` scale).
    estimates : the estimates this objective can give; ``default_estimate`` is the best of them.
    notes : sentences every report built on this objective must carry.
    """

    kind: str
    form: ModelForm
    X: np.ndarray
    y: np.ndarray
    n_rows: int
    n_params: int
    convex: bool
    exact: bool
    method: str
    stationarity: float
    estimates: tuple
    notes: tuple

    @property
    def default_estimate(self) -> str:
        return self.estimates[-1]

    def resolve_estimate(self, estimate: str) -> str:
        if estimate == "auto":
            return self.default_estimate
        if estimate not in self.estimates:
            raise InputError(
                f"estimate {estimate!r} is not available for this model; choose one of "
                f"{', '.join(self.estimates)} or auto."
            )
        return estimate

    #: Whether blocks of test rows may be ranked side by side (no state changes during it).
    thread_safe: bool = False

    def prepare(self, estimate: str) -> None:
        """Compute (and cache) the per-training-row terms ``estimate`` needs, so that ranking
        blocks of test rows only reads shared state."""

    def check_test(self, X_test, y_test):
        """The test rows as float64 and their labels as class indices, or one clear error."""
        X, y = _check_rows(X_test, y_test, int(self.form.n_features), "the test data")
        K = int(self.form.n_classes)
        if y is not None and y.size and (y.min() < 0 or y.max() >= K):
            raise InputError(f"test labels must be class indices in 0..{K - 1}.")
        return X, y

    # --- implemented by subclasses -------------------------------------------------------

    def losses(self, X, y) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predicted_index(self, X) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def test_gradients(self, X, y) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def solve(self, G: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def loss_changes(self, X_test, y_test, estimate, rows=None, U=None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def feature_gradients(self, u, rows) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def refit_without(self, rows, *, tol=1e-10, max_iter=None):  # pragma: no cover - interface
        raise NotImplementedError

    def refit_losses(self, fitted, X, y) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def group_prediction(self, rows, X_test, y_test) -> tuple:  # pragma: no cover - interface
        raise NotImplementedError


def _training_rows(X_train, y_train, n_features: int, K: int):
    """The training rows and their labels (class indices ``0..K-1``), checked; every objective's
    first step."""
    X, y = _check_rows(X_train, y_train, int(n_features), "the training data")
    if y is None:
        raise InputError("influence needs the training labels.")
    if y.size and (y.min() < 0 or y.max() >= K):
        raise InputError(f"training labels must be class indices in 0..{K - 1}.")
    return X, y


@dense
def build_objective(form: ModelForm, X_train, y_train, *, damping: float = 0.01,
                    max_direct_params: int = MAX_DIRECT_PARAMS, cg_tol: float = 1e-10,
                    cg_max_iter: Optional[int] = None,
                    max_factor_params: int = MAX_FACTOR_PARAMS) -> Objective:
    """The training objective of ``form``'s estimator on ``(X_train, y_train)``, ready for
    influence questions.

    Parameters
    ----------
    form : ModelForm
        Any form; what matters is the estimator it holds. Supported: ``LogisticRegression``
        (L2 or no penalty), alone or at the end of a Pipeline, and ``MLPClassifier`` through a
        :class:`~invaudit.models.base.DifferentiableForm`.
    X_train : (n, D) array in *input* units (before any preprocessing).
    y_train : (n,) class indices (positions in ``form.classes``).
    damping : float
        Networks only: ``damping * n`` is added to the Hessian's diagonal (Koh & Liang, sec. 3,
        used 0.01 on the mean Hessian); multiplied by 10 whenever conjugate gradients meet
        negative curvature.
    max_direct_params : int
        Above this parameter count the Hessian is not inverted and only the first-order
        estimate is offered.
    max_factor_params : int
        Logistic regression above ``max_direct_params``: up to this parameter count the Hessian
        is formed and Cholesky-factorised (solves exact to rounding); above it, conjugate
        gradients on exact Hessian-vector products.
    cg_tol, cg_max_iter : conjugate-gradient relative residual and iteration cap.

    Raises
    ------
    UnsupportedModelError
        The model has no twice-differentiable loss invaudit models (trees, black boxes, hinge
        losses, L1 penalties).
    InputError
        Shapes or labels that do not match the model.
    """
    from invaudit.io._light import class_name

    final, _pre = _model_parts(form)
    if supports(form) == "kernel":
        from ._kernel import KernelObjective

        return KernelObjective(form, X_train, y_train)
    if isinstance(form, DifferentiableForm) or class_name(final) == "MLPClassifier":
        if not isinstance(form, DifferentiableForm):
            raise UnsupportedModelError(
                f"{SUPPORTED_MESSAGE}; this MLPClassifier's preprocessing has no differentiable form."
            )
        return NetworkObjective(form, X_train, y_train, damping=damping, cg_tol=cg_tol,
                                cg_max_iter=cg_max_iter)
    if class_name(final) == "LogisticRegression":
        return LogisticObjective(form, X_train, y_train, max_direct_params=max_direct_params,
                                 cg_tol=cg_tol, cg_max_iter=cg_max_iter,
                                 max_factor_params=max_factor_params)
    name = type(final).__name__ if final is not None else type(form).__name__
    from invaudit.models.capabilities import capabilities

    row = next((c for c in capabilities(form) if c.command == "influence"), None)
    if row is not None and row.available == "no" and row.method:
        # the reason `info` gives (composites, predict-only models, ...), word for word
        raise UnsupportedModelError(f"influence is not available for this {name}: {row.method.rstrip('.')}.")
    smooth = form.kind not in ("trees",) and hasattr(final, "predict_proba")
    reason = "is not one of them" if smooth else "has no twice-differentiable loss"
    raise UnsupportedModelError(f"{SUPPORTED_MESSAGE}; {name} {reason}.")


# =============================================================================================
# Logistic regression
# =============================================================================================

def _penalty(est) -> tuple[float, str]:
    """``(lam, name)``: ``lam = 1/C`` for an L2 penalty, 0 for none; refuse L1 / elastic-net."""
    pen = getattr(est, "penalty", "deprecated")
    l1_ratio = getattr(est, "l1_ratio", None)
    C = float(est.C)
    if pen == "deprecated":  # scikit-learn >= 1.8: l1_ratio and C say it
        if l1_ratio not in (None, 0, 0.0):
            name = "l1" if l1_ratio == 1 else "elasticnet"
        else:
            name = "l2"
        if np.isinf(C):
            name = "none"
    elif pen is None or pen == "none":
        name = "none"
    elif pen == "elasticnet" and (l1_ratio in (None, 0, 0.0)):
        name = "l2"
    else:
        name = pen
    if name in ("l1", "elasticnet"):
        raise UnsupportedModelError(
            f"{SUPPORTED_MESSAGE} with an L2 penalty or none; this LogisticRegression uses an "
            f"{name} penalty, which is not twice differentiable."
        )
    if name == "none" or np.isinf(C):
        return 0.0, "none"
    return 1.0 / C, "l2"


def _row_weights(est, y: np.ndarray, K: int, classes) -> tuple[np.ndarray, bool]:
    """Per-row class weights as scikit-learn computes them from these labels."""
    cw = getattr(est, "class_weight", None)
    counts = np.bincount(y, minlength=K)
    if cw is None:
        return np.ones(y.shape[0]), False
    if isinstance(cw, str) and cw == "balanced":
        if np.any(counts == 0):
            raise InputError("the training labels do not contain every class the model knows, "
                             "so its balanced class weights cannot be recomputed.")
        per_class = y.shape[0] / (K * counts)
        return per_class[y], True
    if isinstance(cw, dict):
        per_class = np.array([float(cw.get(c, cw.get(_plain(c), 1.0))) for c in classes])
        return per_class[y], False
    raise UnsupportedModelError(f"{SUPPORTED_MESSAGE}; class_weight={cw!r} is not understood.")


def _plain(c):
    return c.item() if isinstance(c, np.generic) else c


class LogisticObjective(Objective):
    """scikit-learn's LogisticRegression objective at its fitted parameters.

    Per row ``i`` with features ``z_i`` (what the final estimator sees) and ``zt_i = [z_i, 1]``
    (``z_i`` alone without an intercept), scores ``eta_i = Theta zt_i`` (``M`` of them),
    probabilities ``p_i``, the loss gradient w.r.t. the scores ``r_i = p_i - onehot(y_i)``
    (binary: ``p_i - y_i``) and its Hessian ``A_i = diag(p_i) - p_i p_i^T`` (binary:
    ``p_i (1 - p_i)``). With ``Z_i = I_M (x) zt_i`` (``P x M``, ``P = M (D + 1)``) the row's
    parameter gradient is ``g_i = Z_i r_i`` and its Hessian ``Z_i A_i Z_i^T``, so

        H = sum_i s_i Z_i A_i Z_i^T + lam * diag(R)        (+ c N N^T for the softmax)

    Parameters are ``Theta`` flattened row by row (class-major): entry ``(k, d)`` at
    ``k * (D + 1) + d``.
    """

    kind = "logistic"
    thread_safe = True

    def __init__(self, form, X_train, y_train, *, max_direct_params=MAX_DIRECT_PARAMS,
                 cg_tol=1e-10, cg_max_iter=None, final=None, max_factor_params=MAX_FACTOR_PARAMS,
                 _features=None):
        # ``_features``: ``(Z, Zt)`` of ``X_train`` already computed (:meth:`refitted`)
        self.form = form
        # the real estimator's parts, or (light-loaded, not unpickled) its saved state: the same
        # attributes, the same numbers
        final_, pre = _model_parts(form)
        # ``final``: a refitted copy of the final estimator to use instead (same preprocessing)
        final = final_ if final is None else final
        self.estimator = final
        self.pre = pre
        if not hasattr(final, "coef_"):
            raise InputError("the LogisticRegression in this model is not fitted.")
        self.classes = np.asarray(final.classes_)
        K = len(self.classes)
        self.K = K
        X, y = _training_rows(X_train, y_train, form.n_features, K)
        self.X, self.y = X, y
        self.n_rows = X.shape[0]
        if self.n_rows < 2:
            raise InputError("influence needs at least two training rows.")

        coef = np.asarray(final.coef_, dtype=np.float64)
        intercept = np.asarray(final.intercept_, dtype=np.float64).reshape(-1)
        self.M = coef.shape[0]
        if (K == 2) != (self.M == 1) or (K > 2 and self.M != K):
            raise UnsupportedModelError(
                f"{SUPPORTED_MESSAGE}; this LogisticRegression is one-vs-rest, whose objective "
                "is not the log loss of its probabilities."
            )
        self.link = "sigmoid" if self.M == 1 else "softmax"
        self.fit_intercept = bool(final.fit_intercept)
        self.D = coef.shape[1]
        self.D1 = self.D + int(self.fit_intercept)
        self.n_params = self.M * self.D1
        self.Theta = np.column_stack([coef, intercept]) if self.fit_intercept else coef.copy()

        self.lam, self.penalty = _penalty(final)
        R = np.ones(self.D1)
        if self.fit_intercept:
            if getattr(final, "solver", "lbfgs") == "liblinear":
                R[-1] = 1.0 / float(final.intercept_scaling) ** 2
            else:
                R[-1] = 0.0
        self.Rcol = R
        self.s, self.balanced = _row_weights(final, y, K, self.classes)

        self.Z = self.features(X) if _features is None else _features[0]
        if self.Z.shape[1] != self.D:
            raise InputError(f"the preprocessing gives {self.Z.shape[1]} features but the "
                             f"classifier expects {self.D}.")
        self.Zt = self._aug(self.Z) if _features is None else _features[1]
        self._zero_columns = np.flatnonzero(~np.any(self.Zt != 0.0, axis=0))
        self.eta = self.Zt @ self.Theta.T
        # A_i (n x M x M) is formed only where a path needs it (leverage, feature gradients):
        # with many classes it is the largest per-row array
        self.p, self.r, self._A = self._terms(self.eta, y, hessians=False)

        notes = []
        if pre is not None:
            from invaudit.io._light import class_name

            names = ", ".join(class_name(s) for _, s in pre.steps) or "none"
            notes.append(PRE_FIXED_NOTE.format(names))
        if self.balanced:
            notes.append("class_weight='balanced' is recomputed from the training labels, and a "
                         "removal's effect on those weights is included")

        # null directions of the over-parametrised softmax (unpenalised columns)
        self.null_cols = np.flatnonzero(self.lam * self.Rcol == 0) if self.M > 1 else np.array([], int)

        grad = self._objective_gradient(self.s, self.r, self.Zt, self.Theta)
        self.stationarity = float(np.max(np.abs(grad)) / self.s.sum())

        self.convex = True
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter
        self._chol = None
        if self.n_params <= max_direct_params:
            self.method = "cholesky"
            H = self.hessian(self.s, self.A if self.M == 1 else None, self.Zt, p=self.p)
            self.Hinv, self.rank_deficient = _inverse(H)
            self._H = H  # H_hat itself: the refit's Newton-chord matrix starts from it
            self.estimates = ESTIMATES
            if self.rank_deficient:
                notes.append("the Hessian is singular (linearly dependent features without a "
                             "penalty): its pseudo-inverse on the directions the data determine "
                             "is used")
        else:
            self.Hinv = None
            self._H = None
            self.rank_deficient = False
            self.estimates = ("first-order",)
            if self.n_params <= max_factor_params:
                self._chol = _cholesky(self._factor_hessian(self.s))
            if self._chol is not None:
                self.method = "cholesky"
                notes.append(f"{self.n_params} parameters: the Hessian is Cholesky-factorised "
                             "without its explicit inverse, first-order estimate only")
            else:
                self.method = "conjugate-gradient"
                notes.append(f"{self.n_params} parameters: Hessian solves by conjugate gradients, "
                             "first-order estimate only")
        self.exact = self.method == "cholesky" and self.stationarity <= STATIONARY_TOL
        if self.stationarity > STATIONARY_TOL:
            notes.append(f"the model is not at its optimum (objective gradient {self.stationarity:.1e} "
                         "on scikit-learn's tol scale); influence assumes it is")
        self.notes = tuple(notes)
        self._Q = None
        self._Qu = None
        self._class_shift = None
        self._steps = None
        self._shift_ops = {}
        self._shifts = {}

    # --- per-row terms ---------------------------------------------------------------------
    def features(self, X) -> np.ndarray:
        """What the final estimator sees: ``pre.transform(X)`` (or ``X``), float64."""
        X = np.asarray(X, dtype=np.float64)
        if self.pre is None:
            return X
        return np.asarray(self.pre.transform(X), dtype=np.float64)

    def _aug(self, Z):
        return np.column_stack([Z, np.ones(Z.shape[0])]) if self.fit_intercept else Z

    def _terms(self, eta, y, hessians=True):
        n = eta.shape[0]
        if self.M == 1:
            p1 = _sigmoid(eta[:, 0])
            p = np.column_stack([1.0 - p1, p1])
            r = (p1 - (y == 1))[:, None]
            A = (p1 * (1.0 - p1))[:, None, None]
        else:
            p = eta - eta.max(axis=1, keepdims=True)
            np.exp(p, out=p)
            p /= p.sum(axis=1, keepdims=True)
            r = p.copy()
            r[np.arange(n), y] -= 1.0
            A = self._softmax_hessians(p) if hessians else None
        return p, r, A

    @staticmethod
    def _softmax_hessians(p):
        """``A_i = diag(p_i) - p_i p_i^T`` for every row, ``(n, M, M)``."""
        A = -p[:, :, None] * p[:, None, :]
        idx = np.arange(p.shape[1])
        A[:, idx, idx] += p
        return A

    @property
    def A(self) -> np.ndarray:
        """The rows' score Hessians ``A_i`` (``(n, M, M)``), formed on first use."""
        if self._A is None:
            self._A = self._softmax_hessians(self.p)
        return self._A

    def _loss_from_scores(self, eta, y):
        if self.M == 1:
            sign = np.where(y == 1, 1.0, -1.0)
            return np.logaddexp(0.0, -sign * eta[:, 0])
        return _logsumexp(eta, axis=1) - eta[np.arange(eta.shape[0]), y]

    def losses(self, X, y) -> np.ndarray:
        """Log loss of each row at the fitted parameters."""
        eta = self._aug(self.features(X)) @ self.Theta.T
        return self._loss_from_scores(eta, np.asarray(y))

    def predicted_index(self, X) -> np.ndarray:
        eta = self._aug(self.features(X)) @ self.Theta.T
        return (eta[:, 0] > 0).astype(np.intp) if self.M == 1 else np.argmax(eta, axis=1)

    def proba(self, X) -> np.ndarray:
        """``(T, K)`` probabilities at the fitted parameters."""
        eta = self._aug(self.features(X)) @ self.Theta.T
        return self._terms(eta, np.zeros(eta.shape[0], dtype=np.intp), hessians=False)[0]

    @property
    def train_losses(self) -> np.ndarray:
        return self._loss_from_scores(self.eta, self.y)

    @property
    def train_proba(self) -> np.ndarray:
        return self.p

    # --- objective, Hessian, solves ----------------------------------------------------------
    def _objective_gradient(self, s, r, Zt, Theta):
        # (D1 x n) @ (n x M), transposed: multi-threaded BLAS is pathologically slow on the
        # product written the other way round (M x n) @ (n x D1)
        G = (Zt.T @ (s[:, None] * r)).T  # (M, D1)
        return G + self.lam * Theta * self.Rcol

    def hessian(self, s, A, Zt, augment: bool = True, p=None) -> np.ndarray:
        """``H_hat`` (P x P): the Hessian of the objective (row weights ``s``) plus, with
        ``augment``, ``c N N^T`` on the softmax's null directions.

        Block ``(k, l)`` is ``Zt^T diag(s * A[:, k, l]) Zt``. At the training rows with their
        probabilities ``p`` (softmax) the distinct class-pair x feature-pair entries come from
        one product per chunk of rows (:meth:`_pair_hessian`; ``A`` is not needed). Elsewhere,
        with the probabilities ``p`` (``A_i = diag(p_i) - p_i p_i^T``) and weights ``s >= 0`` it
        is formed as
        ``blockdiag_k(Zt^T diag(s p_k) Zt) - V^T V`` with ``V_i = sqrt(s_i) p_i (x) zt_i``: one
        Gram matrix (:func:`_gram`) and one product for the diagonal blocks.
        Otherwise the ``M (M + 1) / 2`` distinct blocks come from one product over the rows'
        pair products (:func:`_weighted_grams`)."""
        M, D1, P = self.M, self.D1, self.n_params
        n = Zt.shape[0]
        if M == 1:
            w = s * A[:, 0, 0]
            if np.all(w >= 0):
                sw = np.sqrt(w)[:, None]
                H = _gram(lambda a, b: sw[a:b] * Zt[a:b], n, D1)
            else:
                H = (Zt * w[:, None]).T @ Zt
        elif p is not None and Zt is self.Zt and p is self.p:
            return self._pair_hessian(s, augment)
        elif p is not None and np.all(s >= 0):
            Zs = np.sqrt(s)[:, None] * Zt

            def rows_of(a, b):  # [V_i, Zs_i] with V_i = sqrt(s_i) p_i (x) zt_i
                W = np.empty((b - a, P + D1))
                np.multiply(p[a:b, :, None], Zs[a:b, None, :], out=W[:, :P].reshape(b - a, M, D1))
                W[:, P:] = Zs[a:b]
                return W

            # one Gram matrix of [V, Zs]: V^T V, and Zs^T V whose block k is the diagonal
            # part's block sum_i s_i p_ik zt_i zt_i^T
            G = _gram(rows_of, n, P + D1)
            H = -G[:P, :P]
            H4 = H.reshape(M, D1, M, D1)
            H4[np.arange(M), :, np.arange(M), :] += G[P:, :P].reshape(D1, M, D1).transpose(1, 0, 2)
        else:
            ku, lu = np.triu_indices(M)
            blocks = _weighted_grams(Zt, s[:, None] * A[:, ku, lu])  # (pairs, D1, D1)
            H = np.empty((M, D1, M, D1))
            H[ku, :, lu, :] = blocks
            H[lu, :, ku, :] = blocks.transpose(0, 2, 1)
            H = H.reshape(P, P)
        return self._penalise(H, augment)

    def _penalise(self, H, augment: bool) -> np.ndarray:
        """``H`` (P x P, in place) plus the L2 penalty and, with ``augment``, the stand-in
        curvature of the null columns (the pieces every Hessian builder above adds)."""
        M, D1, P = self.M, self.D1, self.n_params
        H[np.diag_indices_from(H)] += self.lam * np.tile(self.Rcol, M)
        if augment and self.null_cols.size:
            c = max(float(np.trace(H)) / P, 1e-12)
            H4 = H.reshape(M, D1, M, D1)
            for d in self.null_cols:
                H4[:, d, :, d] += c / M
        return H

    def _factor_hessian(self, s) -> np.ndarray:
        """``H_hat`` for the factorised path above ``MAX_DIRECT_PARAMS``."""
        if self.M == 1:
            return self.hessian(s, self.A, self.Zt, p=self.p)
        return self._pair_hessian(s, True)

    def _pair_hessian(self, s, augment: bool = True, Zt=None, p=None) -> np.ndarray:
        """The softmax ``H`` (``H_hat`` with ``augment``) at the training rows with row weights
        ``s`` (:meth:`_raw_pair_hessian`) plus the penalty."""
        return self._penalise(self._raw_pair_hessian(s, Zt, p), augment)

    def _raw_pair_hessian(self, s, Zt=None, p=None) -> np.ndarray:
        """``sum_i s_i A_i (x) zt_i zt_i^T`` (softmax, no penalty, not augmented) with
        ``A_i[k, l] = p_ik (delta_kl - p_il)`` from the probabilities (no ``(n, M, M)`` array).

        Every row of ``A_i`` sums to zero (``sum_l p_il = 1``), so the blocks of the last
        class follow from the others: ``H[k, M-1] = -sum_{l < M-1} H[k, l]`` and
        ``H[M-1, M-1] = -sum_{k < M-1} H[k, M-1]``. Only the ``(M - 1) M / 2`` class pairs
        ``k <= l < M - 1`` are summed over the rows, on the ``D1 (D1 + 1) / 2`` feature pairs,
        in one product per chunk of rows (:func:`_class_feature_blocks`): the symmetry of the
        class block and of the feature block, and the zero row sums, leave a fifth of the work
        of a Gram matrix of ``[p_i (x) zt_i]``."""
        M, D1, P = self.M, self.D1, self.n_params
        Zt = self.Zt if Zt is None else Zt
        p = self.p if p is None else p
        L = M - 1
        ku, lu = np.triu_indices(L)
        ia, ib = np.triu_indices(D1)
        acc = _class_feature_blocks(Zt, s, p, ku, lu, ia, ib)  # (feature pairs, class pairs)
        H = np.empty((M, D1, M, D1))
        # H[k, a, l, b] = acc[(a, b), (k, l)], symmetric in (a, b) and in (k, l)
        for q in range(ku.size):  # a loop over class pairs (each a D1 x D1 block)
            blk = H[ku[q], :, lu[q], :]
            blk[ia, ib] = acc[:, q]
            blk[ib, ia] = acc[:, q]
            if ku[q] != lu[q]:
                H[lu[q], :, ku[q], :] = blk
        last = H[:L, :, L, :]  # (L, D1, D1): the blocks (k, M - 1), each symmetric
        np.sum(H[:L, :, :L, :], axis=2, out=last)
        np.negative(last, out=last)
        H[L, :, :L, :] = last.transpose(1, 0, 2)
        H[L, :, L, :] = -last.sum(axis=0)
        return H.reshape(P, P)

    def _hvp(self, v):
        return self._hvp_weighted(v, self.s)

    def _score_hessian_times(self, eta_v):
        """``A_i eta_v[i]`` for every row: ``p * v - p (p . v)`` (softmax) without forming
        the ``(n, M, M)`` blocks."""
        if self.M == 1 or self._A is not None:
            return np.einsum("ikl,il->ik", self.A, eta_v)
        pv = self.p * eta_v
        pv -= self.p * pv.sum(axis=1, keepdims=True)
        return pv

    @property
    def _null_scale(self) -> float:
        """``c`` of ``c N N^T`` for the matrix-free path: the Hessian's mean diagonal."""
        if getattr(self, "_null_c", None) is None:
            trA = (np.trace(self.A, axis1=1, axis2=2) if self.M == 1 or self._A is not None
                   else np.einsum("ik,ik->i", self.p, 1.0 - self.p))
            tr = np.sum(self.s * trA * np.einsum("id,id->i", self.Zt, self.Zt))
            self._null_c = max(float(tr + self.lam * self.Rcol.sum() * self.M) / self.n_params, 1e-12)
        return self._null_c

    def solve(self, G: np.ndarray) -> np.ndarray:
        """``H_hat^-1 g`` for each row ``g`` of ``G`` (``(T, P)`` in, ``(T, P)`` out)."""
        G = np.atleast_2d(np.asarray(G, dtype=np.float64))
        if self.Hinv is not None:
            return G @ self.Hinv
        if self._chol is not None:
            return _cholesky_solve(self._chol, G)
        return np.vstack([_cg(self._hvp, g, self.cg_tol, self.cg_max_iter or 10 * self.n_params)[0]
                          for g in G])

    # --- gradients -------------------------------------------------------------------------
    @staticmethod
    def _outer(a, Zt):
        return (a[:, :, None] * Zt[:, None, :]).reshape(a.shape[0], -1)

    def test_gradients(self, X, y) -> np.ndarray:
        """Per-row log-loss gradients ``(T, P)`` at the fitted parameters."""
        Zt = self._aug(self.features(X))
        _, r, _ = self._terms(Zt @ self.Theta.T, np.asarray(y))
        return self._outer(r, Zt)

    @property
    def train_gradients(self) -> np.ndarray:
        return self._outer(self.r, self.Zt)

    def leverage_blocks(self) -> np.ndarray:
        """``Q_i = Z_i^T H_hat^-1 Z_i`` for every training row, ``(n, M, M)``.

        ``Q_i[k, l] = zt_i^T (H_hat^-1)_{kl} zt_i`` is a quadratic form, so only the symmetric
        part of each block matters and only the ``M (M + 1) / 2`` blocks with ``k <= l``:
        one product of the rows' pair products ``zt_a zt_b`` (``a <= b``, features that are
        zero in every training row left out) with those blocks (:func:`_quadratic_forms`)."""
        if self._Q is None:
            if self.Hinv is None:
                raise SolverError("the leverage correction needs the factorised Hessian.")
            M, D1 = self.M, self.D1
            ku, lu = np.triu_indices(M)
            used = np.setdiff1d(np.arange(D1), self._zero_columns)  # zero features add 0
            blocks = self.Hinv.reshape(M, D1, M, D1)[ku, :, lu, :][:, used][:, :, used]
            q = _quadratic_forms(self._used_features(used), blocks)  # (n, pairs)
            pair = np.empty((M, M), dtype=np.intp)  # entry (k, l) is pair (min, max)
            pair[ku, lu] = np.arange(ku.size)
            pair[lu, ku] = np.arange(ku.size)
            self._Q = np.take(q, pair.ravel(), axis=1).reshape(self.n_rows, M, M)
        return self._Q

    def _used_features(self, used) -> np.ndarray:
        """``Zt[:, used]``; ``Zt`` itself (no copy) when every feature is used."""
        return self.Zt if used.size == self.D1 else self.Zt[:, used]

    def relative_leverage_blocks(self, rows=None) -> np.ndarray:
        """Softmax: ``Qu_i = U^T Q_i U`` for the training rows ``rows`` (default: every row),
        ``(m, M - 1, M - 1)``, with
        ``U = [I; -1^T]`` (``M x (M - 1)``, columns ``e_k - e_{M-1}``): the leverage on the
        score differences to the last class, the only part of ``Q_i`` the softmax sees.
        ``Qu_i[k, l] = zt_i^T B_kl zt_i`` with
        ``B_kl = Hinv_kl - Hinv_k,M-1 - Hinv_M-1,l + Hinv_M-1,M-1`` (``H_hat^-1``'s ``D1 x D1``
        blocks): ``(M - 1) M / 2`` quadratic forms per row instead of ``M (M + 1) / 2``
        (:func:`_quadratic_forms`; features that are zero in every training row left out),
        kept packed (``(n, pairs)``) and unpacked for the rows asked for."""
        if self._Qu is None:
            if self.Hinv is None:
                raise SolverError("the leverage correction needs the factorised Hessian.")
            M, D1, L = self.M, self.D1, self.M - 1
            used = np.setdiff1d(np.arange(D1), self._zero_columns)  # zero features add 0
            H4 = self.Hinv.reshape(M, D1, M, D1)[:, used][:, :, :, used]
            R = H4[:L] - H4[L:]
            R = R[:, :, :L] - R[:, :, L:]  # (L, u, L, u)
            ku, lu = np.triu_indices(L)
            q = _quadratic_forms(self._used_features(used), R[ku, :, lu, :])  # (n, pairs)
            pair = np.empty((L, L), dtype=np.intp)  # entry (k, l) is pair (min, max)
            pair[ku, lu] = np.arange(ku.size)
            pair[lu, ku] = np.arange(ku.size)
            self._Qu = (q, pair.ravel())
        q, pair = self._Qu
        L = self.M - 1
        if rows is not None:
            q = q[rows]
        return np.take(q, pair, axis=1).reshape(q.shape[0], L, L)

    def _relative_correction(self, e, s, alpha, yv, rows, Qu=None):
        """The softmax's leverage-corrected ``e`` (:meth:`removal_terms`) from its first-order
        ``e = alpha r``. ``r``, ``e`` and the range of ``M_i = s_i A_i`` lie in the sum-zero
        subspace, ``v = U S v`` there (``S v``: the first ``M - 1`` entries) and
        ``M_i v = M_i S^T U^T v`` for every ``v`` (``A_i 1 = 0``), so with
        ``Mu_i = S M_i S^T = s_i (diag(pu_i) - pu_i pu_i^T)`` (``pu_i``: the first ``M - 1``
        probabilities) the ``M x M`` system of the Woodbury step is the ``(M - 1)`` system

            (I - Mu Qu) x = Mu (alpha Qu S r - U^T Z^T Y[cls]),   e += U x

        (:meth:`relative_leverage_blocks`). Returns ``e`` ``(m, M)``."""
        L = self.M - 1
        Qu = self.relative_leverage_blocks(rows) if Qu is None else Qu
        pu = self.p[rows, :L]
        sp = s[:, None] * pu
        # rhs = Qu (alpha S r) - U^T yv, then Mu rhs = s (pu * rhs - pu (pu . rhs))
        rhs = np.einsum("ikl,il->ik", Qu, e[:, :L])  # e[:, :L] = alpha S r
        if yv is not None:
            rhs -= yv[:, :L] - yv[:, L:]
        rhs -= np.einsum("ik,ik->i", pu, rhs)[:, None]
        rhs *= sp
        # I - Mu Qu, with Mu Qu = s pu[k] (Qu[k, :] - pu^T Qu), elementwise
        I_MQ = Qu - np.einsum("ik,ikl->il", pu, Qu)[:, None, :]
        I_MQ *= -sp[:, :, None]
        I_MQ[:, np.arange(L), np.arange(L)] += 1.0
        x = np.linalg.solve(I_MQ, rhs[:, :, None])[:, :, 0]
        e = e.copy()
        e[:, :L] += x
        e[:, L] -= x.sum(axis=1)
        return e

    def _balance_shift(self):
        """For ``class_weight='balanced'``: removing a row of class ``c`` changes every class
        weight by ``delta[c, k]``; the objective's gradient at the fitted parameters then moves
        by ``v_c = sum_k delta[c, k] * G_k`` (``G_k``: the summed gradients of class ``k``).
        Returns ``(delta (K, K), V (K, P), Y = H_hat^-1 V (K, P))``."""
        if self._class_shift is None:
            K, n = self.K, self.n_rows
            counts = np.bincount(self.y, minlength=K).astype(float)
            w = n / (K * counts)
            delta = np.zeros((K, K))
            for c in range(K):  # loop over classes
                cnt = counts.copy()
                cnt[c] -= 1
                with np.errstate(divide="ignore"):
                    w_new = (n - 1) / (K * cnt)
                delta[c] = np.where(np.isfinite(w_new), w_new - w, 0.0)
            onehot = np.eye(K)[self.y]
            Gk = self._outer_sum(onehot)  # (K, P)
            V = delta @ Gk
            self._class_shift = (delta, V, self.solve(V))
        return self._class_shift

    def _outer_sum(self, weights):
        """``sum_i weights[i, k] * g_i`` for each column k: ``(K, P)`` (one BLAS product)."""
        n, K = weights.shape
        WR = (weights[:, :, None] * self.r[:, None, :]).reshape(n, K * self.M)
        return (WR.T @ self.Zt).reshape(K, -1)

    def removal_terms(self, estimate: str, rows=None, _qu=None):
        """What removing each training row does, in score space (``_qu``: the rows'
        :meth:`relative_leverage_blocks`, when the caller has them).

        Returns ``(e, cls)`` with ``e`` ``(m, M)``: removing row ``i`` moves the parameters by
        ``delta_theta_i = H_hat^-1 Z_i e_i - Y[cls_i]`` (``Y`` from the balanced-weight shift,
        zero otherwise). First order (Koh & Liang eq. 2 with weight ``s_i``):
        ``e_i = alpha_i r_i``. Leverage-corrected: the Newton step on the objective without
        row ``i``, whose Hessian ``H - s_i Z_i A_i Z_i^T`` is inverted by the Woodbury identity
        (rank 1 binary, rank K multinomial)::

            (H - Z M Z^T)^-1 = H^-1 + H^-1 Z (I - M Q)^-1 M Z^T H^-1,   M = s_i A_i, Q = Q_i
            e_i = alpha_i r_i + (I - M Q)^-1 M (alpha_i Q r_i - Z_i^T Y[cls_i])

        with ``alpha_i = s_i`` (plus the row's own balanced-weight change). For the softmax
        the correction is solved in the ``M - 1`` score differences
        (:meth:`_relative_correction`).
        """
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.intp)
        s, r = self.s[rows], self.r[rows]
        alpha = s.copy()
        if self.balanced:
            delta, _, Y = self._balance_shift()
            cls = self.y[rows]
            alpha = alpha + delta[cls, cls]
            yv = np.einsum("imd,id->im", Y[cls].reshape(-1, self.M, self.D1), self.Zt[rows])
        else:
            cls = None
            yv = None
        e = alpha[:, None] * r
        if estimate == "leverage-corrected" and self.M > 1:
            return self._relative_correction(e, s, alpha, yv, rows, _qu), cls
        if estimate == "leverage-corrected":
            Q = self.leverage_blocks()[rows]
            # the rows' own score Hessians (not the cached (n, M, M) array, unless it exists)
            A = self._A[rows] if self._A is not None else self._softmax_hessians(self.p[rows])
            Mi = s[:, None, None] * A
            rhs = alpha[:, None] * np.einsum("ikl,il->ik", Q, r)
            if yv is not None:
                rhs = rhs - yv
            rhs = np.einsum("ikl,il->ik", Mi, rhs)
            I_MQ = np.eye(self.M)[None] - Mi @ Q
            if self.M == 1:
                e = e + rhs / I_MQ[:, :, 0]
            else:
                e = e + np.linalg.solve(I_MQ, rhs[:, :, None])[:, :, 0]
        return e, cls

    def removal_steps(self, estimate: str, rows=None) -> np.ndarray:
        """``(m, P)``: the predicted parameter change ``delta_theta_i`` for removing each row
        (see :meth:`removal_terms`), one product with the explicit ``H_hat^-1``."""
        rows = None if rows is None else np.asarray(rows, dtype=np.intp)
        cached = rows is None and self._steps is not None and self._steps[0] == estimate
        if cached:
            return self._steps[1]
        idx = np.arange(self.n_rows) if rows is None else rows
        e, cls = self.removal_terms(estimate, idx)
        if self.Hinv is not None:
            steps = _rows_times(idx.size, lambda a, b: self._outer(e[a:b], self.Zt[idx[a:b]]),
                                self.Hinv)
        else:
            steps = self.solve(self._outer(e, self.Zt[idx]))
        if cls is not None:
            _, _, Y = self._balance_shift()
            steps -= Y[cls]
        if rows is None and steps.size <= 25_000_000:
            self._steps = (estimate, steps)
        return steps

    def loss_changes(self, X_test, y_test, estimate, rows=None, U=None) -> np.ndarray:
        """``(T, m)``: predicted change of each test row's log loss if each training row were
        removed.

        ``first-order``: Koh & Liang's linearisation ``g_t^T delta_theta_i`` (``U``, if given,
        is ``H_hat^-1 G_test``). ``leverage-corrected``: the test loss evaluated exactly at the
        Newton-step parameters, ``l_t(eta_t + J_t delta_theta_i) - l_t(eta_t)`` — the scores move
        linearly in the parameters, so this is one ``(T x D1) @ (D1 x m)`` product (binary) or
        one ``(T x D1) @ (D1 x (M - 1) m)`` product in cache-sized chunks
        (:class:`_SoftmaxShifts`).
        """
        Zt = self._aug(self.features(X_test))
        y_test = np.asarray(y_test, dtype=np.intp)
        eta = Zt @ self.Theta.T
        if estimate == "first-order":
            rows_ = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.intp)
            if U is None:
                _, r, _ = self._terms(eta, y_test)
                U = self.solve(self._outer(r, Zt))
            e, cls = self.removal_terms(estimate, rows_)
            out = self._first_order_products(U, e, rows_)
            if cls is not None:
                _, V, _ = self._balance_shift()
                out -= (U @ V.T)[:, cls]
            return out
        if self.M > 1:
            return self._shift_operator(estimate, rows).loss_changes(Zt, eta, y_test)
        steps = self.removal_steps(estimate, rows)
        base = self._loss_from_scores(eta, y_test)
        d = Zt @ steps.T  # (T, m)
        sign = np.where(y_test == 1, 1.0, -1.0)[:, None]
        return np.logaddexp(0.0, -sign * (eta[:, :1] + d)) - base[:, None]

    def _first_order_products(self, U: np.ndarray, e: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``(T, m)``: ``u_t . (e_i (x) zt_i)`` for the rows ``U`` (``(T, P)``) and the training
        rows ``rows`` with score terms ``e`` (``(m, M)``), as
        ``sum_k e_ik (zt_i . U_t[k])``: one ``(rows x D1) @ (D1 x T M)`` product per chunk of
        training rows, never the ``(m, P)`` gradient matrix (with many classes it is gigabytes)."""
        T, m, M = U.shape[0], rows.size, self.M
        if m * self.n_params <= _FIRST_ORDER_DIRECT:  # small: one product with the gradients
            return U @ self._outer(e, self.Zt[rows]).T
        Ut = np.ascontiguousarray(U.reshape(T * M, self.D1).T)  # (D1, T M)
        step = max(16, 2_000_000 // max(T * M, 1))
        out = np.empty((T, m))
        for a in range(0, m, step):  # chunks of training rows, each product in cache-sized pieces
            b = min(m, a + step)
            V = (self.Zt[rows[a:b]] @ Ut).reshape(b - a, T, M)
            out[:, a:b] = np.matmul(V, e[a:b, :, None])[:, :, 0].T
        return out

    def _shift_operator(self, estimate: str, rows=None) -> "_SoftmaxShifts":
        """The removal steps of a softmax model as :class:`_SoftmaxShifts` (cached for all
        rows): each removed row's parameter change relative to the last class,
        ``delta_theta_i[k] - delta_theta_i[M - 1]`` for ``k < M - 1`` (the softmax sees score
        differences only, so one class fewer is needed). One product
        ``(m x P) @ (P x (M - 1) (D + 1))`` with the matching columns of ``H_hat^-1``.

        A feature that is zero in every training row (blank pixels, unused one-hot levels)
        has, under an L2 penalty, Hessian rows holding only the penalty, so ``H_hat^-1`` has
        exact zeros between it and every other feature and every step is exactly zero on it.
        Those columns are checked to be exactly zero in ``H_hat^-1`` (and in the balanced
        weights' shift) and then left out, which changes no product."""
        if rows is None and estimate in self._shift_ops:
            return self._shift_ops[estimate]
        if self.Hinv is None:
            raise SolverError("the leverage correction needs the factorised Hessian.")
        M, D1, P = self.M, self.D1, self.n_params
        idx = np.arange(self.n_rows) if rows is None else np.asarray(rows, dtype=np.intp)
        e, cls = self.removal_terms(estimate, idx)
        H3 = self.Hinv.reshape(P, M, D1)
        Hrel = H3[:, :-1, :] - H3[:, -1:, :]  # (P, M - 1, D1)
        Yrel = None
        if cls is not None:
            _, _, Y = self._balance_shift()
            Y3 = Y.reshape(-1, M, D1)
            Yrel = Y3[:, :-1, :] - Y3[:, -1:, :]
        zero = self._zero_columns
        if zero.size:
            used = np.ones(D1, dtype=bool)
            used[zero] = False
            # rows of H_hat^-1 that meet a non-zero feature value
            meets = Hrel.reshape(M, D1, M - 1, D1)[:, used][:, :, :, zero]
            exact_zero = ~np.any(meets != 0.0, axis=(0, 1, 2))
            if Yrel is not None:
                exact_zero &= ~np.any(Yrel[:, :, zero] != 0.0, axis=(0, 1))
            zero = zero[exact_zero]
        live = np.setdiff1d(np.arange(D1), zero) if zero.size else slice(None)
        Hl = Hrel[:, :, live].reshape(P, -1)
        rel = _rows_times(idx.size, lambda a, b: self._outer(e[a:b], self.Zt[idx[a:b]]), Hl)
        if Yrel is not None:
            rel -= Yrel[:, :, live].reshape(Yrel.shape[0], -1)[cls]
        op = _SoftmaxShifts(rel.reshape(idx.size, M - 1, -1), live)
        if rows is None:
            self._shift_ops[estimate] = op
        return op

    def prepare(self, estimate: str) -> None:
        if estimate == "first-order":
            if self.balanced:
                self._balance_shift()
        elif self.M > 1:
            self._shift_operator(estimate)
        else:
            self.removal_steps(estimate)

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        """``(S, values)``: ``S`` ``(T, n)`` orders the training rows exactly as the loss
        changes do, row by row, and ``values(idx)`` gives the loss changes for training rows
        ``idx`` (``(T, c)``, one row of indices per test row). For a binary model's leverage-corrected estimate the loss
        change is a monotone function of the linear score shift ``J_t delta_theta_i``, so the
        ranking needs only that product and the exact log losses are evaluated for the rows
        kept."""
        y_test = np.asarray(y_test, dtype=np.intp)
        if estimate == "first-order" or self.M > 1:
            S = self.loss_changes(X_test, y_test, estimate, U=U)
            return S, lambda idx: np.take_along_axis(S, idx, axis=1)
        Zt = self._aug(self.features(X_test))
        eta = (Zt @ self.Theta.T)[:, 0]
        sign = np.where(y_test == 1, 1.0, -1.0)
        steps = self.removal_steps(estimate)[:, :]  # (n, P) with M == 1
        S = Zt @ steps.T
        S *= -sign[:, None]  # loss change increases with -sign * shift
        base = np.logaddexp(0.0, -sign * eta)

        def values(idx):
            shift = np.take_along_axis(S, idx, axis=1)
            return np.logaddexp(0.0, (-sign * eta)[:, None] + shift) - base[:, None]

        return S, values

    @dense
    def score_shifts(self, estimate: str) -> np.ndarray:
        """``(n, M)``: each training row's own score change if it were removed,
        ``Z_i^T delta_theta_i`` (approximate leave-one-out scores: ``eta_i + shift_i``). For the
        softmax, which sees score differences only, the change relative to the last class
        (the last column is zero): from the leverage on the score differences
        (:meth:`relative_leverage_blocks`), ``U^T Q_i e_i = Qu_i S e_i``."""
        if estimate in self._shifts:
            return self._shifts[estimate]
        n, M, D1 = self.n_rows, self.M, self.D1
        rel = M > 1
        if self.Hinv is None:
            Q = None
        elif rel:
            self.relative_leverage_blocks(slice(0, 0))  # formed once, before the blocks
            Q = self.relative_leverage_blocks
        else:
            Q = self.leverage_blocks()
        Y = self._balance_shift()[2] if self.balanced else None
        # chunks of rows (their M x M blocks, or their (rows x P) gradients, stay small), side
        # by side; never an (n, P) array
        step = _SHIFT_ROWS if Q is not None else max(64, _PAIR_CHUNK * 8 // max(self.n_params, 1))
        ranges = [(a, min(n, a + step)) for a in range(0, n, step)]
        shift = np.empty((n, M))

        def block(j):
            a, b = ranges[j]
            Qu = Q(slice(a, b)) if Q is not None and rel else None
            e, cls = self.removal_terms(estimate, np.arange(a, b), _qu=Qu)
            if Qu is not None:
                sh = np.zeros((b - a, M))
                sh[:, :-1] = np.einsum("ikl,il->ik", Qu, e[:, :-1])
            elif Q is not None:
                sh = np.matmul(Q[a:b], e[:, :, None])[:, :, 0]
            else:
                E = self.solve(self._outer(e, self.Zt[a:b]))
                sh = np.einsum("imd,id->im", E.reshape(-1, M, D1), self.Zt[a:b])
            if cls is not None:
                sh -= np.einsum("imd,id->im", Y[cls].reshape(-1, M, D1), self.Zt[a:b])
            if rel:
                sh -= sh[:, -1:]
            shift[a:b] = sh

        run_blocks(block, len(ranges))
        self._shifts[estimate] = shift
        return shift

    def loo_proba(self, estimate: str = "leverage-corrected") -> np.ndarray:
        """Approximate leave-one-out probabilities ``(n, K)`` of every training row."""
        eta = self.eta + self.score_shifts(estimate)
        p, _, _ = self._terms(eta, self.y, hessians=False)  # no (n, M, M) blocks: unused here
        return p

    def loo_losses(self, estimate: str = "leverage-corrected") -> np.ndarray:
        """Approximate leave-one-out log loss of every training row (the loss evaluated at
        the shifted score, not linearised)."""
        return self._loss_from_scores(self.eta + self.score_shifts(estimate), self.y)

    def self_influence(self, estimate: str = "first-order") -> np.ndarray:
        """Predicted change of each training row's own loss if it were removed,
        ``s_i g_i^T H^-1 g_i`` to first order (Koh & Liang, sec. 5.4)."""
        return np.einsum("im,im->i", self.r, self.score_shifts(estimate))

    # --- I_pert,loss ------------------------------------------------------------------------
    def _input_jacobian_t(self, rows, grad_z):
        """``grad_z @ dz/dx`` for the given training rows (chain rule through fixed
        preprocessing)."""
        if self.pre is None:
            return grad_z
        steps = [s for _, s in _real_parts(self)[1].steps]
        if all(is_affine_step(s) for s in steps):
            A, _ = fold_affine(steps, self.X.shape[1])
            return grad_z @ A
        vjp = getattr(self.form, "vjp", None)
        if vjp is not None:
            return np.asarray(vjp(self.X[rows], grad_z), dtype=np.float64)
        raise UnsupportedModelError(
            "feature gradients need preprocessing with a known derivative (affine steps or an "
            "invertible-linear form); this pipeline has neither."
        )

    def feature_gradients(self, u, rows) -> np.ndarray:
        """``(m, D)``: derivative of the test loss w.r.t. each listed training row's features
        (Koh & Liang eq. 4, ``I_pert,loss = -g_test^T H^-1 d/dx grad_theta l(z_i)``):
        ``-s_i * J_i^T (W^T A_i (U zt_i) + U_w^T r_i)`` with ``U = H^-1 g_test`` as ``(M, D1)``."""
        rows = np.asarray(rows, dtype=np.intp)
        U = np.asarray(u, dtype=np.float64).reshape(self.M, self.D1)
        W = self.Theta[:, :self.D]
        Zt = self.Zt[rows]
        v = Zt @ U.T  # (m, M)
        av = np.einsum("ikl,il->ik", self.A[rows], v)
        grad_z = av @ W + self.r[rows] @ U[:, :self.D]
        grad_z *= -self.s[rows][:, None]
        return self._input_jacobian_t(rows, grad_z)

    # --- refits (the independent reference) -----------------------------------------------
    @dense
    def refitted(self, rows, *, tol: float = 1e-8) -> "LogisticObjective":
        """The objective of the model refitted without ``rows`` (preprocessing fixed), on the
        remaining training rows (renumbered ``0..n-m-1`` in their original order)."""
        keep = np.ones(self.n_rows, dtype=bool)
        keep[np.asarray(rows, dtype=np.intp)] = False
        Zt = self.Zt[keep]  # the kept rows' features as this objective has them
        fitted = self._refit_by_chord(keep, Zt=Zt)
        if fitted is None:
            fitted = self.refit_without(rows, tol=tol)
        Z = Zt[:, :self.D] if self.fit_intercept else Zt
        return LogisticObjective(self.form, self.X[keep], self.y[keep], final=fitted, _features=(Z, Zt))

    def _refit_by_chord(self, keep, *, gtol: float = 1e-12, max_iter: int = 150,
                        max_refresh: int = 8, Zt=None):
        """The estimator refitted on the rows ``keep`` by Newton-chord iterations: from the
        fitted parameters, ``theta <- theta - H_hat^-1 grad F_keep(theta)`` starting with the
        Hessian of the kept rows at the fitted parameters (:meth:`_kept_hessian`: the removed
        rows' blocks subtracted from ``H_hat``, so the first step is a Newton step; where
        ``H_hat`` is only held as a factor, that factor) (class weights recomputed when
        balanced). Each step costs one gradient (rows in blocks side by side,
        :class:`_ChordGradient`); the steps are Anderson-accelerated (:func:`_anderson`). When a
        step contracts the gradient by less than 1.25x, the acceleration restarts; if a plain
        step does that too, the Hessian of the kept rows is formed and factorised at the current
        point (a Newton step, :meth:`_pair_hessian`), at most ``max_refresh`` times (a full pass
        over the rows costs as much as dozens of chord steps). Stops when the gradient
        (scikit-learn's ``tol`` scale) is below ``gtol``, far below the ``1e-8`` a refit asks
        for. None (the caller refits with scikit-learn) without a factorised Hessian, when a
        class disappears, or when the iteration does not converge."""
        if self.Hinv is None and self._chol is None:
            return None
        y = self.y[keep]
        if np.unique(y).size != self.K:
            return None
        s, _ = _row_weights(self.estimator, y, self.K, self.classes)
        Zt = self.Zt[keep] if Zt is None else Zt  # ``Zt``: the caller's copy of those rows
        Theta = self.Theta.copy()
        scale = s.sum()
        # the gradient's own rounding floor grows with the features' magnitude
        gtol = max(gtol, 64 * np.finfo(np.float64).eps * float(np.max(np.abs(Zt), initial=1.0)))
        prev = first = np.inf
        solve = self.solve
        kept = self._kept_hessian(keep)
        if kept is not None:
            solve = kept
        grad = _ChordGradient(self, Zt, y, s)
        refreshed = 0
        hist_x, hist_f = [], []  # Anderson acceleration's recent iterates and chord steps
        accelerated = False  # whether the last step was an accelerated one
        for it in range(max_iter):
            G = grad(Theta)
            gmax = float(np.max(np.abs(G))) / scale
            if gmax <= gtol:
                break
            first = min(first, gmax) if it == 0 else first
            if not np.isfinite(gmax) or gmax > 10.0 * first:
                return None  # diverging: leave it to a real refit
            if it and gmax > 0.8 * prev:
                if accelerated:  # an accelerated step that did not help: plain chord steps again
                    hist_x, hist_f = [], []
                else:
                    if refreshed >= max_refresh:
                        return None
                    pr = grad.proba(Theta)
                    if self.M == 1:
                        p1 = pr[:, 1]
                        H = self.hessian(s, (p1 * (1.0 - p1))[:, None, None], Zt)
                    else:
                        H = self._pair_hessian(s, True, Zt=Zt, p=pr)
                    solve = _spd_solver(H)
                    if solve is None:
                        return None
                    refreshed += 1
                    hist_x, hist_f = [], []  # steps of the old chord matrix
            prev = gmax
            f = -solve(G.reshape(1, -1))[0]  # the chord step
            accelerated = len(hist_x) >= 1  # _anderson mixes in the past steps from the second on
            Theta = Theta + _anderson(hist_x, hist_f, Theta.ravel(), f).reshape(Theta.shape)
        else:
            return None
        return self._refitted_estimator(Theta, n_iter=it)

    def _refitted_estimator(self, Theta, n_iter: int):
        """A copy of the final estimator holding the parameters ``Theta`` (classes as fitted):
        scikit-learn's ``clone`` with the fitted attributes set, or, for an objective built from
        a light state, a light copy of that state with them replaced (no scikit-learn import)."""
        from invaudit.io._light import LightObject

        fitted = {"coef_": Theta[:, :self.D].copy(),
                  "intercept_": Theta[:, self.D].copy() if self.fit_intercept else np.zeros(self.M),
                  "classes_": self.classes.copy(), "n_iter_": np.array([n_iter])}
        if type(self.estimator) is LightObject:
            est = LightObject(self.estimator.pair)
            est.state = {**self.estimator.state, **fitted}
            return est
        from sklearn.base import clone

        est = clone(self.estimator)
        for attr, value in fitted.items():
            setattr(est, attr, value)
        for attr in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.estimator, attr):
                setattr(est, attr, getattr(self.estimator, attr))
        return est

    def _kept_hessian(self, keep):
        """A solver (:func:`_spd_solver`) with ``H_hat`` on the rows ``keep`` at the fitted parameters
        (row weights as fitted), or None (no explicit ``H_hat``, or not positive definite):
        ``H_hat`` minus the removed rows' blocks when they are the smaller part, else the kept
        rows' blocks summed afresh. Only a chord matrix: its accuracy sets how fast
        :meth:`_refit_by_chord` converges, never where to."""
        if getattr(self, "_H", None) is None:
            return None
        drop = ~keep
        part = drop if drop.sum() <= keep.sum() else keep
        Zt, s, p = self.Zt[part], self.s[part], self.p[part]
        if self.M == 1:
            w = s * p[:, 1] * p[:, 0]
            H = (Zt * w[:, None]).T @ Zt
        else:
            H = self._raw_pair_hessian(s, Zt, p)
        if part is drop:
            H = np.subtract(self._H, H, out=H)
        else:
            H = self._penalise(H, True)
        return _spd_solver(H)

    def refit_without(self, rows, *, tol: float = 1e-10, max_iter: Optional[int] = None,
                      X_override=None):
        """A clone of the final estimator refitted on the training features without ``rows``
        (warm-started from the fitted coefficients, tight tolerance). The preprocessing stays
        fixed. Newton-Cholesky is used (same objective, converges to machine precision) except
        for liblinear, whose objective penalises the intercept and is refitted with its own
        solver. ``X_override`` replaces the training rows (input units) for perturbation tests.
        """
        from sklearn.base import clone

        keep = np.ones(self.n_rows, dtype=bool)
        keep[np.asarray(rows, dtype=np.intp)] = False
        Z = self.Z if X_override is None else self.features(X_override)
        est = clone(_real_parts(self)[0])  # a light state's real estimator: only its parameters matter
        params = {"tol": tol, "max_iter": max_iter or 1000}
        if est.get_params().get("solver") != "liblinear":
            params["solver"] = "newton-cholesky"
            params["warm_start"] = True
            est.set_params(**params)
            est.coef_ = self.Theta[:, :self.D].copy()
            est.intercept_ = (self.Theta[:, self.D].copy() if self.fit_intercept
                              else np.zeros(self.M))
        else:
            est.set_params(**params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Z[keep], self.classes[self.y[keep]])
        if len(est.classes_) != self.K:
            raise SolverError("removing these rows removes a whole class; the refit is a different model.")
        return est

    def refit_losses(self, fitted, X, y) -> np.ndarray:
        """Log loss of each row under a refitted estimator, from its own decision_function."""
        d = np.asarray(fitted.decision_function(self.features(X)), dtype=np.float64)
        eta = d[:, None] if d.ndim == 1 else d
        return self._loss_from_scores(eta, np.asarray(y))

    # --- groups -----------------------------------------------------------------------------
    def group_prediction(self, rows, X_test, y_test):
        """Predicted test-loss changes if all ``rows`` were removed together: the first-order
        sum and one Newton step on the objective without them (class weights recomputed when
        balanced), the latter evaluated exactly at the new parameters. Returns
        ``(first_order (T,), newton (T,))``."""
        rows = np.unique(np.asarray(rows, dtype=np.intp))
        keep = np.ones(self.n_rows, dtype=bool)
        keep[rows] = False
        if not keep.any():
            raise InputError("the group holds every training row.")
        Gt = self.test_gradients(X_test, y_test)
        U = self.solve(Gt)
        if self.balanced:
            counts = np.bincount(self.y[keep], minlength=self.K)
            if np.any(counts == 0):
                raise InputError("removing this group removes a whole class.")
            s_new = np.zeros(self.n_rows)
            s_new[keep] = (keep.sum() / (self.K * counts))[self.y[keep]]
        else:
            s_new = np.where(keep, self.s, 0.0)
        ds = s_new - self.s
        g_sum = self._outer_sum(ds[:, None])[0]  # sum_i (s'_i - s_i) g_i
        first = -(U @ g_sum)
        grad = self._objective_gradient(s_new, self.r, self.Zt, self.Theta).ravel()
        chol = None if self._chol is None else _cholesky(self._factor_hessian(s_new))
        if self.Hinv is not None:
            H = self.hessian(s_new, self.A if self.M == 1 else None, self.Zt, p=self.p)
            step = -(_inverse(H)[0] @ grad)
        elif chol is not None:
            step = -_cholesky_solve(chol, grad[None, :])[0]
        else:
            step = -_cg(lambda v: self._hvp_weighted(v, s_new), grad, self.cg_tol,
                        self.cg_max_iter or 10 * self.n_params)[0]
        Theta_new = self.Theta + step.reshape(self.M, self.D1)
        Zt = self._aug(self.features(X_test))
        y_test = np.asarray(y_test)
        newton = (self._loss_from_scores(Zt @ Theta_new.T, y_test)
                  - self._loss_from_scores(Zt @ self.Theta.T, y_test))
        return first, newton

    def _hvp_weighted(self, v, s):
        V = v.reshape(self.M, self.D1)
        w = self._score_hessian_times(self.Zt @ V.T)
        w *= s[:, None]
        out = w.T @ self.Zt + self.lam * V * self.Rcol
        if self.null_cols.size:
            out[:, self.null_cols] += self._null_scale * V[:, self.null_cols].mean(axis=0)
        return out.ravel()


#: Rows per piece of :class:`_ChordGradient`'s blocks (their features stay in cache between
#: the scores and the gradient).
_GRADIENT_ROWS = 2048


class _ChordGradient:
    """``grad F_keep(Theta)`` of :meth:`LogisticObjective._refit_by_chord` (``(M, D1)``): the
    rows in (at most two) fixed blocks side by side, each block piece by piece
    (``_GRADIENT_ROWS``), a piece's scores, probabilities and gradient while its rows are in
    cache; the sums added in a fixed order."""

    def __init__(self, obj, Zt, y, s):
        self.obj, self.Zt, self.y, self.s = obj, Zt, y, s
        self.ranges = row_ranges(Zt.shape[0], min_rows=4096, max_blocks=2)

    def _block_proba(self, a, b, Theta):
        eta = self.Zt[a:b] @ Theta.T
        if self.obj.M == 1:
            p1 = _sigmoid(eta[:, 0])
            return np.column_stack([1.0 - p1, p1])
        eta -= eta.max(axis=1, keepdims=True)
        np.exp(eta, out=eta)
        eta /= eta.sum(axis=1, keepdims=True)
        return eta

    def proba(self, Theta) -> np.ndarray:
        return np.vstack([self._block_proba(a, b, Theta) for a, b in self.ranges])

    def __call__(self, Theta) -> np.ndarray:
        parts = [None] * len(self.ranges)

        def block(j):
            a0, b0 = self.ranges[j]
            G = 0.0
            for a in range(a0, b0, _GRADIENT_ROWS):  # pieces of the block, in order
                b = min(b0, a + _GRADIENT_ROWS)
                y = self.y[a:b]
                if self.obj.M == 1:
                    p = self._block_proba(a, b, Theta)
                    r = (p[:, 1] - (y == 1))[:, None]
                    r *= self.s[a:b, None]
                    G = G + (self.Zt[a:b].T @ r).T  # (M, D1)
                    continue
                # softmax with the classes along the first axis: the per-row max and sum
                # are elementwise over M rows of scores, not M-long reductions per row
                rT = Theta @ self.Zt[a:b].T  # (M, rows)
                rT -= rT.max(axis=0)
                np.exp(rT, out=rT)
                rT /= rT.sum(axis=0)
                rT[y, np.arange(b - a)] -= 1.0
                rT *= self.s[a:b]
                G = G + rT @ self.Zt[a:b]  # (M, D1)
            parts[j] = G

        run_blocks(block, len(self.ranges))
        G = parts[0]
        for other in parts[1:]:
            G = G + other
        return G + self.obj.lam * Theta * self.obj.Rcol


def _anderson(hist_x: list, hist_f: list, x: np.ndarray, f: np.ndarray, memory: int = 6) -> np.ndarray:
    """The step from ``x`` for the fixed-point iteration ``x <- x + f(x)`` with Anderson
    acceleration (Walker & Ni 2011, "Anderson acceleration for fixed-point iterations", SIAM
    J. Numer. Anal.; type II, the last ``memory`` differences): ``f - (dX + dF) gamma`` with
    ``gamma`` the least-squares fit of ``f`` by the differences of past steps ``dF``. On a
    linear map it is GMRES on the chord-preconditioned system. ``hist_x`` / ``hist_f`` (lists,
    updated in place) hold the past iterates and steps; empty lists give the plain step ``f``."""
    hist_x.append(x.copy())
    hist_f.append(f.copy())
    if len(hist_x) > memory + 1:
        del hist_x[0], hist_f[0]
    if len(hist_x) < 2:
        return f
    dX = np.diff(np.array(hist_x), axis=0).T  # (P, m)
    dF = np.diff(np.array(hist_f), axis=0).T
    gamma = np.linalg.lstsq(dF, f, rcond=1e-12)[0]
    return f - (dX + dF) @ gamma


class _SoftmaxShifts:
    """Score shifts of a softmax model for removing each of ``m`` training rows, laid out for
    evaluating every (test row, removed row) pair's loss change in blocks that stay in cache.

    Built from ``rel`` ``(m, M - 1, L)``: removed row ``i``'s parameter change for class
    ``k`` minus that of the last class ``r``, on the feature columns ``live`` of ``[z, 1]``
    (the others are exactly zero, see :meth:`LogisticObjective._shift_operator`). Removing
    row ``i`` moves test row ``t``'s score differences by ``x_tik = zt_t[live] . rel[i, k]``,
    and its log loss by

        log(p_tr + sum_{k != r} p_tk exp(x_tik)) - x_tiy          (x_tir = 0)

    (the old log-partition and every common shift cancel). The removed rows are split into
    chunks of ``width``; chunk ``j`` holds the ``(M - 1) * width`` rows ``rel[i, k]`` class by
    class, so that one matrix product gives every ``x_tik`` of the chunk.
    """

    def __init__(self, rel: np.ndarray, live):
        m, K1, L = rel.shape
        self.m, self.K1, self.live = m, K1, live
        c = self.width = max(1, min(m, _SHIFT_CHUNK // max(K1, 1)))
        n_chunks = -(-m // c)
        # (chunk, class, row in chunk, column): each chunk's rows class by class
        B = np.empty((n_chunks, K1, c, L))
        full, rest = divmod(m, c)
        if full:
            B[:full] = rel[:full * c].reshape(full, c, K1, L).transpose(0, 2, 1, 3)
        if rest:
            B[full, :, :rest] = rel[full * c:].transpose(1, 0, 2)
            B[full, :, rest:] = 0.0
        self.chunks = B.reshape(n_chunks, K1 * c, L)

    def loss_changes(self, Zt: np.ndarray, eta: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(T, m)`` loss changes for test rows ``Zt`` (augmented features), scores ``eta``
        and class indices ``y``: per chunk of removed rows one product, one in-place ``exp``,
        one probability-weighted sum over classes and one ``log`` (chunks run side by side,
        :func:`~invaudit.influence._parallel.run_blocks`). Pairs whose sum over- or
        underflows (score shifts of hundreds) are recomputed with the max-shifted
        log-sum-exp."""
        T, K1, c = Zt.shape[0], self.K1, self.width
        A = np.ascontiguousarray(Zt[:, self.live])
        p = np.exp(_log_softmax(eta, axis=1))
        p_other, p_r = np.ascontiguousarray(p[:, :-1]), p[:, -1:]
        t = np.arange(T)
        other = y < K1
        yk = np.where(other, y, 0)
        out = np.empty((T, self.m))
        finite = np.ones(len(self.chunks), dtype=bool)

        def chunk(j, X):
            a, b = j * c, min(self.m, (j + 1) * c)
            np.matmul(A, self.chunks[j].T, out=X)  # x_tik, (T, K1 * c)
            X3 = X.reshape(T, K1, c)
            xy = X3[t, yk]  # x_tiy (a copy); 0 for the last class
            xy[~other] = 0.0
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                np.exp(X, out=X)
                acc = np.einsum("tk,tki->ti", p_other, X3)
                acc += p_r
                np.log(acc, out=acc)
                acc -= xy
            out[:, a:b] = acc[:, :b - a]
            finite[j] = np.isfinite(acc.sum())

        run_blocks(chunk, len(self.chunks), scratch=lambda: np.empty((T, K1 * c)))
        for j in np.flatnonzero(~finite):  # extreme shifts only
            a, b = j * c, min(self.m, (j + 1) * c)
            sub = out[:, a:b]
            fix = ~np.isfinite(sub)
            rows_t = np.flatnonzero(fix.any(axis=1))
            Bj = self.chunks[j].reshape(K1, c, -1)[:, :b - a]
            x = np.einsum("td,kid->tki", Zt[rows_t][:, self.live], Bj)
            x = np.concatenate([x, np.zeros((rows_t.size, 1, b - a))], axis=1)
            ref = (_logsumexp(x + eta[rows_t][:, :, None], axis=1)
                   - _logsumexp(eta[rows_t], axis=1)[:, None] - x[np.arange(rows_t.size), y[rows_t]])
            sub[rows_t] = np.where(fix[rows_t], ref, sub[rows_t])
        return out


# =============================================================================================
# Networks
# =============================================================================================

class NetworkObjective(Objective):
    """An MLPClassifier's objective ``sum_i l_i + (alpha / 2) ||coefs||^2`` (scikit-learn's mean
    loss scaled by ``n``), with Hessian ``H = hvp + alpha * mask + damping * n * I`` applied
    through the form's exact Hessian-vector products and inverted by conjugate gradients.
    Non-convex: influence is a local, damped approximation (``exact = False``)."""

    kind = "network"

    def __init__(self, form: DifferentiableForm, X_train, y_train, *, damping=0.01,
                 cg_tol=1e-10, cg_max_iter=None):
        self.form = form
        est = form.estimator
        final, pre = _final_and_pre(est)
        self.estimator, self.pre = final, pre
        self.classes = np.asarray(form.classes)
        self.K = len(self.classes)
        X, y = _training_rows(X_train, y_train, form.n_features, self.K)
        self.X, self.y = X, y
        self.n_rows = X.shape[0]
        self.theta = np.asarray(form.params(), dtype=np.float64)
        self.n_params = self.theta.size
        n_coef = sum(W.size for W in final.coefs_)
        self.mask = np.zeros(self.n_params)
        self.mask[:n_coef] = 1.0
        self.alpha = float(form.alpha)
        if damping < 0:
            raise InputError("damping must be non-negative.")
        self.damping = float(damping)
        self.G = np.asarray(form.param_grad(X, y), dtype=np.float64)
        # diagonal of the empirical Fisher sum_i g_i g_i^T: a cheap preconditioner for CG
        self.fisher_diag = np.einsum("ip,ip->p", self.G, self.G)
        grad = self.G.sum(axis=0) + self.alpha * self.mask * self.theta
        self.stationarity = float(np.max(np.abs(grad)) / self.n_rows)
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter or min(2000, 5 * self.n_params)
        self.convex = False
        self.exact = False
        self.method = "conjugate-gradient"
        self.estimates = ("first-order",)
        self.cg_residual = 0.0
        notes = ["influence on a non-convex model (MLPClassifier) is approximate: a damped, "
                 "local, first-order estimate"]
        if pre is not None:
            notes.append(PRE_FIXED_NOTE.format(", ".join(type(s).__name__ for _, s in pre.steps)))
        if self.stationarity > STATIONARY_TOL:
            notes.append(f"the network is not at a stationary point (objective gradient "
                         f"{self.stationarity:.1e} on the mean scale)")
        self._base_notes = tuple(notes)

    @property
    def notes(self):
        return self._base_notes + (f"damping {self.damping:g} (times n) added to the Hessian; "
                                   f"conjugate-gradient residual {self.cg_residual:.1e}",)

    def features(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X if self.pre is None else np.asarray(self.pre.transform(X), dtype=np.float64)

    def losses(self, X, y):
        lp = self.form.log_proba(np.asarray(X, dtype=np.float64))
        return -lp[np.arange(lp.shape[0]), np.asarray(y)]

    def predicted_index(self, X):
        return np.argmax(self.form.log_proba(np.asarray(X, dtype=np.float64)), axis=1)

    @property
    def train_losses(self):
        return self.losses(self.X, self.y)

    @property
    def train_proba(self):
        return np.exp(self.form.log_proba(self.X))

    def test_gradients(self, X, y):
        return np.asarray(self.form.param_grad(np.asarray(X, dtype=np.float64), np.asarray(y)),
                          dtype=np.float64)

    @property
    def train_gradients(self):
        return self.G

    def hvp(self, v):
        return (self.form.hvp(self.X, self.y, v) + self.alpha * self.mask * v
                + self.damping * self.n_rows * v)

    def solve(self, G):
        """Damped CG solves, one per row of ``G``; restarted with 10x damping whenever a
        direction of non-positive curvature appears (so all rows share one damping)."""
        G = np.atleast_2d(np.asarray(G, dtype=np.float64))
        for _ in range(12):
            out = np.empty_like(G)
            worst = 0.0
            try:
                pre = 1.0 / (self.fisher_diag + self.alpha * self.mask + self.damping * self.n_rows)
                for t, g in enumerate(G):
                    out[t], res = _cg(self.hvp, g, self.cg_tol, self.cg_max_iter, strict=True,
                                      precond=pre)
                    worst = max(worst, res)
            except _NegativeCurvature:
                self.damping = max(self.damping * 10.0, 1e-6)
                continue
            self.cg_residual = max(self.cg_residual, worst)
            return out
        raise SolverError("the network's Hessian stays indefinite even with heavy damping.")

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        S = self.loss_changes(X_test, y_test, estimate, U=U)
        return S, lambda idx: np.take_along_axis(S, idx, axis=1)

    def loss_changes(self, X_test, y_test, estimate, rows=None, U=None):
        """First order: ``g_t^T H^-1 g_i`` (``U = H^-1 G_test`` if already solved)."""
        if U is None:
            U = self.solve(self.test_gradients(X_test, y_test))
        G = self.G if rows is None else self.G[np.asarray(rows, dtype=np.intp)]
        return U @ G.T

    def self_influence(self, estimate: str = "first-order") -> np.ndarray:
        U = self.solve(self.G)
        return np.einsum("ip,ip->i", U, self.G)

    def feature_gradients(self, u, rows):
        """``-d/dx_i (g_i . u)`` by central differences of the form's exact parameter gradients
        (all rows and features in one call; step ``1e-5 * (1 + |x|)``)."""
        rows = np.asarray(rows, dtype=np.intp)
        Xr = self.X[rows]
        m, D = Xr.shape
        h = 1e-5 * (1.0 + np.abs(Xr))  # (m, D)
        eye = np.eye(D)
        Xp = (Xr[:, None, :] + h[:, :, None] * eye[None]).reshape(-1, D)
        Xm = (Xr[:, None, :] - h[:, :, None] * eye[None]).reshape(-1, D)
        yy = np.repeat(self.y[rows], D)
        fp = self.form.param_grad(np.vstack([Xp, Xm]), np.concatenate([yy, yy])) @ u
        d = (fp[:m * D] - fp[m * D:]).reshape(m, D) / (2 * h)
        return -d

    def refit_without(self, rows, *, tol=1e-10, max_iter=None, X_override=None):
        """A deep copy of the network retrained by full-batch L-BFGS from the fitted weights
        on the training features without ``rows`` (the same basin; non-convex, so a local
        reference)."""
        keep = np.ones(self.n_rows, dtype=bool)
        keep[np.asarray(rows, dtype=np.intp)] = False
        X = self.X if X_override is None else X_override
        Z = self.features(X)
        est = copy.deepcopy(self.estimator)
        est.set_params(solver="lbfgs", warm_start=True, tol=tol, max_iter=max_iter or 500,
                       max_fun=10 * (max_iter or 500), early_stopping=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Z[keep], self.classes[self.y[keep]])
        return est

    def refit_losses(self, fitted, X, y):
        Z = self.features(X)
        P = np.clip(fitted.predict_proba(Z), 1e-300, 1.0)
        return -np.log(P[np.arange(Z.shape[0]), np.asarray(y)])

    def group_prediction(self, rows, X_test, y_test):
        rows = np.unique(np.asarray(rows, dtype=np.intp))
        U = self.solve(self.test_gradients(X_test, y_test))
        first = U @ self.G[rows].sum(axis=0)
        return first, None


# =============================================================================================
# helpers
# =============================================================================================

#: Up to this many parameters the explicit inverse is numpy's (LU, ~2.3 P^3 flops with the
#: Cholesky test) and no scipy is imported (the ~0.3 s import is then most of the cost); above,
#: scipy's LAPACK ``potrf`` + ``potri`` (P^3 flops: 1.6 s less at P = 4,000).
_NUMPY_INVERSE_MAX = 2000


def _inverse(H: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(H^-1, False)`` for a well-conditioned SPD ``H`` (a Cholesky factor whose pivot ratio
    is above ``1e-6``; up to ``_NUMPY_INVERSE_MAX`` parameters numpy's LU inverse, symmetrised,
    above LAPACK ``potri`` from the factor); otherwise the pseudo-inverse on the eigenvectors
    with eigenvalues above ``1e-10 * max`` and ``True`` (a singular Hessian: every gradient lies
    in the data's span, where it is exact). A LogisticRegression with up to
    ``_NUMPY_INVERSE_MAX`` parameters (K = 10 classes on 100 features) imports no scipy."""
    if H.shape[0] > _NUMPY_INVERSE_MAX:
        from scipy.linalg import lapack

        c, info = lapack.dpotrf(H, lower=1, clean=1)  # clean: zeros above the diagonal
        if info == 0:
            d = np.abs(np.diag(c))
            if d.min() ** 2 > 1e-12 * d.max() ** 2:
                inv, info = lapack.dpotri(c, lower=1, overwrite_c=1)  # writes the lower triangle
                if info == 0:
                    return _symmetric_from_triangle(inv), False
    elif _well_conditioned_spd(H):
        inv = np.linalg.inv(H)
        out = inv + inv.T
        out *= 0.5
        return out, False
    # Features at scales 1e-5 and 1e5 give a penalised (non-singular) Hessian a pivot ratio far
    # below 1e-12: judged on its symmetric diagonal scaling D^-1 H D^-1, which does not depend on
    # the units, and inverted there (H^-1 = D^-1 (D^-1 H D^-1)^-1 D^-1).
    d = np.sqrt(np.abs(np.diag(H)))
    d[~(d > 0.0)] = 1.0
    Hs = H / d[:, None] / d[None, :]
    if H.shape[0] <= _NUMPY_INVERSE_MAX and _well_conditioned_spd(Hs):
        inv = np.linalg.inv(Hs) / d[:, None] / d[None, :]
        return 0.5 * (inv + inv.T), False
    lam, V = np.linalg.eigh(Hs)
    top = float(lam.max()) if lam.size else 0.0
    if top <= 0.0:
        raise SolverError("the Hessian of the training objective is zero; influence is not defined.")
    keep = lam > 1e-10 * top
    Hinv = (V[:, keep] / lam[keep]) @ V[:, keep].T / d[:, None] / d[None, :]
    if not keep.all():
        # a singular H: the scaled pseudo-inverse is a generalised inverse G of H; projected onto
        # the range of H (P G P, P = I - N N^T with N the null directions D^-1 V, orthonormalised)
        # it is the Moore-Penrose pseudo-inverse
        N = np.linalg.qr(V[:, ~keep] / d[:, None])[0]
        Hinv = Hinv - N @ (N.T @ Hinv)
        Hinv = Hinv - (Hinv @ N) @ N.T
    return 0.5 * (Hinv + Hinv.T), bool(np.any(~keep))


def _well_conditioned_spd(H: np.ndarray) -> bool:
    """Whether ``H`` has a Cholesky factor whose pivot ratio ``min/max`` exceeds ``1e-6``
    (squared: ``1e-12``), the test of :func:`_inverse` and :func:`_cholesky`."""
    try:
        c = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return False
    d = np.abs(np.diag(c))
    return bool(d.size and d.min() ** 2 > 1e-12 * d.max() ** 2)


def _spd_solver(H: np.ndarray):
    """``G -> G H^-1`` (rows of ``G``) for a well-conditioned SPD ``H``, or None: up to
    ``_NUMPY_INVERSE_MAX`` parameters from its explicit inverse (numpy: no scipy import),
    above from its Cholesky factor (:func:`_cholesky`)."""
    if H.shape[0] <= _NUMPY_INVERSE_MAX:
        if not _well_conditioned_spd(H):
            return None
        inv = np.linalg.inv(H)
        return lambda G: np.atleast_2d(np.asarray(G, dtype=np.float64)) @ inv
    c = _cholesky(H)
    return None if c is None else functools.partial(_cholesky_solve, c)


def _cholesky(H: np.ndarray):
    """The lower Cholesky factor of a well-conditioned SPD ``H`` (overwriting ``H``), or None
    (not positive definite, or a pivot ratio below ``1e-6``: the same test as
    :func:`_inverse`; the caller then falls back to conjugate gradients). scipy's LAPACK
    (imported here: only the factorised path above ``MAX_DIRECT_PARAMS`` needs it)."""
    from scipy.linalg import lapack

    c, info = lapack.dpotrf(H.T, lower=1, clean=0, overwrite_a=1)  # H symmetric: H.T is H
    if info != 0:
        return None
    d = np.abs(np.diag(c))
    if not d.min() ** 2 > 1e-12 * d.max() ** 2:
        return None
    return c


def _cholesky_solve(c: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``H^-1 g`` for every row of ``G`` from the factor of :func:`_cholesky`."""
    from scipy.linalg import lapack

    x, info = lapack.dpotrs(c, np.asarray(G, dtype=np.float64).T, lower=1)
    if info != 0:  # pragma: no cover - only for malformed arguments
        raise SolverError("the Cholesky solve failed.")
    return np.ascontiguousarray(x.T)


def _pair_offsets(D1: int) -> np.ndarray:
    """Where feature ``a``'s pairs ``(a, a..D1-1)`` start in :func:`_pair_index` order."""
    return np.concatenate([[0], np.cumsum(D1 - np.arange(D1))])


#: Rows per chunk of the cache-blocked pair-product kernels, and feature pairs per group: a
#: group's pair products (pairs x rows, 1 MB) stay in the core's own cache between being formed
#: and being multiplied, instead of a chunk's whole pair-product matrix going out to memory and
#: back; 512 rows per chunk halve the accumulator updates of 256 (measured: 256 x 512, 512 x 256,
#: 1024 x 256 and 1024 x 128 within 10% of each other on a loaded machine, 512 x 256 as fast as any).
_KERNEL_ROWS = 512
_GROUP_PAIRS = 256


def _feature_groups(D1: int, target: int = _GROUP_PAIRS) -> list:
    """Consecutive features ``[(f0, f1), ...]`` whose pairs ``(f, f..D1-1)`` (:func:`_pair_index`
    order: one contiguous run of pairs per group) number about ``target`` per group."""
    off = _pair_offsets(D1)
    groups, a = [], 0
    while a < D1:
        b = a + 1
        while b < D1 and off[b + 1] - off[a] <= target:
            b += 1
        groups.append((a, b))
        a = b
    return groups


def _pair_products_t(ZT: np.ndarray, c: int, f0: int, f1: int, out: np.ndarray) -> np.ndarray:
    """The pair products of features ``f0..f1-1`` with every later feature, for the ``c``
    rows held transposed in ``ZT[:, :c]`` (``(D1, >= c)``), into the first rows of ``out``
    (``(>= pairs, >= c)``): pair by row, each pair's products one contiguous run."""
    D1 = ZT.shape[0]
    o = 0
    for f in range(f0, f1):  # a loop over the group's features (a few), all rows at once
        w = D1 - f
        np.multiply(ZT[f, :c], ZT[f:, :c], out=out[o:o + w, :c])
        o += w
    return out[:o, :c]


def _accumulator_blocks(n: int, acc_doubles: int, min_rows: int) -> list:
    """Row blocks for a kernel whose blocks each keep an accumulator of ``acc_doubles``:
    up to eight (so a worker slowed down by other processes takes fewer of them), fewer when
    the accumulators would pass ~64 MB. Depends on the sizes only, never on the number of
    workers, so the blocks' sums (added in a fixed order) come out the same on any machine."""
    cap = max(2, min(8, (8 << 20) // max(acc_doubles, 1)))
    return row_ranges(n, min_rows=min_rows, max_blocks=cap)


#: Features per group of :func:`_class_feature_blocks`: a group's weighted rows
#: ``W_q * zt_a`` (classes pairs x features in the group, by rows) times the rows' features
#: from the group's first on is one ``(G nq x rows) @ (rows x (D1 - a0))`` product. 8 measured
#: best of 4..26 (about 10% less CPU than the pair products of :func:`_class_feature_blocks_pairs`
#: at K = 10, D = 100, single-threaded on a loaded machine).
_HESSIAN_GROUP = 8


def _class_feature_blocks_pairs(Zt, s, p, ku, lu, ia, ib) -> np.ndarray:
    """``acc[f, q] = sum_i s_i A_i[ku_q, lu_q] zt_i[ia_f] zt_i[ib_f]`` with
    ``A_i = diag(p_i) - p_i p_i^T`` (``ku``, ``lu``: any class pairs; ``ia, ib`` the
    upper-triangle feature pairs): for each chunk of rows and each group of feature pairs
    (:func:`_feature_groups`), one ``(class pairs x rows) @ (rows x feature pairs)`` product
    while the group's pair products, formed pair by pair in contiguous runs
    (:func:`_pair_products_t`), are in cache; blocks of rows run on the workers
    (:mod:`._parallel`), each summing into its own accumulator."""
    n, D1 = Zt.shape
    nf, nq = ia.size, ku.size
    step = _KERNEL_ROWS
    ranges = _accumulator_blocks(n, nq * nf, step)
    parts = [None] * len(ranges)
    same = ku == lu
    off = _pair_offsets(D1)
    groups = _feature_groups(D1)
    width = max(off[b] - off[a] for a, b in groups)

    def block(j, work):
        ZT, WT, buf, tmp = work
        a0, b0 = ranges[j]
        acc = np.zeros((nq, nf))
        for a in range(a0, b0, step):  # chunks of rows, not single rows
            b = min(b0, a + step)
            c = b - a
            W = _pair_weights(p[a:b].T, s[a:b], ku, lu, same, WT[:, :c])
            ZT[:, :c] = Zt[a:b].T
            for f0, f1 in groups:  # groups of feature pairs (a few dozen)
                Zp = _pair_products_t(ZT, c, f0, f1, buf)
                w = Zp.shape[0]
                np.matmul(W, Zp.T, out=tmp[:, :w])
                acc[:, off[f0]:off[f1]] += tmp[:, :w]
        parts[j] = acc

    run_blocks(block, len(ranges), scratch=lambda: (np.empty((D1, step)), np.empty((nq, step)),
                                                    np.empty((width, step)), np.empty((nq, width))))
    out = parts[0] if parts else np.zeros((nq, nf))
    for other in parts[1:]:
        out += other
    return out.T


def _pair_weights(pT, s, ku, lu, same, W) -> np.ndarray:
    """``W[q, i] = s_i A_i[ku_q, lu_q]`` with ``A_i[k, l] = p_k (delta_kl - p_l)`` for a chunk of
    rows (``pT``: their probabilities, transposed), written into ``W``."""
    np.multiply(pT[ku], pT[lu], out=W)
    np.negative(W, out=W)
    W[same] += pT[ku[same]]
    W *= s
    return W


def _class_feature_blocks(Zt, s, p, ku, lu, ia, ib) -> np.ndarray:
    """``acc[f, q] = sum_i s_i A_i[ku_q, lu_q] zt_i[ia_f] zt_i[ib_f]`` with
    ``A_i = diag(p_i) - p_i p_i^T`` (``ku``, ``lu``: any class pairs; ``ia, ib``: the
    upper-triangle feature pairs in :func:`_pair_index` order). For each chunk of rows and each
    group of ``_HESSIAN_GROUP`` consecutive features ``a0..a1-1``: the rows' class-pair weights
    times each feature of the group, ``Y[(a, q), i] = W_iq zt_ia``, in one elementwise product,
    then one ``Y @ Zt[:, a0:]`` product whose entries with ``b >= a`` are the sums (the few
    with ``b < a`` inside the group are not used). Blocks of rows run on the workers
    (:mod:`._parallel`), each summing into its own accumulators, added in a fixed order.

    ``Y`` holds ``nq * D1`` numbers per row against ``D1 (D1 + 1) / 2`` pair products: with
    more class pairs than about half the features (many classes) the pair products are formed
    instead (:func:`_class_feature_blocks_pairs`, measured 2x faster at K = 50)."""
    n, D1 = Zt.shape
    nf, nq = ia.size, ku.size
    if nq * D1 > 1.25 * nf:
        return _class_feature_blocks_pairs(Zt, s, p, ku, lu, ia, ib)
    step = _KERNEL_ROWS
    ranges = _accumulator_blocks(n, nq * nf, step)
    parts = [None] * len(ranges)
    same = ku == lu
    G = _HESSIAN_GROUP
    groups = [(a0, min(D1, a0 + G)) for a0 in range(0, D1, G)]

    def block(j, work):
        ZT, WT, Ybuf, tmp = work
        a0, b0 = ranges[j]
        acc = [np.zeros(((g1 - g0) * nq, D1 - g0)) for g0, g1 in groups]
        for a in range(a0, b0, step):  # chunks of rows, not single rows
            b = min(b0, a + step)
            c = b - a
            W = _pair_weights(p[a:b].T, s[a:b], ku, lu, same, WT[:, :c])
            Zc = Zt[a:b]
            ZT[:, :c] = Zc.T
            for g, (g0, g1) in enumerate(groups):  # groups of features (a dozen)
                m = (g1 - g0) * nq
                Y = Ybuf[:m * c].reshape(g1 - g0, nq, c)
                np.multiply(ZT[g0:g1, None, :c], W[None], out=Y)
                out = tmp[:m * (D1 - g0)].reshape(m, D1 - g0)
                np.matmul(Y.reshape(m, c), Zc[:, g0:], out=out)
                acc[g] += out
        parts[j] = acc

    run_blocks(block, len(ranges), scratch=lambda: (np.empty((D1, step)), np.empty((nq, step)),
                                                    np.empty(G * nq * step), np.empty(G * nq * D1)))
    if not parts:
        return np.zeros((nf, nq))
    acc = parts[0]
    for j in range(1, len(parts)):  # in block order; each block's accumulators freed once added
        for g in range(len(groups)):
            acc[g] += parts[j][g]
        parts[j] = None
    res = np.empty((nf, nq))
    off = _pair_offsets(D1)
    for g, (g0, g1) in enumerate(groups):  # each feature's pairs (a, a..D1-1): one run
        A3 = acc[g].reshape(g1 - g0, nq, D1 - g0)
        for a in range(g0, g1):
            res[off[a]:off[a + 1]] = A3[a - g0, :, a - g0:].T
    return res


def _symmetric_from_triangle(T: np.ndarray) -> np.ndarray:
    """The symmetric matrix ``T + T^T`` with ``T``'s diagonal, for ``T`` holding one
    triangle and exact zeros in the other (as LAPACK ``potri`` on a cleaned factor leaves
    it), C-contiguous."""
    out = np.add(T, T.T, out=np.empty(T.shape))
    out[np.diag_indices_from(out)] *= 0.5  # exact: the diagonal was doubled
    return out


def _gram(rows_of: Callable[[int, int], np.ndarray], n: int, P: int) -> np.ndarray:
    """``V^T V`` for the ``(n, P)`` matrix ``V`` whose rows ``a:b`` are ``rows_of(a, b)``:
    blocks of rows formed and multiplied on separate workers, their products summed.
    numpy computes ``B.T @ B`` with BLAS ``syrk`` (half the work of a general product, the
    result exactly symmetric) and releases the GIL, unlike scipy's ``syrk`` wrapper. Each
    block also costs work in proportion to ``P^2``, so there are two blocks at most, of at
    least ``P / 2`` rows."""
    ranges = row_ranges(n, min_rows=max(128, P // 2), max_blocks=2)
    parts = [None] * len(ranges)

    def block(j):
        V = rows_of(*ranges[j])
        parts[j] = V.T @ V

    run_blocks(block, len(ranges))
    G = np.zeros((P, P)) if not parts else parts[0]
    for other in parts[1:]:
        G += other
    return G


def _rows_times(n: int, rows_of: Callable[[int, int], np.ndarray], B: np.ndarray) -> np.ndarray:
    """``R @ B`` where ``R`` (``n`` rows) is produced block by block by ``rows_of(a, b)``; the
    blocks run side by side."""
    out = np.empty((n, B.shape[1]))
    ranges = row_ranges(n, min_rows=128)
    run_blocks(lambda j: np.matmul(rows_of(*ranges[j]), B, out=out[ranges[j][0]:ranges[j][1]]),
               len(ranges))
    return out


#: Doubles in one chunk of row-wise pair products (keeps temporaries near the cache size).
_PAIR_CHUNK = 250_000


def _pair_index(D1: int):
    """Upper-triangle index pairs ``(a, b)``, ``a <= b``, of a ``D1 x D1`` matrix."""
    return np.triu_indices(D1)


def _row_chunks(n: int, width: int):
    step = max(1, _PAIR_CHUNK // max(width, 1))
    return range(0, n, step), step


def _weighted_grams(Zt: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``G[p] = Zt^T diag(W[:, p]) Zt`` for every column ``p`` of ``W``: ``(n_w, D1, D1)``.

    The sums run over the rows' pair products ``zt_a zt_b`` (``a <= b``, half of each
    symmetric block) in one product with ``W``, a chunk of rows at a time."""
    n, D1 = Zt.shape
    nw = W.shape[1]
    ia, ib = _pair_index(D1)
    acc = np.zeros((ia.size, nw))
    starts, step = _row_chunks(n, ia.size)
    for a in starts:  # chunks of rows, not single rows
        Zc = Zt[a:a + step]
        acc += (Zc[:, ia] * Zc[:, ib]).T @ W[a:a + step]
    G = np.empty((nw, D1, D1))
    G[:, ia, ib] = acc.T
    G[:, ib, ia] = acc.T
    return G


def _quadratic_forms(Zt: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``q[i, p] = zt_i^T B[p] zt_i`` for every row and every ``(D1, D1)`` matrix ``B[p]``.

    One matrix: ``rowsum((Zt @ B) * Zt)``. Several: the symmetric parts of the ``B[p]`` on
    their upper triangles (off-diagonal entries counted twice) against the rows' pair products,
    half the work of forming ``Zt @ B[p]`` for each ``p``: per chunk of rows and group of
    feature pairs, one ``(matrices x pairs) @ (pairs x rows)`` product while the group's pair
    products (:func:`_pair_products_t`) are in cache."""
    n, D1 = Zt.shape
    nb = B.shape[0]
    out = np.empty((n, nb))
    if nb <= 2:
        ranges = row_ranges(n, min_rows=1024)

        def rows(j):
            a, b = ranges[j]
            for p in range(nb):
                out[a:b, p] = np.einsum("id,id->i", Zt[a:b] @ B[p], Zt[a:b])

        run_blocks(rows, len(ranges))
        return out
    ia, ib = _pair_index(D1)
    Bs = B[:, ia, ib] + B[:, ib, ia]
    Bs[:, ia == ib] *= 0.5  # (nb, pairs of features)
    off = _pair_offsets(D1)
    groups = _feature_groups(D1)
    # each group's columns of Bs, contiguous: (nb, pairs in the group)
    BG = [np.ascontiguousarray(Bs[:, off[f0]:off[f1]]) for f0, f1 in groups]
    width = max(g.shape[1] for g in BG)
    step = _KERNEL_ROWS
    span = 4 * step

    def block(j, work):  # chunks of rows; per group, its pair products while they are in cache
        ZT, buf, acc, tmp = work
        a0, b0 = j * span, min(n, (j + 1) * span)
        for a in range(a0, b0, step):  # sub-chunks small enough for the cache
            b = min(b0, a + step)
            c = b - a
            ZT[:, :c] = Zt[a:b].T
            acc[:, :c] = 0.0
            for (f0, f1), Bg in zip(groups, BG):  # groups of feature pairs (a few dozen)
                Zp = _pair_products_t(ZT, c, f0, f1, buf)
                np.matmul(Bg, Zp, out=tmp[:, :c])
                acc[:, :c] += tmp[:, :c]
            out[a:b] = acc[:, :c].T

    run_blocks(block, -(-n // span),
               scratch=lambda: (np.empty((D1, step)), np.empty((width, step)),
                                np.empty((nb, step)), np.empty((nb, step))))
    return out


class _NegativeCurvature(Exception):
    pass


def _cg(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, tol: float, max_iter: int,
        strict: bool = False, precond: Optional[np.ndarray] = None):
    """(Preconditioned) conjugate gradients for ``A x = b``, ``A`` symmetric positive definite;
    ``precond`` is the inverse of a diagonal preconditioner. Returns ``(x, relative
    residual)``. ``strict``: raise on non-positive curvature (Hestenes & Stiefel, 1952)."""
    b = np.asarray(b, dtype=np.float64)
    nb = float(np.linalg.norm(b))
    x = np.zeros_like(b)
    if nb == 0.0:
        return x, 0.0
    # every vector is allocated once, before the loop; updates are in place
    r = b.copy()
    z = r if precond is None else precond * r
    p = z.copy()
    tmp = np.empty_like(b)
    rz = float(r @ z)
    res = 1.0
    for _ in range(max_iter):
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if pAp <= 0.0:
            if strict:
                raise _NegativeCurvature()
            break
        a = rz / pAp
        x += np.multiply(p, a, out=tmp)
        r -= np.multiply(Ap, a, out=tmp)
        res = float(np.linalg.norm(r)) / nb
        if res <= tol:
            break
        if precond is not None:
            np.multiply(precond, r, out=z)
        rz_new = float(r @ z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, res


def _sigmoid(s):
    """The logistic function ``1 / (1 + exp(-s))``, as scipy's ``expit`` computes it (the same
    bits), in numpy."""
    with np.errstate(over="ignore"):  # exp(-s) = inf gives 0, as it should
        return 1.0 / (1.0 + np.exp(-np.asarray(s, dtype=np.float64)))


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(a)))`` along ``axis`` for finite ``a``, as scipy's ``logsumexp`` computes it
    (the largest terms taken out of the sum: ``log1p(rest / m) + log(m) + max`` with ``m``
    of them, so a loss ``logsumexp(eta) - eta_y`` of 1e-12 keeps its relative precision), numpy
    only."""
    a = np.asarray(a, dtype=np.float64)
    a_max = np.max(a, axis=axis, keepdims=True)
    is_max = a == a_max
    m = np.sum(is_max, axis=axis, keepdims=True, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        e = np.exp(np.where(is_max, -np.inf, a - a_max))
    s = np.sum(e, axis=axis, keepdims=True) / m
    return np.squeeze(np.log1p(s) + np.log(m) + a_max, axis=axis)


def _log_softmax(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """``a - logsumexp(a)`` along ``axis``, as scipy's ``log_softmax`` computes it, numpy only."""
    a_max = np.max(a, axis=axis, keepdims=True)
    a_max = np.where(np.isfinite(a_max), a_max, 0.0)
    tmp = a - a_max
    with np.errstate(divide="ignore"):
        return tmp - np.log(np.sum(np.exp(tmp), axis=axis, keepdims=True))
