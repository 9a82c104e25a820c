import shutil
import xml.etree.ElementTree as ET

import pytest

from invaudit.audit import REGISTRY, load_suite
from invaudit.errors import InputError


@pytest.fixture
def suite_dir(tmp_path, samples):
    for name in ("breast_cancer_logreg.joblib", "breast_cancer_tree.joblib", "breast_cancer_train.csv",
                 "breast_cancer_test.csv"):
        shutil.copy(samples / name, tmp_path / name)
    return tmp_path


HEAD = """model: breast_cancer_logreg.joblib
train: breast_cancer_train.csv
test: breast_cancer_test.csv
label_column: target
checks:
"""


def write(d, body):
    p = d / "suite.yaml"
    p.write_text(HEAD + body)
    return p


def test_every_kind_is_registered():
    assert set(REGISTRY) == {"margin", "counterfactual", "influence", "mislabel", "explain"}


@pytest.mark.parametrize("body, where", [
    ("  - kind: nope\n", "checks[0].kind: unknown kind 'nope'"),
    ("  - kind: margin\n    eps: high\n    min_robust_accuracy: 0.5\n", "checks[0].eps: expected a number"),
    ("  - kind: margin\n    min_margin: 0\n    colour: red\n", "checks[0].colour: unknown parameter"),
    ("  - kind: margin\n    min_margin: 0\n  - kind: influence\n", "checks[1].max_share: required"),
    ("  - kind: margin\n    min_margin: 0\n    model: missing.joblib\n", "checks[0].model: file"),
    ("  - kind: margin\n    norm: l3\n    min_margin: 0\n", "checks[0].norm: expected one of"),
    ("  - kind: margin\n", "checks[0]: give min_robust_accuracy"),
])
def test_bad_suite_names_the_yaml_path(suite_dir, body, where):
    with pytest.raises(InputError) as err:
        load_suite(write(suite_dir, body))
    assert where in str(err.value)


def test_bad_suite_is_exit_3_one_line(invaudit, suite_dir):
    r = invaudit("audit", write(suite_dir, "  - kind: margin\n    eps: [1]\n    min_robust_accuracy: 0.5\n"))
    assert r.code == 3 and "checks[0].eps" in r.err and len(r.err.strip().splitlines()) == 1


def test_pass_fail_exit_codes_and_outputs(invaudit, suite_dir, tmp_path, monkeypatch, validate):
    summary_file = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_file))
    # An exact margin check: robust accuracy at eps 0 is the plain accuracy; the impossible
    # threshold 1.01 cannot be set (validated), so fail with a margin no row can have.
    body = ("  - name: easy\n    kind: margin\n    scale: std\n    eps: 0.0\n    min_robust_accuracy: 0.5\n"
            "  - name: impossible\n    kind: margin\n    min_margin: 1000000\n")
    junit, md = tmp_path / "r.xml", tmp_path / "r.md"
    r = invaudit("audit", write(suite_dir, body), "--junit", junit, "--markdown", md, "--format", "json")
    assert r.code == 1, r.err
    rep = validate(r.json())
    by = {x["name"]: x for x in rep["results"]}
    assert by["easy"]["passed"] is True and by["impossible"]["passed"] is False
    cases = ET.parse(junit).getroot().find("testsuite")
    assert cases.get("failures") == "1" and cases.get("tests") == "2"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["impossible"]
    assert "impossible" in md.read_text() and "FAIL" in md.read_text()
    assert "impossible" in summary_file.read_text()
    r = invaudit("audit", write(suite_dir, body.split("  - name: impossible")[0]))
    assert r.code == 0, r.err


def test_unsupported_analysis_for_a_model_is_bad_input(invaudit, suite_dir):
    body = "  - kind: influence\n    model: breast_cancer_tree.joblib\n    max_share: 0.5\n"
    r = invaudit("audit", write(suite_dir, body))
    assert r.code == 3 and "checks[0]" in r.err and "LogisticRegression" in r.err


def test_init_prints_a_suite_that_loads(invaudit, suite_dir):
    r = invaudit("audit", "--init", suite_dir / "breast_cancer_logreg.joblib")
    assert r.code == 0
    path = suite_dir / "starter.yaml"
    path.write_text(r.out.replace("breast_cancer_logreg_train.csv", "breast_cancer_train.csv")
                    .replace("breast_cancer_logreg_test.csv", "breast_cancer_test.csv"))
    suite = load_suite(path)
    assert {c.kind for c in suite.checks} == set(REGISTRY)


def test_bundled_suite_passes(invaudit, samples, validate):
    r = invaudit("audit", samples / "audit.yaml", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert {x["kind"] for x in rep["results"]} == set(REGISTRY)
    assert all(x["passed"] for x in rep["results"])
