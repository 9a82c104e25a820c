"""Malformed option values are usage errors (exit 2, one line naming the flag, nothing written), in
every command alike: --eps, an explicitly empty or malformed --rows (and influence's --test-rows and
--group), explain's --shape and --baseline. What depends on the data or the model (a row past the
end, a shape that does not fit the features) stays bad input (exit 3)."""

from __future__ import annotations

import pytest

LOGREG = "breast_cancer_logreg.joblib"


def _usage_error(r, flag) -> None:
    assert r.code == 2, (r.code, r.err)
    assert r.out == "" and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1 and f"'{flag}'" in r.err, r.err


def _args(command, samples):
    if command == "influence":
        return [samples / LOGREG, samples / "breast_cancer_train.csv", samples / "breast_cancer_test.csv"]
    return [samples / LOGREG, samples / "breast_cancer_test.csv"]


@pytest.mark.parametrize("value", ["x", "0.1,abc", "-1", "inf", "nan", "", ","])
def test_a_malformed_eps_is_a_usage_error(invaudit, samples, tmp_path, value):
    """--eps exited 3 (bad input) for every malformed list, and '' was taken as no radius at all."""
    report = tmp_path / "r.json"
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--eps", value, "--json", report)
    _usage_error(r, "--eps")
    assert not report.exists()


def test_a_good_eps_list_still_gives_robust_accuracy_at_each_radius(invaudit, samples):
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", "0-9", "--eps", " 0.02, 0.05,", "--format", "json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["params"]["eps"] == [0.02, 0.05]
    ra = rep["summary"]["robust_accuracy"]
    assert list(ra) == ["0.02", "0.05"]
    for eps, got in zip((0.02, 0.05), ra.values()):  # recounted from the rows' own margins and labels
        want = sum(x["predicted_class"] == x["label"] and x["margin"] > eps for x in rep["results"]) / 10
        assert 0 < want < 1 and got == pytest.approx(want)


@pytest.mark.parametrize("command", ["counterfactual", "margin", "explain", "influence"])
@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_an_explicitly_empty_row_selection_is_a_usage_error(invaudit, samples, command, value):
    """--rows '' selected every row (and ',' was bad input, exit 3): an empty selection given on purpose
    is a mistake, not 'all' (leave the flag out for that)."""
    r = invaudit(command, *_args(command, samples), "--label-column", "target", "--rows", value)
    _usage_error(r, "--rows")
    assert "selects no rows" in r.err


@pytest.mark.parametrize("value, says", [("abc", "'abc' is not a row number"), ("3-1", "ends before it starts"),
                                         ("-2", "start at 0"), ("0,1-x", "'1-x' is not a row number")])
@pytest.mark.parametrize("flag", ["--rows", "--test-rows"])
def test_malformed_row_specs_are_usage_errors_naming_the_flag(invaudit, samples, value, says, flag):
    command = "influence" if flag == "--test-rows" else "margin"
    r = invaudit(command, *_args(command, samples), "--label-column", "target", flag, value)
    _usage_error(r, flag)
    assert says in r.err


def test_rows_past_the_end_stay_bad_input_and_all_still_means_every_row(invaudit, samples):
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", "0,500")
    assert r.code == 3 and "row 500 is out of range" in r.err
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", "all", "--format", "json")
    assert r.code == 0 and r.json()["summary"]["robust_accuracy"] is not None
    assert len(r.json()["results"]) == 143


@pytest.mark.parametrize("value, says", [("mean_radius=big", "'big' is not a number"), ("=3", "name the column"),
                                         ("", "selects no rows"), ("4-2", "ends before it starts")])
def test_a_malformed_group_is_a_usage_error(invaudit, samples, value, says):
    r = invaudit("influence", *_args("influence", samples), "--label-column", "target", "--group", value)
    _usage_error(r, "--group")
    assert says in r.err


@pytest.mark.parametrize("flag, value, says", [("--shape", "5x", "expected HxW"), ("--shape", "0x30", "at least 1"),
                                               ("--shape", "5x6x1", "expected HxW"),
                                               ("--baseline", "abc", "expected zero, mean"),
                                               ("--baseline", "inf", "finite")])
def test_malformed_explain_shape_and_baseline_are_usage_errors(invaudit, samples, flag, value, says):
    """They exited 3 after the model and data were loaded; their syntax needs neither."""
    r = invaudit("explain", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 flag, value)
    _usage_error(r, flag)
    assert says in r.err


