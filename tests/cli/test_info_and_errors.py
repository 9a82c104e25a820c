import json
import os
import pickle
import subprocess
import sys

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
    (["explain", "{samples}/digits_mlp.joblib", "{samples}/digits_test.csv"], "target"),
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
    p = subprocess.run([exe, "info", str(samples / "wine_forest.joblib"), "--format", "json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["model"]["form"] == "trees"
    p = subprocess.run([exe, "info", str(samples / "missing.joblib")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
