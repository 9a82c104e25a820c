"""The solver commands end to end, checked against the model itself (independent of invaudit)."""

import csv

import joblib
import numpy as np
import pytest


def load(samples, name):
    return joblib.load(samples / f"{name}.joblib")


def test_counterfactual_logreg_verified_by_the_model(invaudit, samples, validate):
    r = invaudit("counterfactual", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--target", "1", "--confidence", "0.9", "--scale", "std",
                 "--train", samples / "breast_cancer_train.csv", "--immutable", "mean_radius,3",
                 "--rows", "0-19", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    model = load(samples, "breast_cancer_logreg")
    X = np.array([x["counterfactual"] for x in rep["results"] if x["status"] == "found"])
    assert len(X) >= 5
    assert np.all(model.predict_proba(X)[:, 1] >= 0.9)
    for x in rep["results"]:
        assert x["status"] in ("found", "already-target")
        if x["status"] == "found":
            assert x["exact"] is True and x["predicted_class"] == 1
            d = np.asarray(x["delta"])
            assert d[0] == 0 and d[3] == 0  # frozen by name and by index
            assert "mean_radius" not in x["changed_features"]


def test_model_inversion_from_zeros(invaudit, samples):
    r = invaudit("counterfactual", samples / "digits_logreg.joblib", "--from", "zeros", "--target", "3",
                 "--confidence", "0.95", "--format", "json")
    assert r.code == 0, r.err
    (res,) = r.json()["results"]
    assert res["status"] == "found" and res["exact"] is True
    x = np.asarray(res["counterfactual"])
    assert load(samples, "digits_logreg").predict_proba(x[None])[0, 3] >= 0.95
    assert np.isclose(np.linalg.norm(x), res["distance"], rtol=1e-9)


@pytest.mark.parametrize("args, fragment", [
    (["--target", "7"], "not a class"),
    (["--target", "1", "--scale", "std"], "--train"),
    (["--target", "1", "--immutable", "height"], "'height' is not a feature"),
    (["--target", "1", "--from", "mean"], "DATA or --from"),
])
def test_counterfactual_bad_input(invaudit, samples, args, fragment):
    r = invaudit("counterfactual", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", *args)
    assert r.code == 3 and fragment in r.err and len(r.err.strip().splitlines()) == 1


def test_margin_perturbations_flip_the_model_exactly(invaudit, samples, validate):
    r = invaudit("margin", samples / "digits_logreg.joblib", samples / "digits_test.npz", "--rows", "0-49",
                 "--eps", "1,4", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    model = load(samples, "digits_logreg")
    X = np.load(samples / "digits_test.npz")["X"][:50]
    y = np.load(samples / "digits_test.npz")["y"][:50]
    P = np.array([x["perturbation"] for x in rep["results"]])
    pred = model.predict(X + P)
    assert np.array_equal(pred, [x["nearest_class"] for x in rep["results"]])
    margins = np.array([x["margin"] for x in rep["results"]])
    assert np.allclose(np.linalg.norm(P, axis=1), margins, rtol=1e-6)
    assert all(x["exact"] for x in rep["results"])
    correct = model.predict(X) == y
    assert rep["summary"]["robust_accuracy"]["4"] == pytest.approx(np.mean(correct & (margins > 4)))


def test_influence_verified_by_refits(invaudit, samples, validate):
    r = invaudit("influence", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_train.csv",
                 samples / "breast_cancer_test.csv", "--label-column", "target", "--test-rows", "0-2", "--top", "4",
                 "--verify-loo", "4", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    for res in rep["results"]:
        assert len(res["helpful"]) == 4 and len(res["harmful"]) == 4
        assert all(h["loss_change_if_removed"] >= 0 for h in res["helpful"])
        assert all(h["loss_change_if_removed"] <= 0 for h in res["harmful"])
    v = rep["summary"]["verification"]
    assert v["n_retrained"] >= 4 and v["pearson"] > 0.9


def test_influence_on_a_single_tree_is_its_leaf_refit(invaudit, samples, validate):
    r = invaudit("influence", samples / "breast_cancer_tree.joblib", samples / "breast_cancer_train.csv",
                 samples / "breast_cancer_test.csv", "--label-column", "target", "--test-rows", "0-2",
                 "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["summary"]["exact"] is False and "single tree" in rep["summary"]["exact_means"]


def test_mislabel_finds_flipped_labels_and_fixes_a_copy(invaudit, samples, tmp_path, validate):
    rng = np.random.default_rng(0)
    src = samples / "breast_cancer_train.csv"
    rows = list(csv.reader(open(src)))
    header, body = rows[0], rows[1:]
    flipped = rng.choice(len(body), 20, replace=False)
    for i in flipped:
        body[i][-1] = str(1 - int(body[i][-1]))
    noisy = tmp_path / "noisy.csv"
    with open(noisy, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header] + body)
    truth = tmp_path / "truth.txt"
    truth.write_text("\n".join(map(str, flipped)))
    before = noisy.read_bytes()
    out = tmp_path / "fixed.csv"
    r = invaudit("mislabel", samples / "breast_cancer_logreg.joblib", noisy, "--label-column", "target",
                 "--top", "all", "--truth", truth, "--fix", "15", "--out", out, "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    ranked = [x["train_row"] for x in rep["results"]]
    assert sorted(ranked) == list(range(len(body)))  # every row exactly once
    assert rep["summary"]["found_after_checking"]["0.1"] >= 0.6
    assert noisy.read_bytes() == before  # the input is never touched
    fixed = list(csv.reader(open(out)))[1:]
    changed = [i for i in range(len(body)) if fixed[i][-1] != body[i][-1]]
    assert set(changed) <= set(ranked[:15])
    r = invaudit("mislabel", samples / "breast_cancer_logreg.joblib", noisy, "--label-column", "target",
                 "--fix", "3", "--out", noisy)
    assert r.code == 3 and "overwrite" in r.err


@pytest.mark.parametrize("name, data, exact", [
    ("breast_cancer_tree", "breast_cancer_test.npz", True),
    ("wine_forest", "wine_test.npz", None),
    ("digits_mlp", "digits_test.npz", False),
    ("breast_cancer_power", "breast_cancer_test.npz", False),
])
def test_counterfactual_every_form_verified_by_the_model(invaudit, samples, validate, name, data, exact):
    train = data.replace("test", "train")
    r = invaudit("counterfactual", samples / f"{name}.joblib", samples / data, "--target", "other",
                 "--rows", "0-2", "--train", samples / train, "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    model = load(samples, name)
    for x in rep["results"]:
        assert x["status"] == "found"
        pred = model.predict(np.asarray(x["counterfactual"])[None])[0]
        assert pred == x["predicted_class"] == x["target_class"] != x["original_class"]
        if exact is not None:
            assert x["exact"] is exact
        assert "plausibility" in x  # --train given: distance to target-class rows, LOF inlier
        if name in ("digits_mlp", "breast_cancer_power"):
            assert len(x["feature_importance"]) == rep["model"]["n_features"]


def test_manifold_counterfactual_stays_valid(invaudit, samples):
    r = invaudit("counterfactual", samples / "digits_mlp.joblib", samples / "digits_test.npz", "--target", "3",
                 "--confidence", "0.6", "--rows", "0-1", "--train", samples / "digits_train.npz",
                 "--manifold", "pca", "--format", "json")
    assert r.code == 0, r.err
    model = load(samples, "digits_mlp")
    for x in r.json()["results"]:
        assert x["status"] == "found" and x["exact"] is False and "manifold" in x["method"]
        assert model.predict_proba(np.asarray(x["counterfactual"])[None])[0, 3] >= 0.6


def test_manifold_file_is_loaded_safely(invaudit, samples, tmp_path):
    bad = tmp_path / "m.joblib"
    joblib.dump(load(samples, "digits_logreg"), bad)
    r = invaudit("counterfactual", samples / "digits_mlp.joblib", samples / "digits_test.npz", "--target", "3",
                 "--rows", "0", "--train", samples / "digits_train.npz", "--manifold", bad)
    assert r.code == 3 and "not a fitted transformer" in r.err
