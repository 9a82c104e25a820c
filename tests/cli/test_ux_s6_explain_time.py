"""``explain --time-limit`` / ``--run-time-limit``: the same flags and meaning as counterfactual and
margin. A row the limit cuts short keeps what was found by then, every explanation still verified
with the model's own predict, and its ``method`` says what was cut; a limit that never binds
changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import joblib
import numpy as np
import pytest

from invaudit.explain import explain_rows
from invaudit.models import adapt

ROWS = "0-5"
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture(scope="module")
def digits():
    d = np.load(SAMPLES / "digits_test.npz")
    return joblib.load(SAMPLES / "digits_logreg.joblib"), d["X"]


def _run(invaudit, samples, *extra):
    r = invaudit("explain", samples / "digits_logreg.joblib", samples / "digits_test.npz", "--rows", ROWS,
                 "--shape", "8x8", "--format", "json", *extra)
    assert r.code == 0, r.err
    return r


def _check_explanations(rep, model, X):
    """Independent of the solver: each explanation's mutant (kept pixels, the rest at the zero
    baseline) gets the row's class from the model itself, and ``minimal`` is what single removals
    say."""
    for res in rep["results"]:
        for e in res["explanations"]:
            keep = np.zeros(64, dtype=bool)
            keep[e["features"]] = True
            x = np.where(keep, X[res["row"]], 0.0)
            assert e["sufficient"] and model.predict(x[None])[0] == res["predicted_class"]
            drops = np.repeat(x[None], keep.sum(), axis=0)
            drops[np.arange(keep.sum()), np.flatnonzero(keep)] = 0.0
            assert e["minimal"] == bool(np.all(model.predict(drops) != res["predicted_class"]))


def test_explain_time_limit_zero_gives_each_row_one_verified_explanation_and_says_so(invaudit, validate, samples,
                                                                                   digits):
    model, X = digits
    free = _run(invaudit, samples).json()
    r = _run(invaudit, samples, "--time-limit", "0")
    rep = validate(r.json())
    assert rep["params"]["time_limit"] == 0.0 and rep["params"]["run_time_limit"] is None
    _check_explanations(rep, model, X)
    searched = [res for res in rep["results"] if res["input_sufficient"] and not res["baseline_gets_label"]]
    assert searched, "the sample rows should need a search"
    for res, ref in zip(rep["results"], free["results"]):
        assert res["row"] == ref["row"]
        if res in searched:
            # the quick search: the whole input grown into one sufficient explanation
            assert len(res["explanations"]) == 1
            assert res["method"].startswith("multirex; stopped by the time limit:")
            assert "no spotlights" in res["method"]
            assert len(ref["explanations"]) >= 2  # without the limit the row has more
        else:
            assert res["method"] == "multirex" and res["explanations"] == []
        assert res["exact"] is False
    assert rep["summary"]["time_limited"] == len(searched)
    assert rep["summary"]["rows_with_explanation"] == free["summary"]["rows_with_explanation"]
    assert all(res["method"] == "multirex" for res in free["results"]) and free["summary"]["time_limited"] == 0
    assert "cut the search short" in r.err


def test_explain_run_time_limit_zero_names_the_runs_limit(invaudit, validate, samples, digits):
    model, X = digits
    rep = validate(_run(invaudit, samples, "--run-time-limit", "0").json())
    _check_explanations(rep, model, X)
    cut = [res for res in rep["results"] if res["method"] != "multirex"]
    assert cut and all(res["method"].startswith("multirex; stopped by the run's time limit:") for res in cut)
    assert all(len(res["explanations"]) == 1 for res in cut)
    assert rep["params"]["run_time_limit"] == 0.0


def test_explain_a_limit_that_never_binds_changes_nothing(invaudit, samples):
    free = _run(invaudit, samples).json()
    loose = _run(invaudit, samples, "--time-limit", "1e6", "--run-time-limit", "1e6").json()
    assert loose["results"] == free["results"] and loose["summary"] == free["summary"]


def test_explain_negative_time_limit_is_a_usage_error(invaudit, samples):
    r = invaudit("explain", samples / "digits_logreg.joblib", samples / "digits_test.npz", "--rows", "0",
                 "--time-limit", "-1")
    assert r.code == 2 and "--time-limit" in r.err and "Traceback" not in r.err


class _Slow:
    """A form whose every model call takes ``delay`` seconds (and is counted)."""

    def __init__(self, form, delay):
        self._form, self.delay, self.calls = form, delay, 0

    def __getattr__(self, name):
        return getattr(self._form, name)

    def predict(self, X):
        self.calls += 1
        time.sleep(self.delay)
        return self._form.predict(X)

    def predict_proba(self, X):
        self.calls += 1
        time.sleep(self.delay)
        return self._form.predict_proba(X)


def test_the_clock_stops_a_slow_search_and_keeps_its_answers_verified(digits):
    """Library level: a model whose calls cost 20 ms. Without a limit the search makes many calls;
    with 0.03 s per row it stops early (between calls), and what it reports is still verified."""
    model, X = digits
    rows = X[:2]
    free = _Slow(adapt(model), 0.02)
    explain_rows(free, rows, baseline=np.zeros(64), shape=(8, 8), iterations=2)
    slow = _Slow(adapt(model), 0.02)
    res = explain_rows(slow, rows, baseline=np.zeros(64), shape=(8, 8), iterations=2, time_limit=0.03)
    assert slow.calls < free.calls
    assert all(r.time_limited and "stopped by the time limit" in r.method for r in res)
    for r, x in zip(res, rows):
        assert len(r.explanations) >= 1
        for e in r.explanations:
            kept = np.zeros(64)
            kept[e.features] = x[e.features]
            assert e.sufficient and model.predict(kept[None])[0] == model.classes_[r.label_index]


def test_explain_rows_refuses_a_negative_limit(digits):
    from invaudit.errors import InputError

    model, X = digits
    with pytest.raises(InputError, match="--time-limit"):
        explain_rows(adapt(model), X[:1], baseline=np.zeros(64), time_limit=-1.0)
