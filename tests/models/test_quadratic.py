"""The quadratic form: GaussianNB and QDA scores read off the estimators, checked against them."""

import pickle

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.io.model_file import load_model
from invaudit.models import adapt
from invaudit.models.capabilities import capabilities


def _data(seed=0, n=200, scales=(0.1, 1.0, 10.0, 5.0)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * np.array(scales)
    y = np.array(["a", "b", "c"])[(X[:, 0] * 10 + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 3)]
    return X, y


@pytest.mark.parametrize("est", [
    GaussianNB(), GaussianNB(var_smoothing=1e-3), QuadraticDiscriminantAnalysis(),
    QuadraticDiscriminantAnalysis(reg_param=0.2),
    make_pipeline(StandardScaler(), GaussianNB()),
    make_pipeline(StandardScaler(), PCA(3), QuadraticDiscriminantAnalysis()),
])
def test_scores_match_the_estimator(est):
    X, y = _data()
    est.fit(X, y)
    form = adapt(est)
    assert form.kind == "quadratic"
    np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-12)
    np.testing.assert_array_equal(form.classes[form.scores(X).argmax(axis=1)], est.predict(X))


def test_gaussian_nb_at_extreme_scales():
    X, y = _data(scales=(1e-5, 1.0, 1e5, 1e2))
    est = GaussianNB().fit(X, y)
    form = adapt(est)
    np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-10)


def test_loader_and_info(tmp_path):
    X, y = _data()
    est = QuadraticDiscriminantAnalysis().fit(X, y)
    path = tmp_path / "qda.pkl"
    path.write_bytes(pickle.dumps(est))
    form = adapt(load_model(path).estimator)
    caps = {c.command: c for c in capabilities(form)}
    assert caps["margin"].exact == "yes"
    assert caps["counterfactual"].exact == "partly"  # three classes: a confidence may not settle
    assert caps["influence"].available == "yes" and caps["influence"].exact == "yes"  # closed-form refits
    two = adapt(GaussianNB().fit(X, y == "a"))
    assert {c.command: c for c in capabilities(two)}["counterfactual"].exact == "yes"
