"""One behaviour across commands: a closed stdout, usage errors, --time-limit on black boxes and
typed rows, --quiet, and the flags the row commands share."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras
from invaudit.margins import margins
from invaudit.models import adapt

SCALE = np.array([1e-3, 1e3])


# --- a closed stdout: exit 141, silent, report files whole ----------------------------------------

def _closed_early(args, tmp_path):
    """Run the console entry point in a process of its own whose stdout reader reads a few bytes and
    closes the pipe: ``(exit code, stderr)``."""
    env = dict(os.environ, INVAUDIT_NO_PROGRESS="1", NO_COLOR="1")
    code = "import sys; from invaudit.cli.app import main; main(sys.argv[1:])"
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    head = p.stdout.read(64)
    p.stdout.close()  # the reader goes away, as `| head -c 64` does
    err = p.stderr.read().decode()
    p.stderr.close()
    assert head, err
    return p.wait(timeout=120), err


def test_a_closed_stdout_exits_141_silently_and_the_json_report_is_whole(samples, tmp_path):
    """``invaudit margin ... --format jsonl --json r.json | head``: exit 141 (128 + SIGPIPE; 1 means
    a failed audit check), nothing on stderr, and the streamed --json report whole, with no
    temporary left beside it."""
    report = tmp_path / "r.json"
    code, err = _closed_early(["margin", samples / "digits_logreg.joblib", samples / "digits_test.npz",
                               "--format", "jsonl", "--json", report], tmp_path)
    assert code == 141, err
    assert err == ""
    rep = json.loads(report.read_text())
    assert rep["command"] == "margin" and len(rep["results"]) == rep["data"]["n_rows"] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


class _GoneReader(io.RawIOBase):
    """A stdout whose reader has gone: every write fails with EPIPE (until ``closed_for_good``)."""

    failing = True

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.failing:
            raise BrokenPipeError(32, "Broken pipe")
        return len(data)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_closed_stdout_in_process_for_a_report_written_at_once(samples, tmp_path, monkeypatch, capsys, fmt):
    """The same for a report emitted whole (counterfactual): 141, silent, --json whole."""
    from invaudit.cli.app import main

    monkeypatch.setenv("INVAUDIT_NO_PROGRESS", "1")
    raw = _GoneReader()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8"))
    report = tmp_path / "r.json"
    fd = os.dup(1)  # after a closed pipe, stdout's descriptor is pointed at /dev/null: keep ours
    try:
        with pytest.raises(SystemExit) as exc:
            main(["counterfactual", str(samples / "digits_logreg.joblib"), str(samples / "digits_test.npz"),
                  "--rows", "0-49", "--format", fmt, "--json", str(report)])
    finally:
        raw.failing = False
        os.dup2(fd, 1)
        os.close(fd)
    assert exc.value.code == 141
    assert capsys.readouterr().err == ""
    assert len(json.loads(report.read_text())["results"]) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_run_guarded_maps_clicks_answer_to_a_closed_pipe_to_141():
    """Click turns EPIPE into sys.exit(1); that exit (and a bare BrokenPipeError) become 141, while
    an exit 1 of another cause stays 1."""
    from invaudit.cli._errors import EXIT_CLOSED_PIPE, run_guarded

    def closed_in_click():
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            sys.exit(1)

    def failed_check():
        sys.exit(1)

    fd = os.dup(1)  # run_guarded points stdout at /dev/null after a closed pipe: keep ours
    try:
        assert run_guarded(closed_in_click) == EXIT_CLOSED_PIPE == 141
        with pytest.raises(SystemExit) as exc:
            run_guarded(failed_check)
        assert exc.value.code == 1
    finally:
        os.dup2(fd, 1)
        os.close(fd)


# --- usage errors: one line, exit 2 ----------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["influence", "{m}", "{d}", "{d}", "--no-such-flag"], "--no-such-flag"),
    (["margin", "{m}", "{d}", "--format", "xml"], "'xml'"),
    (["counterfactual", "{m}", "{d}", "--jobs", "0"], "--jobs"),
    (["explain", "{m}"], "DATA"),
    (["margin", "{m}", "{d}", "--time-limit", "-1"], "--time-limit"),
])
def test_usage_errors_are_one_line_and_exit_2(invaudit, samples, args, fragment):
    m, d = samples / "digits_logreg.joblib", samples / "digits_test.npz"
    r = invaudit(*[a.format(m=m, d=d) for a in args])
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"invaudit {args[0]}: error: ") and fragment in lines[0], r.err
    assert f"'invaudit {args[0]} -h'" in lines[0] and r.out == ""


# --- --time-limit: black boxes and typed rows ------------------------------------------------------

def _data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) * SCALE
    z = X / SCALE
    return X, (z[:, 0] + 0.5 * z[:, 1] ** 2 > 0.4).astype(int)


@pytest.fixture(scope="module")
def hard_vote():
    """A predict-only black box (hard vote of a linear model, a tree and naive Bayes)."""
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = VotingClassifier([("lr", LogisticRegression()), ("dt", DecisionTreeClassifier(max_depth=4, random_state=0)),
                                ("nb", GaussianNB())], voting="hard").fit(X, y)
    return est, X, y


def test_black_box_counterfactuals_stop_at_the_time_limit_with_verified_answers(hard_vote):
    est, X, y = hard_vote
    form = adapt(est)
    assert form.kind == "black-box"
    Xq = X[:4] + 0.01 * SCALE
    target = 1 - form.predict_index(Xq)
    pred_train = form.predict_index(X)
    for limits in ({"time_limit": 0.0}, {"run_time_limit": 0.0}):
        cut, extras = counterfactuals_nonlinear_with_extras(form, Xq, target=target, X_train=X, **limits)
        assert np.all(cut.status == "found") and not np.any(cut.exact)
        # every answer is still a point the estimator puts in the target class ...
        assert np.array_equal(est.predict(cut.x_cf), np.asarray(est.classes_)[target])
        # ... and no farther than the nearest training row the estimator puts there
        for i in range(len(Xq)):
            nearest = np.min(np.linalg.norm(X[pred_train == target[i]] - Xq[i], axis=1))
            assert cut.distance[i] <= nearest * (1 + 1e-12)
        assert all(m == "segment-bisection+local-search (the time limit stopped the search after 0 of 25 rounds)"
                   for m in cut.method), set(cut.method)
        assert all("time limit stopped the search" in b for b in extras["backing"])


def test_black_box_margins_stop_at_the_time_limit_with_verified_points(hard_vote):
    est, X, _ = hard_vote
    form = adapt(est)
    Xq = X[:6]
    full = margins(form, Xq, X_train=X)
    for limits in ({"time_limit": 0.0}, {"run_time_limit": 0.0}):
        cut = margins(form, Xq, X_train=X, **limits)
        assert np.all(np.isfinite(cut.margin)) and not np.any(cut.exact) and np.all(np.isnan(cut.lower_bound))
        flipped = est.predict(Xq + cut.perturbation) != est.predict(Xq)
        assert np.all(flipped)  # the reported perturbation changes the estimator's prediction
        assert all("stopped by the time limit after 8 of 40 bisection steps" in m for m in cut.method), set(cut.method)
        assert np.allclose(np.linalg.norm(cut.perturbation, axis=1), cut.margin)
    assert not any("time limit" in m for m in full.method)


def test_black_box_margins_are_near_the_exact_margin_and_agree_with_counterfactuals():
    """A logistic regression queried as a black box: the margin (boundary search + local search)
    is a verified upper bound within 1.1x of the exact linear margin (segments alone gave ~4,700x
    on breast cancer), and margin and counterfactual --target other answer alike."""
    from invaudit.models.base import BlackBoxForm

    rng = np.random.default_rng(3)
    scale = np.array([1e-3, 1.0, 1e3, 10.0])
    X = rng.normal(size=(150, 4)) * scale
    y = (X @ (1.0 / scale) + 0.3 * rng.normal(size=150) > 0).astype(int)
    est = LogisticRegression(C=10.0).fit(X, y)
    Xq = X[:5]
    exact = margins(adapt(est), Xq).margin
    box = BlackBoxForm(estimator=est, classes=est.classes_, n_features=4)
    upper = margins(box, Xq, X_train=X)
    assert np.all(est.predict(Xq + upper.perturbation) != est.predict(Xq))
    assert np.all(upper.margin >= exact * (1 - 1e-9)) and np.all(upper.margin <= 1.1 * exact), upper.margin / exact
    assert all("local search" in m for m in upper.method)
    cf, _ = counterfactuals_nonlinear_with_extras(box, Xq, target="other", X_train=X)
    assert np.all(np.abs(cf.distance - upper.margin) <= 0.1 * exact)


def test_time_limit_through_the_cli_for_a_black_box(invaudit, validate, hard_vote, tmp_path):
    est, X, y = hard_vote
    joblib.dump(est, tmp_path / "hard.joblib")
    np.save(tmp_path / "x.npy", X[:3])
    np.savez(tmp_path / "train.npz", X=X, y=y)
    for cmd in ("margin", "counterfactual"):
        r = invaudit(cmd, tmp_path / "hard.joblib", tmp_path / "x.npy", "--train", tmp_path / "train.npz",
                     "--time-limit", "0", "--format", "json")
        assert r.code == 0, r.err
        rep = validate(r.json())
        assert rep["params"]["time_limit"] == 0
        assert all("time limit" in x["method"] and x["exact"] is False for x in rep["results"]), rep["results"]


def test_typed_rows_take_time_limit_and_refuse_run_time_limit(invaudit, samples, validate):
    m, d = samples / "credit_logreg.joblib", samples / "credit_test.csv"
    common = ["--rows", "0-1", "--label-column", "approved", "--id-column", "customer"]
    r = invaudit("counterfactual", m, d, *common, "--time-limit", "5", "--format", "json")
    assert r.code == 0, r.err
    assert validate(r.json())["params"]["time_limit"] == 5
    for cmd in ("counterfactual", "margin"):
        r = invaudit(cmd, m, d, *common, "--run-time-limit", "5")
        assert r.code == 3 and r.out == ""
        assert len(r.err.strip().splitlines()) == 1 and "--run-time-limit" in r.err and "typed rows" in r.err


# --- --quiet and the shared flags -------------------------------------------------------------------

def test_quiet_silences_notes_and_progress_but_not_the_report(invaudit, samples, monkeypatch):
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS")
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.001")  # a plain progress line at once, were it on
    m, d = samples / "credit_logreg.joblib", samples / "credit_test.csv"
    args = ["counterfactual", m, d, "--rows", "0-2", "--label-column", "approved", "--id-column", "customer",
            "--format", "json"]
    loud = invaudit(*args)
    quiet = invaudit(*args, "--quiet")
    assert loud.code == quiet.code == 0
    assert "kept whole" in loud.err and quiet.err == ""
    a, b = loud.json(), quiet.json()
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b


ROW_COMMANDS = ("counterfactual", "margin", "explain", "influence", "mislabel")
SHARED = {"--jobs", "--scheduler", "--format", "--json", "--trust", "--sha256", "--label-column", "--id-column",
          "--labels", "--quiet"}
EVERYWHERE = {"--trust", "--format", "--json", "--quiet", "--schema"}


def _options(name):
    import typer

    from invaudit.cli.app import build_app

    command = typer.main.get_command(build_app([name])).commands[name]
    return {o for p in command.params for o in p.opts}


def test_the_row_commands_share_their_flags():
    """Every row command takes the same data, parallel, report and safety flags; every command
    takes the report and safety ones; --rows, --seed and --time-limit where they mean something."""
    opts = {name: _options(name) for name in (*ROW_COMMANDS, "info", "audit")}
    for name in ROW_COMMANDS:
        assert SHARED <= opts[name], (name, SHARED - opts[name])
    for name in opts:
        assert EVERYWHERE <= opts[name], (name, EVERYWHERE - opts[name])
    assert {n for n in ROW_COMMANDS if "--rows" in opts[n]} == {"counterfactual", "margin", "explain", "influence"}
    assert {n for n in ROW_COMMANDS if "--seed" in opts[n]} == {"counterfactual", "margin", "explain", "mislabel"}
    assert {n for n in ROW_COMMANDS if "--time-limit" in opts[n]} >= {"counterfactual", "margin"}


def test_schema_pins_version_1_everywhere_and_2_only_where_it_exists(invaudit, samples):
    m = samples / "digits_logreg.joblib"
    r = invaudit("info", m, "--schema", "1", "--format", "json")
    assert r.code == 0 and r.json()["schema"] == "invaudit.info/1"
    r = invaudit("explain", m, samples / "digits_test.npz", "--schema", "2")
    assert r.code == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1
    assert "schema 1 only" in r.err and "counterfactual and margin" in r.err
