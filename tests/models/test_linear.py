"""The linear form against the estimator's own decision_function / predict_proba / predict,
on random inputs far from the training rows, for every family, binary and 3-class, alone and
behind every affine preprocessing step."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import (
    LogisticRegression,
    LogisticRegressionCV,
    Perceptron,
    RidgeClassifier,
    RidgeClassifierCV,
    SGDClassifier,
)
from sklearn.multiclass import OneVsOneClassifier, OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    Normalizer,
    PolynomialFeatures,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from invaudit.models.base import LinearForm, class_indices, softmax
from invaudit.models.linear import from_estimator

D = 4


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # tiny fits on a shared 2-core machine: BLAS threads only oversubscribe it
    with threadpool_limits(limits=1):
        yield


def _data(K: int, seed: int = 0, n: int = 90):
    rng = np.random.default_rng(seed)
    # features on different scales and offsets so that scalers do real work
    X = rng.normal(size=(n, D)) * np.array([1.0, 3.0, 0.5, 4.0]) + np.array([0.0, 5.0, -1.0, 10.0])
    s = X[:, 0] + 0.3 * X[:, 1] - 2.0 * X[:, 2] + 0.2 * X[:, 3] + rng.normal(scale=0.5, size=n)
    y = np.digitize(s, np.quantile(s, np.linspace(0, 1, K + 1)[1:-1]))
    labels = np.array(["ant", "bee", "cat"])[:K] if seed % 2 else np.array([3, 7, 11])[:K]
    return X, labels[y]


def _queries(seed: int = 1, n: int = 40):
    rng = np.random.default_rng(seed)
    X, _ = _data(2)
    lo, hi = X.min(0), X.max(0)
    span = hi - lo
    return rng.uniform(lo - span, hi + span, size=(n, D))


# family -> (factory, expected binary link, expected multiclass link); multiclass None = n/a
FAMILIES = {
    "lr-lbfgs": (lambda: LogisticRegression(), "sigmoid", "softmax"),
    "lr-newton-cg": (lambda: LogisticRegression(solver="newton-cg", C=0.3), "sigmoid", "softmax"),
    "lr-liblinear": (lambda: LogisticRegression(solver="liblinear"), "sigmoid", None),
    "lr-cv": (lambda: LogisticRegressionCV(Cs=2, cv=2), "sigmoid", "softmax"),
    "linear-svc": (lambda: LinearSVC(), "none", "none"),
    "linear-svc-cs": (lambda: LinearSVC(multi_class="crammer_singer"), "none", "none"),
    "sgd-log": (lambda: SGDClassifier(loss="log_loss", random_state=0), "sigmoid", "ovr"),
    "sgd-huber": (lambda: SGDClassifier(loss="modified_huber", random_state=0), "none", "none"),
    "sgd-hinge": (lambda: SGDClassifier(random_state=0), "none", "none"),
    "ridge": (lambda: RidgeClassifier(), "none", "none"),
    "ridge-cv": (lambda: RidgeClassifierCV(), "none", "none"),
    "perceptron": (lambda: Perceptron(random_state=0), "none", "none"),
    "lda-svd": (lambda: LinearDiscriminantAnalysis(), "sigmoid", "softmax"),
    "lda-lsqr": (lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"), "sigmoid", "softmax"),
    "lda-eigen": (lambda: LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1), "sigmoid", "softmax"),
    "ovr-lr": (lambda: OneVsRestClassifier(LogisticRegression(solver="liblinear")), "sigmoid", "ovr"),
    "ovr-lda": (lambda: OneVsRestClassifier(LinearDiscriminantAnalysis()), "sigmoid", "ovr"),
    "ovr-svc": (lambda: OneVsRestClassifier(LinearSVC()), "none", "none"),
    "ovr-huber": (
        lambda: OneVsRestClassifier(SGDClassifier(loss="modified_huber", random_state=0)), "none", "none"
    ),
    "ovr-pipeline": (
        lambda: OneVsRestClassifier(make_pipeline(RobustScaler(), LogisticRegression())), "sigmoid", "ovr"
    ),
}

AFFINE = {
    "standard": lambda: [StandardScaler()],
    "standard-no-mean": lambda: [StandardScaler(with_mean=False)],
    "standard-no-std": lambda: [StandardScaler(with_std=False)],
    "minmax": lambda: [MinMaxScaler(feature_range=(-2.0, 3.0))],
    "maxabs": lambda: [MaxAbsScaler()],
    "robust": lambda: [RobustScaler()],
    "robust-no-center": lambda: [RobustScaler(with_centering=False, quantile_range=(10, 90))],
    "pca": lambda: [PCA()],
    "pca-whiten": lambda: [StandardScaler(), PCA(whiten=True)],
    "pca-rank-2": lambda: [StandardScaler(), PCA(n_components=2)],
    "pca-rank-2-whiten": lambda: [PCA(n_components=2, whiten=True)],
    "chain": lambda: [StandardScaler(), PCA(whiten=True), MinMaxScaler(), MaxAbsScaler()],
    "passthrough-identity": lambda: ["passthrough", FunctionTransformer(), RobustScaler()],
    "nested": lambda: [make_pipeline(StandardScaler(), PCA(n_components=3)), MinMaxScaler()],
}

EXPECTED_NAMES = {
    "pca-whiten": ["StandardScaler", "PCA(whiten)"],
    "pca-rank-2": ["StandardScaler", "PCA(2 of 4 components)"],
    "pca-rank-2-whiten": ["PCA(2 of 4 components, whiten)"],
    "passthrough-identity": ["RobustScaler"],
    "nested": ["StandardScaler", "PCA(3 of 4 components)", "MinMaxScaler"],
}


@lru_cache(maxsize=None)
def _fitted(family: str, K: int, affine: str | None = None):
    X, y = _data(K, seed=K)
    clf = FAMILIES[family][0]()
    est = clf if affine is None else make_pipeline(*AFFINE[affine](), clf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny data are irrelevant here
        est.fit(X, y)
    return est


def _cases():
    for family, (_, _, multi) in FAMILIES.items():
        for K in (2, 3):
            if K == 3 and multi is None:
                continue
            yield pytest.param(family, K, None, id=f"{family}-{K}")
    for affine in AFFINE:
        for family in ("lr-lbfgs", "linear-svc", "ovr-lr"):
            for K in (2, 3):
                yield pytest.param(family, K, affine, id=f"{affine}-{family}-{K}")


def _assert_rel(actual, expected, tol=1e-10):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _representable(form: LinearForm, X: np.ndarray) -> np.ndarray:
    """Rows where the "ovr" probabilities are representable: when every sigmoid underflows
    to 0 (all scores below about -745) scikit-learn returns uniform (SGD) or all-zero (OvR)
    rows, neither of which is the mathematical limit; those rows are not compared."""
    if form.link != "ovr":
        return np.ones(len(X), dtype=bool)
    return form.scores(X).max(axis=1) > -700.0


def _check_form(form: LinearForm, est, X: np.ndarray, expected_link: str):
    K = len(est.classes_)
    assert isinstance(form, LinearForm) and form.kind == "linear"
    assert form.link == expected_link
    assert form.W.dtype == np.float64 and form.W.shape == ((1 if K == 2 else K), D)
    np.testing.assert_array_equal(form.classes, est.classes_)
    assert form.n_features == D
    # the affine scores are the estimator's decision function
    _assert_rel(form.decision_function(X), est.decision_function(X))
    # argmax of the uniform K-row view is the estimator's prediction
    idx = np.argmax(X @ form.W_full.T + form.b_full, axis=1)
    np.testing.assert_array_equal(form.classes[idx], est.predict(X))
    np.testing.assert_array_equal(idx, class_indices(form.classes, est.predict(X)))
    assert form.has_proba == hasattr(est, "predict_proba")
    if form.link != "none":
        rows = _representable(form, X)
        _assert_rel(form.proba(X[rows]), est.predict_proba(X[rows]))
    else:
        with pytest.raises(ValueError):
            form.proba(X)
    if form.link == "sigmoid":
        _assert_rel(softmax(X @ form.W_full.T + form.b_full), est.predict_proba(X))


@pytest.mark.parametrize("family,K,affine", list(_cases()))
def test_reproduces_estimator(family, K, affine):
    est = _fitted(family, K, affine)
    form = from_estimator(est)
    expected_link = FAMILIES[family][1] if K == 2 else FAMILIES[family][2]
    X = np.vstack([_queries(), _data(K, seed=K)[0][:10]])
    _check_form(form, est, X, expected_link)
    if affine is None:
        assert form.pre_A is None and form.preprocessing == []
        assert form.final_estimator is est
        return
    # folded preprocessing: what the final estimator sees, and the names
    final = est.steps[-1][1]
    assert form.final_estimator is final
    _assert_rel(form.preprocess(X), est[:-1].transform(X))
    _assert_rel(final.decision_function(form.preprocess(X)), est.decision_function(X))
    if affine in EXPECTED_NAMES:
        assert form.preprocessing == EXPECTED_NAMES[affine]


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from([("lr-lbfgs", 3, "chain"), ("sgd-log", 3, "pca-whiten"),
                          ("lda-svd", 2, "minmax"), ("ovr-lr", 3, "robust")]),
    X=hnp.arrays(np.float64, (5, D), elements=st.floats(-1e3, 1e3, allow_nan=False)),
)
def test_random_inputs(case, X):
    family, K, affine = case
    est = _fitted(family, K, affine)
    form = from_estimator(est)
    expected_link = FAMILIES[family][1] if K == 2 else FAMILIES[family][2]
    scores = est.decision_function(X)
    _assert_rel(form.decision_function(X), scores)
    if K > 2:  # argmax checks only where the estimator has no (near) tie
        top2 = np.sort(scores, axis=1)[:, -2:]
        ok = top2[:, 1] - top2[:, 0] > 1e-9 * max(1.0, np.abs(scores).max())
    else:
        ok = np.abs(scores) > 1e-9 * max(1.0, np.abs(scores).max())
    idx = np.argmax(X @ form.W_full.T + form.b_full, axis=1)
    np.testing.assert_array_equal(form.classes[idx][ok], est.predict(X)[ok])
    assert form.link == expected_link
    rows = _representable(form, X)
    _assert_rel(form.proba(X[rows]), est.predict_proba(X[rows]))


def test_feature_names_from_pipeline_or_estimator():
    X, y = _data(2)
    names = np.array(["a", "b", "c", "d"], dtype=object)
    clf = LogisticRegression().fit(X, y)
    assert from_estimator(clf).feature_names is None
    clf.feature_names_in_ = names
    assert from_estimator(clf).feature_names == ["a", "b", "c", "d"]
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    pipe.steps[0][1].feature_names_in_ = names
    assert from_estimator(pipe).feature_names == ["a", "b", "c", "d"]


def test_sparsified_coefficients():
    X, y = _data(3)
    clf = SGDClassifier(loss="log_loss", random_state=0).fit(X, y).sparsify()
    form = from_estimator(clf)
    _assert_rel(form.decision_function(_queries()), clf.decision_function(_queries()))


def _multilabel():
    X, _ = _data(2)
    Y = np.column_stack([X[:, 0] > 0, X[:, 2] > -1, X[:, 1] > 10]).astype(int)
    return X, Y


class _MyLogistic(LogisticRegression):
    """A subclass may change what predict_proba means: not trusted as linear."""


NOT_LINEAR = {
    "polynomial-step": lambda X, y: make_pipeline(PolynomialFeatures(2), LogisticRegression()).fit(X, y),
    "normalizer-step": lambda X, y: make_pipeline(Normalizer(), LogisticRegression()).fit(X, y),
    "quantile-step": lambda X, y: make_pipeline(
        QuantileTransformer(n_quantiles=20), LogisticRegression()).fit(X, y),
    "minmax-clip": lambda X, y: make_pipeline(MinMaxScaler(clip=True), LogisticRegression()).fit(X, y),
    "log-step": lambda X, y: make_pipeline(
        FunctionTransformer(np.abs), FunctionTransformer(np.log1p, np.expm1), LinearSVC()).fit(X, y),
    "tree": lambda X, y: DecisionTreeClassifier(max_depth=3).fit(X, y),
    "linear-kernel-svc": lambda X, y: SVC(kernel="linear").fit(X, y),
    "knn-after-scaler": lambda X, y: make_pipeline(StandardScaler(), KNeighborsClassifier()).fit(X, y),
    "one-vs-one": lambda X, y: OneVsOneClassifier(LinearSVC()).fit(X, y),
    "ovr-of-tree": lambda X, y: OneVsRestClassifier(DecisionTreeClassifier()).fit(X, y),
    "ovr-multilabel": lambda X, y: OneVsRestClassifier(LogisticRegression()).fit(*_multilabel()),
    "ridge-multilabel": lambda X, y: RidgeClassifier().fit(*_multilabel()),
    "unfitted": lambda X, y: LogisticRegression(),
    "unfitted-pipeline": lambda X, y: make_pipeline(StandardScaler(), LogisticRegression()),
    "subclass": lambda X, y: _MyLogistic().fit(X, y),
    "scaler-last": lambda X, y: Pipeline([("clf", "passthrough"), ("s", StandardScaler())]).fit(X),
    "not-an-estimator": lambda X, y: object(),
}


@pytest.mark.parametrize("name", list(NOT_LINEAR))
def test_not_linear_returns_none(name):
    X, y = _data(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NOT_LINEAR[name](X, y)
    assert from_estimator(est) is None
