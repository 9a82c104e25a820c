"""Red team 4: ``influence`` values and row names against real leave-one-out refits.

Found: a LogisticRegression fitted on raw features at scales 1e-5..1e5 (no scaler) has a penalised,
positive definite Hessian whose Cholesky pivot ratio is ~1e-12; it was taken for singular and
pseudo-inverted on the eigenvalues above 1e-10 of the largest, dropping the small-scale features'
directions. The report still said ``exact: true`` (with a note about "linearly dependent features")
and its rankings correlated 0.59 with the refits (top helpful row wrong). The reference refits
the estimator's own objective without each training row (an independent Newton solve, checked to
reproduce the estimator on all rows; preprocessing fixed), with the training CSV's rows shuffled
and its columns in another order than the model's, rows named by ``--id-column``.
"""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

SCALES = np.array([1e-5, 1e-2, 1.0, 1e3, 1e5])
NAMES = ["t", "s", "m", "l", "h"]


def _newton_fit(Z, y01, C, w):
    """Minimise ``C * sum(log loss) + 1/2 ||coef||^2`` (unpenalised intercept), scikit-learn's
    binary LogisticRegression objective, by Newton's method from ``w`` (``[coef, intercept]``)."""
    A = np.c_[Z, np.ones(len(Z))]
    R = np.r_[np.ones(Z.shape[1]), 0.0]
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(A @ w)))
        g = C * A.T @ (p - y01) + R * w
        H = C * (A.T * (p * (1 - p))) @ A + np.diag(R)
        d = np.sqrt(np.diag(H))
        step = np.linalg.solve(H / d[:, None] / d[None, :], g / d) / d
        w = w - step
        if np.all(np.abs(step) <= 1e-13 * (np.abs(w) + 1e-300)):
            break
    return w


def _loo(est, Z, y, test, perm):
    """Real change of each test row's log loss when CSV training row k (fit row perm[k]) is left
    out, from refits of the estimator's objective; the full refit first reproduces the estimator."""
    y01 = (y == est.classes_[1]).astype(float)
    w0 = _newton_fit(Z, y01, est.C, np.r_[est.coef_[0], est.intercept_])
    assert np.allclose(w0, np.r_[est.coef_[0], est.intercept_], rtol=1e-2, atol=0)

    def loss(w):
        z = np.c_[Z[test], np.ones(len(test))] @ w
        return np.logaddexp(0.0, np.where(y01[test] == 1, -z, z))

    base = loss(w0)
    out = np.empty((len(test), len(perm)))
    for k, i in enumerate(perm):
        keep = np.arange(len(y)) != i
        out[:, k] = loss(_newton_fit(Z[keep], y01[keep], est.C, w0)) - base
    return out


def _reported(results, n):
    got = np.full((len(results), n), np.nan)
    for a, r in enumerate(results):
        for h in r["helpful"] + r["harmful"]:
            assert h["train_row_id"] == f"r{h['train_row']}"  # ids name the CSV's own rows
            got[a, h["train_row"]] = h["loss_change_if_removed"]
    return got


def test_raw_scales_logistic_regression_against_refits(tmp_path, invaudit):
    rng = np.random.default_rng(4)
    n = 50
    X = rng.normal(size=(n, 5)) * SCALES
    y = np.where((X / SCALES) @ np.array([1, -1, 0.5, 1, -0.5]) + rng.normal(size=n) > 0, 1, 0)
    frame = pd.DataFrame(X, columns=NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=10.0, solver="newton-cg", tol=1e-12, max_iter=10000).fit(frame, y)
    joblib.dump(lr, tmp_path / "m.joblib")
    perm = rng.permutation(n)
    train = frame.iloc[perm].assign(y=y[perm], id=[f"r{k}" for k in range(n)])
    train[["y", "h", "id", "t", "m", "l", "s"]].to_csv(tmp_path / "train.csv", index=False)
    test = frame.iloc[:6].assign(y=y[:6], id=[f"q{i}" for i in range(6)])
    test[["m", "y", "id", "t", "s", "h", "l"]].to_csv(tmp_path / "test.csv", index=False)

    r = invaudit("influence", tmp_path / "m.joblib", tmp_path / "train.csv", tmp_path / "test.csv",
                 "--label-column", "y", "--id-column", "id", "--rows", "1-3", "--top", "50",
                 "--format", "json", "-q")
    assert r.code == 0, r.err
    rep = r.json()
    assert [x["test_row_id"] for x in rep["results"]] == ["q1", "q2", "q3"]
    assert rep["summary"]["exact"] is True
    got = _reported(rep["results"], n)
    ref = _loo(lr, frame.to_numpy(), y, np.array([1, 2, 3]), perm)
    for a in range(3):
        assert np.isfinite(got[a]).all()
        assert np.corrcoef(got[a], ref[a])[0, 1] > 0.995
        assert np.argmax(got[a]) == np.argmax(ref[a]) and np.argmin(got[a]) == np.argmin(ref[a])
        assert np.abs(got[a] - ref[a]).max() <= 0.15 * np.abs(ref[a]).max()


def test_typed_rows_influence_against_refits(tmp_path, invaudit):
    rng = np.random.default_rng(3)
    n = 60
    f = pd.DataFrame({"tiny": rng.normal(0, 1e-5, n), "mid": rng.normal(0, 1, n),
                      "huge": rng.normal(0, 1e5, n), "city": rng.choice(["Bonn", "Åre", "Paris"], n)})
    s = f.tiny / 1e-5 + f.mid - f.huge / 1e5 + (f.city == "Bonn") * 1.0
    y = np.where(s + rng.normal(size=n) > 0, "yes", "no")
    ct = ColumnTransformer([("num", StandardScaler(), ["tiny", "mid", "huge"]), ("cat", OneHotEncoder(), ["city"])])
    m = make_pipeline(ct, LogisticRegression(tol=1e-10, max_iter=10000)).fit(f, y)
    joblib.dump(m, tmp_path / "m.joblib")
    perm = rng.permutation(n)
    train = f.iloc[perm].assign(label=y[perm], id=[f"r{k}" for k in range(n)])
    train[["label", "city", "huge", "id", "mid", "tiny"]].to_csv(tmp_path / "train.csv", index=False)
    test = f.iloc[:8].assign(label=y[:8], id=[f"q{i}" for i in range(8)])
    test[["tiny", "id", "city", "label", "huge", "mid"]].to_csv(tmp_path / "test.csv", index=False)

    r = invaudit("influence", tmp_path / "m.joblib", tmp_path / "train.csv", tmp_path / "test.csv",
                 "--label-column", "label", "--id-column", "id", "--rows", "3-5", "--top", "60",
                 "--format", "json", "-q")
    assert r.code == 0, r.err
    rep = r.json()
    assert [x["test_row_id"] for x in rep["results"]] == ["q3", "q4", "q5"]
    got = _reported(rep["results"], n)
    ref = _loo(m[-1], m[0].transform(f), y, np.array([3, 4, 5]), perm)
    for a in range(3):
        assert np.corrcoef(got[a], ref[a])[0, 1] > 0.99
        assert np.argmax(got[a]) == np.argmax(ref[a]) and np.argmin(got[a]) == np.argmin(ref[a])
