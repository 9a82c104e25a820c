"""``invaudit mislabel --method knn|reference|boosting|combined`` end to end (issue 18)."""

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


@pytest.mark.parametrize("method, ref", [("knn", None), ("boosting", None), ("reference", "tree_unfitted"),
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
            assert set(x["sources"]) == {"model", "knn", "reference", "kernel", "mixture"}
            assert all(np.isfinite(v) and v >= 0 for v in x["sources"].values())
        assert set(rep["summary"]["source_weights"]) == {"model", "knn", "reference", "kernel", "mixture"}
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


def _typed_table(n=400, seed=0):
    """A CSV as users have it: an ID column, string categories with blanks, a numeric column with
    blanks, scales 1e-3..1e3, columns in another order than the model was fitted with."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue", "black"], n).astype(object)
    size = rng.choice(["S", "M", "L"], n).astype(object)
    x = rng.normal(size=n) * 1e3
    z = rng.normal(size=n) * 1e-3
    votes = (color == "red").astype(int) + (size == "L") + (x / 1e3 + z / 1e-3 > 0)
    y = np.where(votes >= 2, "yes", "no").astype(object)
    color[rng.choice(n, 20, replace=False)] = None
    x[rng.choice(n, 20, replace=False)] = np.nan
    wrong = np.sort(rng.choice(n, 40, replace=False))
    noisy = y.copy()
    noisy[wrong] = np.where(y[wrong] == "yes", "no", "yes")
    table = pd.DataFrame({"cust": [f"k{i:04d}" for i in range(n)], "z": z, "color": color, "x": x, "size": size,
                          "label": noisy})
    fit = table[["color", "x", "size", "z"]].astype({"color": "category", "size": "category"})
    return table, fit, noisy, wrong


def test_mislabel_on_a_from_dtype_categorical_hgb(invaudit, validate, tmp_path):
    """Issue 13: an HGB fitted from pandas category dtypes is refitted out of fold on DataFrames with
    those dtypes; the flipped labels come first and the rows are the CSV's own rows."""
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from invaudit.triage import confident_learning_score, fold_splits

    table, fit, noisy, wrong = _typed_table()
    est = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20, random_state=0)
    est.fit(fit, noisy)
    joblib.dump(est, tmp_path / "hgb.joblib")
    table.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "truth.txt").write_text("".join(f"{i}\n" for i in wrong))
    base = ["mislabel", tmp_path / "hgb.joblib", tmp_path / "train.csv", "--label-column", "label",
            "--id-column", "cust", "--truth", tmp_path / "truth.txt", "--top", "all", "--format", "json"]
    with threadpool_limits(limits=1):
        r = invaudit(*base, "--method", "confidence")
        assert r.code == 0, r.err
        rep = validate(r.json())
        # the refits, independently: the same folds, clones fitted on the DataFrame itself
        classes = np.asarray(est.classes_)
        y = np.searchsorted(classes, noisy)
        proba = np.zeros((len(y), 2))
        for tr, te in fold_splits(y, 2, 5, 0):
            m = clone(est).fit(fit.iloc[tr], noisy[tr])
            proba[te] = m.predict_proba(fit.iloc[te])
        want = confident_learning_score(proba, y)
        got = np.array([x["score"] for x in sorted(rep["results"], key=lambda x: x["train_row"])])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert rep["summary"]["found_after_checking"]["0.1"] >= 0.5  # chance: 0.1
        for x in rep["results"]:
            i = x["train_row"]
            assert x["train_row_id"] == table["cust"][i] and x["given_label"] == noisy[i]
        # the model-free sources and their combination read the same rows (blanks included)
        c = invaudit(*base, "--method", "combined", "--fix", "20", "--out", tmp_path / "fixed.csv")
    assert c.code == 0, c.err
    rep = validate(c.json())
    assert rep["summary"]["found_after_checking"]["0.1"] >= 0.5
    assert all(set(x["sources"]) == {"model", "knn", "reference", "kernel", "mixture"} for x in rep["results"])
    import pandas as pd

    fixed = pd.read_csv(tmp_path / "fixed.csv", keep_default_na=False)
    changed = np.flatnonzero(fixed["label"].to_numpy() != noisy)
    assert 0 < changed.size <= 20 and np.mean(np.isin(changed, wrong)) >= 0.5


def test_default_is_combined_and_fix_writes_the_mixtures_suggestions(noisy_set, invaudit, tmp_path):
    """No --method: combined (issue 18's default); the suggestions --fix writes are the most probable
    class under the calibrated mixture, and most flipped rows found get their true label back."""
    d, noisy = noisy_set
    out = tmp_path / "fixed.csv"
    r = invaudit("mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target",
                 "--format", "json", "--top", "30", "--fix", "30", "--out", out)
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["params"]["method"] == rep["summary"]["method"] == "combined"
    assert "mixture source:" in r.err
    truth = {int(v) for v in (d / "truth.txt").read_text().split()}
    found = [x for x in rep["results"] if x["train_row"] in truth]
    assert len(found) >= 20
    with open(out, newline="") as fh:
        fixed = [int(row["target"]) for row in csv.DictReader(fh)]
    for x in rep["results"]:
        assert fixed[x["train_row"]] == x["suggested_label"]
    # a flipped row's suggestion differs from its given label (the posterior's argmax kept it)
    assert sum(x["suggested_label"] != x["given_label"] for x in found) >= 0.9 * len(found)


def test_method_mixture_and_usage_errors(noisy_set, invaudit, tmp_path):
    d, _ = noisy_set
    r = invaudit("mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target",
                 "--method", "mixture", "--format", "json", "--top", "5")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["summary"]["method"] == "mixture" and "sources" not in rep["results"][0]
    bad = [(("--method", "foo"), 3, "--method"),
           (("--fix", "3"), 2, "--fix"),
           (("--id-column", "idd"), 3, "idd")]
    for extra, code, word in bad:
        r = invaudit("mislabel", d / "model.joblib", d / "train.csv", "--label-column", "target", *extra)
        assert r.code == code and word in r.err and "Traceback" not in r.err, (extra, r.err)
