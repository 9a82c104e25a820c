"""Start-up (issue 16): a command imports only what it needs.

- ``info`` on a linear model imports no tree, ensemble, neighbours or network code of
  scikit-learn (the model file's checks look for those classes only once the pickle itself has
  imported them), and its report is the one the full in-process run gives.
- Crafted trees are still refused in a fresh process, where only the pickle imports the tree code.
- ``--version`` imports neither Typer nor numpy; the top-level ``--help`` lists the commands
  without importing them, and lists exactly what the fully built app lists.

The fresh-process tests run a child Python (the test process has everything imported already).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

ROOT = Path(__file__).resolve().parents[2]

# Run ``main(argv)`` in a fresh interpreter; print the exit code, then the modules it imported, as
# JSON on the last line of stderr (stdout carries the report).
_CHILD = r"""
import json, sys
argv = json.loads(sys.argv[1])
code = 0
try:
    from invaudit.cli.app import main
    main(argv)
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\n")
"""


def _fresh(argv):
    env = {**os.environ, "INVAUDIT_NO_PROGRESS": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(a) for a in argv])], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    state = json.loads(last)
    return state["code"], proc.stdout, "\n".join(err), set(state["modules"])


def _imported(modules: set, package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


def _linear_model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5)) * np.array([1e-5, 1.0, 1e3, 1e5, 0.1])
    y = np.where(X[:, 0] / 1e-5 + X[:, 2] / 1e3 > 0, "approve", "reject")
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=5000).fit(X, y), path)
    return path


def test_info_on_a_linear_model_imports_no_tree_or_network_code(tmp_path, invaudit):
    model = _linear_model(tmp_path)
    code, out, err, modules = _fresh(["info", model, "--format", "json"])
    assert code == 0, err
    for package in ("sklearn.ensemble", "sklearn.tree", "sklearn.neighbors", "sklearn.neural_network",
                    "invaudit.counterfactual", "invaudit.margins", "invaudit.explain", "invaudit.audit"):
        assert not _imported(modules, package), f"info imported {package}"
    assert _imported(modules, "sklearn.linear_model")  # the pickle's own module: the floor
    # the same report as the in-process run, where every module is already imported
    same = invaudit("info", model, "--format", "json")
    assert same.code == 0, same.err
    fresh, full = json.loads(out), same.json()
    fresh.pop("elapsed_s"), full.pop("elapsed_s")
    assert fresh == full
    assert fresh["model"]["form"] == "linear" and fresh["model"]["classes"] == ["approve", "reject"]


def _crafted_tree(path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(60, 3))
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    tree = est.tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10**6  # compiled predict would read far outside the node array
    crafted = type(tree)(*tree.__reduce__()[1])
    crafted.__setstate__({**state, "nodes": nodes})
    est.tree_ = crafted
    joblib.dump(est, path)


def _crafted_hgb(path: Path) -> None:
    X = np.random.default_rng(1).normal(size=(80, 3))
    est = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(X, (X[:, 1] > 0).astype(int))
    nodes = est._predictors[1][0].nodes.copy()
    nodes["left"][0] = len(nodes) + 7
    est._predictors[1][0].nodes = nodes
    joblib.dump(est, path)


_LOAD_BOTH = r"""
import json, sys
from invaudit.errors import InputError
from invaudit.io.model_file import load_model
out = []
for path in sys.argv[1:]:
    before = "sklearn.ensemble" in sys.modules
    try:
        load_model(path)
        out.append([before, "loaded"])
    except InputError as exc:
        out.append([before, str(exc)])
print(json.dumps(out))
"""


def test_crafted_trees_are_refused_in_a_fresh_process(tmp_path):
    """The checks of compiled tree state run whenever the pickle brought the tree code in."""
    tree, hgb = tmp_path / "tree.joblib", tmp_path / "hgb.joblib"
    _crafted_tree(tree)
    _crafted_hgb(hgb)
    proc = subprocess.run([sys.executable, "-c", _LOAD_BOTH, str(tree), str(hgb)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (tree_before, tree_msg), (hgb_before, hgb_msg) = json.loads(proc.stdout)
    assert tree_before is False  # nothing imported the ensemble code before the first file
    assert "was refused" in tree_msg and "out of range" in tree_msg
    assert "was refused" in hgb_msg and "out of range" in hgb_msg


def test_version_imports_neither_typer_nor_numpy():
    from invaudit import __version__

    code, out, err, modules = _fresh(["--version"])
    assert code == 0 and out == f"invaudit {__version__}\n" and not err.strip()
    assert not _imported(modules, "typer") and not _imported(modules, "numpy")


def test_top_level_help_lists_the_commands_without_importing_them():
    code, out, err, modules = _fresh(["--help"])
    assert code == 0, err
    assert not _imported(modules, "numpy") and "invaudit.cli._common" not in modules
    from invaudit.cli.app import COMMANDS

    for name in COMMANDS:
        assert f" {name} " in out


def _help(app) -> str:
    import typer

    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as exc:
        typer.main.get_command(app).main(args=["--help"], prog_name="invaudit")
    assert exc.value.code == 0
    return buf.getvalue()


def test_the_help_listing_is_the_full_apps_help(monkeypatch):
    from invaudit.cli import app as cli_app

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    listing, full = _help(cli_app.build_app(listing=True)), _help(cli_app.build_app())
    assert listing == full
    assert "Say what the model is" in listing  # info's docstring, read from its source


def test_the_help_listing_refuses_to_run_a_command():
    """A placeholder is never run by main (only --help and no arguments use them); if it were,
    it would say so rather than do nothing and exit 0."""
    import typer

    from invaudit.cli import app as cli_app

    command = typer.main.get_command(cli_app.build_app(listing=True))
    with pytest.raises(RuntimeError, match="placeholder"):
        command.main(args=["info"], prog_name="invaudit", standalone_mode=False)
