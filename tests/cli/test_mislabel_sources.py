"""``invaudit mislabel --method knn|reference|combined`` end to end (issue 18)."""

from __future__ import annotations

import csv

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("mislabel_sources")
    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_redundant=1, n_classes=3,
                               n_clusters_per_class=2, class_sep=1.5, random_state=0)
    rng = np.random.default_rng(0)
    rows = rng.choice(300, 30, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, 3, 30)) % 3
    names = [f"f{j}" for j in range(6)]
    with open(d / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(names + ["target"])
        for r, lab in zip(X, noisy):
            w.writerow([repr(float(v)) for v in r] + [int(lab)])
    (d / "truth.txt").write_text("\n".join(map(str, rows)))
    import pandas as pd

    model = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))])
    model.fit(pd.DataFrame(X, columns=names), noisy)
    joblib.dump(model, d / "model.joblib")
    joblib.dump(DecisionTreeClassifier(min_samples_leaf=5, random_state=0), d / "tree_unfitted.joblib")
    joblib.dump(DecisionTreeClassifier(min_samples_leaf=5, random_state=0).fit(X, noisy), d / "tree_fitted.joblib")
    return d, noisy


@pytest.mark.parametrize("method, ref", [("knn", None), ("reference", "tree_unfitted"),
                                         ("reference", "tree_fitted"), ("combined", "tree_unfitted")])
def test_sources_in_the_json_report(invaudit, validate, noisy_set, method, ref):
    d, noisy = noisy_set
    args = ["mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target", "--method", method,
            "--top", "all", "--truth", d / "truth.txt", "--format", "json", "--seed", "3"]
    if ref is not None:
        args += ["--reference", d / f"{ref}.joblib"]
    r = invaudit(*args)
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["params"]["method"] == method
    assert sorted(x["train_row"] for x in rep["results"]) == list(range(300))
    assert rep["summary"]["found_after_checking"]["0.1"] >= 0.4
    if method == "combined":
        for x in rep["results"]:
            assert set(x["sources"]) == {"model", "knn", "reference"}
            assert all(np.isfinite(v) and v >= 0 for v in x["sources"].values())
        assert set(rep["summary"]["source_weights"]) == {"model", "knn", "reference"}
    else:
        assert all("sources" not in x for x in rep["results"])
    again = invaudit(*args)
    assert [x["train_row"] for x in again.json()["results"]] == [x["train_row"] for x in rep["results"]]


def test_combined_fix_writes_corrected_labels(invaudit, validate, noisy_set, tmp_path):
    d, noisy = noisy_set
    out = tmp_path / "fixed.csv"
    r = invaudit("mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target", "--top", "10",
                 "--method", "combined", "--reference", d / "tree_unfitted.joblib", "--fix", "20", "--out", out,
                 "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["params"]["method"] == "combined" and len(rep["results"]) == 10
    assert all("sources" in x for x in rep["results"])
    fixed = np.array([int(row[-1]) for row in list(csv.reader(open(out)))[1:]])
    changed = np.flatnonzero(fixed != noisy)
    assert 0 < changed.size <= 20
    top = {x["train_row"]: x["suggested_label"] for x in rep["results"]}
    for i, lab in top.items():
        assert fixed[i] == lab


def test_reference_must_be_a_classifier_and_is_loaded_safely(invaudit, noisy_set, tmp_path):
    d, _ = noisy_set
    bad = tmp_path / "scaler.joblib"
    joblib.dump(StandardScaler(), bad)
    r = invaudit("mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target",
                 "--method", "reference", "--reference", bad)
    assert r.code == 3 and "Traceback" not in r.err
