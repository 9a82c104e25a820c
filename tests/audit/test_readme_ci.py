"""The README's CI jobs, run locally: every `run:` / `script:` shell step of the GitHub Actions and
GitLab CI examples, in a copy of the layout they assume, against the sample models."""

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the venv running the tests (has the invaudit script)


def _ci_blocks() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    github = [b for b in blocks if isinstance(b, dict) and "jobs" in b]
    gitlab = [b for b in blocks if isinstance(b, dict) and any(isinstance(j, dict) and "script" in j
                                                              for j in b.values())]
    assert len(github) == 1 and len(gitlab) == 1, "the README should hold one GitHub and one GitLab job"
    return {"github": github[0], "gitlab": gitlab[0]}


def _github_steps(doc) -> list:
    """The shell steps of every job, skipping the steps a warm cache skips (the venv is cached)."""
    steps = []
    for job in doc["jobs"].values():
        uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
        assert {"actions/cache", "actions/upload-artifact"} <= set(uses)
        for s in job["steps"]:
            if "run" in s and "cache-hit != 'true'" not in str(s.get("if", "")):
                steps.append(s["run"])
    return steps


def _gitlab_steps(doc) -> list:
    steps = []
    for job in doc.values():
        if not isinstance(job, dict) or "script" not in job:
            continue
        assert ".venv/" in job["cache"]["paths"] and job["artifacts"]["when"] == "always"
        assert job["artifacts"]["reports"]["junit"] in job["artifacts"]["paths"]
        steps += list(job.get("before_script", [])) + list(job["script"])
    return steps


@pytest.mark.parametrize("system", ["github", "gitlab"])
def test_readme_ci_job_runs_locally(tmp_path, samples, system):
    doc = _ci_blocks()[system]
    steps = _github_steps(doc) if system == "github" else _gitlab_steps(doc)
    assert any("invaudit audit" in s for s in steps)
    # The layout the jobs assume: the suite at models/, a warm cache at .venv (this venv).
    shutil.copytree(samples, tmp_path / "models", ignore=shutil.ignore_patterns("*.py", "*.sh", "__pycache__"))
    (tmp_path / ".venv").symlink_to(VENV, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVAUDIT_")}
    summary = tmp_path / "step_summary.md"
    if system == "github":
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    for step in steps:
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"step failed ({r.returncode}):\n{step}\n{r.stderr[-2000:]}"
    rep = json.loads((tmp_path / "invaudit.json").read_text())
    assert rep["summary"]["ok"] is True
    assert ET.parse(tmp_path / "invaudit.xml").getroot().find("testsuite").get("failures") == "0"
    assert (tmp_path / "invaudit.md").read_text().startswith("### audit")
    if system == "github":
        assert "| status | check |" in summary.read_text()
