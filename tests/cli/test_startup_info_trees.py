"""``invaudit info`` on trees, forests and networks without scikit-learn (issue 16).

``info`` on a DecisionTree / ExtraTree / RandomForest / ExtraTrees / MLP model read by the light
load answers which commands apply, the influence method and its refusals from the saved state
(``influence._objective.light_tree_state``: the estimator's ``__dict__`` as the file holds it),
so a fresh process imports no scikit-learn, and prints byte for byte what the full load prints
(the real estimator unpickled and adapted, scikit-learn imported), table, JSON and Markdown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run each argv through ``main`` in one fresh interpreter; the exit codes and whether scikit-learn
# was imported on stderr's last line.
_CHILD = r"""
import json, sys
from invaudit.cli.app import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
    print(_END, end="", flush=True)
sklearn = any(m == "sklearn" or m.startswith("sklearn.") for m in sys.modules)
sys.stderr.write("\n" + json.dumps({"codes": codes, "sklearn": sklearn,
                                    "light": "invaudit.models._light_nonlinear" in sys.modules}) + "\n")
"""
_END = "\x00end of run\x00"


def _no_elapsed(text: str) -> str:
    return re.sub(r'"elapsed_s": ?[0-9.eE+-]+', '"elapsed_s": 0', text)


def _fresh(argvs):
    env = {**os.environ, "INVAUDIT_NO_PROGRESS": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("_INVAUDIT_COMPLETE", None)
    code = f"_END = {_END!r}\n" + _CHILD
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([[str(a) for a in v] for v in argvs])],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    state = json.loads(proc.stderr.rstrip("\n").split("\n")[-1])
    return state, proc.stdout.split(_END)[:-1], proc.stderr


@pytest.fixture(scope="module")
def tree_models(tmp_path_factory):
    """Files the sample models do not cover: ExtraTrees (3 classes), a single ExtraTree, a forest
    and a tree with class_weight (influence refused), a forest fitted with n_jobs=2 and no bootstrap."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)) * np.array([1e-5, 1.0, 1e3, 1e5])
    y = (X[:, 1] + X[:, 2] / 1e3 > 0).astype(int)
    y3 = np.digitize(X[:, 1], [-0.5, 0.5])
    folder = tmp_path_factory.mktemp("trees")
    models = {
        "extra_trees": ExtraTreesClassifier(n_estimators=4, max_depth=3, random_state=0).fit(X, y3),
        "extra_tree": ExtraTreeClassifier(max_depth=4, random_state=0).fit(X, y),
        "forest_weighted": RandomForestClassifier(n_estimators=3, max_depth=3, class_weight="balanced",
                                                  random_state=0).fit(X, y),
        "tree_weighted": DecisionTreeClassifier(max_depth=3, class_weight={0: 1, 1: 3}, random_state=0).fit(X, y),
        "forest_jobs": RandomForestClassifier(n_estimators=3, max_depth=3, n_jobs=2, bootstrap=False,
                                              random_state=0).fit(X, y3),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


def test_info_on_trees_forests_and_networks_imports_no_scikit_learn_and_prints_the_full_loads_output(
        samples, tree_models, invaudit, monkeypatch):
    files = [samples / "breast_cancer_tree.joblib", samples / "wine_forest.joblib", samples / "digits_mlp.joblib",
             *tree_models.values()]
    argvs = [["info", f, *fmt] for f in files for fmt in ([], ["--format", "json"], ["--format", "markdown"])]
    light, runs, err = _fresh(argvs)
    assert light["codes"] == [0] * len(argvs), err
    assert not light["sklearn"], "info imported scikit-learn"
    assert light["light"] and len(runs) == len(argvs)

    from invaudit.models import _light_linear, _light_nonlinear

    with monkeypatch.context() as m:  # as before the light load: the real estimator, adapted
        m.setattr(_light_linear, "light_form", lambda loaded: None)
        m.setattr(_light_nonlinear, "light_form", lambda loaded: None)
        for argv, out in zip(argvs, runs):
            r = invaudit(*argv)
            assert r.code == 0, r.err
            assert _no_elapsed(out) == _no_elapsed(r.out), argv  # byte for byte (elapsed time aside)

    reports = {Path(a[1]).stem: json.loads(out) for a, out in zip(argvs, runs) if "json" in a}
    influence = {name: next(r for r in rep["results"] if r["command"] == "influence")
                 for name, rep in reports.items()}
    assert influence["breast_cancer_tree"]["method"].startswith("leaf-refit (single tree")
    assert influence["extra_tree"]["method"].startswith("leaf-refit (single tree")
    for name in ("wine_forest", "extra_trees", "forest_jobs"):
        assert influence[name]["method"].startswith("leaf-refit (forest"), name
    assert influence["forest_weighted"] == {
        "command": "influence", "available": "no", "exact": "-",
        "method": "influence for a RandomForestClassifier with class_weight is not covered yet"}
    assert influence["tree_weighted"]["available"] == "no" and "DecisionTreeClassifier with class_weight" \
        in influence["tree_weighted"]["method"]
    assert influence["digits_mlp"]["method"].startswith("Koh & Liang")
    assert reports["extra_trees"]["model"]["estimator"] == "ExtraTreesClassifier"
    assert reports["extra_trees"]["model"]["form"] == "trees" and reports["digits_mlp"]["model"]["form"] == \
        "differentiable"


def test_light_tree_forms_answer_influence_support_from_their_state_without_unpickling(samples, tree_models):
    from invaudit.influence import influence_family, supports
    from invaudit.influence._trees import tree_method, tree_refusal
    from invaudit.io.model_file import load_model
    from invaudit.models import adapt
    from invaudit.models._light_nonlinear import LightTreesForm, light_form

    for path in [samples / "breast_cancer_tree.joblib", samples / "wine_forest.joblib", *tree_models.values()]:
        loaded = load_model(path, light=True)
        form = light_form(loaded)
        assert isinstance(form, LightTreesForm), path
        answers = (supports(form), tree_method(form), tree_refusal(form), influence_family(form))
        assert not form.estimator_loaded, path  # read from the saved state
        real = adapt(load_model(path).estimator)  # the full load, adapted as always
        assert answers == (supports(real), tree_method(real), tree_refusal(real), influence_family(real)), path
        # once unpickled, the real estimator answers (and agrees)
        form.estimator  # noqa: B018 - unpickles it
        assert form.estimator_loaded
        assert (supports(form), tree_method(form), tree_refusal(form), influence_family(form)) == answers
