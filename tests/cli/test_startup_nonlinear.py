"""Networks and forests through the commands without scikit-learn (issue 16).

``margin``, ``explain`` and ``counterfactual`` on an MLP and ``counterfactual`` on a random forest run in one fresh
interpreter that never imports scikit-learn (the light load, invaudit.models._light_nonlinear:
forms from the saved state; predictions, probabilities and tree routing replayed exactly as
scikit-learn computes them), and their reports are byte for byte the ones the full load writes
in process (the real estimator adapted; scikit-learn answering), apart from the elapsed time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run each argv through ``main`` in one fresh interpreter; print the exit codes, then the modules it
# imported, as JSON on the last line of stderr.
_CHILD = r"""
import json, sys
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        from invaudit.cli.app import main
        main(argv)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
sys.stderr.write("\n" + json.dumps({"codes": codes, "modules": sorted(sys.modules)}) + "\n")
"""


def _commands(samples, folder):
    mlp, digits = samples / "digits_mlp.joblib", samples / "digits_test.npz"
    return [
        ["margin", mlp, digits, "--rows", "0-1", "--format", "json", "--json", folder / "margin.json"],
        ["explain", mlp, digits, "--rows", "0", "--confidence", "0.6", "--format", "json",
         "--json", folder / "explain.json"],
        ["counterfactual", mlp, digits, "--rows", "0", "--format", "json", "--json", folder / "cf-mlp.json"],
        # a generous time limit: every row is solved to the end in both runs, whatever the load
        ["counterfactual", samples / "wine_forest.joblib", samples / "wine_test.csv", "--label-column", "target",
         "--rows", "0-1", "--time-limit", "60", "--format", "json", "--json", folder / "cf.json"],
    ]


def _without_elapsed(path: Path) -> dict:
    report = json.loads(path.read_text())
    report.pop("elapsed_s")
    return report


def test_mlp_and_forest_commands_import_no_scikit_learn_and_write_the_full_loads_reports(
        samples, tmp_path, invaudit, monkeypatch):
    light, full = tmp_path / "light", tmp_path / "full"
    light.mkdir(), full.mkdir()
    env = {**os.environ, "INVAUDIT_NO_PROGRESS": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    argvs = [[str(a) for a in argv] for argv in _commands(samples, light)]
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    state = json.loads(proc.stderr.rstrip("\n").split("\n")[-1])
    assert state["codes"] == [0, 0, 0, 0], proc.stderr
    modules = set(state["modules"])
    assert not any(m == "sklearn" or m.startswith("sklearn.") for m in modules), "scikit-learn was imported"
    assert "invaudit.models._light_nonlinear" in modules

    from invaudit.models import _light_linear, _light_nonlinear

    with monkeypatch.context() as m:  # as before the light load: the real estimator, adapted
        m.setattr(_light_linear, "light_form", lambda loaded: None)
        m.setattr(_light_nonlinear, "light_form", lambda loaded: None)
        for argv in _commands(samples, full):
            r = invaudit(*argv)
            assert r.code == 0, r.err
    for name in ("margin.json", "explain.json", "cf-mlp.json", "cf.json"):
        a, b = (re.sub(rb'"elapsed_s": *[0-9.e+-]+', b"", (folder / name).read_bytes()) for folder in (light, full))
        assert a == b, name  # byte for byte, but for the elapsed time
    cf = _without_elapsed(light / "cf.json")
    assert cf["model"]["form"] == "trees" and cf["summary"]["exact"] >= 1
    assert _without_elapsed(light / "margin.json")["model"]["form"] == "differentiable"
