"""``invaudit mislabel --method loo-loss`` on GaussianNB / QDA: the exact leave-one-out loss
(issue 15; the default was until ``combined`` became it, issue 18), checked against scikit-learn
refits without each row."""

from __future__ import annotations

import csv

import joblib
import numpy as np
import pytest
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB

from conftest import validate


@pytest.mark.parametrize("make", [lambda: GaussianNB(), lambda: QuadraticDiscriminantAnalysis(reg_param=0.1)],
                         ids=["gnb", "qda"])
def test_mislabel_loo_loss_is_the_exact_leave_one_out_loss(tmp_path, invaudit, make):
    rng = np.random.default_rng(3)
    n, names = 48, ["a", "b", "c"]
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 3)) * [1e-3, 1.0, 1e3] + y[:, None] * [2e-3, 2.0, 2e3]
    labels = np.array(["low", "mid", "high"])[y]
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "label", *names])
        for i in range(n):
            w.writerow([f"r{i}", labels[i], *(repr(float(v)) for v in X[i])])
    import pandas as pd

    model = make().fit(pd.DataFrame(X, columns=names), labels)
    joblib.dump(model, tmp_path / "m.joblib")
    info = invaudit("info", tmp_path / "m.joblib", "--format", "json").json()
    mis = [c for c in info["results"] if c["command"] == "mislabel"][0]
    assert mis["available"] == "yes" and mis["exact"] == "yes"
    r = invaudit("mislabel", tmp_path / "m.joblib", tmp_path / "train.csv", "--label-column", "label",
                 "--id-column", "id", "--top", "all", "--format", "json", "--method", "loo-loss")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["params"]["method"] == "loo-loss"
    got = {int(e["train_row"]): e["score"] for e in rep["results"]}
    for i in range(0, n, 5):  # refits without row i: its own log loss
        keep = np.arange(n) != i
        m = make().fit(pd.DataFrame(X[keep], columns=names), labels[keep])
        p = m.predict_proba(pd.DataFrame(X[i:i + 1], columns=names))[0]
        ref = -np.log(p[list(m.classes_).index(labels[i])])
        assert got[i] == pytest.approx(ref, rel=1e-6, abs=1e-9)
    scores = [e["score"] for e in rep["results"]]
    assert scores == sorted(scores, reverse=True)
