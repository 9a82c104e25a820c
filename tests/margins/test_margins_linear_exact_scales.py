"""Linear margins are exact at every scale (issue 12, part 2).

Features rescaled by ``10**k`` (k in -5..5, and mixed), rows onto and within 1e-12..1e-3
(relative to the scores' magnitude) of the boundary and on three-way ties; LogisticRegression,
LinearSVC, RidgeClassifier, binary and multiclass; L1 / L2 / Linf with and without a box, frozen
features and metric weights.

The reference, independent of the solver: score gaps in exact rational arithmetic (``fractions``),
then per other class ``j`` the distance to the halfspace where ``j`` beats the predicted class
(the margin is their minimum): the closed form ``gap / ||a / w||_*`` without a box,
``scipy.optimize.linprog`` for L1 / Linf (on problems rescaled to unit size) and, for L2 with a
box, bisection on the multiplier of the KKT conditions ``z = clip(lam a / w, lz, uz)``.
"""

from __future__ import annotations

import warnings
import zlib
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import linprog
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.svm import LinearSVC

from invaudit.counterfactual import Constraints
from invaudit.margins import margins, summarize
from invaudit.models import adapt

REL = 1e-6
D = 4


def _fit(model, K, scale):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, D))
    y = rng.integers(0, K, 240)
    X[:, 0] += 1.5 * y
    X[:, 1] -= 1.0 * (y == 1)
    X = X * scale
    est = {"lr": lambda: LogisticRegression(max_iter=5000), "svc": lambda: LinearSVC(max_iter=20000),
           "ridge": lambda: RidgeClassifier()}[model]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X


def _rows(form, X, rng, n):
    W, b = form.W_full, form.b_full
    base = X[rng.choice(len(X), n, replace=False)]
    S = base @ W.T + b
    out = []
    for i, x in enumerate(base):
        p, j = int(np.argmax(S[i])), int(np.argsort(S[i])[-2])
        a = W[p] - W[j]
        mag = float(np.max(np.abs(x) @ np.abs(W).T + np.abs(b)))
        rel = [0.0, 1e-12, 1e-9, 1e-6, 1e-3][i % 5]
        g = a @ x + b[p] - b[j]
        out.append(x - ((g - rel * mag * (1 if i % 2 else -1)) / (a @ a)) * a)
    if W.shape[0] >= 3:
        for x in base[:3]:
            Dm = W[1:3] - W[0]
            out.append(x - np.linalg.lstsq(Dm, Dm @ x + (b[1:3] - b[0]), rcond=None)[0])
    return np.array(out)


def _gaps(W, b, x, p):
    s = [sum((Fraction(float(W[k, j])) * Fraction(float(x[j])) for j in range(len(x))), Fraction(float(b[k])))
         for k in range(W.shape[0])]
    return np.array([float(s[p] - s[k]) for k in range(W.shape[0])])


def _halfspace(a, r, norm, lo, hi, w):
    """min ||w d||_norm s.t. a . d >= r, lo <= d <= hi (r > 0); None if the box excludes it."""
    az = a / w                                    # z = w d
    lz, uz = w * lo, w * hi
    if not (np.any(np.isfinite(lz)) or np.any(np.isfinite(uz))):
        q = {"l2": 2, "l1": np.inf, "linf": 1}[norm]
        return float(r / np.linalg.norm(az, q))
    s = r / np.linalg.norm(az)                    # unit scale
    A, lu, uu = az * s / r, lz / s, uz / s        # a . u >= 1 after dividing by r
    # columns in units where neither the box nor the coefficients are extreme (HiGHS drops
    # coefficients below 1e-9)
    half = np.maximum(np.abs(lu), np.abs(uu))
    inv = 1.0 / np.maximum(np.abs(A), 1e-300)
    cs = np.where(np.isfinite(half) & (half > 0), np.minimum(half, inv), inv)
    A, lu, uu = A * cs, lu / cs, uu / cs
    p = len(a)
    bnd = [(None if not np.isfinite(l_) else l_, None if not np.isfinite(h_) else h_) for l_, h_ in zip(lu, uu)]
    if norm == "l2":
        # KKT: z(lam) = clip(lam a/w, lz, uz), and a/w . z(lam) is nondecreasing: bisection
        f = lambda lam: float(az @ np.clip(lam * az, lz, uz))
        if float(az @ np.where(az > 0, uz, np.where(az < 0, lz, 0.0))) < r:
            return None
        lo_, hi_ = 0.0, 1.0
        while f(hi_) < r:
            hi_ *= 2.0
        for _ in range(2000):
            mid = 0.5 * (lo_ + hi_)
            if mid in (lo_, hi_):
                break
            lo_, hi_ = (mid, hi_) if f(mid) < r else (lo_, mid)
        return float(np.linalg.norm(np.clip(hi_ * az, lz, uz)))
    if norm == "l1":
        c = np.r_[cs, cs]
        A_ub = -np.r_[A, -A][None]
        bounds = [(0, None if not np.isfinite(h_) else max(h_, 0)) for h_ in uu] + \
                 [(0, None if not np.isfinite(l_) else max(-l_, 0)) for l_ in lu]
        res = linprog(c, A_ub=A_ub, b_ub=[-1.0], bounds=bounds, method="highs")
    else:
        c = np.r_[np.zeros(p), 1.0]
        A_ub = np.vstack([np.r_[-A, 0.0], np.c_[np.diag(cs), -np.ones(p)], np.c_[-np.diag(cs), -np.ones(p)]])
        res = linprog(c, A_ub=A_ub, b_ub=np.r_[-1.0, np.zeros(2 * p)], bounds=bnd + [(0, None)], method="highs")
    assert res.status in (0, 2), res.message
    return None if res.status == 2 else float(res.fun) * s


