"""The light load through the commands (issue 16): every report is the full load's, byte for byte.

``Run`` builds a linear model's form from the state the light load read (invaudit.io._light) and
unpickles the estimator only when something reads it. Each command here runs twice in process:
as it runs now, and with the light form switched off (the real estimator adapted, as before the
light load); the reports (stdout and ``--json``, ``--out`` files) must be identical apart from
the elapsed time.
"""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from invaudit.models import _light_linear


def _both(invaudit, monkeypatch, tmp_path, *args, files=()):
    """Run ``args`` with the light load and without; return both (stdout, files' bytes)."""
    outputs = []
    real = _light_linear.light_form
    made = []
    for light in (True, False):
        with monkeypatch.context() as m:
            if light:  # the light run really builds its form from the light state
                m.setattr(_light_linear, "light_form", lambda loaded: made.append(real(loaded)) or made[-1])
            else:
                m.setattr(_light_linear, "light_form", lambda loaded: None)
            r = invaudit(*args)
        if light:
            assert made and made[0] is not None, args
        assert r.code == 0, r.err
        written = [(tmp_path / f).read_bytes() for f in files]
        outputs.append((r.out, r.err, written))
    return outputs


def _without_elapsed(text: str):
    report = json.loads(text)
    report.pop("elapsed_s", None)
    return report


@pytest.fixture(scope="module")
def multiclass_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("light")
    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.normal(size=(200, 5)) * [1e-5, 1.0, 1e3, 1e5, 0.1],
                     columns=["age", "income", "debt", "assets", "ratio"])
    y = np.array(["low", "mid", "high"])[np.digitize(X["age"] / 1e-5 + X["debt"] / 1e3, [-0.6, 0.6])]
    model = folder / "sgd.joblib"
    joblib.dump(make_pipeline(MinMaxScaler(), SGDClassifier(loss="log_loss", random_state=0)).fit(X, y), model)
    data = X.iloc[:12].copy()
    data.insert(0, "customer", [f"c{i:03d}" for i in range(12)])
    data = data[["customer", "debt", "age", "ratio", "assets", "income"]]  # columns in another order
    csv = folder / "rows.csv"
    data.to_csv(csv, index=False)
    lr = folder / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=5000).fit(X / [1e-5, 1.0, 1e3, 1e5, 0.1], y), lr)
    return model, lr, csv


def test_counterfactual_and_margin_reports_are_the_full_loads(samples, tmp_path, invaudit, monkeypatch):
    model = samples / "breast_cancer_logreg.joblib"
    data = samples / "breast_cancer_test.csv"
    common = ("--label-column", "target", "--rows", "0-7")
    for args, files in [
        (("counterfactual", model, data, *common, "--target", "1", "--confidence", "0.9", "--scale", "std",
          "--train", samples / "breast_cancer_train.csv", "--format", "json", "--out", tmp_path / "cf.csv"), ("cf.csv",)),
        (("margin", model, data, *common, "--norm", "l1", "--format", "json", "--schema", "2",
          "--json", tmp_path / "m.json"), ("m.json",)),
        (("margin", samples / "digits_logreg.joblib", samples / "digits_test.npz", "--rows", "0-9",
          "--format", "json"), ()),
    ]:
        (light_out, light_err, light_files), (full_out, full_err, full_files) = _both(
            invaudit, monkeypatch, tmp_path, *args, files=files)
        assert _without_elapsed(light_out) == _without_elapsed(full_out), args[0]
        assert light_err == full_err
        for a, b, name in zip(light_files, full_files, files):
            if name.endswith(".json"):
                assert _without_elapsed(a) == _without_elapsed(b)
            else:
                assert a == b


def test_string_classes_ids_and_reordered_columns(multiclass_model, tmp_path, invaudit, monkeypatch):
    model, lr, csv = multiclass_model
    for args in [
        ("info", model, "--format", "json"),
        ("counterfactual", model, csv, "--id-column", "customer", "--target", "high", "--format", "json"),
        ("margin", lr, csv, "--id-column", "customer", "--norm", "linf", "--format", "json"),
        ("margin", model, csv, "--id-column", "customer", "--format", "table"),
    ]:
        (light_out, light_err, _), (full_out, full_err, _) = _both(invaudit, monkeypatch, tmp_path, *args)
        if "json" in args:
            light_report = _without_elapsed(light_out)
            assert light_report == _without_elapsed(full_out), args[0]
            assert light_report["model"]["estimator"] in ("Pipeline(MinMaxScaler, SGDClassifier)", "LogisticRegression")
        else:
            assert light_out == full_out
        assert light_err == full_err


def test_a_light_form_loads_its_estimator_only_when_read(multiclass_model):
    from invaudit.io.model_file import load_model

    model, _lr, _csv = multiclass_model
    loaded = load_model(model, light=True)
    form = _light_linear.light_form(loaded)
    assert form is not None and not loaded.is_loaded
    form.describe(), form.influence_support(), form.proba(np.zeros((2, 5)))
    assert not loaded.is_loaded
    assert form.has_proba and loaded.is_loaded  # predict_proba of the real SGDClassifier(log_loss)


def test_workers_get_the_plain_form_of_the_real_estimator(samples, tmp_path, invaudit, monkeypatch, pool_answers):
    """--jobs ships the form to worker processes: a light form pickles as the plain LinearForm of
    the real estimator (its lazy loader stays in this process), and the answers are the same."""
    import pickle

    from invaudit.io.model_file import load_model
    from invaudit.models import LinearForm

    model = samples / "digits_logreg.joblib"
    form = _light_linear.light_form(load_model(model, light=True))
    copy = pickle.loads(pickle.dumps(form))
    assert type(copy) is LinearForm and copy.W.tobytes() == form.W.tobytes() and copy.describe() == form.describe()
    args = ("counterfactual", model, samples / "digits_test.npz", "--rows", "0-11", "--target", "3", "--jobs", "2",
            "--format", "json")
    (light_out, _, _), (full_out, _, _) = _both(invaudit, monkeypatch, tmp_path, *args)
    assert _without_elapsed(light_out) == _without_elapsed(full_out)
