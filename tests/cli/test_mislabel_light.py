"""``mislabel`` on a light-loaded LogisticRegression (issue 19): no scikit-learn import, same report.

The objective of ``--method pruned-loo-loss`` (C, penalty, fit_intercept, class_weight, the
coefficients, classes, and the scalers in front) is read from the state the light load kept
(invaudit.io._light); the refit without the suspects is a light copy of that state. The report
must be the full load's byte for byte apart from the elapsed time, and the light objective's
numbers the full one's bit for bit; its refit is checked against scikit-learn's own refit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from invaudit.models import _light_linear

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")

ROOT = Path(__file__).resolve().parents[2]
SCALES = np.array([1e-5, 1.0, 1e3, 1e5, 0.1, 10.0])
NAMES = ["age", "income", "debt", "assets", "ratio", "tenure"]

# main(argv) in a fresh interpreter; the exit code and the imported modules on stderr's last line
_CHILD = r"""
import json, sys
code = 0
try:
    from invaudit.cli.app import main
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\n")
"""


def _fresh(argv):
    env = {**os.environ, "INVAUDIT_NO_PROGRESS": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore",
           "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(a) for a in argv])], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    state = json.loads(last)
    return state["code"], proc.stdout, "\n".join(err), set(state["modules"])


def _imported(modules, package) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


def _timeless(text: str) -> str:
    return re.sub(r'"elapsed_s": ?[0-9.eE+-]+', '"elapsed_s": 0', text)


@pytest.fixture(scope="module")
def light_models(tmp_path_factory):
    """Four classes with string labels and flipped labels, features at 1e-5..1e5; a scaled
    pipeline fitted on a DataFrame, a bare LogisticRegression with balanced class weights, a
    binary one; the training CSV has an ID column and its columns in another order."""
    folder = tmp_path_factory.mktemp("mislabel_light")
    rng = np.random.default_rng(19)
    n, K = 240, 4
    X = pd.DataFrame(rng.normal(size=(n, 6)) * SCALES, columns=NAMES)
    centres = rng.normal(size=(K, 6)) * 1.5
    y = np.argmax((X.to_numpy() / SCALES) @ centres.T + rng.normal(size=(n, K)), axis=1)
    y[:24] = (y[:24] + 1 + rng.integers(0, K - 1, size=24)) % K  # wrong labels
    labels = np.array(["cat", "dog", "eel", "fox"])[y]
    pipe = folder / "pipe.joblib"
    joblib.dump(make_pipeline(StandardScaler(), MinMaxScaler(), LogisticRegression(C=0.7, max_iter=5000, tol=1e-10))
                .fit(X, labels), pipe)
    Xs = X / SCALES
    lr = folder / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=5000, tol=1e-10, class_weight="balanced").fit(Xs, labels), lr)
    binary = folder / "binary.joblib"
    yb = np.where(np.isin(labels, ["cat", "dog"]), "no", "yes")
    joblib.dump(LogisticRegression(max_iter=5000, tol=1e-10).fit(Xs, yb), binary)
    frames = {}
    for name, data, lab in (("train", X, labels), ("scaled", Xs, labels), ("binary", Xs, yb)):
        df = data.copy()
        df.insert(0, "customer", [f"c{i:04d}" for i in range(n)])
        df["label"] = lab
        df = df[["label", "tenure", "customer", "debt", "age", "ratio", "assets", "income"]]
        path = folder / f"{name}.csv"
        df.to_csv(path, index=False)
        frames[name] = path
    return {"pipe": (pipe, frames["train"]), "lr": (lr, frames["scaled"]), "binary": (binary, frames["binary"])}


def _args(model, csv):
    return ["mislabel", model, csv, "--method", "pruned-loo-loss", "--label-column", "label", "--id-column",
            "customer", "--top", "all", "--format", "json"]


def _full(invaudit, monkeypatch, args):
    with monkeypatch.context() as m:  # as before the light load: the real estimator, adapted
        m.setattr(_light_linear, "light_form", lambda loaded: None)
        full = invaudit(*args)
    assert full.code == 0, full.err
    return full


def test_mislabel_on_a_light_model_imports_no_scikit_learn_and_reports_the_full_loads(
        light_models, invaudit, monkeypatch):
    model, csv = light_models["pipe"]
    code, out, err, modules = _fresh(_args(model, csv))
    assert code == 0, err
    # nor scipy (issue 19: its linalg/special cost ~0.4 s of start-up; numpy does the solves)
    for package in ("sklearn", "joblib", "pandas", "scipy"):
        assert not _imported(modules, package), f"mislabel imported {package}"
    full = _full(invaudit, monkeypatch, _args(model, csv))
    assert _timeless(out) == _timeless(full.out)  # byte for byte apart from the time
    assert err.strip() == full.err.strip()
    report = json.loads(out)
    assert len(report["results"]) == 240 and report["summary"]["method"] == "pruned-loo-loss"
    assert {r["given_label"] for r in report["results"]} == {"cat", "dog", "eel", "fox"}
    assert report["model"]["estimator"] == "Pipeline(StandardScaler, MinMaxScaler, LogisticRegression)"


def test_balanced_and_binary_light_reports_are_the_full_loads(light_models, invaudit, monkeypatch):
    for key in ("lr", "binary"):
        args = _args(*light_models[key])
        light = invaudit(*args)
        assert light.code == 0, light.err
        full = _full(invaudit, monkeypatch, args)
        assert _timeless(light.out) == _timeless(full.out), key
        assert light.err == full.err


def _forms(model):
    """(light form, full form) of one model file."""
    from invaudit.io.model_file import load_model
    from invaudit.models import adapt

    light = _light_linear.light_form(load_model(model, light=True))
    assert light is not None
    return light, adapt(load_model(model).estimator)


def _rows(form, csv):
    df = pd.read_csv(csv)
    X = df[NAMES].to_numpy(dtype=np.float64)
    y = np.searchsorted(np.asarray(form.classes), df["label"].to_numpy())
    return X, y


@pytest.mark.parametrize("key", ["pipe", "lr", "binary"])
def test_the_light_objective_and_its_refit_are_the_full_ones(light_models, key):
    """Every number of the light objective equals the full one's bit for bit (and its estimator is
    never unpickled); the refit without the suspects equals scikit-learn's own refit."""
    from invaudit.influence import build_objective
    from invaudit.triage import rank_mislabels

    model, csv = light_models[key]
    light, full = _forms(model)
    X, y = _rows(full, csv)
    a, b = build_objective(light, X, y), build_objective(full, X, y)
    assert not light.estimator_loaded
    assert a.notes == b.notes and a.exact == b.exact
    for name in ("Theta", "Zt", "p", "Hinv"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert a.loo_losses().tobytes() == b.loo_losses().tobytes()
    rows = np.argsort(-b.loo_losses(), kind="stable")[:15]
    ra, rb = a.refitted(rows), b.refitted(rows)
    assert not light.estimator_loaded  # the refit is a light copy of the saved state
    assert ra.Theta.tobytes() == rb.Theta.tobytes() and ra.Hinv.tobytes() == rb.Hinv.tobytes()
    # the independent reference: scikit-learn refitted on the kept rows (newton-cholesky, tight tol)
    ref = rb.refit_without([], tol=1e-12)
    Theta_ref = np.column_stack([ref.coef_, ref.intercept_])
    assert np.allclose(ra.Theta, Theta_ref, rtol=1e-6, atol=1e-7 * np.abs(Theta_ref).max())
    # and the whole ranking
    ka, kb = rank_mislabels(light, X, y, method="pruned-loo-loss"), rank_mislabels(full, X, y, method="pruned-loo-loss")
    assert np.array_equal(ka.order, kb.order) and ka.score.tobytes() == kb.score.tobytes()
    assert ka.notes == kb.notes
    assert not light.estimator_loaded
    # what still needs scikit-learn reads the real estimator (the lazy load), with the same answer
    assert ra.refit_without([], tol=1e-12).coef_.tobytes() == ref.coef_.tobytes()


def test_a_refit_the_chord_cannot_make_falls_back_to_scikit_learn_on_the_light_path(light_models, monkeypatch):
    """Without the Newton-chord refit (it declines when it diverges), the light objective refits
    with scikit-learn like the full one (the estimator unpickled then), to the same parameters."""
    from invaudit.influence import build_objective
    from invaudit.influence._objective import LogisticObjective

    model, csv = light_models["pipe"]
    light, full = _forms(model)
    X, y = _rows(full, csv)
    monkeypatch.setattr(LogisticObjective, "_refit_by_chord", lambda self, keep, **kw: None)
    rows = np.arange(0, 240, 9)
    ra = build_objective(light, X, y).refitted(rows)
    assert light.estimator_loaded  # scikit-learn's refit needs the real estimator
    rb = build_objective(full, X, y).refitted(rows)
    assert ra.Theta.tobytes() == rb.Theta.tobytes()
    assert ra.loo_losses().tobytes() == rb.loo_losses().tobytes()


def test_a_nested_pipeline_reads_the_real_estimator_and_agrees(light_models, tmp_path):
    """A pipeline inside a pipeline is not mirrored by the light objective: the real estimator is
    read (the lazy load), and the numbers are those of the flat pipeline's light objective."""
    from invaudit.influence import build_objective

    model, csv = light_models["pipe"]
    flat, full = _forms(model)
    X, y = _rows(full, csv)
    est = joblib.load(model)
    nested = make_pipeline(make_pipeline(est[0], est[1]), est[-1])
    path = tmp_path / "nested.joblib"
    joblib.dump(nested, path)
    light, _ = _forms(path)
    a, b = build_objective(light, X, y), build_objective(flat, X, y)
    assert light.estimator_loaded and not flat.estimator_loaded
    assert a.Zt.tobytes() == b.Zt.tobytes() and a.Hinv.tobytes() == b.Hinv.tobytes()
