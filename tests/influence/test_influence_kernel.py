"""Influence for SVC / NuSVC (Koh & Liang sec. 4.1: the smoothed hinge on the kernel machine):
predicted effects of removing training rows against real refits of the smoothed-hinge objective,
written here from scratch in the dual parametrisation and minimised by scipy.optimize."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, NuSVC

from invaudit.influence import build_objective, influence, predicted_loss_changes, supports, verify_loo
from invaudit.influence._kernel import KernelObjective
from invaudit.models import adapt

from influence_helpers import data

TAU = 0.1


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, adapt(est)


def _sh(s):
    u = (1.0 - s) / TAU
    sig = 1.0 / (1.0 + np.exp(-u))
    return TAU * np.logaddexp(0.0, u), -sig, sig * (1 - sig) / TAU


def _refit(K, ylab, C, keep, x0):
    """min_{beta, b} C sum_keep SH(y (K beta + b)) + 1/2 beta^T K beta (Newton-CG, exact
    derivatives): the RKHS problem over the span of every training row's kernel function."""
    n = K.shape[0]

    def f(v):
        beta, b = v[:n], v[n]
        s = ylab * (K @ beta + b)
        val, d1, _ = _sh(s)
        r = C * keep * d1 * ylab
        Kb = K @ beta
        return float(C * keep @ val + 0.5 * beta @ Kb), np.concatenate([K @ r + Kb, [r.sum()]])

    def hess(v):
        beta, b = v[:n], v[n]
        s = ylab * (K @ beta + b)
        _, _, d2 = _sh(s)
        w = C * keep * d2
        A = np.column_stack([K, np.ones(n)])
        H = (A * w[:, None]).T @ A
        H[:n, :n] += K
        return H

    res = minimize(f, x0, jac=True, hess=hess, method="trust-exact", options={"gtol": 1e-11, "maxiter": 500})
    return res.x


def test_binary_rbf_influence_matches_scipy_refits():
    X, y = data(n=60, d=3, k=2, seed=3)
    est, form = _fit(make_pipeline(StandardScaler(), SVC(C=1.0, gamma=0.5)), X, y)
    assert supports(form) == "kernel"
    obj = build_objective(form, X, y)
    assert isinstance(obj, KernelObjective) and not obj.exact and obj.stationarity < 1e-6
    Xt, yt = data(n=8, d=3, k=2, seed=4)
    pred = predicted_loss_changes(obj, Xt, yt)            # (8, 60)
    # the reference, from scratch: machine (0, 1), y = +1 for class 0
    Z = est[:-1].transform(X)
    Zt = est[:-1].transform(Xt)
    K = rbf_kernel(Z, Z, gamma=est[-1]._gamma)
    Kt = rbf_kernel(Zt, Z, gamma=est[-1]._gamma)
    ylab = np.where(y == 0, 1.0, -1.0)
    yt_lab = np.where(yt == 0, 1.0, -1.0)
    full = _refit(K, ylab, 1.0, np.ones(60), np.zeros(61))

    def test_loss(v):
        return _sh(yt_lab * (Kt @ v[:60] + v[60]))[0]

    base = test_loss(full)
    np.testing.assert_allclose(base, obj.losses(Xt, yt), rtol=1e-5, atol=1e-7)  # the same surrogate
    rows = np.arange(0, 60, 2)
    actual = np.empty((8, rows.size))
    for j, r in enumerate(rows):
        keep = np.ones(60)
        keep[r] = 0.0
        actual[:, j] = test_loss(_refit(K, ylab, 1.0, keep, full)) - base
    p = pred[:, rows].ravel()
    a = actual.ravel()
    pearson = np.corrcoef(p, a)[0, 1]
    assert pearson > 0.9, pearson
    # the ranking command agrees with the full matrix
    res = influence(obj, Xt, yt, top=3)
    top = res.helpful_rows[0, :res.n_helpful[0]]
    np.testing.assert_array_equal(top, np.argsort(-pred[0], kind="stable")[:top.size])


def test_multiclass_nusvc_influence_against_its_own_refits_and_the_svm():
    X, y = data(n=90, d=3, k=3, seed=5)
    est, form = _fit(NuSVC(nu=0.3, gamma=0.3), X, y)
    obj = build_objective(form, X, y)
    assert obj.agreement > 0.9  # the surrogate predicts like the fitted SVM
    Xt, yt = data(n=6, d=3, k=3, seed=6)
    chk = verify_loo(obj, Xt, yt, np.arange(0, 90, 3))
    assert chk.pearson > 0.9, chk.pearson
    assert 0.4 < chk.slope < 1.5


@pytest.mark.parametrize("svm", [SVC(kernel="linear", C=0.5), SVC(kernel="poly", degree=2, C=0.5)])
def test_other_kernels_refit_check(svm):
    X, y = data(n=70, d=3, k=2, seed=7)
    est, form = _fit(make_pipeline(StandardScaler(), svm), X, y)
    obj = build_objective(form, X, y)
    Xt, yt = data(n=6, d=3, k=2, seed=8)
    chk = verify_loo(obj, Xt, yt, np.arange(0, 70, 3))
    assert chk.pearson > 0.9, chk.pearson


def test_cli_influence_and_mislabel_on_an_svm(tmp_path, invaudit):
    import joblib

    X, y = data(n=80, d=3, k=2, seed=9)
    est, _ = _fit(make_pipeline(StandardScaler(), SVC(gamma=0.5)), X, y)
    joblib.dump(est, tmp_path / "svc.joblib")
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "test.npz", X=X[:3], y=y[:3])
    r = invaudit("influence", tmp_path / "svc.joblib", tmp_path / "train.npz", tmp_path / "test.npz",
                 "--top", "3", "--verify-loo", "4", "--format", "json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["model"]["form"] == "kernel"
    assert rep["summary"]["verification"]["pearson"] > 0.8
    assert "smoothed-hinge" in r.err
    r = invaudit("influence", tmp_path / "svc.joblib", tmp_path / "train.npz", tmp_path / "test.npz", "--features")
    assert r.code == 3 and "not available for SVMs" in r.err
    r = invaudit("mislabel", tmp_path / "svc.joblib", tmp_path / "train.npz", "--top", "5", "--format", "json")
    assert r.code == 0, r.err
    # the default (combined) without a model source: this SVM has no predict_proba
    assert r.json()["params"]["method"] == "combined" and "no predict_proba" in r.err
    assert "model" not in r.json()["summary"]["source_weights"]
