"""``mislabel --jobs`` / ``--scheduler`` (issue 16): the out-of-fold refits of the mislabel
methods run on worker processes or a Dask cluster and give the same ranking bit for bit as a
serial run; the folds are the ones an independent scikit-learn loop fits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from invaudit import parallel
from invaudit.models import adapt
from invaudit.triage import out_of_fold_proba, rank_mislabels, recall_at


# the pool's answers are the ones compared; `cluster` (tests/conftest.py) is one LocalCluster per run
pytestmark = pytest.mark.usefixtures("pool_answers")


def _data(seed=0, n=240):
    X, y = make_classification(n_samples=n, n_features=6, n_informative=4, n_redundant=1, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=seed)
    X = X * np.array([1e-4, 1.0, 1e4, 3.0, 1e-2, 50.0])  # features at very different scales
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.1
    noisy = np.where(wrong, (y + rng.integers(1, 3, n)) % 3, y)
    return X, noisy, noisy != y


def _model(X, y):
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return adapt(est)


def test_out_of_fold_proba_same_on_one_or_two_processes_and_equal_to_refits():
    X, y, _ = _data()
    form = _model(X, y)
    seen = []
    serial = out_of_fold_proba(form, X, y, n_folds=4, seed=3, jobs=1,
                               progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    pool = out_of_fold_proba(form, X, y, n_folds=4, seed=3, jobs=2)
    assert parallel.last_run["pool"] >= 1  # a worker process fitted at least one fold
    assert np.array_equal(serial, pool)
    # independent reference: scikit-learn's own shuffled stratified folds, refitted here
    ref = np.full_like(serial, np.nan)
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(X, y):
        est = clone(form.estimator).fit(X[tr], y[tr])
        ref[te] = est.predict_proba(X[te])
    np.testing.assert_allclose(serial, ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(serial.sum(axis=1), 1.0, rtol=1e-12)


def test_rankings_with_refits_equal_serially_in_a_pool_and_on_a_cluster(cluster):
    X, y, wrong = _data(seed=1)
    form = _model(X, y)
    ref = DecisionTreeClassifier(min_samples_leaf=5, random_state=0)
    for method, kw, where in (("confidence", {}, ((1, None), (2, None), (None, cluster))),
                              ("reference", {"reference": ref}, ((1, None), (None, cluster)))):
        runs = [rank_mislabels(form, X, y, method=method, seed=2, jobs=j, scheduler=s, **kw)
                for j, s in where]
        for other in runs[1:]:
            assert np.array_equal(runs[0].order, other.order)
            assert np.array_equal(runs[0].score, other.score)
            assert np.array_equal(runs[0].suggested, other.suggested)
        # and the rankings are worth having: most flipped labels are among the top 20%
        assert recall_at(runs[0].order, wrong, (0.2,))[0.2] >= 0.6, method


def test_combined_on_a_model_without_a_convex_loss_is_the_same_with_jobs():
    # a tree has no convex loss: the model source of ``combined`` is its out-of-fold refits,
    # the reference the default forest (threads = --jobs; its answer does not depend on them)
    X, y, wrong = _data(seed=2, n=180)
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)
    form = adapt(tree)
    a = rank_mislabels(form, X, y, method="combined", seed=0, jobs=1)
    b = rank_mislabels(form, X, y, method="combined", seed=0, jobs=2)
    assert parallel.last_run["pool"] >= 1
    assert np.array_equal(a.order, b.order) and np.array_equal(a.score, b.score)
    assert a.weights == b.weights
    for s in a.source_proba:
        assert np.array_equal(a.source_proba[s], b.source_proba[s])
    assert recall_at(a.order, wrong, (0.2,))[0.2] >= 0.6


def test_cli_mislabel_jobs_and_scheduler_equal(invaudit, samples, cluster):
    args = ("mislabel", samples / "wine_forest.joblib", samples / "wine_train.csv", "--label-column",
            "target", "--method", "confidence", "--top", "all", "--format", "json")
    serial = invaudit(*args, "--jobs", "1")
    assert serial.code == 0, serial.err
    pool = invaudit(*args, "--jobs", "2")
    dask = invaudit(*args, "--scheduler", cluster)
    rep = [r.json() for r in (serial, pool, dask)]
    assert rep[0]["results"] == rep[1]["results"] == rep[2]["results"]
    assert rep[0]["summary"] == rep[1]["summary"] == rep[2]["summary"]
    assert sorted(r["train_row"] for r in rep[0]["results"]) == list(range(len(rep[0]["results"])))


def test_cli_mislabel_bad_jobs_is_refused(invaudit, samples):
    r = invaudit("mislabel", samples / "wine_forest.joblib", samples / "wine_train.csv", "--label-column",
                 "target", "--jobs", "0")
    assert r.code != 0 and r.out == ""
    assert "Traceback" not in r.err
