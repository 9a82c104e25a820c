"""The differentiable form: an MLPClassifier (optionally after affine preprocessing) with exact
backpropagation in numpy.

The network, as scikit-learn evaluates it (``MLPClassifier._forward_pass_fast``)::

    z      = x @ A.T + c                      (folded affine preprocessing; identity if none)
    a_0    = z
    h_l    = a_l @ W_l + b_l                  (l = 0 .. L-1; W_l = coefs_[l], b_l = intercepts_[l])
    a_l+1  = f(h_l)                           (hidden layers, f = the estimator's ``activation``)
    logits = h_{L-1}                          (M = 1 with a logistic output, M = K with softmax)

Binary models (one logistic output) have ``p(classes[1] | x) = sigmoid(logit)``; multiclass ones
``p = softmax(logits)``. Multilabel networks (several logistic outputs) are not classifiers over
``classes`` in this sense and get no differentiable form.

Parameter vector (``params()``), in this order and nothing else::

    coefs_[0].ravel(), coefs_[1].ravel(), ..., coefs_[L-1].ravel(),
    intercepts_[0], intercepts_[1], ..., intercepts_[L-1]

(``ravel`` in C order: entry ``(i, j)`` of ``coefs_[l]``, the weight from unit ``i`` of layer
``l`` to unit ``j`` of layer ``l+1``, sits at ``offset_l + i * n_out_l + j``.)

Loss: the per-row log loss ``l_i(theta) = -log p(y_i | x_i; theta)``, exact (scikit-learn clips
probabilities to ``[eps, 1 - eps]`` before taking logs; that clipping is not reproduced, it only
matters for rows predicted with probability within 2.2e-16 of 0 or 1). scikit-learn's training
objective (``BaseMultilayerPerceptron._backprop``) is::

    J(theta) = (1 / n) * sum_i l_i(theta) + alpha / (2 n) * sum_l ||coefs_[l]||_F^2

(intercepts unpenalised; with ``sample_weight`` the mean is weighted and ``n`` is the sum of the
weights). Its Hessian is ``hvp(X, y, v) / n + (alpha / n) * (v * penalised_mask(form))``.

References
----------
Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
Pearlmutter (1994), "Fast exact multiplication by the Hessian", Neural Computation 6(1),
eqs. (4)-(7): the R{.} operator applied to the forward and backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from invaudit.errors import InputError
from invaudit.models.affine import fold_affine, is_affine_step
from invaudit.models.base import DifferentiableForm, as_rows

__all__ = ["from_estimator", "flatten_params", "unflatten_params", "penalised_mask"]

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


# --- activations: value, first and second derivative (in terms of h and a = f(h)) ------------

def _act(name: str, h: np.ndarray) -> np.ndarray:
    if name == "identity":
        return h
    if name == "logistic":
        from scipy.special import expit  # imported when used: start-up (issue 16)

        return expit(h)
    if name == "tanh":
        return np.tanh(h)
    return np.maximum(h, 0.0)


def _act_d1(name: str, h: np.ndarray, a: np.ndarray) -> np.ndarray:
    if name == "identity":
        return np.ones_like(h)
    if name == "logistic":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    # relu: scikit-learn's derivative is 0 where the activation is 0, i.e. where h <= 0
    return (h > 0.0).astype(np.float64)


def _act_d2(name: str, h: np.ndarray, a: np.ndarray) -> np.ndarray | None:
    """Second derivative, or None where it is 0 (identity everywhere, relu almost everywhere)."""
    if name == "logistic":
        return a * (1.0 - a) * (1.0 - 2.0 * a)
    if name == "tanh":
        return -2.0 * a * (1.0 - a * a)
    return None


# --- parameter vector -----------------------------------------------------------------------

def flatten_params(coefs, intercepts) -> np.ndarray:
    """All network parameters as one float64 vector, in the module's documented order."""
    parts = [np.asarray(W, dtype=np.float64).ravel() for W in coefs]
    parts += [np.asarray(b, dtype=np.float64).ravel() for b in intercepts]
    return np.concatenate(parts)


