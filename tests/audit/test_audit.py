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


def ridge(d):
    """A model whose influence check is not available (no loss invaudit models): RidgeClassifier
    on the breast-cancer rows, saved next to the suite."""
    import joblib
    import pandas as pd
    from sklearn.linear_model import RidgeClassifier

    train = pd.read_csv(d / "breast_cancer_train.csv")
    joblib.dump(RidgeClassifier().fit(train.drop(columns="target"), train["target"]), d / "ridge.joblib")
    return "ridge.joblib"


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


def test_unsupported_check_is_one_failed_check_with_the_reason(invaudit, suite_dir, validate):
    # Issue 17: a check the model cannot support fails with its reason; the suite goes on.
    body = (f"  - kind: influence\n    model: {ridge(suite_dir)}\n    max_share: 0.5\n"
            "  - name: after\n    kind: margin\n    min_margin: 0\n    rows: 5\n")
    r = invaudit("audit", write(suite_dir, body), "--format", "json")
    assert r.code == 1, r.err
    first, after = validate(r.json())["results"]
    assert first["passed"] is False and "LogisticRegression" in first["details"]["reason"]
    assert "linear form" in first["details"]["reason"] and after["passed"] is True


def test_init_prints_a_suite_that_loads(invaudit, suite_dir):
    r = invaudit("audit", "--init", suite_dir / "breast_cancer_logreg.joblib")
    assert r.code == 0
    path = suite_dir / "starter.yaml"
    path.write_text(r.out.replace("breast_cancer_logreg_train.csv", "breast_cancer_train.csv")
                    .replace("breast_cancer_logreg_test.csv", "breast_cancer_test.csv"))
    suite = load_suite(path)
    assert {c.kind for c in suite.checks} == set(REGISTRY)
    # the mislabel check names its method: min_score is a threshold on that method's scores
    ml = next(c for c in suite.checks if c.kind == "mislabel")
    assert ml.params["method"] == "combined" and ml.params["min_score"] == 2.3


