"""A killed or timed-out audit still leaves its reports; time limits fail a check, not the suite."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVAUDIT = Path(sys.executable).parent / "invaudit"

SLOW_SUITE = """model: breast_cancer_logreg.joblib
test: breast_cancer_test.csv
label_column: target
checks:
  - name: quick
    kind: margin
    rows: 20
    min_margin: 0.0
""" + "".join(f"""  - name: slow-{i}
    kind: explain
    model: digits_mlp.joblib
    test: digits_test.npz
    rows: 300
    min_multiple: 0.0
""" for i in range(3))


@pytest.fixture
def suite_dir(tmp_path, samples):
    for name in ("breast_cancer_logreg.joblib", "breast_cancer_train.csv", "breast_cancer_test.csv",
                 "digits_mlp.joblib", "digits_test.npz"):
        shutil.copy(samples / name, tmp_path / name)
    return tmp_path


def _wait_for(proc, pattern: str, timeout: float) -> str:
    """Read the child's stderr until a line contains ``pattern``; return what was read."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            if pattern in line:
                return seen
    proc.kill()
    pytest.fail(f"never saw {pattern!r} on stderr; got:\n{seen}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_suite_leaves_valid_partial_reports(suite_dir, validate, sig):
    (suite_dir / "suite.yaml").write_text(SLOW_SUITE)
    env = {**os.environ, "INVAUDIT_PROGRESS_INTERVAL": "0.1", "NO_COLOR": "1"}
    env.pop("INVAUDIT_NO_PROGRESS", None)
    proc = subprocess.Popen([str(INVAUDIT), "audit", "suite.yaml", "--junit", "r.xml", "--json", "r.json",
                             "--markdown", "r.md"], cwd=suite_dir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(proc, "checks 1/4", timeout=60)  # the quick check is done; a slow one is running
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted by {sig.name}" in err

    rep = validate(json.loads((suite_dir / "r.json").read_text()))
    assert rep["summary"]["interrupted"] == sig.name and rep["summary"]["ok"] is False
    by = {r["name"]: r for r in rep["results"]}
    assert list(by) == ["quick", "slow-0", "slow-1", "slow-2"]  # every check is in the report
    assert by["quick"]["passed"] is True
    assert all(by[f"slow-{i}"]["passed"] is None for i in range(3))
    assert all("interrupted" in by[f"slow-{i}"]["details"]["reason"] for i in range(3))

    suite = ET.parse(suite_dir / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("skipped") == "3" and suite.get("failures") == "0"
    assert "not run" in (suite_dir / "r.md").read_text()


def test_check_time_limit_fails_that_check_and_the_suite_goes_on(invaudit, suite_dir, validate):
    # 1 ms: explaining 12 digits rows takes ~0.1 s once the model is loaded, so a limit the check
    # cannot meet on any machine
    (suite_dir / "suite.yaml").write_text(SLOW_SUITE.replace(
        "  - name: slow-0\n", "  - name: slow-0\n    time_limit: 0.001\n").replace("rows: 300", "rows: 12"))
    started = time.monotonic()
    r = invaudit("audit", suite_dir / "suite.yaml", "--format", "json")
    assert r.code == 1, r.err
    by = {x["name"]: x for x in validate(r.json())["results"]}
    assert by["quick"]["passed"] is True
    assert by["slow-0"]["passed"] is False and by["slow-0"]["details"]["reason"].startswith("time limit")
    assert by["slow-0"]["elapsed_s"] < 5
    assert by["slow-1"]["passed"] is True and by["slow-2"]["passed"] is True  # the suite went on
    assert time.monotonic() - started < 120


def test_suite_time_limit_bounds_the_whole_run(invaudit, suite_dir, validate):
    (suite_dir / "suite.yaml").write_text("time_limit: 0.5\n" + SLOW_SUITE)
    started = time.monotonic()
    r = invaudit("audit", suite_dir / "suite.yaml", "--format", "json")
    assert r.code == 1, r.err
    assert time.monotonic() - started < 30
    rep = validate(r.json())
    assert rep["params"]["time_limit"] == 0.5
    failed = [x for x in rep["results"] if x["passed"] is False]
    assert failed and all(x["details"]["reason"].startswith("time limit") for x in failed)
    assert {x["name"] for x in failed} >= {"slow-1", "slow-2"}


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "true"])
def test_time_limit_must_be_positive_seconds(invaudit, suite_dir, bad):
    (suite_dir / "suite.yaml").write_text(SLOW_SUITE.replace("    min_margin: 0.0\n",
                                                             f"    min_margin: 0.0\n    time_limit: {bad}\n", 1))
    r = invaudit("audit", suite_dir / "suite.yaml")
    assert r.code == 3 and "checks[0].time_limit: expected a positive number of seconds" in r.err
