"""Tree ensembles confirm candidate points by the form's own routing, and every answer by the
estimator (issue 15, speed).

The searches and the MILP ask :meth:`EnsembleMilp.fast_class` / ``fast_qualifies`` (the leaves
the estimator's own comparisons reach, and the class their scores give when it leads by a clear
margin) instead of the estimator's ``predict`` for each candidate; the answers are then
confirmed by ``predict`` in one call, and a row it does not confirm is solved again with the
estimator deciding every point. Checked here:

- the routing's clear verdicts agree with ``predict`` on points that sit on, just below and
  just above every split point of every family (forests, boosting, LightGBM, XGBoost);
- when the routing lies (it accepts the row itself), the answers are still the estimator's:
  identical to an undisturbed run, every one confirmed by ``predict``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              HistGradientBoostingClassifier, RandomForestClassifier)

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
from invaudit.margins import margins
from invaudit.margins._trees import EnsembleMilp
from invaudit.models import adapt

warnings.filterwarnings("ignore", message="X does not have valid feature names")


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


FAMILIES = {
    "forest": lambda: RandomForestClassifier(n_estimators=12, max_depth=5, random_state=0),
    "extra": lambda: ExtraTreesClassifier(n_estimators=12, max_depth=5, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0),
    "hist": lambda: HistGradientBoostingClassifier(max_iter=15, max_depth=4, random_state=0),
    "forest3": lambda: RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0),
    "lightgbm": lambda: pytest.importorskip("lightgbm").LGBMClassifier(
        n_estimators=15, num_leaves=8, verbose=-1, n_jobs=1, random_state=0),
    "xgboost": lambda: pytest.importorskip("xgboost").XGBClassifier(
        n_estimators=15, max_depth=3, n_jobs=1, random_state=0),
}


def _data(k, n=240, d=5, seed=0):
    """Features at scales 1e-5..1e5; ``k`` classes by quantiles of a nonlinear score."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([1.0, 1e5, 1e-5, 1.0, 30.0])[:d]
    s = X[:, 0] + 1e-5 * X[:, 1] - 5e5 * X[:, 2] + 0.03 * X[:, 3] * X[:, 4]
    y = np.digitize(s, np.quantile(s, np.linspace(0, 1, k + 1)[1:-1]))
    return X, y


def _fit(name):
    est = FAMILIES[name]()
    X, y = _data(3 if name == "forest3" else 2)
    est.fit(X, y)
    return est, X


@pytest.mark.parametrize("name", list(FAMILIES))
def test_clear_verdicts_of_the_routing_are_the_estimators(name):
    est, X = _fit(name)
    form = adapt(est)
    model = EnsembleMilp(form)
    rng = np.random.default_rng(1)
    # points on, just below and just above split points, one feature at a time
    base = X[rng.integers(0, len(X), size=model.P)]
    pick = rng.permutation(model.P)
    Y = base.copy()
    Y[np.arange(model.P), model.feat[pick]] = model.theta[pick]
    Y = np.vstack([Y, np.nextafter(Y, np.inf), np.nextafter(Y, -np.inf), X])
    Y = Y[np.all(np.isfinite(Y), axis=1)]
    G, cls, clear = model.fast_class(Y)
    truth = form.predict_index(Y)
    assert clear.mean() > 0.9  # the routing decides nearly every point itself
    assert np.array_equal(cls[clear], truth[clear])
    # the leaves are the estimator's own (its apply / the library's own routing)
    assert np.array_equal(G, form.leaf_index(Y) + model.leaf_offsets)
    # and fast_qualifies agrees with the class verdict, clear cases only
    k = 1 if form.n_classes == 2 else 2
    from invaudit.counterfactual._nl_trees import _target_rows

    C, clb = _target_rows(form, model.Sc, model.s0, model.sigma, k, None)
    verdicts = []
    for y, t, g in zip(Y[:200], truth[:200], G[:200]):
        verdict, leaves = model.fast_qualifies(y, C, clb)
        assert np.array_equal(leaves, g)
        if verdict is not None:
            assert verdict == (t == k)
        verdicts.append(verdict)
    assert sum(v is not None for v in verdicts) > 180


def _lie(monkeypatch, calls):
    """The routing accepts the row itself (never a valid answer): the first candidate of the
    anytime search is the row, and every verdict of the routing says 'qualifies'."""
    real_points = EnsembleMilp.anytime_points
    real_class = EnsembleMilp.fast_class

    def points(self, x0, *a, **k):
        return [x0.copy()] + real_points(self, x0, *a, **k)

    def fast_class(self, Y):
        G, cls, clear = real_class(self, Y)
        calls["class"] += 1
        # "clearly another class" at every point: the row's own class is unknown here, so take
        # the class the scores rank last (for two classes, the other one)
        S = self.s0 + self.Sc[G].sum(axis=1)
        return G, np.argmin(S, axis=1), np.ones(len(G), dtype=bool)

    def fast_qualifies(self, y, C, clb):
        calls["qualifies"] += 1
        return True, self.walker(y[None, :])[0]

    monkeypatch.setattr(EnsembleMilp, "anytime_points", points)
    monkeypatch.setattr(EnsembleMilp, "fast_class", fast_class)
    monkeypatch.setattr(EnsembleMilp, "fast_qualifies", fast_qualifies)


@pytest.mark.parametrize("name", ["forest", "hist", "forest3"])
def test_a_lying_routing_cannot_change_the_answers(name, monkeypatch):
    est, X = _fit(name)
    Xtr, Xq = X[:200], X[200:208]
    kw = dict(X_train=Xtr, time_limit=20.0)
    ref_m = margins(adapt(est), Xq, **kw)
    ref_c = counterfactuals_nonlinear(adapt(est), Xq, target="other", **kw)
    calls = {"class": 0, "qualifies": 0}
    _lie(monkeypatch, calls)
    got_m = margins(adapt(est), Xq, **kw)
    got_c = counterfactuals_nonlinear(adapt(est), Xq, target="other", **kw)
    assert calls["class"] > 0 and calls["qualifies"] > 0
    pred = est.predict(Xq)
    # margins: every perturbation flips the estimator's own prediction; same answers
    assert np.all(np.isfinite(got_m.margin))
    assert np.all(est.predict(Xq + got_m.perturbation) != pred)
    assert np.all(got_m.margin > 0)
    np.testing.assert_allclose(got_m.margin, ref_m.margin, rtol=1e-12)
    assert np.array_equal(got_m.exact, ref_m.exact) and got_m.exact.all()
    # the class reported is the estimator's (labels are 0..K-1 here)
    np.testing.assert_array_equal(got_m.nearest_index, est.predict(Xq + got_m.perturbation))
    # counterfactuals likewise
    assert np.all(got_c.status == "found")
    assert np.all(est.predict(got_c.x_cf) != pred)
    np.testing.assert_allclose(got_c.distance, ref_c.distance, rtol=1e-12)
    assert np.array_equal(got_c.exact, ref_c.exact) and got_c.exact.all()
