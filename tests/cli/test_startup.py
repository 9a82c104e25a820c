"""Start-up (issue 16): a command imports only what it needs.

- ``info`` on a linear model (or a pipeline of scalers and PCA before one) imports no
  scikit-learn at all (the light load, invaudit.io._light), and its report is the one the full
  load gives.
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


def _full_load_only(monkeypatch):
    """The in-process run as it was before the light load: the real estimator, adapted."""
    from invaudit.models import _light_linear

    monkeypatch.setattr(_light_linear, "light_form", lambda loaded: None)


def _scaled_pca_pipeline(tmp_path: Path) -> Path:
    import pandas as pd
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.normal(size=(150, 4)) * [1e-5, 1.0, 1e5, 3.0], columns=["age", "income", "debt", "tenure"])
    y = np.array(["a", "b", "c"])[np.digitize(X["age"] / 1e-5 + X["debt"] / 1e5, [-0.5, 0.5])]
    path = tmp_path / "pipe.pkl"
    joblib.dump(make_pipeline(StandardScaler(), PCA(3, whiten=True), LogisticRegression(max_iter=5000)).fit(X, y),
                path, compress=3)
    return path


def test_info_on_a_linear_model_imports_no_scikit_learn(tmp_path, invaudit, monkeypatch):
    """The light load (issue 16): no scikit-learn, joblib or scipy; the report is the full load's."""
    for model in (_linear_model(tmp_path), _scaled_pca_pipeline(tmp_path)):
        code, out, err, modules = _fresh(["info", model, "--format", "json"])
        assert code == 0, err
        for package in ("sklearn", "joblib", "scipy", "pandas", "invaudit.counterfactual", "invaudit.margins",
                        "invaudit.influence", "invaudit.explain", "invaudit.audit",
                        # the table prints without Rich's layout and emoji table; typed columns are not read
                        "rich.table", "rich._emoji_codes", "invaudit.models.tabular"):
            assert not _imported(modules, package), f"info imported {package}"
        with monkeypatch.context() as m:
            _full_load_only(m)
            same = invaudit("info", model, "--format", "json")
        assert same.code == 0, same.err
        fresh, full = json.loads(out), same.json()
        fresh.pop("elapsed_s"), full.pop("elapsed_s")
        assert fresh == full
        assert fresh["model"]["form"] == "linear"
    assert fresh["model"]["classes"] == ["a", "b", "c"] and fresh["model"]["preprocessing"][-1].startswith("PCA")


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
