"""adapt(): the most exact form for each family, the fall-through order, and the refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    PolynomialFeatures,
    PowerTransformer,
    QuantileTransformer,
    StandardScaler,
)
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

import invaudit.models as models
from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models import FORM_KINDS, ModelForm, adapt, estimator_name


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def _data(K: int):
    rng = np.random.default_rng(0)
    X = np.exp(rng.normal(size=(80, 3)) * 0.5)
    s = np.log(X) @ np.array([1.0, -1.0, 0.5])
    return X, np.digitize(s, np.quantile(s, np.linspace(0, 1, K + 1)[1:-1]))


class DecisionOnly(ClassifierMixin, BaseEstimator):
    """A custom classifier that only ranks classes."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        return np.asarray(X)[:, : len(self.classes_)]

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


class PredictOnly(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


# name -> (factory, expected kind, expected preprocessing or None)
FAMILIES = {
    "logistic": (LogisticRegression, "linear", []),
    "linear-svc": (LinearSVC, "linear", []),
    "sgd-huber": (lambda: SGDClassifier(loss="modified_huber", random_state=0), "linear", []),
    "ridge": (RidgeClassifier, "linear", []),
    "lda": (LinearDiscriminantAnalysis, "linear", []),
    "ovr-logistic": (lambda: OneVsRestClassifier(LogisticRegression()), "linear", []),
    "scaler-logistic": (lambda: make_pipeline(StandardScaler(), LogisticRegression()), "linear",
                        ["StandardScaler"]),
    "rank-deficient-pca-svc": (lambda: make_pipeline(PCA(n_components=2), LinearSVC()), "linear",
                               ["PCA(2 of 3 components)"]),
    "quantile-logistic": (lambda: make_pipeline(QuantileTransformer(n_quantiles=30), LogisticRegression()),
                          "invertible-linear", ["QuantileTransformer(uniform)"]),
    "power-scaler-ridge": (lambda: make_pipeline(PowerTransformer(), StandardScaler(), RidgeClassifier()),
                           "invertible-linear", ["PowerTransformer(yeo-johnson, standardize)",
                                                 "StandardScaler"]),
    "log-logistic": (lambda: make_pipeline(FunctionTransformer(np.log, np.exp), LogisticRegression()),
                     "invertible-linear", ["FunctionTransformer(log)"]),
    "mlp": (lambda: MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0),
            "differentiable", None),
    "scaler-mlp": (lambda: make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(4,),
                                                                         max_iter=50, random_state=0)),
                   "differentiable", None),
    "tree": (lambda: DecisionTreeClassifier(max_depth=3), "trees", None),
    "forest": (lambda: RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0), "trees", None),
    "boosting": (lambda: GradientBoostingClassifier(n_estimators=3, max_depth=2), "trees", None),
    "rbf-svc": (SVC, "kernel", None),
    "knn": (KNeighborsClassifier, "neighbors", None),
    "decision-only": (DecisionOnly, "black-box", None),
    # pipelines with a step that is neither affine nor invertible must not be called linear
    "polynomial-logistic": (lambda: make_pipeline(PolynomialFeatures(2), LogisticRegression()),
                            "black-box", None),
    "clipping-minmax-logistic": (lambda: make_pipeline(MinMaxScaler(clip=True), LogisticRegression()),
                                 "black-box", None),
    "pca-quantile-logistic": (lambda: make_pipeline(PCA(), QuantileTransformer(n_quantiles=30),
                                                    LogisticRegression()), "black-box", None),
}


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_adapt_picks_the_most_exact_form(name, K):
    factory, kind, preprocessing = FAMILIES[name]
    X, y = _data(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = factory().fit(X, y)
    form = adapt(est)
    assert isinstance(form, ModelForm)
    assert form.kind == kind and kind in FORM_KINDS
    assert form.estimator is est
    np.testing.assert_array_equal(form.classes, est.classes_)
    assert form.n_features == X.shape[1]
    if preprocessing is not None:
        assert form.preprocessing == preprocessing
    # the estimator's own answers pass through
    np.testing.assert_array_equal(form.predict(X[:5]), est.predict(X[:5]))
    desc = form.describe()
    json.dumps(desc)
    assert desc["form"] == kind and desc["estimator"] == estimator_name(est)


def test_linear_form_wins_over_differentiable_and_black_box():
    X, y = _data(3)
    est = make_pipeline(StandardScaler(), PCA(whiten=True), LogisticRegression()).fit(X, y)
    form = adapt(est)
    assert form.kind == "linear"
    np.testing.assert_allclose(form.decision_function(X), est.decision_function(X), rtol=1e-10, atol=1e-10)


def test_nothing_to_query_is_refused():
    X, y = _data(2)
    with pytest.raises(UnsupportedModelError) as err:
        adapt(object())
    assert str(err.value) == (
        "object has neither predict_proba, decision_function nor predict; invaudit cannot query it"
    )
    assert isinstance(err.value, InputError) and err.value.exit_code == 3
    # a model with predict only is a black box with one-hot scores (tests/models/test_predict_only.py)
    assert adapt(PredictOnly().fit(X, y)).kind == "black-box"


def test_unfitted_classifier_is_refused():
    with pytest.raises(UnsupportedModelError, match="not a fitted classifier"):
        adapt(LogisticRegression())


def test_public_names():
    for name in models.__all__:
        assert hasattr(models, name)
    assert {"adapt", "LinearForm", "InvertibleLinearForm", "class_indices"} <= set(models.__all__)


def test_multi_output_classifiers_are_refused_with_a_sentence():
    import numpy as np
    import pytest
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import ClassifierChain, MultiOutputClassifier

    from invaudit.errors import UnsupportedModelError
    from invaudit.models import adapt

    X = np.random.default_rng(0).normal(size=(40, 3))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0]).astype(int)
    for m in (ClassifierChain(LogisticRegression()).fit(X, Y), MultiOutputClassifier(LogisticRegression()).fit(X, Y)):
        with pytest.raises(UnsupportedModelError, match="multi-output"):
            adapt(m)
