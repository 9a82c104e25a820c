"""KNN margins: 1-NN exact against a grid (2-D) and against every Voronoi cell solved by SLSQP;
k > 1 verified, never absurd, with a valid lower bound."""

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.counterfactual import Constraints
from invaudit.margins import margins
from invaudit.models import adapt

_ORD = {"l2": 2, "l1": 1, "linf": np.inf}


def _data(seed=0, n=80, scale=(1.0, 10.0)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) * np.array(scale)
    y = (X[:, 0] + X[:, 1] / scale[1] > 0).astype(int) + (X[:, 0] > 1)
    Q = rng.normal(size=(10, 2)) * np.array(scale)
    return X, y, Q


def _grid_margin(est, x, r, norm="l2", m=161, other_of=None):
    g = np.linspace(-r, r, m)
    G = np.array(list(itertools.product(g, g)))
    pred = est.predict(x + G)
    own = est.predict(x[None])[0]
    d = np.linalg.norm(G, ord=_ORD[norm], axis=1)
    return d[pred != own].min(), 2 * r / (m - 1)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_one_nn_exact_against_a_grid(norm):
    X, y, Q = _data()
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(1)).fit(X, y)
    Q = Q[:4]
    b = margins(adapt(est), Q, norm=norm)
    assert b.exact.all()
    for i in range(len(Q)):
        grid, step = _grid_margin(est, Q[i], b.margin[i] * 1.4 + 1e-3, norm)
        assert b.margin[i] <= grid + 1e-12            # nothing on the grid is closer
        assert grid <= b.margin[i] + 2.0 * step       # and the grid finds the boundary there
        assert est.predict((Q[i] + b.perturbation[i])[None])[0] != est.predict(Q[i:i + 1])[0]


def test_one_nn_exact_against_every_cell_by_slsqp():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 4)) * np.array([1e-3, 1.0, 1e2, 1e3])
    y = (X[:, 0] * 1e3 + X[:, 1] > 0).astype(int)
    est = make_pipeline(StandardScaler(), KNeighborsClassifier(1)).fit(X, y)
    form = adapt(est)
    Q = X[:4] * 1.05 + 0.01
    w = 1.0 / X.std(axis=0)
    cons = Constraints(lower=np.full((4, 4), -np.inf), upper=np.full((4, 4), np.inf), weights=w)
    b = margins(form, Q, constraints=cons)
    Z = form.fit_Z
    for i in range(4):
        z0 = form.transform(Q[i:i + 1])[0]
        own = form.predict_index(Q[i:i + 1])[0]
        best = np.inf
        for t in np.flatnonzero(form.fit_y != own):  # every cell of the other class, independently
            A = 2.0 * (Z - Z[t]) @ form.pre_A
            def con(x, t=t, A=A):
                z = form.transform(x[None])[0]
                return np.sum((Z - z) ** 2, axis=1) - np.sum((Z[t] - z) ** 2)
            # in the metric's own units v = w (x - x0), where the problem is well scaled
            start = w * (np.linalg.solve(form.pre_A, Z[t] - form.pre_c) - Q[i])
            cv = lambda v, con=con: con(Q[i] + v / w)  # noqa: E731
            r = minimize(lambda v: np.sum(v ** 2), start, method="SLSQP",
                         constraints={"type": "ineq", "fun": cv}, options={"ftol": 1e-15, "maxiter": 1000})
            if cv(r.x).min() > -1e-8:
                best = min(best, np.sqrt(r.fun))
        assert b.exact[i]
        assert b.margin[i] == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("k,weights,metric", [(5, "uniform", "euclidean"), (4, "distance", "euclidean"),
                                              (3, "uniform", "manhattan")])
def test_k_nearest_search_is_verified_and_never_absurd(k, weights, metric):
    X, y, Q = _data(scale=(1.0, 1.0))
    est = KNeighborsClassifier(k, weights=weights, metric=metric).fit(X, y)
    form = adapt(est)
    b = margins(form, Q[:4])
    pred = est.predict(Q[:4])
    tpred = est.predict(X)
    for i in range(4):
        assert not b.exact[i]
        assert est.predict((Q[i] + b.perturbation[i])[None])[0] != pred[i]
        nearest_row = np.linalg.norm(X[tpred != pred[i]] - Q[i], axis=1).min()
        assert b.margin[i] <= nearest_row + 1e-12
        grid, step = _grid_margin(est, Q[i], b.margin[i] * 1.2 + 1e-3)
        if np.isfinite(b.lower_bound[i]):
            assert b.lower_bound[i] <= grid + 1e-12
        # a good search on these small problems (bisection alone for other metrics: looser)
        assert b.margin[i] <= (1.25 if metric == "euclidean" else 1.6) * grid + 2 * step
    assert np.isfinite(b.lower_bound).all() == (weights == "uniform" and metric == "euclidean")


def test_frozen_feature_and_box_stay_exact_for_one_nn():
    X, y, Q = _data()
    est = KNeighborsClassifier(1).fit(X, y)
    lower = np.c_[Q[:, 0], Q[:, 1] - 5.0]
    upper = np.c_[Q[:, 0], Q[:, 1] + 5.0]
    b = margins(adapt(est), Q, constraints=Constraints(lower=lower, upper=upper, weights=np.ones(2)))
    for i in range(len(Q)):
        assert b.exact[i]
        if np.isinf(b.margin[i]):  # certified: no other class along the free line within the box
            line = np.c_[np.full(2001, Q[i, 0]), np.linspace(Q[i, 1] - 5, Q[i, 1] + 5, 2001)]
            assert np.all(est.predict(line) == est.predict(Q[i:i + 1])[0])
            continue
        assert b.perturbation[i, 0] == 0.0 and abs(b.perturbation[i, 1]) <= 5.0
        line = np.c_[np.full(4001, Q[i, 0]), Q[i, 1] + np.linspace(-5, 5, 4001)]
        other = est.predict(line) != est.predict(Q[i:i + 1])[0]
        assert abs(np.abs(line[other, 1] - Q[i, 1]).min() - b.margin[i]) <= 10 / 4000 + 1e-9