def _unflatten(theta: np.ndarray, shapes: list[tuple[int, int]]):
    theta = np.asarray(theta, dtype=np.float64)
    n_coef = sum(r * c for r, c in shapes)
    n_total = n_coef + sum(c for _, c in shapes)
    if theta.shape != (n_total,):
        raise InputError(
            f"the parameter vector has shape {theta.shape}, but this network has {n_total} parameters."
        )
    coefs, intercepts = [], []
    pos = 0
    for r, c in shapes:
        coefs.append(theta[pos:pos + r * c].reshape(r, c))
        pos += r * c
    for _, c in shapes:
        intercepts.append(theta[pos:pos + c])
        pos += c
    return coefs, intercepts


def _final_mlp(obj):
    est = getattr(obj, "estimator", obj) if not hasattr(obj, "coefs_") else obj
    if hasattr(est, "steps"):
        est = est.steps[-1][1]
    if not hasattr(est, "coefs_"):
        raise InputError("this object holds no fitted MLPClassifier.")
    return est


def unflatten_params(obj, theta: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split a parameter vector into ``(coefs, intercepts)`` shaped like the network's.

    ``obj`` is a fitted MLPClassifier, a Pipeline ending in one, or a DifferentiableForm.
    The returned arrays are views into ``theta``.
    """
    mlp = _final_mlp(obj)
    return _unflatten(theta, [W.shape for W in mlp.coefs_])


def penalised_mask(obj) -> np.ndarray:
    """Boolean ``(P,)``: True for the entries of ``params()`` that scikit-learn's L2 penalty
    ``alpha / (2 n) * ||.||^2`` applies to (the coefficients; intercepts are not penalised)."""
    mlp = _final_mlp(obj)
    n_coef = sum(W.size for W in mlp.coefs_)
    n_int = sum(b.size for b in mlp.intercepts_)
    return np.concatenate([np.ones(n_coef, dtype=bool), np.zeros(n_int, dtype=bool)])


# --- the network ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Network:
    """A snapshot (float64 copies) of a fitted MLP and its folded input map."""

    coefs: tuple
    intercepts: tuple
    activation: str
    link: str  # "sigmoid" (M == 1) or "softmax" (M == K)
    n_classes: int
    A: np.ndarray | None  # (d_z, D) or None for the identity
    c: np.ndarray | None
    n_features: int

    # -- input checks ------------------------------------------------------------------------
    def rows(self, X) -> np.ndarray:
        return as_rows(X, self.n_features)

    def class_vector(self, k, n: int, what: str) -> np.ndarray:
        k_arr = np.asarray(k)
        if k_arr.ndim == 0:
            k_arr = np.full(n, int(k_arr), dtype=np.intp)
        if k_arr.shape != (n,):
            raise InputError(f"{what} must be one class index or one per row ({n}), got shape {k_arr.shape}.")
        if not np.issubdtype(k_arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(k_arr, 1), 0)):
                raise InputError(f"{what} must hold integer class indices.")
        k_arr = k_arr.astype(np.intp)
        if k_arr.size and (k_arr.min() < 0 or k_arr.max() >= self.n_classes):
            raise InputError(f"{what} holds a class index outside 0..{self.n_classes - 1}.")
        return k_arr

    def preprocess(self, X: np.ndarray) -> np.ndarray:
        return X if self.A is None else X @ self.A.T + self.c

    # -- forward -----------------------------------------------------------------------------
    def forward(self, Z: np.ndarray, coefs=None, intercepts=None):
        """Pre-activations ``hs[l]`` and layer inputs ``acts[l]`` (``acts[0] = Z``)."""
        coefs = self.coefs if coefs is None else coefs
        intercepts = self.intercepts if intercepts is None else intercepts
        acts, hs = [Z], []
        n_layers = len(coefs)
        for layer in range(n_layers):
            h = acts[-1] @ coefs[layer] + intercepts[layer]
            hs.append(h)
            if layer < n_layers - 1:
                acts.append(_act(self.activation, h))
        return hs, acts

    def logits(self, X) -> np.ndarray:
        hs, _ = self.forward(self.preprocess(self.rows(X)))
        return hs[-1]

    def _log_proba_from_logits(self, h: np.ndarray) -> np.ndarray:
        if self.link == "sigmoid":
            s = h[:, 0]
            return np.column_stack([-np.logaddexp(0.0, s), -np.logaddexp(0.0, -s)])
        from scipy.special import log_softmax

        return log_softmax(h, axis=1)

    def log_proba(self, X) -> np.ndarray:
        return self._log_proba_from_logits(self.logits(X))

    def _out_proba(self, h: np.ndarray) -> np.ndarray:
        """``(n, M)``: sigmoid(logit) for binary, softmax(logits) otherwise."""
        from scipy.special import expit, softmax

        return expit(h) if self.link == "sigmoid" else softmax(h, axis=1)

    def _onehot_out(self, k: np.ndarray, M: int) -> np.ndarray:
        """``(n, M)`` indicator of class ``k`` in output coordinates (binary: ``k == 1``)."""
        if self.link == "sigmoid":
            return (k == 1).astype(np.float64)[:, None]
        out = np.zeros((k.shape[0], M))
        out[np.arange(k.shape[0]), k] = 1.0
        return out

    # -- backward ----------------------------------------------------------------------------
    def _input_grad(self, hs, acts, g: np.ndarray) -> np.ndarray:
        """Pull ``g = d phi / d logits`` (n, M) back to the original inputs (n, D)."""
        for layer in range(len(self.coefs) - 1, -1, -1):
            ga = g @ self.coefs[layer].T
            if layer > 0:
                g = ga * _act_d1(self.activation, hs[layer - 1], acts[layer])
        return ga if self.A is None else ga @ self.A

    def log_proba_grad(self, X, k) -> np.ndarray:
        """``d log p(k | x) / dx``: the output seed is ``e_k - p`` (softmax) or
        ``1[k == 1] - sigmoid(logit)`` (binary)."""
        X = self.rows(X)
        k = self.class_vector(k, X.shape[0], "k")
        hs, acts = self.forward(self.preprocess(X))
        seed = self._onehot_out(k, hs[-1].shape[1]) - self._out_proba(hs[-1])
        return self._input_grad(hs, acts, seed)

    def logit_grad(self, X, k) -> np.ndarray:
        """``d s_k / dx`` for the ``W_full``-style class score ``s_k`` (binary: ``s_0 = 0``,
        ``s_1 = logit``)."""
        X = self.rows(X)
        k = self.class_vector(k, X.shape[0], "k")
        hs, acts = self.forward(self.preprocess(X))
        return self._input_grad(hs, acts, self._onehot_out(k, hs[-1].shape[1]))

    def _deltas(self, hs, acts, y: np.ndarray) -> list[np.ndarray]:
        """``deltas[l] = d l_i / d h_l`` per row, for every layer."""
        n_layers = len(self.coefs)
        g = self._out_proba(hs[-1]) - self._onehot_out(y, hs[-1].shape[1])
        deltas = [None] * n_layers
        deltas[-1] = g
        for layer in range(n_layers - 1, 0, -1):
            g = (g @ self.coefs[layer].T) * _act_d1(self.activation, hs[layer - 1], acts[layer])
            deltas[layer - 1] = g
        return deltas

    def params(self) -> np.ndarray:
        return flatten_params(self.coefs, self.intercepts)

    def param_grad(self, X, y_idx) -> np.ndarray:
        """Per-row gradients ``(n, P)`` of ``l_i = -log p(y_i | x_i)`` w.r.t. ``params()``:
        ``dl_i / dW_l = a_l[i] (outer) delta_l[i]``, ``dl_i / db_l = delta_l[i]``."""
        X = self.rows(X)
        n = X.shape[0]
        y = self.class_vector(y_idx, n, "y_idx")
        hs, acts = self.forward(self.preprocess(X))
        deltas = self._deltas(hs, acts, y)
        sizes = [W.size for W in self.coefs] + [b.size for b in self.intercepts]
        out = np.empty((n, sum(sizes)))
        pos = 0
        for layer, W in enumerate(self.coefs):
            out[:, pos:pos + W.size] = (acts[layer][:, :, None] * deltas[layer][:, None, :]).reshape(n, -1)
            pos += W.size
        for layer in range(len(self.coefs)):
            out[:, pos:pos + deltas[layer].shape[1]] = deltas[layer]
            pos += deltas[layer].shape[1]
        return out

    def hvp(self, X, y_idx, v) -> np.ndarray:
        """``H v`` with ``H`` the Hessian of ``sum_i l_i`` w.r.t. ``params()``.

        Pearlmutter's R-operator (R{g} = d/dr g(theta + r v) at r = 0), applied to the forward
        pass (R{h_l} = R{a_l} W_l + a_l V_l + v_b_l, R{a_l+1} = f'(h_l) R{h_l}) and then to the
        backward pass (R{delta_L} = (diag(p) - p p^T) R{h_L}; R{delta_l-1} = (R{delta_l} W_l^T +
        delta_l V_l^T) f'(h_l-1) + (delta_l W_l^T) f''(h_l-1) R{h_l-1}); the products
        ``R{dJ/dW_l} = a_l^T R{delta_l} + R{a_l}^T delta_l`` are the entries of ``H v``.
        Exact up to rounding; for relu ``f'' = 0`` almost everywhere.
        """
        X = self.rows(X)
        n = X.shape[0]
        y = self.class_vector(y_idx, n, "y_idx")
        Vw, Vb = _unflatten(v, [W.shape for W in self.coefs])
        hs, acts = self.forward(self.preprocess(X))
        n_layers = len(self.coefs)

        # forward R pass: R{a_0} = 0
        r_acts = [None]
        r_hs = []
        for layer in range(n_layers):
            rh = acts[layer] @ Vw[layer] + Vb[layer]
            if r_acts[layer] is not None:
                rh = rh + r_acts[layer] @ self.coefs[layer]
            r_hs.append(rh)
            if layer < n_layers - 1:
                r_acts.append(_act_d1(self.activation, hs[layer], acts[layer + 1]) * rh)

        # backward pass and its R{.}
        p = self._out_proba(hs[-1])
        g = p - self._onehot_out(y, hs[-1].shape[1])
        if self.link == "sigmoid":
            rg = p * (1.0 - p) * r_hs[-1]
        else:
            rg = p * r_hs[-1] - p * np.sum(p * r_hs[-1], axis=1, keepdims=True)
        hw = [None] * n_layers
        hb = [None] * n_layers
        for layer in range(n_layers - 1, -1, -1):
            hw[layer] = acts[layer].T @ rg
            if r_acts[layer] is not None:
                hw[layer] += r_acts[layer].T @ g
            hb[layer] = rg.sum(axis=0)
            if layer > 0:
                W = self.coefs[layer]
                d1 = _act_d1(self.activation, hs[layer - 1], acts[layer])
                ga = g @ W.T
                rga = rg @ W.T + g @ Vw[layer].T
                rg_prev = rga * d1
                d2 = _act_d2(self.activation, hs[layer - 1], acts[layer])
                if d2 is not None:
                    rg_prev = rg_prev + ga * d2 * r_hs[layer - 1]
                g, rg = ga * d1, rg_prev
        return flatten_params(hw, hb)


# --- adapter --------------------------------------------------------------------------------

_MLP = ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier")
_PIPELINE = ("sklearn.pipeline", "Pipeline")


def _is_mlp_classifier(est) -> bool:
    from invaudit.io._light import LightObject

    if isinstance(est, LightObject):  # a light-loaded state (issue 16): its recorded class
        return est.pair == _MLP
    from sklearn.neural_network import MLPClassifier

    return isinstance(est, MLPClassifier)


def _delegated(est, name: str):
    """``getattr(est, name, None)``; for a light-loaded Pipeline what scikit-learn's Pipeline
    property gives: its first step's attribute (``n_features_in_``, ``feature_names_in_``)."""
    from invaudit.io._light import LightObject

    if isinstance(est, LightObject) and est.pair == _PIPELINE:
        steps = getattr(est, "steps", None)
        return _delegated(steps[0][1], name) if steps else None
    return getattr(est, name, None)


def _step_name(step) -> str:
    """``PCA(whiten)`` for a whitening PCA, the class name otherwise (as the linear form)."""
    from invaudit.io._light import class_name

    name = class_name(step)  # a light-loaded step's recorded class name (issue 16)
    return "PCA(whiten)" if name == "PCA" and getattr(step, "whiten", False) else name


def from_estimator(est: Any) -> DifferentiableForm | None:
    """The differentiable form of a fitted MLPClassifier, or of a Pipeline whose steps before a
    final MLPClassifier are all affine (scalers, full-rank PCA, passthrough); None otherwise.

    Multilabel networks, unfitted networks and networks with an activation other than
    identity / logistic / tanh / relu give None.
    """
    steps = getattr(est, "steps", None)
    if steps is not None:
        if not steps:
            return None
        pre = [s for _, s in steps[:-1]]
        mlp = steps[-1][1]
        if not _is_mlp_classifier(mlp) or not all(is_affine_step(s) for s in pre):
            return None
    else:
        pre, mlp = [], est
        if not _is_mlp_classifier(mlp):
            return None
    if not hasattr(mlp, "coefs_") or mlp.activation not in ACTIVATIONS:
        return None
    classes = np.asarray(mlp.classes_)
    binariser = getattr(mlp, "_label_binarizer", None)
    if binariser is not None and getattr(binariser, "y_type_", "") == "multilabel-indicator":
        return None
    if mlp.out_activation_ == "softmax" and len(classes) >= 3:
        link = "softmax"
    elif mlp.out_activation_ == "logistic" and mlp.n_outputs_ == 1 and len(classes) == 2:
        link = "sigmoid"
    else:
        return None

    d_mlp = int(mlp.n_features_in_)
    preprocessing = [_step_name(s) for s in pre if not (s is None or isinstance(s, str))]
    if preprocessing:
        d = int(_delegated(est, "n_features_in_") or getattr(pre[0], "n_features_in_", d_mlp))
        A, c = fold_affine(pre, d)
        if A.shape[0] != d_mlp:
            return None
    else:
        d, A, c = d_mlp, None, None

    net = _Network(
        coefs=tuple(np.array(W, dtype=np.float64) for W in mlp.coefs_),
        intercepts=tuple(np.array(b, dtype=np.float64) for b in mlp.intercepts_),
        activation=mlp.activation,
        link=link,
        n_classes=len(classes),
        A=A,
        c=c,
        n_features=d,
    )
    names = _delegated(est, "feature_names_in_")
    return DifferentiableForm(
        estimator=est,
        logits=net.logits,
        log_proba=net.log_proba,
        log_proba_grad=net.log_proba_grad,
        logit_grad=net.logit_grad,
        params=net.params,
        param_grad=net.param_grad,
        hvp=net.hvp,
        link=link,
        alpha=float(mlp.alpha),
        classes=classes,
        n_features=d,
        feature_names=None if names is None else [str(s) for s in names],
        preprocessing=preprocessing,
    )