def _reference(W, b, x, p, norm, lo, hi, w):
    g = _gaps(W, b, x, p)
    best = None
    for j in range(W.shape[0]):
        if j == p:
            continue
        if g[j] <= 0:
            return 0.0
        a = W[j] - W[p]
        if not np.any(a != 0):
            continue
        v = _halfspace(a, g[j], norm, lo, hi, w)
        if v is not None and (best is None or v < best):
            best = v
    return np.inf if best is None else best


def _cases():
    scales = (-5, 0, 5, "mixed")
    out, k = [], 0
    for model in ("lr", "svc", "ridge"):
        for K in (2, 3):
            for norm in ("l2", "l1", "linf"):
                for cons in ("none", "box", "frozen"):
                    out.append((model, K, scales[k % 4], norm, cons))
                    k += 1
    return out


@pytest.mark.parametrize("model,K,sc,norm,cons", _cases())
def test_linear_margins_are_exact_at_every_scale(model, K, sc, norm, cons):
    rng = np.random.default_rng(zlib.crc32(f"{model}-{K}-{sc}-{norm}-{cons}".encode()))
    scale = 10.0 ** np.array([-5, -2, 3, 5]) if sc == "mixed" else np.full(D, 10.0 ** sc)
    est, X = _fit(model, K, scale)
    form = adapt(est)
    rows = _rows(form, X, rng, 10)
    n = len(rows)
    if cons == "none":
        c = None
    elif cons == "box":
        c = Constraints.build(rows, data_lower=X.min(0), data_upper=X.max(0), scale=X.std(0))
    else:
        imm = np.zeros(D, dtype=bool)
        imm[2] = True
        c = Constraints.build(rows, immutable=imm, scale=X.std(0))
    batch = margins(form, rows, norm=norm, constraints=c)
    W, b = form.W_full, form.b_full
    lo = np.full((n, D), -np.inf) if c is None else c.lower - rows
    hi = np.full((n, D), np.inf) if c is None else c.upper - rows
    w = np.ones(D) if c is None else c.weights
    pred = batch.predicted_index
    has = np.all(np.isfinite(batch.perturbation), axis=1)
    # every perturbation is verified by the estimator and stays in the box
    if np.any(has):
        P = rows[has] + batch.perturbation[has]
        assert np.all(form.predict_index(P) != pred[has])
        assert np.all(batch.perturbation[has] >= lo[has]) and np.all(batch.perturbation[has] <= hi[has])
    for i in range(n):
        ref = _reference(W, b, rows[i], int(pred[i]), norm, lo[i], hi[i], w)
        if not batch.exact[i]:
            continue
        m = batch.margin[i]
        if ref == 0.0 or not np.isfinite(ref):
            assert m == ref, (i, m, ref)
        else:
            assert abs(m - ref) <= REL * ref, (i, m, ref, batch.method[i])
            if has[i]:
                # the reported point lies a hair beyond the infimum, never short of it
                assert batch.perturbation_norm[i] >= m * (1 - 1e-12)
    # rows whose margin is reachable are always answered with a verified point
    assert np.all(has | ~np.isfinite(batch.margin))


def test_summary_says_what_exact_means():
    est, X = _fit("lr", 3, np.ones(D))
    form = adapt(est)
    s = summarize(margins(form, X[:5]))
    assert "1e-9" in s["exact_means"] and "predict" in s["exact_means"]
