"""The black-box form: which objects qualify, and that queries go to the estimator itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from invaudit.errors import InputError
from invaudit.models.base import BlackBoxForm
from invaudit.models.blackbox import PredictOnlyForm, class_scores, from_estimator


class OnlyDecision(ClassifierMixin, BaseEstimator):
    """A custom classifier that has decision_function and no predict_proba."""

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        self.centres_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        return self

    def decision_function(self, X):
        d = -((np.asarray(X)[:, None, :] - self.centres_[None]) ** 2).sum(axis=2)
        return d[:, 1] - d[:, 0] if len(self.classes_) == 2 else d

    def predict(self, X):
        s = self.decision_function(X)
        idx = (s > 0).astype(int) if s.ndim == 1 else s.argmax(axis=1)
        return self.classes_[idx]


class Neither(BaseEstimator):
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def _data(k=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.array(["a", "b", "c"])[:k][np.argmax(X @ rng.normal(size=(2, k)), axis=1)]
    return X, y


@pytest.mark.parametrize("k", [2, 3])
def test_decision_function_only_classifier_works(k):
    X, y = _data(k)
    est = OnlyDecision().fit(X, y)
    form = from_estimator(est)
    assert isinstance(form, BlackBoxForm)
    assert form.kind == "black-box" and not form.has_proba
    assert list(form.classes) == list(est.classes_) and form.n_features == 2
    scores = class_scores(form, X)
    assert scores.shape == (len(X), k)
    # the argmax of the scores is the estimator's own prediction
    np.testing.assert_array_equal(form.classes[scores.argmax(axis=1)], est.predict(X))
    np.testing.assert_array_equal(form.predict_index(X), scores.argmax(axis=1))
    assert form.describe()["estimator"] == "OnlyDecision"


def test_neither_method_gives_none():
    X, y = _data()
    assert isinstance(from_estimator(Neither().fit(X, y)), PredictOnlyForm)  # one-hot scores of predict
    assert from_estimator(OnlyDecision()) is None  # not fitted: no classes_


def test_svc_without_probability_uses_decision_function():
    X, y = _data()
    svc = SVC().fit(X, y)  # no probability calibration: predict_proba is unavailable
    form = from_estimator(svc)
    assert not form.has_proba
    np.testing.assert_array_equal(form.classes[class_scores(form, X).argmax(axis=1)], svc.predict(X))


def test_predict_proba_is_passed_through():
    X, y = _data()
    knn = KNeighborsClassifier(5).fit(X, y)
    form = from_estimator(knn)
    assert form.has_proba
    np.testing.assert_array_equal(class_scores(form, X), knn.predict_proba(X))
    with pytest.raises(InputError):
        class_scores(form, X[:, :1])
