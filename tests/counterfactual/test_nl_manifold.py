"""Diffeomorphic counterfactuals: the latent maps are inverse pairs with correct pulled-back
gradients (finite differences), the answers verify and honour the box, and on data lying near a
plane they trade distance for plausibility as Dombrowski et al. describe."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier

from invaudit.counterfactual import Constraints
from invaudit.counterfactual._nl_manifold import PcaLatent, TransformerLatent, fit_latent
from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras
from invaudit.errors import InputError
from invaudit.models import adapt
from test_nl_refs import verified


@lru_cache(maxsize=None)
def _plane():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 2))
    A = rng.normal(size=(6, 2))
    X = Z @ A.T + 0.02 * rng.normal(size=(300, 6))
    y = (Z[:, 0] + 0.3 * Z[:, 1] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier((16,), max_iter=2000, random_state=0).fit(X[:200], y[:200])
    return est, X, y


def _fd_vjp(latent, Z, G, h=1e-6):
    D = Z.shape[1]
    cols = [(latent.inverse(Z + h * np.eye(D)[j]) - latent.inverse(Z - h * np.eye(D)[j])) / (2 * h)
            for j in range(D)]
    J = np.stack(cols, axis=-1)  # (n, D_x, D_z)
    return np.einsum("nd,ndj->nj", G, J)


def test_latent_maps_are_inverse_pairs_with_correct_gradients():
    _, X, _ = _plane()
    rng = np.random.default_rng(1)
    G = rng.normal(size=(4, 6))
    pca = PcaLatent(X)
    Z = pca.forward(X[:4])
    assert np.allclose(pca.inverse(Z), X[:4], atol=1e-10)
    assert np.allclose(pca.vjp_inverse(Z, G), _fd_vjp(pca, Z, G), rtol=1e-6, atol=1e-8)
    custom = TransformerLatent(PCA(n_components=6).fit(X), "PCA")
    Zc = custom.forward(X[:4])
    assert np.allclose(custom.inverse(Zc), X[:4], atol=1e-10)
    assert np.allclose(custom.vjp_inverse(Zc, G), _fd_vjp(custom, Zc, G), rtol=1e-4, atol=1e-6)
    q = fit_latent("quantile", X)
    Zq = q.forward(X[:4])
    assert np.allclose(q.inverse(Zq), X[:4], atol=1e-6)
    with pytest.raises(InputError):
        fit_latent("flow", X)


def test_manifold_trades_distance_for_plausibility():
    est, X, y = _plane()
    form = adapt(est)
    Xq = X[200:230]
    t = 1 - form.predict_index(Xq)
    near, e0 = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=X[:200],
                                                     y_train_index=y[:200])
    man, e1 = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=X[:200],
                                                    y_train_index=y[:200], manifold="pca")
    assert (man.status == "found").all() and e1["manifold"] == "pca"
    for i in range(len(Xq)):
        assert verified(est, man.x_cf[i], int(t[i]))
    assert not man.exact.any()
    assert all(m.startswith("manifold-pca") for m in man.method)
    assert np.median(man.distance) > np.median(near.distance)
    assert e1["plausibility"]["inlier"].mean() > e0["plausibility"]["inlier"].mean()
    assert np.median(e1["plausibility"]["knn_distance"]) < np.median(e0["plausibility"]["knn_distance"])


def test_box_is_honoured_and_other_aims_at_the_runner_up():
    est, X, y = _plane()
    form = adapt(est)
    Xq = X[230:236]
    cons = Constraints.build(Xq, immutable=np.array([True] + [False] * 5))
    b, _ = counterfactuals_nonlinear_with_extras(form, Xq, target="other", X_train=X[:200],
                                                 manifold="quantile", constraints=cons)
    o = form.predict_index(Xq)
    assert np.all(b.target_index == 1 - o)
    for i in np.flatnonzero(b.status == "found"):
        assert b.x_cf[i, 0] == Xq[i, 0]
        assert verified(est, b.x_cf[i], int(b.target_index[i]))
    assert (b.status == "found").sum() >= 4


def test_forms_without_gradients_use_latent_interpolation():
    _, X, y = _plane()
    est = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X[:200], y[:200])
    form = adapt(est)
    Xq = X[200:205]
    t = 1 - form.predict_index(Xq)
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=X[:200], manifold="pca")
    assert (b.status == "found").all()
    assert all(m == "manifold-pca-latent-interpolation" for m in b.method)
    for i in range(5):
        assert verified(est, b.x_cf[i], int(t[i]))
    with pytest.raises(InputError):
        counterfactuals_nonlinear_with_extras(form, Xq, target=t, manifold="pca")
