"""The suite behaves as the commands do: a ``label_column`` (or ``id_column``) no file of its entry
has is refused before any check runs, naming the entry and the nearest column (as
``--label-column``); an explain check's time is the search's run-wide limit (as ``invaudit explain
--run-time-limit``), so the check is judged on what was found instead of failing for time."""

from __future__ import annotations

import csv

import pytest

from invaudit.audit import load_suite
from invaudit.errors import InputError


def _suite(tmp_path, samples, head: str, checks: str):
    p = tmp_path / "suite.yaml"
    p.write_text(f"model: {samples / 'breast_cancer_logreg.joblib'}\n"
                 f"train: {samples / 'breast_cancer_train.csv'}\n"
                 f"test: {samples / 'breast_cancer_test.csv'}\n" + head + "checks:\n" + checks)
    return p


MARGIN = "  - kind: margin\n    rows: 5\n    min_margin: 0.0\n"  # needs no labels: ran with the labels dropped


def _refused(r, tmp_path, *reports):
    assert r.code == 3, (r.code, r.err)
    assert r.out == "" and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not any((tmp_path / f).exists() for f in reports)


def test_a_mistyped_top_level_label_column_is_refused_before_any_check(invaudit, samples, tmp_path):
    """It used to run the margin check without labels (the label column dropped, exit 0) and only fail
    at a check that needs labels, naming no column."""
    suite = _suite(tmp_path, samples, "label_column: tagret\n", MARGIN)
    r = invaudit("audit", suite, "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")
    _refused(r, tmp_path, "r.json", "r.xml")
    assert f"{suite}: label_column: 'tagret'" in r.err and "did you mean 'target'?" in r.err
    assert "breast_cancer_train.csv" in r.err and "breast_cancer_test.csv" in r.err


def test_a_check_s_own_label_column_is_checked_against_its_own_files(invaudit, samples, tmp_path):
    checks = MARGIN + (f"  - kind: mislabel\n    model: {samples / 'digits_logreg.joblib'}\n"
                       f"    train: {samples / 'digits_train.csv'}\n    test: {samples / 'digits_test.csv'}\n"
                       "    label_column: labl\n    max_suspects: 25\n    min_score: 6.0\n")
    suite = _suite(tmp_path, samples, "label_column: target\n", checks)
    r = invaudit("audit", suite, "--json", tmp_path / "r.json")
    _refused(r, tmp_path, "r.json")
    assert "checks[1].label_column: 'labl'" in r.err and "did you mean" not in r.err
    assert "its columns: pixel_0_0" in r.err  # no near name: the files' columns


def test_a_mistyped_id_column_is_refused_too(samples, tmp_path):
    suite = _suite(tmp_path, samples, "label_column: target\nid_column: patient\n", MARGIN)
    with pytest.raises(InputError, match=r"id_column: 'patient': neither .* has a column of that name"):
        load_suite(suite)


def _without(src, dst, column):
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))[:8]
    j = rows[0].index(column)
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows([r[:j] + r[j + 1:] for r in rows])
    return dst


def test_a_check_that_only_inherits_the_label_column_may_read_files_without_it(invaudit, samples, tmp_path):
    """Labels stay optional where no check needs them: a check naming its own file without the
    suite's label column runs (as --label-column with DATA lacking it and TRAIN having it)."""
    rows = _without(samples / "breast_cancer_test.csv", tmp_path / "rows.csv", "target")
    suite = _suite(tmp_path, samples, "label_column: target\n",
                   MARGIN + f"  - kind: margin\n    name: unlabelled\n    test: {rows}\n    train: {rows}\n"
                            "    min_margin: 0.0\n")
    r = invaudit("audit", suite, "--format", "json")
    assert r.code == 0, r.err
    assert [x["details"]["rows"] for x in r.json()["results"]] == [5, 7]
    # the same file named with the check's own label_column is a typo: refused
    suite.write_text(suite.read_text() + "    label_column: target\n")
    r = invaudit("audit", suite)
    _refused(r, tmp_path)
    assert "checks[1].label_column: 'target'" in r.err


def test_a_correct_suite_still_loads(samples):
    suite = load_suite(samples / "audit.yaml")
    assert suite.source.label_column == "target" and len(suite.checks) == 6


EXPLAIN = "  - kind: explain\n    name: {name}\n    shape: 8x8\n    rows: {rows}\n    min_multiple: {min}\n"


def test_an_explain_check_s_time_limit_bounds_the_search_which_keeps_what_it_found(invaudit, validate, tmp_path,
                                                                                    samples):
    """The check's time_limit is the search's run-wide limit: past it the rows get the quick verified
    search and the check is judged on what was found (verified explanations only). Before, the
    search ignored the limit, ran every row to the end and was then failed as 'time limit'."""
    suite = tmp_path / "explain.yaml"
    suite.write_text(
        f"model: {samples / 'digits_logreg.joblib'}\ntest: {samples / 'digits_test.npz'}\nchecks:\n"
        + EXPLAIN.format(name="warm", rows=1, min=0.0)           # loads the model: not on the clock below
        + EXPLAIN.format(name="full", rows=32, min=0.0)
        + EXPLAIN.format(name="limited", rows=32, min=0.0) + "    time_limit: 0.001\n"
        + EXPLAIN.format(name="limited-gate", rows=32, min=0.9) + "    time_limit: 0.001\n")
    r = invaudit("audit", suite, "--format", "json")
    res = {x["name"]: x for x in validate(r.json())["results"]}
    assert res["full"]["passed"] is True and "time_limited" not in res["full"]["details"]
    limited = res["limited"]
    assert limited["passed"] is True, limited["details"]
    assert limited["details"]["rows"] == 32 and limited["details"]["time_limited"] >= 1
    assert limited["value"] == pytest.approx(limited["details"]["rows_with_multiple"] / 32)
    gate = res["limited-gate"]  # a threshold the cut search does not reach: failed, and the reason says why
    assert r.code == 1 and gate["passed"] is False
    assert "the time limit cut the search short" in gate["details"]["reason"]
    assert not gate["details"]["reason"].startswith("time limit:")