def test_bundled_suite_passes(invaudit, samples, validate):
    r = invaudit("audit", samples / "audit.yaml", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert {x["kind"] for x in rep["results"]} == set(REGISTRY)
    assert all(x["passed"] for x in rep["results"])


# --- issue 17: trust and sha256 in suites, the Markdown summary ---------------------------------

def test_refused_model_error_names_the_suite_rule(invaudit, suite_dir, monkeypatch):
    from invaudit.errors import RefusedModelError
    from invaudit.io import model_file

    def refuse(path, *, trust=False, sha256=None, **kw):
        if not trust:
            raise RefusedModelError(path, [("evil", "thing")])
        return real(path, trust=False, sha256=sha256, **kw)

    real = model_file.load_model
    monkeypatch.setattr(model_file, "load_model", refuse)
    body = "  - kind: margin\n    min_margin: 0\n    rows: 5\n"
    r = invaudit("audit", write(suite_dir, body))
    assert r.code == 3 and "trust: true" in r.err and "--trust" in r.err and "Pass --trust" not in r.err
    assert invaudit("audit", write(suite_dir, body), "--trust").code == 0  # --trust applies to every model
    p = write(suite_dir, body)
    p.write_text("trust: true\n" + p.read_text())
    assert invaudit("audit", p).code == 0  # and so does the key next to the model
    # A check naming another model does not inherit the suite's trust.
    p.write_text(p.read_text() + "  - kind: margin\n    model: breast_cancer_tree.joblib\n    min_margin: 0\n")
    r = invaudit("audit", p)
    assert r.code == 3 and "checks[1]" in r.err and "breast_cancer_tree.joblib" in r.err


def test_sha256_pins_are_checked_and_validated(invaudit, suite_dir):
    from invaudit.io.model_file import file_sha256

    good = file_sha256(suite_dir / "breast_cancer_logreg.joblib")
    body = "  - kind: margin\n    min_margin: 0\n    rows: 5\n"
    p = write(suite_dir, body)
    p.write_text(f'sha256: "{good}"\n' + p.read_text())
    assert invaudit("audit", p).code == 0
    p.write_text(p.read_text().replace(good, "0" * 64))
    r = invaudit("audit", p)
    assert r.code == 3 and "pins sha256" in r.err and good in r.err
    p.write_text(p.read_text().replace("0" * 64, "abc"))
    r = invaudit("audit", p)
    assert r.code == 3 and "sha256: expected the model file's SHA-256" in r.err


def _cells(html: str) -> list:
    """The table of an HTML page as rows of cell texts."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Cells()
    parser.feed(html)
    return parser.rows


def test_markdown_summary_renders_value_threshold_and_why(invaudit, suite_dir, tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    body = ("  - name: easy_one\n    kind: margin\n    eps: 0.0\n    min_robust_accuracy: 0.5\n    rows: 10\n"
            "  - name: impossible|*x*\n    kind: margin\n    min_margin: 1000000\n    rows: 10\n"
            f"  - name: tree-influence\n    kind: influence\n    model: {ridge(suite_dir)}\n    max_share: 0.5\n")
    md = tmp_path / "r.md"
    r = invaudit("audit", write(suite_dir, body), "--markdown", md)
    assert r.code == 1, r.err
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md.read_text())
    rows = _cells(html)
    assert rows[0] == ["status", "check", "kind", "model", "value", "threshold", "why"]
    by = {row[1]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert set(by) == {"easy_one", "impossible|*x*", "tree-influence"}  # names survive as literal text
    easy, bad, tree = by["easy_one"], by["impossible|*x*"], by["tree-influence"]
    assert easy["status"].endswith("PASS") and easy["value"].startswith("robust accuracy")
    assert easy["threshold"] == "robust accuracy >= 0.5 at eps 0.0" and easy["why"] == ""
    assert bad["status"].endswith("FAIL") and bad["value"].startswith("min margin")
    assert bad["threshold"] == "min margin >= 1000000"
    assert bad["why"].startswith("row ") and "needs >= 1000000" in bad["why"]
    assert tree["status"].endswith("FAIL") and "not available" in tree["why"] and tree["model"] == "ridge.joblib"
    assert "<em>" not in html and "1 of 3" not in html and "2 of 3 checks failed" in html


# --- issue 14: hostile suites ---------------------------------------------------------------

def _corpus():
    """tests/io/attack_corpus.py, the script that builds the hostile files."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "io" / "attack_corpus.py"
    spec = importlib.util.spec_from_file_location("attack_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alias_bomb_is_refused_quickly_without_expanding(suite_dir):
    import time

    YAML_ALIAS_BOMB = _corpus().YAML_ALIAS_BOMB

    p = suite_dir / "bomb.yaml"
    p.write_text(YAML_ALIAS_BOMB.replace("m.joblib", "breast_cancer_logreg.joblib"))
    start = time.perf_counter()
    with pytest.raises(InputError, match="aliases expand to more than") as err:
        load_suite(p)
    assert time.perf_counter() - start < 2
    assert "lol" not in str(err.value) and len(str(err.value)) < 300


def test_small_aliases_still_work(suite_dir):
    p = suite_dir / "anchors.yaml"
    p.write_text(HEAD.replace("checks:\n", "") + "defaults: &d {kind: margin, min_margin: 0}\n"
                 "checks:\n  - *d\n  - *d\n".replace("defaults", "x-defaults"))
    with pytest.raises(InputError, match="x-defaults: unknown key"):
        load_suite(p)  # the aliases themselves were fine; the extra top-level key is not
    p.write_text(HEAD + "  - &d {kind: margin, min_margin: 0}\n  - *d\n")
    assert [c.kind for c in load_suite(p).checks] == ["margin", "margin"]


def test_python_tags_say_tags_are_not_allowed(suite_dir):
    YAML_PYTHON_TAG = _corpus().YAML_PYTHON_TAG

    p = suite_dir / "tag.yaml"
    p.write_text(YAML_PYTHON_TAG)
    with pytest.raises(InputError, match="tags are not allowed"):
        load_suite(p)


def test_a_fifo_suite_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_suite(fifo)


def test_error_messages_never_print_a_whole_value(suite_dir):
    p = suite_dir / "big.yaml"
    p.write_text(HEAD + "  - kind: [" + ", ".join(["x"] * 5000) + "]\n")
    with pytest.raises(InputError, match="unknown kind") as err:
        load_suite(p)
    assert len(str(err.value)) < 400
