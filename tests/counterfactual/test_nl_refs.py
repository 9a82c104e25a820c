"""Independent references for the non-linear counterfactual tests (imported by the other
``test_nl_*`` files), and checks that the references themselves are right.

The SLSQP reference uses only the estimator's own ``predict_proba`` and scipy's finite
differences: no gradient, constraint or box code from invaudit.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import Bounds, minimize
from sklearn.linear_model import LogisticRegression

from invaudit.counterfactual import Constraints, counterfactuals
from invaudit.models import adapt


def _log_proba(est, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = est.predict_proba(np.atleast_2d(x))[0]
    return np.log(np.maximum(p, 1e-300))


def verified(est, x, t, P=None) -> bool:
    x = np.atleast_2d(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = list(est.classes_).index(est.predict(x)[0]) == t
        if P is not None:
            ok &= est.predict_proba(x)[0, t] >= P
    return bool(ok)


def slsqp_reference(est, x0, t, *, P=None, starts=(), lower=None, upper=None, weights=None,
                    norm="l2", margin=1e-7, maxiter=300):
    """Best verified distance of SLSQP (finite differences) from ``x0`` and ``starts``.

    Constraints from the estimator's probabilities: ``log p_t - log p_j >= margin`` for every
    other class (the target is the argmax) and ``log p_t >= log P``. L1 / Linf are solved in
    their smooth reformulations with auxiliary variables.
    """
    D = x0.shape[0]
    w = np.ones(D) if weights is None else weights
    lo = np.full(D, -np.inf) if lower is None else lower
    hi = np.full(D, np.inf) if upper is None else upper
    K = len(est.classes_)

    def cons_x(x):
        lp = _log_proba(est, x)
        c = [lp[t] - lp[j] - margin for j in range(K) if j != t]
        if P is not None:
            c.append(lp[t] - np.log(P) - margin)
        return np.array(c)

    best = np.inf
    for s in [x0, *starts]:
        s = np.clip(np.asarray(s, dtype=float), lo, hi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if norm == "l2":
                res = minimize(lambda x: 0.5 * np.sum((w * (x - x0)) ** 2), s, method="SLSQP",
                               jac=lambda x: w * w * (x - x0), bounds=Bounds(lo, hi),
                               constraints=[{"type": "ineq", "fun": cons_x}],
                               options={"maxiter": maxiter, "ftol": 1e-12})
                x = res.x
            else:
                extra = D if norm == "l1" else 1
                u0 = np.abs(w * (s - x0))
                v0 = np.concatenate([s, u0 if norm == "l1" else [u0.max()]])
                Iu = np.eye(D) if norm == "l1" else np.ones((D, 1))
                A = np.vstack([np.hstack([-np.diag(w), Iu]), np.hstack([np.diag(w), Iu])])
                b = np.concatenate([w * x0, -w * x0])
                res = minimize(lambda v: v[D:].sum(), v0, method="SLSQP",
                               bounds=Bounds(np.concatenate([lo, np.zeros(extra)]),
                                             np.concatenate([hi, np.full(extra, np.inf)])),
                               constraints=[{"type": "ineq", "fun": lambda v: cons_x(v[:D])},
                                            {"type": "ineq", "fun": lambda v: A @ v + b}],
                               options={"maxiter": maxiter, "ftol": 1e-12})
                x = res.x[:D]
        x = np.clip(x, lo, hi)
        for eps in (0.0, 1e-9, 1e-7, 1e-5):
            xe = np.clip(x0 + (x - x0) * (1 + eps), lo, hi)
            if verified(est, xe, t, P):
                ordn = {"l2": 2, "l1": 1, "linf": np.inf}[norm]
                best = min(best, float(np.linalg.norm(w * (xe - x0), ord=ordn)))
                break
    return best


def target_rows(est, X, t, k, x0, P=None):
    """The ``k`` rows of ``X`` nearest to ``x0`` that the estimator puts in class ``t``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = np.array([list(est.classes_).index(c) for c in est.predict(X)])
        ok = idx == t
        if P is not None:
            ok &= est.predict_proba(X)[:, t] >= P
    R = X[ok]
    order = np.argsort(np.linalg.norm(R - x0, axis=1))
    return R[order[:k]]


def test_reference_matches_the_exact_linear_solver():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X @ [1.0, -2.0, 0.5, 1.0] + 0.3 * rng.normal(size=80) > 0).astype(int)
    est = LogisticRegression().fit(X, y)
    form = adapt(est)
    x0 = X[:3]
    t = 1 - form.predict_index(x0)
    for P in (None, 0.8):
        exact = counterfactuals(form, x0, target=t, confidence=P, constraints=Constraints.none(x0))
        for i in range(3):
            ref = slsqp_reference(est, x0[i], int(t[i]), P=P)
            assert abs(ref - exact.distance[i]) <= 1e-5 * max(1.0, exact.distance[i])


def test_reference_l1_matches_the_exact_linear_solver():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3))
    y = (X @ [1.0, -0.5, 2.0] > 0).astype(int)
    est = LogisticRegression().fit(X, y)
    form = adapt(est)
    x0 = X[:2]
    t = 1 - form.predict_index(x0)
    for norm in ("l1", "linf"):
        exact = counterfactuals(form, x0, target=t, norm=norm)
        for i in range(2):
            ref = slsqp_reference(est, x0[i], int(t[i]), norm=norm)
            assert abs(ref - exact.distance[i]) <= 1e-5 * max(1.0, exact.distance[i])
