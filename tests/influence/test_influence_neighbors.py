"""KNN influence and mislabel ranking: exact leave-one-out, checked against real refits."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.errors import InputError
from invaudit.influence import (build_neighbors_objective, group_influence, influence, predicted_loss_changes,
                                verify_loo)
from invaudit.influence._neighbors import loo_mislabel_ranking
from invaudit.models import adapt

EPS = np.finfo(np.float64).eps


def _data(seed=0, n=30):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * np.array([1.0, 1e3, 1e-3])
    y = (X[:, 0] + X[:, 1] / 1e3 > 0).astype(int) + (X[:, 0] > 1)
    Xt = rng.normal(size=(8, 3)) * np.array([1.0, 1e3, 1e-3])
    yt = (Xt[:, 0] > 0).astype(int)
    return X, y, Xt, yt


def _refit_loss(est, X, y, keep, Xt, yt):
    pre, final = est[:-1], est[-1]
    e = clone(final).fit(pre.transform(X[keep]), y[keep])
    P = e.predict_proba(pre.transform(Xt))
    full = np.zeros((len(Xt), 3))
    full[:, np.searchsorted(np.unique(y), e.classes_)] = P
    return -np.log(np.maximum(full[np.arange(len(Xt)), yt], EPS))


@pytest.mark.parametrize("k,weights,algorithm", [(1, "uniform", "auto"), (5, "uniform", "kd_tree"),
                                                 (4, "distance", "brute"), (3, "distance", "ball_tree")])
def test_every_loo_effect_equals_a_refit(k, weights, algorithm):
    X, y, Xt, yt = _data()
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(k, weights=weights, algorithm=algorithm)).fit(X, y)
    obj = build_neighbors_objective(adapt(est), X, y)
    S = predicted_loss_changes(obj, Xt, yt)
    base = _refit_loss(est, X, y, np.ones(len(X), bool), Xt, yt)
    for i in range(len(X)):  # the reference: a real refit without each row
        keep = np.arange(len(X)) != i
        actual = _refit_loss(est, X, y, keep, Xt, yt) - base
        if weights == "uniform":
            np.testing.assert_array_equal(S[:, i], actual)   # vote shares are exact fractions
        else:
            np.testing.assert_allclose(S[:, i], actual, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(S) <= k * len(Xt)  # only the k nearest can matter


def test_influence_lists_and_verification():
    X, y, Xt, yt = _data()
    est = KNeighborsClassifier(3).fit(X, y)
    obj = build_neighbors_objective(adapt(est), X, y)
    res = influence(obj, Xt, yt, top=3)
    assert res.exact and res.estimate == "exact-loo"
    S = predicted_loss_changes(obj, Xt, yt)
    for t, row in enumerate(res.rows):
        for eff in row.helpful:
            assert eff.loss_change_if_removed == S[t, eff.train_row] > 0
        for eff in row.harmful:
            assert eff.loss_change_if_removed == S[t, eff.train_row] < 0
    chosen = res.top_rows(3)
    check = verify_loo(obj, Xt, yt, chosen)
    np.testing.assert_array_equal(check.predicted, check.actual)
    with pytest.raises(InputError):
        influence(obj, Xt, yt, top=3, features=True)


def test_group_removal_equals_a_refit():
    X, y, Xt, yt = _data()
    est = KNeighborsClassifier(4).fit(X, y)
    obj = build_neighbors_objective(adapt(est), X, y)
    group = np.array([0, 3, 5, 7, 11, 13])
    g = group_influence(obj, Xt, yt, group, refit=True)
    np.testing.assert_array_equal(g.first_order, g.actual)


def test_mislabel_is_each_rows_own_refit():
    X, y, _, _ = _data()
    y = y.copy()
    y[[2, 9]] = 2 - y[[2, 9]]  # a couple of flipped labels
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(5)).fit(X, y)
    ranking = loo_mislabel_ranking(adapt(est), X, y)
    assert ranking.exact and ranking.method == "loo-loss"
    Z = est[0].transform(X)
    for i in range(0, len(X), 7):
        keep = np.arange(len(X)) != i
        e = clone(est[-1]).fit(Z[keep], y[keep])
        P = np.zeros(3)
        P[np.searchsorted(np.unique(y), e.classes_)] = e.predict_proba(Z[i:i + 1])[0]
        assert ranking.score[i] == -np.log(max(P[y[i]], EPS))


def test_training_data_must_be_the_stored_rows():
    X, y, _, _ = _data()
    est = KNeighborsClassifier(3).fit(X, y)
    with pytest.raises(InputError, match="stores"):
        build_neighbors_objective(adapt(est), X[::-1], y[::-1])


def test_cli_influence_and_mislabel(tmp_path, invaudit):
    import joblib

    X, y, Xt, yt = _data()
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(3)).fit(X, y)
    joblib.dump(est, tmp_path / "knn.joblib")
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "test.npz", X=Xt, y=yt)
    r = invaudit("influence", tmp_path / "knn.joblib", tmp_path / "train.npz", tmp_path / "test.npz",
                 "--top", "2", "--verify-loo", "2", "--format", "json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["summary"]["verification"]["pearson"] == pytest.approx(1.0)
    assert "exact change" in d["summary"]["exact_means"]
    r = invaudit("mislabel", tmp_path / "knn.joblib", tmp_path / "train.npz", "--format", "json", "--top", "3",
                 "--method", "loo-loss")
    assert r.code == 0, r.err
    assert r.json()["params"]["method"] == "loo-loss"
    # the default (combined) reads the KNN's own scaling for its neighbour and mixture sources
    # (it stopped with an internal error on a KNN pipeline: NeighborsForm has no preprocess())
    r = invaudit("mislabel", tmp_path / "knn.joblib", tmp_path / "train.npz", "--format", "json", "--top", "3")
    assert r.code == 0, r.err
    d = r.json()
    assert d["params"]["method"] == "combined"
    assert any("the model's own scaling" in n for n in d["summary"]["notes"])
