"""Flags that mean the same everywhere: a mistyped --label-column is refused by every command that
takes it, and a bad --rows names the flag the user typed."""

from __future__ import annotations

import csv

import pytest

LOGREG = "breast_cancer_logreg.joblib"


def _one_line_bad_input(r) -> None:
    assert r.code == 3, r.err
    assert r.out == ""
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["counterfactual", "margin", "explain"])
def test_a_mistyped_label_column_is_refused_and_the_near_name_offered(invaudit, samples, tmp_path, command):
    report = tmp_path / "r.json"
    r = invaudit(command, samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "tagret",
                 "--rows", "0", "--json", report)
    _one_line_bad_input(r)
    assert "--label-column 'tagret'" in r.err and "'target'" in r.err
    assert not report.exists()
    # a name near no column lists the file's columns instead
    r = invaudit(command, samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "zzz", "--rows", "0")
    _one_line_bad_input(r)
    assert "its columns: mean_radius" in r.err


@pytest.mark.parametrize("command", ["influence", "mislabel"])
def test_commands_that_need_labels_refuse_a_mistyped_label_column(invaudit, samples, command):
    files = [samples / "breast_cancer_train.csv"] + ([samples / "breast_cancer_test.csv"] if command == "influence" else [])
    r = invaudit(command, samples / LOGREG, *files, "--label-column", "tagret")
    _one_line_bad_input(r)
    assert "tagret" in r.err


def _without_labels(src, dst):
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    j = rows[0].index("target")
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows([row[:j] + row[j + 1:] for row in rows[:6]])
    return dst


