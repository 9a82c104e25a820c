"""Red team 3: multilabel classifiers are refused with a sentence, not read as two-class models.

Found: an MLPClassifier, a OneVsRestClassifier or a RidgeClassifier fitted on a label-indicator
matrix (several yes/no labels per row) has a one-dimensional ``classes_`` (the label indices), so
``adapt`` took it for a classifier of classes ``[0, 1]`` and ``info`` offered every command on it;
its ``predict`` returns one column per label, so margin and explain stopped with an internal error
(exit 4) and mislabel ranked rows on probabilities that are not a distribution over classes. The
multi-output models (a list of ``classes_``) were already refused; these are now refused the same
way (exit 3, one sentence), and single-label fits of the same classes still load.
"""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.errors import UnsupportedModelError
from invaudit.models import adapt

MAKERS = {
    "mlp-pipeline": lambda: make_pipeline(StandardScaler(), MLPClassifier((3,), max_iter=30, random_state=0)),
    "one-vs-rest": lambda: OneVsRestClassifier(LogisticRegression()),
    "ridge": lambda: RidgeClassifier(),
}


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * np.array([1e-5, 1.0, 1e5])
    Y = (X[:, :2] > 0).astype(int)  # two yes/no labels per row
    return pd.DataFrame(X, columns=["a", "b", "c"]), Y


def _fit(name, y):
    X, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MAKERS[name]().fit(X, y)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_multilabel_fits_are_refused_and_single_label_fits_load(name):
    X, Y = _data()
    with pytest.raises(UnsupportedModelError, match="several labels per row"):
        adapt(_fit(name, Y))
    form = adapt(_fit(name, Y[:, 0]))  # the same classes, one label per row
    assert list(form.classes) == [0, 1]


def test_the_command_line_exits_3_with_one_sentence(tmp_path, invaudit):
    X, Y = _data()
    joblib.dump(_fit("mlp-pipeline", Y), tmp_path / "m.joblib")
    X.iloc[:4].to_csv(tmp_path / "rows.csv", index=False)
    for args in (("info", tmp_path / "m.joblib"),
                 ("margin", tmp_path / "m.joblib", tmp_path / "rows.csv", "--format", "json")):
        r = invaudit(*args)
        assert r.code == 3, (args[0], r.code, r.err)
        assert "several labels per row" in r.err and "Traceback" not in r.err and r.out == ""
