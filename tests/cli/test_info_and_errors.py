import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest



EXPECTED_FORMS = {
    "breast_cancer_logreg": "linear", "breast_cancer_power": "invertible-linear", "breast_cancer_tree": "trees",
    "digits_logreg": "linear", "digits_mlp": "differentiable", "wine_forest": "trees",
}


@pytest.mark.parametrize("name, form", sorted(EXPECTED_FORMS.items()))
def test_info_answers_for_every_sample_model(invaudit, validate, samples, name, form):
    r = invaudit("info", samples / f"{name}.joblib", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["model"]["form"] == form
    assert {c["command"] for c in rep["results"]} == {"counterfactual", "margin", "influence", "mislabel", "explain"}
    assert rep["model"]["feature_names"] and len(rep["model"]["feature_names"]) == rep["model"]["n_features"]


def test_info_table_and_markdown(invaudit, samples):
    r = invaudit("info", samples / "breast_cancer_logreg.joblib")
    assert r.code == 0 and "linear form" in r.out and "StandardScaler" in r.out
    md = invaudit("info", samples / "breast_cancer_logreg.joblib", "--format", "markdown")
    assert md.code == 0 and md.out.startswith("### ") and "| command |" in md.out


def test_json_file_matches_stdout_and_is_complete(invaudit, samples, tmp_path):
    path = tmp_path / "out" / "info.json"
    r = invaudit("info", samples / "digits_mlp.joblib", "--format", "json", "--json", path)
    on_disk, on_stdout = json.loads(path.read_text()), r.json()
    on_disk.pop("elapsed_s"), on_stdout.pop("elapsed_s")
    assert on_disk == on_stdout


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused_without_running(invaudit, tmp_path):
    marker = tmp_path / "pwned"
    model = tmp_path / "evil.pkl"
    model.write_bytes(pickle.dumps(Evil(marker)))
    r = invaudit("info", model)
    assert r.code == 3
    assert "system" in r.err and "--trust" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not marker.exists()


@pytest.mark.parametrize("args, fragment", [
    (["info", "nope.joblib"], "nope.joblib"),
    (["info", "{samples}/digits_train.csv"], "csv"),
    (["info", "{samples}/breast_cancer_logreg.joblib", "--sha256", "0" * 64], "sha256"),
    (["explain", "{samples}/digits_mlp.joblib", "{samples}/breast_cancer_test.csv"], "breast_cancer_test.csv"),
    (["explain", "{samples}/digits_mlp.joblib", "{samples}/digits_test.npz", "--rows", "5000"], "out of range"),
])
def test_bad_input_is_one_sentence_and_exit_3(invaudit, samples, tmp_path, args, fragment):
    r = invaudit(*[a.format(samples=samples) for a in args])
    assert r.code == 3, (r.code, r.err)
    assert fragment in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert r.out == ""


def test_bad_json_target_leaves_nothing_behind(invaudit, samples, tmp_path):
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n1,2\n")
    out = tmp_path / "r.json"
    r = invaudit("explain", samples / "digits_mlp.joblib", bad, "--json", out)
    assert r.code == 3 and not out.exists()


def test_usage_error_is_exit_2(invaudit, samples):
    r = invaudit("info", samples / "digits_mlp.joblib", "--no-such-flag")
    assert r.code == 2
    r = invaudit("explain", samples / "digits_mlp.joblib")
    assert r.code == 2


def test_console_script_runs_as_installed(samples):
    """The real entry point, as a user's shell runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "invaudit")
    if not os.path.exists(exe):
        pytest.skip("invaudit console script not installed in this environment")
    # a linear model: the light load, so the process pays ~0.9 s, not scikit-learn's import (~4 s);
    # the forms themselves are checked in process above
    p = subprocess.run([exe, "info", str(samples / "breast_cancer_logreg.joblib"), "--format", "json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["model"]["form"] == "linear"
    p = subprocess.run([exe, "info", str(samples / "missing.joblib")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1


def test_a_column_the_model_does_not_read_is_left_out_and_named(invaudit, samples, validate):
    """A named model matches columns by name: a label column not named with --label-column cannot
    shift the features, so it is left out, and stderr says which column and why."""
    r = invaudit("margin", f"{samples}/digits_logreg.joblib", f"{samples}/digits_test.csv", "--rows", "0-2",
                 "--format", "json")
    assert r.code == 0, r.err
    assert "left out: target" in r.err and "--label-column" in r.err
    with_label = invaudit("margin", f"{samples}/digits_logreg.joblib", f"{samples}/digits_test.csv", "--rows",
                          "0-2", "--format", "json", "--label-column", "target")
    assert with_label.code == 0 and "left out" not in with_label.err
    a, b = validate(r.json()), validate(with_label.json())
    assert [x["margin"] for x in a["results"]] == [x["margin"] for x in b["results"]]


def test_categorical_booster_info_tells_the_truth_and_point_commands_refuse(invaudit, tmp_path, validate):
    """A LightGBM model that splits on categories: queried as a black box; info says the commands
    whose answers are points are unavailable, and they refuse with exit 3 (codes are not numbers)."""
    lgb = pytest.importorskip("lightgbm")
    import joblib

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 12, 600), rng.normal(size=600)]).astype(float)
    y = (np.isin(X[:, 0], [1, 3, 4, 8, 11]) ^ (X[:, 1] > 0.2)).astype(int)
    est = lgb.LGBMClassifier(n_estimators=8, num_leaves=6, min_child_samples=5, cat_smooth=1,
                             min_data_per_group=5, verbose=-1, n_jobs=1).fit(X, y, categorical_feature=[0])
    joblib.dump(est, tmp_path / "m.joblib")
    np.save(tmp_path / "x.npy", X[:5])
    rep = validate(invaudit("info", tmp_path / "m.joblib", "--format", "json").json())
    avail = {r["command"]: r["available"] for r in rep["results"]}
    assert avail["margin"] == avail["counterfactual"] == avail["explain"] == "no" and avail["mislabel"] == "yes"
    for cmd in ("margin", "explain"):
        r = invaudit(cmd, tmp_path / "m.joblib", tmp_path / "x.npy")
        assert r.code == 3 and "splits on categories" in r.err and "Traceback" not in r.err
