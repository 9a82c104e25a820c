"""Invertible pipelines: the margin is the verified nearest point of another class, checked against
an independent SLSQP search on the pipeline's own decision function."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import boxcox
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PowerTransformer, StandardScaler

from invaudit.margins import margins
from invaudit.margins._blackbox import solve_blackbox
from invaudit.margins._common import Problem
from invaudit.margins._invertible import domain_box
from invaudit.models import adapt


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    X = np.exp(rng.normal(size=(300, 4)))  # skewed positive features: what PowerTransformer is for
    y = (np.log(X[:, 0]) + 0.5 * np.log(X[:, 1]) - 0.3 * X[:, 2] + 0.2 * rng.normal(size=300) > 0).astype(int)
    est = make_pipeline(PowerTransformer(method="box-cox"), StandardScaler(), LogisticRegression()).fit(X, y)
    return est, adapt(est), X


def pipeline_score(est, X):
    """The pipeline's decision function as numpy code with its input gradient, written from the
    fitted Box-Cox lambdas alone: after Box-Cox the pipeline is affine, so its weights are read off
    ``est`` itself by least squares on ``X`` (and checked to reproduce it to 1e-9)."""
    lam = est.named_steps["powertransformer"].lambdas_
    U = np.c_[boxcox(X, lam), np.ones(len(X))]
    coef = np.linalg.lstsq(U, est.decision_function(X), rcond=None)[0]
    a, c = coef[:-1], coef[-1]
    f = lambda z: boxcox(z, lam) @ a + c
    grad = lambda z: a * z ** (lam - 1.0)
    assert np.allclose(f(X), est.decision_function(X), rtol=0, atol=1e-9)
    return f, grad


def slsqp_margin(score, x):
    """The smallest ||d|| with decision_function(x + d) = 0, from several starts (a reference that
    knows nothing of invaudit's method)."""
    f, grad = score
    best = np.inf
    rng = np.random.default_rng(0)
    for start in [np.zeros_like(x)] + [0.3 * x * rng.normal(size=x.size) for _ in range(4)]:
        res = minimize(lambda d: d @ d, start, jac=lambda d: 2 * d, method="SLSQP",
                       constraints=[{"type": "eq", "fun": lambda d: f(x + d), "jac": lambda d: grad(x + d)[None]}],
                       bounds=[(-xi + 1e-9, None) for xi in x], options={"maxiter": 500, "ftol": 1e-14})
        if res.success and abs(f(x + res.x)) < 1e-6:
            best = min(best, float(np.linalg.norm(res.x)))
    return best


@pytest.fixture(scope="module")
def batch(problem):
    est, form, X = problem
    return margins(form, X[:8], X_train=X)


def test_invertible_margins_verified_and_no_farther_than_slsqp(problem, batch):
    est, form, X = problem
    rows = X[:8]
    assert form.kind == "invertible-linear"
    pred = est.predict(rows)
    moved = est.predict(rows + batch.perturbation)
    assert np.all(moved != pred) and np.all(moved == form.classes[batch.nearest_index])
    assert not batch.exact.any() and np.all(np.isnan(batch.lower_bound))
    score = pipeline_score(est, X)
    assert np.allclose(score[0](rows + batch.perturbation), est.decision_function(rows + batch.perturbation),
                       rtol=0, atol=1e-9)
    for i, x in enumerate(rows):
        ref = slsqp_margin(score, x)
        assert batch.margin[i] <= ref * (1 + 1e-5) + 1e-9


def test_invertible_margins_beat_query_only_search(problem, batch):
    est, form, X = problem
    rows = X[:8]
    prob = Problem(X=rows, pred=form.predict_index(rows), norm="l2", weights=np.ones(4), lo=None, hi=None)
    lo, hi = domain_box(form, prob)  # Box-Cox is undefined at x <= 0: search inside the domain
    assert np.all(lo[:, :] > 0)
    bb = solve_blackbox(form, Problem(X=rows, pred=prob.pred, norm="l2", weights=np.ones(4), lo=lo, hi=hi),
                        X_train=X)
    assert np.all(batch.margin <= bb["margin"] * (1 + 1e-9))
