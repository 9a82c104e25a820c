"""The differentiable form of MLPClassifier: every quantity against an independent reference.

References: scikit-learn's own forward pass (with the output activation switched to identity to
read logits), central finite differences of it in the inputs and in a perturbed copy of the
parameters, and scikit-learn's own training gradient (``_backprop``) for the objective.
"""

from __future__ import annotations

import copy
import warnings
from functools import lru_cache

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PowerTransformer, StandardScaler

from invaudit.errors import InputError
from invaudit.models.base import DifferentiableForm
from invaudit.models.differentiable import (
    flatten_params,
    from_estimator,
    penalised_mask,
    unflatten_params,
)

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
PREPS = ["none", "scaler", "scaler+pca"]
D = 4


def _data(n_classes: int):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, D)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, 1.0, -1.0]
    y = (X[:, 0] + 0.3 * (X[:, 1] - 5) > 0.3).astype(int)
    if n_classes == 3:
        y = y + (X[:, 2] > 1.2)
    return X, y


@lru_cache(maxsize=None)
def fitted(n_classes: int, activation: str, prep: str):
    X, y = _data(n_classes)
    mlp = MLPClassifier((5, 3), activation=activation, alpha=1e-3, max_iter=150, random_state=0)
    steps = {"none": [], "scaler": [StandardScaler()], "scaler+pca": [StandardScaler(), PCA()]}[prep]
    est = make_pipeline(*steps, mlp) if steps else mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    return est


CASES = [(k, a, p) for k in (2, 3) for a in ACTIVATIONS for p in PREPS]
IDS = [f"{k}cls-{a}-{p}" for k, a, p in CASES]


def _split(est):
    """(input map, final MLP) of an estimator, using scikit-learn's own transforms."""
    if hasattr(est, "steps"):
        return est[:-1].transform, est.steps[-1][1]
    return (lambda X: X), est


def _ref_logits(est, X, coefs=None, intercepts=None):
    """Logits from scikit-learn's forward pass with the output activation set to identity."""
    transform, mlp = _split(est)
    ref = copy.deepcopy(mlp)
    ref.out_activation_ = "identity"
    if coefs is not None:
        ref.coefs_ = [np.array(W) for W in coefs]
        ref.intercepts_ = [np.array(b) for b in intercepts]
    return ref._forward_pass_fast(transform(X))


def _ref_log_proba(est, X, **kw):
    h = _ref_logits(est, X, **kw)
    if h.shape[1] == 1:
        s = h[:, 0]
        return np.column_stack([-np.logaddexp(0.0, s), -np.logaddexp(0.0, -s)])
    return log_softmax(h, axis=1)


def _ref_scores(est, X):
    """W_full-style class scores: binary [0, logit], multiclass the logits."""
    h = _ref_logits(est, X)
    return np.column_stack([np.zeros(len(h)), h[:, 0]]) if h.shape[1] == 1 else h