def test_labels_stay_optional_in_data_when_train_has_the_named_column(invaudit, samples, tmp_path):
    """DATA without the label column, TRAIN with it: accepted as before (DATA rows have no labels)."""
    data = _without_labels(samples / "breast_cancer_test.csv", tmp_path / "rows.csv")
    r = invaudit("margin", samples / LOGREG, data, "--label-column", "target", "--train",
                 samples / "breast_cancer_train.csv", "--format", "json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["data"]["n_rows"] == 5 and all("label" not in x or x["label"] is None for x in rep["results"])
    # the same DATA alone with the named column nowhere: refused
    r = invaudit("margin", samples / LOGREG, data, "--label-column", "target")
    _one_line_bad_input(r)


def test_without_a_named_label_column_an_extra_column_is_only_a_warning(invaudit, samples):
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--rows", "0-1", "--format", "json")
    assert r.code == 0, r.err
    assert "left out: target" in r.err and "--label-column" in r.err


@pytest.mark.parametrize("flag", ["--rows", "--test-rows"])
def test_influence_row_errors_name_the_flag_typed(invaudit, samples, flag):
    r = invaudit("influence", samples / LOGREG, samples / "breast_cancer_train.csv", samples / "breast_cancer_test.csv",
                 "--label-column", "target", flag, "9999")
    _one_line_bad_input(r)
    assert r.err.startswith(f"invaudit: error: {flag}: row 9999 is out of range")
    other = "--test-rows" if flag == "--rows" else "--rows"
    assert other not in r.err


def test_influence_rows_given_twice_is_a_usage_error(invaudit, samples):
    r = invaudit("influence", samples / LOGREG, samples / "breast_cancer_train.csv", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--rows", "0", "--test-rows", "1")
    assert r.code == 2 and "--rows and --test-rows" in r.err and len(r.err.strip().splitlines()) == 1


def test_influence_test_rows_alias_still_selects_rows(invaudit, samples):
    r = invaudit("influence", samples / LOGREG, samples / "breast_cancer_train.csv", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--test-rows", "2,4", "--top", "1", "--format", "json")
    assert r.code == 0, r.err
    rep = r.json()
    assert [x["test_row"] for x in rep["results"]] == [2, 4] and rep["params"]["test_rows"] == "2,4"


# --- values out of range: one usage line, exit 2, in every command alike ---------------------------

def _usage_error(r, flag) -> None:
    assert r.code == 2, r.err
    assert r.out == "" and len(r.err.strip().splitlines()) == 1 and flag in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("command", ["counterfactual", "margin", "explain", "mislabel"])
def test_a_negative_seed_is_a_usage_error_everywhere(invaudit, samples, command):
    """explain refused --seed -1 after loading the model (exit 3); the others ran with it."""
    data = "breast_cancer_train.csv" if command == "mislabel" else "breast_cancer_test.csv"
    r = invaudit(command, samples / LOGREG, samples / data, "--label-column", "target", "--seed", "-1")
    _usage_error(r, "--seed")


@pytest.mark.parametrize("command, value", [("counterfactual", "0"), ("counterfactual", "1"),
                                            ("counterfactual", "1.5"), ("explain", "0"), ("explain", "-0.5")])
def test_a_confidence_the_solver_cannot_take_is_a_usage_error(invaudit, samples, command, value):
    """counterfactual needs 0 < P < 1 and explain 0 < P <= 1: the option said [0, 1], and the solver then
    refused the ends with exit 3 and a message naming no flag."""
    r = invaudit(command, samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", "0", "--confidence", value)
    _usage_error(r, "--confidence")


def test_explain_takes_confidence_one(invaudit, samples):
    r = invaudit("explain", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", "0", "--confidence", "1", "--format", "json")
    assert r.code == 0, r.err
    assert r.json()["params"]["confidence"] == 1.0


@pytest.mark.parametrize("top", ["0", "x"])
def test_mislabel_top_out_of_range_is_a_usage_error_as_for_influence(invaudit, samples, top):
    r = invaudit("mislabel", samples / LOGREG, samples / "breast_cancer_train.csv", "--label-column", "target",
                 "--top", top)
    _usage_error(r, "--top")
    r = invaudit("influence", samples / LOGREG, samples / "breast_cancer_train.csv", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--top", "0")
    _usage_error(r, "--top")


def test_mislabel_unknown_method_names_the_flag(invaudit, samples):
    r = invaudit("mislabel", samples / LOGREG, samples / "breast_cancer_train.csv", "--label-column", "target",
                 "--method", "self_influence")
    _one_line_bad_input(r)
    assert r.err.startswith("invaudit: error: --method 'self_influence': choose auto or one of") and "self-influence" in r.err


def test_influence_estimate_the_model_has_not_names_the_flag_and_the_choices(invaudit, samples):
    r = invaudit("influence", samples / "digits_logreg.joblib", samples / "digits_train.npz", samples / "digits_test.npz",
                 "--rows", "0", "--estimate", "exact-loo")
    _one_line_bad_input(r)
    assert r.err.startswith("invaudit: error: --estimate 'exact-loo': for this model choose first-order, "
                            "leverage-corrected or auto")


def test_the_left_out_column_hint_names_only_flags_not_given(invaudit, samples, tmp_path):
    with open(samples / "breast_cancer_test.csv", newline="") as fh:
        rows = list(csv.reader(fh))[:4]
    data = tmp_path / "noted.csv"
    with open(data, "w", newline="") as fh:
        csv.writer(fh).writerows([["note"] + rows[0]] + [[f"n{i}"] + row for i, row in enumerate(rows[1:])])
    r = invaudit("margin", samples / LOGREG, data, "--label-column", "target", "--format", "json")
    assert r.code == 0, r.err
    assert "left out: note (pass --id-column if one names the rows)" in r.err
    assert "pass --label-column" not in r.err


def test_a_mistyped_command_reads_as_one_sentence_with_the_suggestion(invaudit):
    r = invaudit("explian")
    assert r.code == 2
    assert r.err.strip() == ("invaudit: error: No such command 'explian'. Did you mean 'explain'? "
                             "See 'invaudit -h'.")
