"""Independent references for the non-linear counterfactual tests (imported by the other
``test_nl_*`` files), and checks that the references themselves are right.

The SLSQP reference uses only the estimator's own ``predict_proba`` and scipy's finite
differences: no gradient, constraint or box code from invaudit.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import Bounds, minimize
from scipy.special import boxcox, expit, ndtri
from sklearn.linear_model import LogisticRegression

from invaudit.counterfactual import Constraints, counterfactuals
from invaudit.models import adapt


def _log_proba(est, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = est.predict_proba(np.atleast_2d(x))[0]
    return np.log(np.maximum(p, 1e-300))


# A SLSQP reference calls predict_proba on one row ~10^4 times, and scikit-learn's input checks
# cost 0.3-2 ms a call (most of these tests' time). For the fitted shapes these tests use (scalers,
# log / power transforms, then a logistic regression or an MLP) the same arithmetic in plain numpy
# from the fitted attributes, written here from scikit-learn's documented formulas (no invaudit
# code); it is used only where it equals the estimator's own predict_proba on probe rows, and
# every point a reference reports is still verified by the estimator itself.

def _yeo_johnson(x, lam):
    out = np.empty_like(x)
    pos = x >= 0
    eps = np.spacing(1.0)
    with np.errstate(all="ignore"):
        a = np.where(np.abs(lam) < eps, np.log1p(x), (np.power(x + 1, lam) - 1) / np.where(lam == 0, 1, lam))
        b = np.where(np.abs(lam - 2) > eps, -(np.power(-x + 1, 2 - lam) - 1) / np.where(lam == 2, 1, 2 - lam),
                     -np.log1p(-x))
    out[pos], out[~pos] = a[pos], b[~pos]
    return out


def _numpy_step(step):
    name = type(step).__name__
    if name == "StandardScaler":
        mean = step.mean_ if step.with_mean else 0.0
        scale = step.scale_ if step.with_std else 1.0
        return lambda x: (x - mean) / scale
    if name == "FunctionTransformer" and isinstance(step.func, np.ufunc) and not step.kw_args:
        return step.func
    if name == "QuantileTransformer" and step.output_distribution == "normal":
        q, ref = step.quantiles_, step.references_
        lo_y, hi_y = ndtri(1e-7 - np.spacing(1)), ndtri(1 - (1e-7 - np.spacing(1)))

        def quantile(x):
            u = np.array([0.5 * (np.interp(x[j], q[:, j], ref) - np.interp(-x[j], -q[::-1, j], -ref[::-1]))
                          for j in range(len(x))])
            u[x + 1e-7 > q[-1]] = 1.0
            u[x - 1e-7 < q[0]] = 0.0
            with np.errstate(divide="ignore"):
                return np.clip(ndtri(u), lo_y, hi_y)
        return quantile
    if name == "PowerTransformer":
        lam = step.lambdas_
        sc = _numpy_step(step._scaler) if step.standardize else (lambda x: x)
        if step.method == "box-cox":
            return lambda x: sc(boxcox(x, lam))
        return lambda x: sc(_yeo_johnson(x, lam))
    return None


def _numpy_final(est):
    name = type(est).__name__
    if name == "LogisticRegression":
        W, b = est.coef_.T, est.intercept_
        if W.shape[1] == 1:
            return lambda x: np.array([1.0 - (p := expit(x @ W[:, 0] + b[0])), p])
        return lambda x: _softmax(x @ W + b)
    if name == "MLPClassifier":
        act = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh, "logistic": expit,
               "identity": lambda a: a}[est.activation]
        layers = list(zip(est.coefs_, est.intercepts_))

        def forward(x):
            a = x
            for W, b in layers[:-1]:
                a = act(a @ W + b)
            a = a @ layers[-1][0] + layers[-1][1]
            if est.out_activation_ == "softmax":
                return _softmax(a)
            p = expit(a[0])
            return np.array([1.0 - p, p])
        return forward
    return None


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def log_proba_function(est, probes):
    """``x -> log p(x)`` (clipped at 1e-300) for one row: the numpy arithmetic where it equals
    ``est.predict_proba`` on ``probes`` (to 1e-12), else the estimator's own predict_proba."""
    steps = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
    fns = [_numpy_step(s) for s in steps[:-1]] + [_numpy_final(steps[-1])]
    if all(f is not None for f in fns):
        def proba(x):
            for f in fns:
                x = f(x)
            return x
        probes = np.atleast_2d(np.asarray(probes, dtype=float))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            want = est.predict_proba(probes)
            got = np.array([proba(x) for x in probes])
        if got.shape == want.shape and np.allclose(got, want, rtol=1e-12, atol=1e-15):
            return lambda x: np.log(np.maximum(proba(np.asarray(x, dtype=float)), 1e-300))
    return lambda x: _log_proba(est, x)


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
    # probes: the row, the starts and points around them (at the scale of each)
    base = np.vstack([np.clip(np.asarray(s, dtype=float), lo, hi) for s in [x0, *starts]])
    rng = np.random.default_rng(0)
    probes = np.vstack([base, base * (1 + 0.1 * rng.standard_normal(base.shape))])
    log_proba = log_proba_function(est, probes[np.all((probes >= lo) & (probes <= hi), axis=1)])

    def cons_x(x):
        lp = log_proba(x)
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
