"""The kernel form (SVC / NuSVC): pairwise decision values, predictions and exact input gradients
against scikit-learn itself and central differences."""

import copy
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC, NuSVC

from invaudit.models import adapt
from invaudit.models.base import LinearForm
from invaudit.models.capabilities import capabilities
from invaudit.models.kernel import KernelForm

SCALES = np.array([1e-5, 1.0, 1e3, 1e5])


def _data(k, seed=0, n=120):
    X, y = make_classification(n, 4, n_informative=3, n_redundant=0, n_classes=k, n_clusters_per_class=1,
                               class_sep=0.8, random_state=seed)
    return X * SCALES + np.array([0.0, 5.0, -3e3, 1e6]), y


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _ovo(est, X):
    """scikit-learn's own one-vs-one decision values (class i of pair (i, j) when positive)."""
    e = copy.deepcopy(est)
    final = e.steps[-1][1] if hasattr(e, "steps") else e
    final.decision_function_shape = "ovo"
    d = e.decision_function(X)
    return -d[:, None] if d.ndim == 1 else d


CASES = [(cls, kern, k, scaler) for cls in (SVC, NuSVC) for kern in ("rbf", "poly", "sigmoid")
         for k in (2, 3) for scaler in (StandardScaler, MinMaxScaler)]


@pytest.mark.parametrize("cls,kern,k,scaler", CASES)
def test_pair_values_predictions_and_gradients(cls, kern, k, scaler):
    X, y = _data(k)
    svm = cls(kernel=kern, nu=0.3) if cls is NuSVC else cls(kernel=kern, C=2.0)
    est = _fit(make_pipeline(scaler(), svm), X, y)
    form = adapt(est)
    assert isinstance(form, KernelForm) and form.kind == "kernel"
    assert form.preprocessing == [scaler.__name__]
    V = form.pair_values(X)
    ref = _ovo(est, X)
    np.testing.assert_allclose(V, ref, rtol=1e-9, atol=1e-9 * (1 + np.abs(ref).max()))
    np.testing.assert_allclose(form.decision_function(X), est.decision_function(X), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(form.predict_from_pairs(V), form.predict_index(X))
    # exact input gradients against central differences, in input units (scales 1e-5..1e5)
    Xs = X[:15]
    V0, J = form.pair_jacobian(Xs)
    np.testing.assert_allclose(V0, V[:15], rtol=1e-12, atol=1e-12)
    h = 1e-5 * np.maximum(np.abs(Xs), SCALES)
    num = np.stack([(form.pair_values(Xs + np.eye(4)[d] * h[:, d:d + 1])
                     - form.pair_values(Xs - np.eye(4)[d] * h[:, d:d + 1])) / (2 * h[:, d:d + 1])
                    for d in range(4)], axis=2)
    scale = np.abs(J * SCALES).max()
    assert np.abs((J - num) * SCALES).max() <= 1e-5 * scale
    # support vectors map back to input units exactly
    np.testing.assert_allclose(form.preprocess(form.support_vectors_input()), form.support_vectors,
                               rtol=1e-9, atol=1e-9)


def test_break_ties_follows_the_decision_function():
    X, y = _data(4, seed=3, n=160)
    est = _fit(SVC(break_ties=True, gamma=5.0), X / SCALES, y)
    form = adapt(est)
    assert form.break_ties
    G = np.random.default_rng(0).normal(size=(3000, 4)) * 2
    np.testing.assert_array_equal(form.predict_from_pairs(form.pair_values(G)), form.predict_index(G))


def test_binary_linear_kernel_is_the_linear_form_and_multiclass_is_not():
    X, y = _data(2)
    est = _fit(make_pipeline(StandardScaler(), SVC(kernel="linear")), X, y)
    form = adapt(est)
    assert isinstance(form, LinearForm) and form.link == "none"
    np.testing.assert_allclose(form.decision_function(X), est.decision_function(X), rtol=1e-9, atol=1e-9)
    caps = {c.command: c for c in capabilities(form)}
    assert caps["counterfactual"].exact == "yes"
    assert caps["influence"].available == "yes" and caps["influence"].exact == "no"  # a surrogate
    X3, y3 = _data(3)
    form3 = adapt(_fit(NuSVC(kernel="linear", nu=0.3), X3 / SCALES, y3))
    assert form3.kind == "kernel"
    np.testing.assert_array_equal(form3.predict_from_pairs(form3.pair_values(X3 / SCALES)),
                                  form3.predict_index(X3 / SCALES))


def test_unsupported_kernels_stay_black_boxes_and_info_is_truthful():
    X, y = _data(2)
    Xs = X / SCALES
    pre = _fit(SVC(kernel="precomputed"), Xs @ Xs.T, y)
    assert adapt(pre).kind == "black-box"
    form = adapt(_fit(SVC(probability=True, random_state=0), Xs, y))
    assert form.has_proba
    caps = {c.command: c for c in capabilities(form)}
    assert caps["counterfactual"].available == "yes" and caps["counterfactual"].exact == "no"
    assert caps["margin"].exact == "no" and "lower bound" in caps["margin"].method
    assert caps["influence"].exact == "no" and "smoothed-hinge" in caps["influence"].method
    assert form.describe()["form"] == "kernel" and form.describe()["kernel"] == "rbf"