def _test_rows(n=6, seed=2, est=None):
    """``n`` random rows; with ``est`` a relu network, only rows whose hidden pre-activations are
    all at least 1e-3 from the kink at 0 (finite differences are only valid where it is smooth)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20 * n, D)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, 1.0, -1.0]
    if est is not None and _split(est)[1].activation == "relu":
        transform, mlp = _split(est)
        a, ok = transform(X), np.ones(len(X), dtype=bool)
        for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
            h = a @ W + b
            ok &= np.abs(h).min(axis=1) > 1e-3
            a = np.maximum(h, 0.0)
        X = X[ok]
    assert len(X) >= n
    return X[:n]


def _fd_inputs(fun, X, h=1e-5):
    """Central differences of ``fun`` (rows -> (n, K)) in every input: (n, K, D)."""
    n, d = X.shape
    E = np.eye(d) * h
    Xp = (X[:, None, :] + E[None]).reshape(-1, d)
    Xm = (X[:, None, :] - E[None]).reshape(-1, d)
    diff = (fun(Xp) - fun(Xm)).reshape(n, d, -1) / (2 * h)
    return diff.transpose(0, 2, 1)


def _my_unravel(est, theta):
    """The documented parameter order, written out independently of the module."""
    _, mlp = _split(est)
    coefs, intercepts, pos = [], [], 0
    for W in mlp.coefs_:
        coefs.append(theta[pos:pos + W.size].reshape(W.shape))
        pos += W.size
    for b in mlp.intercepts_:
        intercepts.append(theta[pos:pos + b.size])
        pos += b.size
    assert pos == theta.size
    return coefs, intercepts


def _with_params(est, theta):
    """A deep copy of ``est`` whose network parameters are ``theta``."""
    new = copy.deepcopy(est)
    _, mlp = _split(new)
    coefs, intercepts = _my_unravel(est, theta)
    mlp.coefs_ = [np.array(W) for W in coefs]
    mlp.intercepts_ = [np.array(b) for b in intercepts]
    return new


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_logits_and_proba_reproduce_the_estimator(case):
    est = fitted(*case)
    form = from_estimator(est)
    assert isinstance(form, DifferentiableForm)
    assert form.link == ("sigmoid" if case[0] == 2 else "softmax")
    X = _test_rows(40, seed=3) * 1.5
    np.testing.assert_allclose(form.logits(X), _ref_logits(est, X), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.exp(form.log_proba(X)), est.predict_proba(X), rtol=0, atol=1e-10)
    assert form.params().dtype == np.float64


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_input_gradients_match_finite_differences(case):
    est = fitted(*case)
    form = from_estimator(est)
    K = case[0]
    X = _test_rows(est=est)
    fd_logp = _fd_inputs(lambda Z: _ref_log_proba(est, Z), X)
    fd_score = _fd_inputs(lambda Z: _ref_scores(est, Z), X)
    for k in range(K):
        np.testing.assert_allclose(form.log_proba_grad(X, k), fd_logp[:, k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(form.logit_grad(X, k), fd_score[:, k], rtol=1e-5, atol=1e-7)
    ks = np.arange(len(X)) % K
    np.testing.assert_allclose(
        form.log_proba_grad(X, ks), fd_logp[np.arange(len(X)), ks], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_param_grad_matches_finite_differences_of_perturbed_copies(case):
    est = fitted(*case)
    form = from_estimator(est)
    X = _test_rows(5, seed=4, est=est)
    y = np.arange(5) % case[0]
    theta = form.params()
    G = form.param_grad(X, y)
    assert G.shape == (5, theta.size)
    h = 1e-6
    fd = np.empty_like(G)
    rows = np.arange(5)
    for p in range(theta.size):  # a loop over parameters, in the test only
        e = np.zeros_like(theta)
        e[p] = h
        lp = _ref_log_proba(est, X, **dict(zip(("coefs", "intercepts"), _my_unravel(est, theta + e))))
        lm = _ref_log_proba(est, X, **dict(zip(("coefs", "intercepts"), _my_unravel(est, theta - e))))
        fd[:, p] = -(lp[rows, y] - lm[rows, y]) / (2 * h)
    np.testing.assert_allclose(G, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hvp_matches_finite_differences_and_is_symmetric(case):
    est = fitted(*case)
    form = from_estimator(est)
    X = _test_rows(8, seed=5, est=est)
    y = np.arange(8) % case[0]
    theta = form.params()
    rng = np.random.default_rng(6)
    v = rng.normal(size=theta.size)
    u = rng.normal(size=theta.size)
    Hv = form.hvp(X, y, v)
    eps = 1e-5
    g_plus = from_estimator(_with_params(est, theta + eps * v)).param_grad(X, y).sum(axis=0)
    g_minus = from_estimator(_with_params(est, theta - eps * v)).param_grad(X, y).sum(axis=0)
    fd = (g_plus - g_minus) / (2 * eps)
    np.testing.assert_allclose(Hv, fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd).max()))
    Hu = form.hvp(X, y, u)
    assert abs(u @ Hv - v @ Hu) <= 1e-10 * max(1.0, abs(u @ Hv))


@pytest.mark.parametrize("case", [(2, "tanh", "scaler"), (3, "logistic", "none"), (3, "relu", "scaler+pca")])
def test_documented_objective_matches_sklearn_training_gradient(case):
    """mean param_grad + alpha/n * theta (coefs only) == scikit-learn's own _backprop gradient."""
    est = fitted(*case)
    form = from_estimator(est)
    transform, mlp = _split(est)
    X, y = _data(case[0])
    X = X[:30]
    y = y[:30]
    Z = transform(X)
    Y = mlp._label_binarizer.transform(y).astype(np.float64)
    layer_units = [Z.shape[1]] + [W.shape[1] for W in mlp.coefs_]
    activations = [Z] + [None] * (len(layer_units) - 1)
    deltas = [None] * (len(activations) - 1)
    coef_grads = [np.empty((a, b)) for a, b in zip(layer_units[:-1], layer_units[1:])]
    intercept_grads = [np.empty(b) for b in layer_units[1:]]
    _, cg, ig = mlp._backprop(Z, Y, None, activations, deltas, coef_grads, intercept_grads)
    sk_grad = flatten_params(cg, ig)
    theta = form.params()
    n = len(X)
    ours = form.param_grad(X, y).mean(axis=0) + form.alpha / n * theta * penalised_mask(form)
    np.testing.assert_allclose(ours, sk_grad, rtol=1e-9, atol=1e-12)
    assert form.alpha == mlp.alpha


def test_params_roundtrip_and_order():
    est = fitted(3, "tanh", "none")
    form = from_estimator(est)
    theta = form.params()
    coefs, intercepts = unflatten_params(form, theta)
    for a, b in zip(coefs + intercepts, est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(a, b)
    mask = penalised_mask(est)
    assert mask.sum() == sum(W.size for W in est.coefs_)
    assert not mask[-sum(b.size for b in est.intercepts_):].any()


def test_describe_and_preprocessing_names():
    form = from_estimator(fitted(2, "relu", "scaler+pca"))
    assert form.preprocessing == ["StandardScaler", "PCA"]
    assert form.n_features == D
    assert form.describe()["form"] == "differentiable"


def test_bad_inputs_raise_input_error():
    form = from_estimator(fitted(3, "relu", "none"))
    X = _test_rows(3)
    with pytest.raises(InputError):
        form.logits(X[:, :2])
    with pytest.raises(InputError):
        form.log_proba_grad(X, 3)
    with pytest.raises(InputError):
        form.param_grad(X, np.array([0, 1]))
    with pytest.raises(InputError):
        form.hvp(X, np.zeros(3, dtype=int), np.zeros(5))


def test_not_this_form():
    X, y = _data(2)
    assert from_estimator(LogisticRegression().fit(X, y)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Y = np.column_stack([y, X[:, 2] > 1])
        assert from_estimator(MLPClassifier((3,), max_iter=20, random_state=0).fit(X, Y)) is None
        pipe = make_pipeline(PowerTransformer(), MLPClassifier((3,), max_iter=20, random_state=0))
        assert from_estimator(pipe.fit(X, y)) is None
    assert from_estimator(MLPClassifier()) is None  # not fitted
