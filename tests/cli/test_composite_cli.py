"""Composite classifiers through the real command line (issue 15): they load without --trust,
``info`` says which form each was read as and why, and the commands answer with points the
estimator confirms."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier, VotingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@pytest.fixture(scope="module")
def composite_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("composites")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)) * np.array([1e-3, 1.0, 1e3])
    y = (X[:, 0] * 1e3 + X[:, 1] ** 2 - X[:, 2] * 1e-3 > 0.5).astype(int)
    lr = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    models = {
        "calibrated": CalibratedClassifierCV(FrozenEstimator(lr)),
        "isotonic": CalibratedClassifierCV(make_pipeline(StandardScaler(), LogisticRegression()), method="isotonic",
                                           cv=2),
        "adaboost": AdaBoostClassifier(n_estimators=6, random_state=0),
        "voting": make_pipeline(StandardScaler(), VotingClassifier(
            [("lr", LogisticRegression()), ("mlp", MLPClassifier((6,), max_iter=300, random_state=0))],
            voting="soft")),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, m in models.items():
            joblib.dump(m.fit(X, y), d / f"{name}.joblib")
    np.save(d / "x.npy", X[:6])
    return d, models, X[:6]


@pytest.mark.parametrize("name, form, margin_exact, why", [
    ("calibrated", "linear", "yes", "sigmoid of an affine score"),
    ("adaboost", "trees", "partly", "AdaBoost (SAMME)"),
    ("voting", "differentiable", "no", "soft voting"),
    ("isotonic", "black-box", "no", "isotonic calibration is piecewise constant"),
])
def test_info_says_what_each_composite_is_read_as(invaudit, validate, composite_files, name, form, margin_exact,
                                                   why):
    d, _, _ = composite_files
    r = invaudit("info", d / f"{name}.joblib", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["model"]["form"] == form and why in rep["model"]["composite"]
    caps = {c["command"]: c for c in rep["results"]}
    assert caps["margin"]["exact"] == margin_exact and why in caps["margin"]["method"]
    assert caps["influence"]["available"] == "no"


@pytest.mark.parametrize("name", ["calibrated", "adaboost", "voting"])
def test_margin_through_the_cli_gives_points_the_composite_confirms(invaudit, validate, composite_files, name):
    d, models, X = composite_files
    r = invaudit("margin", d / f"{name}.joblib", d / "x.npy", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    model = joblib.load(d / f"{name}.joblib")
    P = np.array([x["perturbation"] for x in rep["results"]], dtype=float)
    assert np.array_equal(model.predict(X + P), [x["nearest_class"] for x in rep["results"]])
    assert np.all(model.predict(X + P) != model.predict(X))
    if name == "calibrated":
        assert all(x["exact"] for x in rep["results"])
    if name == "voting":
        assert not any(x["exact"] for x in rep["results"])


def test_every_other_command_runs_or_refuses_in_one_sentence(invaudit, validate, composite_files):
    d, models, X = composite_files
    rng = np.random.default_rng(1)
    Xtr = X[rng.integers(0, len(X), 40)] + rng.normal(size=(40, 3)) * np.array([1e-3, 1.0, 1e3])
    ytr = joblib.load(d / "adaboost.joblib").predict(Xtr)
    ytr[:4] = 1 - ytr[:4]
    np.savez(d / "train.npz", X=Xtr, y=ytr)
    r = invaudit("mislabel", d / "adaboost.joblib", d / "train.npz", "--top", "5", "--format", "json")
    assert r.code == 0, r.err
    assert len(validate(r.json())["results"]) == 5
    r = invaudit("explain", d / "voting.joblib", d / "x.npy", "--rows", "0-1", "--format", "json")
    assert r.code == 0, r.err
    validate(r.json())
    r = invaudit("counterfactual", d / "voting.joblib", d / "x.npy", "--rows", "0-1", "--target", "other",
                 "--format", "json")
    assert r.code == 0, r.err
    model = joblib.load(d / "voting.joblib")
    for res in validate(r.json())["results"]:
        assert res["status"] == "found" and not res["exact"]
        assert model.predict(np.array([res["counterfactual"]]))[0] == res["target_class"]
    r = invaudit("influence", d / "voting.joblib", d / "train.npz", d / "train.npz", "--rows", "0")
    assert r.code == 3 and r.err.count("\n") == 1 and "influence is not available" in r.err and "fitted separately" in r.err  # info's reason