def test_shape_and_baseline_that_depend_on_the_model_stay_bad_input(invaudit, samples):
    common = [samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target", "--rows", "0"]
    r = invaudit("explain", *common, "--shape", "6x6")
    assert r.code == 3 and "36 cells" in r.err and "30 features" in r.err
    r = invaudit("explain", *common, "--baseline", "contrast")
    assert r.code == 3 and "typed rows" in r.err and len(r.err.strip().splitlines()) == 1
    r = invaudit("explain", *common, "--shape", "5x6", "--baseline", "-1.5", "--format", "json")
    assert r.code == 0, r.err
    assert r.json()["params"]["baseline"] == [-1.5] * 30 and r.json()["params"]["shape"] == [5, 6]


@pytest.mark.parametrize("command, args, says", [
    ("counterfactual", ["data.csv", "--from", "zeros"], "not both"),
    ("counterfactual", ["--from", "mean"], "--from mean needs --train"),
    ("counterfactual", [], "name a DATA file"),
    ("explain", ["data.csv", "--png", "pngs"], "needs --shape"),
])
def test_flag_combinations_are_refused_before_the_model_is_read(invaudit, tmp_path, command, args, says):
    """They were checked after loading the model (seconds for a large one): a model file that does not
    exist shows the order, the flags' error comes first."""
    args = [tmp_path / a if a in ("data.csv", "pngs") else a for a in args]
    r = invaudit(command, tmp_path / "missing.joblib", *args)
    assert r.code == 3 and says in r.err and "missing.joblib" not in r.err, r.err
    assert not (tmp_path / "pngs").exists()


def _readme_exit_codes() -> dict:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return {r[1].strip(): r[2].strip() for r in rows}


def test_the_readme_exit_code_table_says_what_an_unavailable_command_exits_with(invaudit, samples, tmp_path):
    """The table put 'the feature is not available for this model' under 4; such a refusal exits 3."""
    import joblib
    import pandas as pd
    from sklearn.linear_model import RidgeClassifier

    train = pd.read_csv(samples / "breast_cancer_train.csv")
    joblib.dump(RidgeClassifier().fit(train.drop(columns="target"), train["target"]), tmp_path / "ridge.joblib")
    r = invaudit("influence", tmp_path / "ridge.joblib", samples / "breast_cancer_train.csv",
                 samples / "breast_cancer_test.csv", "--label-column", "target", "--rows", "0")
    assert "influence is not available" in r.err
    codes = _readme_exit_codes()
    assert "not available" in codes[str(r.code)] and "not available" not in codes["4"]
    assert set(codes) >= {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize("command", ["margin", "explain", "counterfactual", "influence"])
def test_a_huge_row_range_is_refused_without_being_expanded(invaudit, samples, command):
    """parse_rows lists every row of a range before it checks the end: `--rows 0-20000000` on 143 rows
    took ~1 GB (a stray digit more, tens of GB). Refused now by the same message, in a few MB."""
    import tracemalloc

    tracemalloc.start()
    try:
        r = invaudit(command, *_args(command, samples), "--label-column", "target", "--rows", "0-20000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.code == 3 and "--rows: row 143 is out of range (the data has 143 rows, 0-142)" in r.err, r.err
    assert peak < 150e6, peak


@pytest.mark.parametrize("spec, first", [("5,150,144", 150), ("0,100-200", 143), ("3-1000,142", 143)])
def test_the_row_named_out_of_range_is_the_first_one_as_before(invaudit, samples, spec, first):
    from invaudit.errors import InputError
    from invaudit.io import parse_rows

    with pytest.raises(InputError) as ref:
        parse_rows(spec, 143)
    r = invaudit("margin", samples / LOGREG, samples / "breast_cancer_test.csv", "--label-column", "target",
                 "--rows", spec)
    assert r.code == 3 and f"row {first} is out of range" in r.err and str(ref.value) in r.err


@pytest.mark.parametrize("command", ["counterfactual", "margin", "explain", "influence"])
def test_a_mistyped_id_column_offers_the_near_name_before_the_model_loads(invaudit, samples, tmp_path, command):
    """It said only "has no column 'custmer' (--id-column)", after loading the model; as --label-column
    now: the nearest name, and the model file is not even read (a missing one shows the order)."""
    files = ([samples / "credit_train.csv"] if command == "influence" else []) + [samples / "credit_test.csv"]
    r = invaudit(command, tmp_path / "missing.joblib", *files, "--label-column", "approved", "--id-column", "custmer")
    assert r.code == 3 and len(r.err.strip().splitlines()) == 1
    assert "--id-column 'custmer': " in r.err and "did you mean 'customer'?" in r.err and "missing" not in r.err
