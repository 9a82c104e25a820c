"""The invertible-linear form: forward against the pipeline's own transform chain, inverse
against a round trip (and scikit-learn's inverse_transform), jacobian and vjp against central
finite differences, the composed form against the pipeline's decision_function and
predict_proba, and the domain against points just outside it."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    Normalizer,
    PolynomialFeatures,
    PowerTransformer,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from invaudit.models.base import InvertibleLinearForm, LinearForm
from invaudit.models.invertible import from_estimator
from invaudit.models.linear import from_estimator as linear_from_estimator

D = 3
N_TRAIN = 150


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def _positive(n: int, seed: int) -> np.ndarray:
    """Skewed, strictly positive features (what power and log transforms are for)."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(size=(n, D)) * np.array([0.5, 1.0, 0.3])) * np.array([1.0, 2.0, 5.0])


def _labels(X: np.ndarray, K: int) -> np.ndarray:
    s = np.log(X) @ np.array([1.0, -0.7, 2.0])
    return np.digitize(s, np.quantile(s, np.linspace(0, 1, K + 1)[1:-1]))


def _ft(f, g):
    return FunctionTransformer(f, g)


# name -> (steps factory, classifier factory, K)
CASES = {
    "qt-uniform": (lambda: [QuantileTransformer(n_quantiles=40)], LogisticRegression, 3),
    "qt-normal": (lambda: [QuantileTransformer(n_quantiles=40, output_distribution="normal")],
                  LogisticRegression, 2),
    "yeo-johnson": (lambda: [PowerTransformer()], LogisticRegression, 3),
    "yeo-johnson-raw": (lambda: [StandardScaler(), PowerTransformer(standardize=False)],
                        LinearSVC, 3),
    "box-cox": (lambda: [PowerTransformer(method="box-cox")], LogisticRegression, 2),
    "box-cox-raw": (lambda: [PowerTransformer(method="box-cox", standardize=False)],
                    lambda: SGDClassifier(loss="log_loss", random_state=0), 3),
    "log": (lambda: [_ft(np.log, np.exp)], LogisticRegression, 3),
    "exp": (lambda: [StandardScaler(), _ft(np.exp, np.log)], LogisticRegression, 3),
    "log1p": (lambda: [_ft(np.log1p, np.expm1)], LogisticRegression, 2),
    "expm1": (lambda: [StandardScaler(), _ft(np.expm1, np.log1p)], LogisticRegression, 3),
    "sqrt": (lambda: [_ft(np.sqrt, np.square)], LogisticRegression, 3),
    "square": (lambda: [_ft(np.square, np.sqrt)], LinearSVC, 2),
    "arcsinh": (lambda: [RobustScaler(), _ft(np.arcsinh, np.sinh)], LogisticRegression, 3),
    "sinh": (lambda: [StandardScaler(), _ft(np.sinh, np.arcsinh)], LogisticRegression, 3),
    "scaler-qt-pca": (lambda: [StandardScaler(),
                               QuantileTransformer(n_quantiles=50, output_distribution="normal"),
                               PCA(whiten=True)], LogisticRegression, 3),
    "minmax-log1p-yj-scaler": (lambda: [MinMaxScaler(feature_range=(-0.5, 2.0)),
                                        _ft(np.log1p, np.expm1), PowerTransformer(),
                                        StandardScaler()], LogisticRegression, 3),
    "log-qt-yj": (lambda: [_ft(np.log, np.exp), QuantileTransformer(n_quantiles=30),
                           PowerTransformer()], LogisticRegression, 3),
}


@lru_cache(maxsize=None)
def _fitted(name: str):
    steps, clf, K = CASES[name]
    X = _positive(N_TRAIN, seed=1)
    est = make_pipeline(*steps(), clf())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, _labels(X, K))
    return est


def _inside(form: InvertibleLinearForm, n: int, seed: int) -> np.ndarray:
    """Random points strictly inside the domain, spread like the data and a bit beyond."""
    X = _positive(n, seed) * np.exp(np.random.default_rng(seed).normal(scale=0.3, size=(n, D)))
    lo, hi = form.domain_lower, form.domain_upper
    span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    return np.clip(X, lo + 1e-3 * span, hi - 1e-3 * span)


