"""The neighbours form: what adapt() reads off a KNeighborsClassifier, checked against the estimator."""

import io
import pickle

import joblib
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from invaudit.io.model_file import load_model
from invaudit.margins._neighbors import fast_votes
from invaudit.models import adapt
from invaudit.models.capabilities import capabilities


def _data(seed=0, n=60, d=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([1e-3, 1.0, 1e3])[:d]
    y = np.where(X[:, 0] * 1e3 + X[:, 1] > 0, "yes", "no")
    y[X[:, 1] > 1.2] = "maybe"
    return X, y


@pytest.mark.parametrize("est", [
    KNeighborsClassifier(1),
    KNeighborsClassifier(5, weights="distance", algorithm="ball_tree"),
    KNeighborsClassifier(3, metric="manhattan", algorithm="kd_tree"),
    KNeighborsClassifier(3, p=3, algorithm="brute"),
    make_pipeline(StandardScaler(), KNeighborsClassifier(4)),
    make_pipeline(MinMaxScaler(), StandardScaler(), KNeighborsClassifier(2, weights="distance")),
])
def test_form_matches_the_estimator(est):
    X, y = _data()
    est.fit(X, y)
    form = adapt(est)
    assert form.kind == "neighbors"
    rng = np.random.default_rng(1)
    Q = X[rng.integers(0, len(X), 40)] * (1 + 0.1 * rng.normal(size=(40, 3)))
    # the fast vote count used inside searches agrees with the estimator off the boundaries
    np.testing.assert_allclose(fast_votes(form, Q), est.predict_proba(Q), atol=1e-12)
    np.testing.assert_allclose(form.transform(form.train_inputs()), form.fit_Z, rtol=1e-9, atol=1e-9)
    assert form.exact_geometry == (form.p == 2.0)


def test_callable_weights_stay_a_black_box():
    X, y = _data()
    est = KNeighborsClassifier(3, weights=lambda d: 1.0 / (1.0 + d)).fit(X, y)
    assert adapt(est).kind == "black-box"


@pytest.mark.parametrize("algorithm", ["kd_tree", "ball_tree", "brute"])
@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_restricted_loader_reads_tree_state(tmp_path, algorithm, how):
    X, y = _data()
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(3, algorithm=algorithm)).fit(X, y)
    path = tmp_path / f"m.{'pkl' if how == 'pickle' else 'joblib'}"
    if how == "pickle":
        path.write_bytes(pickle.dumps(est, protocol=5))
    else:
        joblib.dump(est, path)
    loaded = load_model(path)
    form = adapt(loaded.estimator)
    assert form.kind == "neighbors"
    np.testing.assert_array_equal(loaded.estimator.predict(X), est.predict(X))


def test_info_is_truthful():
    X, y = _data()
    one = {c.command: c for c in capabilities(adapt(KNeighborsClassifier(1).fit(X, y)))}
    assert one["margin"].exact == "yes" and one["counterfactual"].exact == "yes"
    assert one["influence"].available == "yes" and one["influence"].exact == "yes"
    five = {c.command: c for c in capabilities(adapt(KNeighborsClassifier(5).fit(X, y)))}
    assert five["margin"].exact == "no" and "order-k" in five["margin"].method
    manhattan = {c.command: c for c in capabilities(adapt(KNeighborsClassifier(1, metric="manhattan").fit(X, y)))}
    assert manhattan["margin"].exact == "no" and "manhattan" in manhattan["margin"].method