@pytest.mark.parametrize("value, says", [(".nan", "expected a finite number, got nan"),
                                         (".inf", "expected a finite number, got inf"),
                                         ("-1", "expected a number at least 0, got -1")])
def test_a_threshold_or_radius_that_is_not_a_finite_number_is_refused(samples, tmp_path, value, says):
    """YAML's .nan passed every range test (nan < 0 is false) and ran the check with it; ranges said
    'outside [0, None]'."""
    suite = _suite(tmp_path, samples, "label_column: target\n",
                   f"  - kind: margin\n    eps: {value}\n    min_robust_accuracy: 0.5\n")
    with pytest.raises(InputError) as err:
        load_suite(suite)
    assert f"checks[0].eps: {says}" in str(err.value) and "None" not in str(err.value)


def test_init_refuses_what_it_would_ignore(invaudit, samples, tmp_path):
    """`audit --init MODEL audit.yaml` printed the suite and wrote no audit.yaml (nor --json)."""
    target = tmp_path / "audit.yaml"
    r = invaudit("audit", "--init", samples / "breast_cancer_logreg.joblib", target, "--json", tmp_path / "r.json")
    assert r.code == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1
    assert "SUITE and --json would be ignored" in r.err and "> audit.yaml" in r.err
    assert not target.exists() and not (tmp_path / "r.json").exists()


def test_audit_without_a_suite_is_a_usage_error(invaudit):
    r = invaudit("audit")
    assert r.code == 2 and "Missing argument 'SUITE'" in r.err and "--init MODEL" in r.err


@pytest.mark.parametrize("line, says", [
    ("shape: 5x", "checks[0].shape: expected HxW"),
    ("shape: [5.5, 6]", "checks[0].shape: expected HxW"),
    ("shape: 6x6", "checks[0].shape (explain): 6x6 has 36 cells but the model takes 30 features"),
    ("baseline: abc", "checks[0].baseline: expected zero, mean"),
    ("baseline: .nan", "checks[0].baseline: expected a finite number"),
    ("baseline: mean", "checks[0].baseline (explain): mean is the mean training row, so it needs a train file"),
])
def test_explain_check_errors_name_the_suite_key_not_a_flag(invaudit, samples, tmp_path, line, says):
    """They named the command's --shape / --baseline, and a key error repeated 'checks[0]' twice."""
    p = tmp_path / "s.yaml"
    p.write_text(f"model: {samples / 'breast_cancer_logreg.joblib'}\ntest: {samples / 'breast_cancer_test.csv'}\n"
                 f"label_column: target\nchecks:\n  - kind: explain\n    rows: 2\n    {line}\n    min_multiple: 0.5\n")
    r = invaudit("audit", p)
    assert r.code == 3 and says in r.err and "--" not in r.err, r.err
    assert r.err.count("checks[0]") == 1


def test_an_explain_check_takes_shape_as_a_list_and_a_number_baseline(invaudit, samples, tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(f"model: {samples / 'digits_logreg.joblib'}\ntest: {samples / 'digits_test.npz'}\nchecks:\n"
                 "  - kind: explain\n    rows: 2\n    shape: [8, 8]\n    baseline: 0\n    min_multiple: 0.0\n")
    r = invaudit("audit", p, "--format", "json")
    assert r.code == 0, r.err
    assert r.json()["results"][0]["details"]["rows"] == 2


@pytest.mark.parametrize("check, says", [
    ("kind: counterfactual\n    confidence: 1\n    min_feasible: 0.5",
     "checks[0].confidence: expected a probability strictly between 0 and 1, got 1"),
    ("kind: explain\n    confidence: 0\n    min_multiple: 0.5",
     "checks[0].confidence: expected a probability above 0 and at most 1, got 0"),
    ("kind: margin\n    seed: -1\n    min_margin: 0", "checks[0].seed: expected an integer at least 0, got -1"),
])
def test_suite_values_the_commands_refuse_are_refused_at_load(samples, tmp_path, check, says):
    """As --confidence and --seed: they loaded, then the solver refused them mid-run naming a flag
    (confidence), or ran with them (seed -1)."""
    suite = _suite(tmp_path, samples, "label_column: target\n", f"  - {check}\n")
    with pytest.raises(InputError) as err:
        load_suite(suite)
    assert says in str(err.value)


def test_a_solver_message_that_is_not_key_first_keeps_the_check_named(invaudit, samples, tmp_path):
    suite = _suite(tmp_path, samples, "label_column: target\n",
                   "  - kind: margin\n    scale: std\n    min_margin: 0\n")
    suite.write_text(suite.read_text().replace(f"train: {samples / 'breast_cancer_train.csv'}\n", ""))
    r = invaudit("audit", suite)
    assert r.code == 3 and "checks[0] (margin): checks[0].scale needs a train file (train: in the suite)" in r.err