def _assert_rel(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _far_from_kinks(est, X: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Rows whose every entry is farther than ``10 h`` (in each QuantileTransformer's own input
    coordinates) from that transformer's knots and snapping bounds: there the map is smooth,
    so central differences are meaningful."""
    keep = np.ones(len(X), dtype=bool)
    for i, (_, step) in enumerate(est.steps[:-1]):
        if not isinstance(step, QuantileTransformer):
            continue
        Xi = est[:i].transform(X) if i else X
        scale = np.abs(est[:i].transform(X + h) - Xi) if i else h
        knots = np.vstack([step.quantiles_, step.quantiles_[:1] + 2e-7, step.quantiles_[-1:] - 2e-7])
        for j in range(D):  # a test may loop over features
            dist = np.min(np.abs(Xi[:, j, None] - knots[None, :, j]), axis=1)
            keep &= dist > 10 * np.maximum(scale[:, j], 1e-12)
    return keep


@pytest.mark.parametrize("name", list(CASES))
def test_forward_inverse_and_composed_form(name):
    est = _fitted(name)
    form = from_estimator(est)
    assert isinstance(form, InvertibleLinearForm) and form.kind == "invertible-linear"
    assert isinstance(form.linear, LinearForm) and form.linear.estimator is est.steps[-1][1]
    assert form.n_features == D and len(form.preprocessing) == len(est.steps) - 1
    np.testing.assert_array_equal(form.classes, est.classes_)
    X = _inside(form, 60, seed=2)
    Z = form.forward(X)
    # forward is the pipeline's own transform chain
    _assert_rel(Z, est[:-1].transform(X), 1e-10)
    # inverse undoes it on the domain, and agrees with scikit-learn's inverse_transform
    _assert_rel(form.inverse(Z), X, 1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_rel(form.inverse(Z), est[:-1].inverse_transform(Z), 1e-8)
    # the linear form on Z reproduces the pipeline
    _assert_rel(form.linear.decision_function(Z), est.decision_function(X), 1e-10)
    idx = np.argmax(Z @ form.linear.W_full.T + form.linear.b_full, axis=1)
    np.testing.assert_array_equal(form.classes[idx], est.predict(X))
    if form.linear.link != "none":
        _assert_rel(form.linear.proba(Z), est.predict_proba(X), 1e-10)
    # one row as a 1-D array
    _assert_rel(form.forward(X[0]), Z[0], 1e-15)
    _assert_rel(form.inverse(Z[0]), form.inverse(Z[:1])[0], 1e-15)


@pytest.mark.parametrize("name", ["qt-uniform", "qt-normal", "scaler-qt-pca", "log-qt-yj"])
def test_forward_matches_outside_the_domain(name):
    """QuantileTransformer clips outside its range; forward must clip the same way."""
    est = _fitted(name)
    form = from_estimator(est)
    rng = np.random.default_rng(3)
    lo, hi = form.domain_lower, form.domain_upper
    X = rng.uniform(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), size=(80, D))
    if name == "log-qt-yj":
        X = np.abs(X) + 1e-3
    # and points exactly on and just next to the snapping bounds
    q = est.steps[[isinstance(s, QuantileTransformer) for _, s in est.steps].index(True)][1]
    if name in ("qt-uniform", "qt-normal"):
        X = np.vstack([X, q.quantiles_[:1], q.quantiles_[-1:], q.quantiles_[:1] + 5e-8,
                       q.quantiles_[-1:] - 5e-8, q.quantiles_[5:6]])
    _assert_rel(form.forward(X), est[:-1].transform(X), 1e-10)
    _assert_rel(form.linear.decision_function(form.forward(X)), est.decision_function(X), 1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_jacobian_and_vjp_match_finite_differences(name):
    est = _fitted(name)
    form = from_estimator(est)
    X = _inside(form, 40, seed=4)
    h = 1e-6 * np.maximum(np.abs(X), 1e-2)
    X = X[_far_from_kinks(est, X, h)]
    h = 1e-6 * np.maximum(np.abs(X), 1e-2)
    assert len(X) >= 10
    J = form.jacobian(X)
    assert J.shape == (len(X), D, D)
    fd = np.empty_like(J)
    for k in range(D):  # one column per feature, in the test only
        e = np.zeros(D)
        e[k] = 1.0
        step = h[:, k : k + 1] * e
        fd[:, :, k] = (form.forward(X + step) - form.forward(X - step)) / (2 * h[:, k : k + 1])
    _assert_rel(J, fd, 1e-5)
    G = np.random.default_rng(5).normal(size=X.shape)
    v = form.vjp(X, G)
    _assert_rel(v, np.einsum("ni,nij->nj", G, J), 1e-12)
    # vjp alone against a directional difference of <G, forward>
    u = np.random.default_rng(6).normal(size=X.shape) * h
    dirdiff = np.sum(G * (form.forward(X + u) - form.forward(X - u)), axis=1) / 2.0
    _assert_rel(np.sum(v * u, axis=1), dirdiff, 1e-5)
    _assert_rel(form.jacobian(X[0]), J[0], 1e-15)
    _assert_rel(form.vjp(X[0], G[0]), v[0], 1e-15)


def test_domains():
    qt = from_estimator(_fitted("qt-uniform"))
    q = _fitted("qt-uniform").steps[0][1].quantiles_
    np.testing.assert_array_equal(qt.domain_lower, q[0])
    np.testing.assert_array_equal(qt.domain_upper, q[-1])
    qn = from_estimator(_fitted("qt-normal"))
    assert np.all(qn.domain_lower > q[0]) and np.all(qn.domain_upper < q[-1])
    assert np.all(qn.domain_upper - qn.domain_lower > 0.9 * (q[-1] - q[0]))
    bc = from_estimator(_fitted("box-cox"))
    np.testing.assert_array_equal(bc.domain_lower, 0.0)
    assert np.all(np.isinf(bc.domain_upper))
    yj = from_estimator(_fitted("yeo-johnson"))
    assert np.all(np.isneginf(yj.domain_lower)) and np.all(np.isposinf(yj.domain_upper))
    np.testing.assert_array_equal(from_estimator(_fitted("log")).domain_lower, 0.0)
    np.testing.assert_array_equal(from_estimator(_fitted("log1p")).domain_lower, -1.0)
    np.testing.assert_array_equal(from_estimator(_fitted("sqrt")).domain_lower, 0.0)
    # log1p after a MinMaxScaler: the bound is pulled back to input units
    est = _fitted("minmax-log1p-yj-scaler")
    mm = est.steps[0][1]
    form = from_estimator(est)
    _assert_rel(form.domain_lower, (-1.0 - mm.min_) / mm.scale_, 1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_domain_is_tight(name):
    """Just outside a finite bound, forward is undefined or no longer invertible."""
    est = _fitted(name)
    form = from_estimator(est)
    for bound, sign in ((form.domain_lower, -1.0), (form.domain_upper, 1.0)):
        if name == "expm1" and sign < 0:
            continue  # deliberately conservative: where expm1 saturates, accuracy fades gradually
        finite = np.isfinite(bound)
        if not finite.any() or np.all(np.abs(bound[finite]) > 1e300):
            continue
        X = _inside(form, 1, seed=7)
        X[0, finite] = bound[finite] + sign * 0.05 * np.maximum(np.abs(bound[finite]), 1.0)
        with np.errstate(all="ignore"):
            back = form.inverse(form.forward(X))
        err = np.abs(back - X)[0, finite]
        assert np.all(~np.isfinite(err) | (err > 1e-6))


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["qt-normal", "minmax-log1p-yj-scaler", "box-cox", "expm1", "log-qt-yj"]),
    u=st.lists(st.floats(0.0, 1.0), min_size=D, max_size=D),
)
def test_round_trip_anywhere_in_the_domain(name, u):
    form = from_estimator(_fitted(name))
    X = _positive(N_TRAIN, seed=1)
    lo = np.where(np.isfinite(form.domain_lower), form.domain_lower, X.min(0) - 3 * X.std(0))
    hi = np.where(np.isfinite(form.domain_upper), form.domain_upper, X.max(0) + 3 * X.std(0))
    lo, hi = np.maximum(lo, -20.0), np.minimum(hi, 50.0)
    lo = np.where(lo == 0.0, 1e-6, lo)  # open bounds (log, box-cox at 0)
    x = lo + np.asarray(u) * (hi - lo)
    _assert_rel(form.inverse(form.forward(x[None, :]))[0], x, 1e-8)


NOT_INVERTIBLE = {
    "all-affine": lambda: make_pipeline(StandardScaler(), PCA(), LogisticRegression()),
    "pca-then-quantile": lambda: make_pipeline(PCA(), QuantileTransformer(n_quantiles=20),
                                               LogisticRegression()),
    "rank-deficient-pca": lambda: make_pipeline(PowerTransformer(), PCA(2), LogisticRegression()),
    "minmax-clip": lambda: make_pipeline(MinMaxScaler(clip=True), PowerTransformer(),
                                         LogisticRegression()),
    "polynomial": lambda: make_pipeline(PowerTransformer(), PolynomialFeatures(2),
                                        LogisticRegression()),
    "normalizer": lambda: make_pipeline(Normalizer(), PowerTransformer(), LogisticRegression()),
    "lambda-function": lambda: make_pipeline(FunctionTransformer(lambda x: np.log(x), np.exp),
                                             LogisticRegression()),
    "mismatched-pair": lambda: make_pipeline(FunctionTransformer(np.log, np.expm1),
                                             LogisticRegression()),
    "no-inverse": lambda: make_pipeline(FunctionTransformer(np.log), LogisticRegression()),
    "kw-args": lambda: make_pipeline(FunctionTransformer(np.sqrt, np.square, kw_args={"dtype": float}),
                                     LogisticRegression()),
    "tree-at-the-end": lambda: make_pipeline(QuantileTransformer(n_quantiles=20),
                                             DecisionTreeClassifier(max_depth=2)),
    "not-a-pipeline": lambda: LogisticRegression(),
}


@pytest.mark.parametrize("name", list(NOT_INVERTIBLE))
def test_not_invertible_returns_none(name):
    X = _positive(N_TRAIN, seed=1)
    est = NOT_INVERTIBLE[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, _labels(X, 3))
    assert from_estimator(est) is None
    if name == "all-affine":
        assert linear_from_estimator(est) is not None
