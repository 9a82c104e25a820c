"""``combined``'s fifth source (issue 18): out-of-bag probabilities of extremely randomised trees,
fitted on a thread beside the other sources. Checked against an independent scikit-learn fit,
against the same ranking computed with every source in turn (``jobs=1``), and a forest that
cannot read the rows is left out with a note instead of stopping the ranking."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.errors import InputError
from invaudit.models import adapt
from invaudit.triage import _rank, rank_mislabels, recall_at
from invaudit.triage import _sources as S


@pytest.fixture(scope="module")
def problem():
    X, y = make_classification(n_samples=240, n_features=5, n_informative=4, n_redundant=1, n_classes=3,
                               n_clusters_per_class=2, random_state=11)
    X = X * np.array([1e-5, 1.0, 1e5, 30.0, 1e-2])  # scales 1e-5..1e5
    rng = np.random.default_rng(11)
    wrong = np.zeros(240, dtype=bool)
    wrong[rng.choice(240, 24, replace=False)] = True
    noisy = np.where(wrong, (y + rng.integers(1, 3, 240)) % 3, y)
    est = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        form = adapt(est.fit(X, noisy))
    return X, noisy, wrong, form


@pytest.fixture(scope="module")
def serial(problem):
    """``combined`` with every source in turn in this thread."""
    X, noisy, _, form = problem
    return rank_mislabels(form, X, noisy, method="combined", seed=3, jobs=1)


def test_extra_trees_source_is_one_out_of_bag_fit(problem, serial):
    X, noisy, wrong, form = problem
    r = serial
    got = r.source_proba["extra-trees"]
    # independent reference: scikit-learn's own extra trees, out of bag, same seed and sizes
    ref = ExtraTreesClassifier(n_estimators=200, bootstrap=True, max_samples=0.5, oob_score=True,
                               random_state=3).fit(X, noisy)
    np.testing.assert_allclose(got, ref.oob_decision_function_, rtol=0, atol=1e-12)
    rf = RandomForestClassifier(n_estimators=100, bootstrap=True, max_samples=0.5, oob_score=True,
                                random_state=3).fit(X, noisy)
    np.testing.assert_allclose(r.source_proba["reference"], rf.oob_decision_function_, rtol=0, atol=1e-12)
    # its score per row is reported beside the others, and it finds flipped labels on its own
    rec = r.records(top=5)
    for x in rec:
        i = x["train_row"]
        assert x["sources"]["extra-trees"] == pytest.approx(-np.log(max(got[i, noisy[i]], 1e-300)))
    alone = np.lexsort((np.arange(noisy.size), np.log(np.clip(got[np.arange(noisy.size), noisy], 1e-300, 1))))
    assert recall_at(alone, wrong, (0.1,))[0.1] >= 0.5
    assert r.weights["extra-trees"] >= 0 and abs(sum(r.weights.values()) - 1) < 1e-12


def test_forests_on_threads_give_the_same_ranking_as_in_turn(problem, serial, monkeypatch):
    X, noisy, _, form = problem
    where = []
    real = S.oob_proba

    def spy(est, *a, **kw):
        where.append((type(est).__name__, threading.current_thread().name, est.n_jobs))
        return real(est, *a, **kw)

    monkeypatch.setattr(S, "oob_proba", spy)
    beside = rank_mislabels(form, X, noisy, method="combined", seed=3, jobs=2)
    assert sorted(n for n, _, _ in where) == ["ExtraTreesClassifier", "RandomForestClassifier"]
    assert all(t.startswith("invaudit-forest") and nj == 1 for _, t, nj in where)
    assert np.array_equal(serial.order, beside.order) and np.array_equal(serial.score, beside.score)
    assert serial.weights == beside.weights and serial.temperatures == beside.temperatures
    assert list(serial.sources) == ["model", "knn", "reference", "extra-trees", "kernel"]


def test_a_forest_that_cannot_read_the_rows_is_left_out(problem, monkeypatch):
    X, noisy, _, form = problem

    class Refuses(ExtraTreesClassifier):
        def fit(self, X, y, sample_weight=None):
            raise ValueError("Input X contains NaN.\nmore detail")

    monkeypatch.setattr(S, "extra_trees",
                        lambda n, seed=0, n_jobs=-1: Refuses(n_estimators=5, bootstrap=True, oob_score=True))
    r = rank_mislabels(form, X, noisy, method="combined", seed=0, jobs=2)
    assert set(r.weights) == {"model", "knn", "reference", "kernel"}
    assert any(n == "extra-trees source skipped: Input X contains NaN." for n in r.notes)
    assert sorted(r.order.tolist()) == list(range(noisy.size))
    # the reference forest itself failing is an input error (one sentence), not a traceback
    monkeypatch.setattr(_rank._sources, "default_reference",
                        lambda n, seed=0, n_jobs=-1: Refuses(n_estimators=5))
    with pytest.raises(InputError, match="reference forest cannot read these rows"):
        rank_mislabels(form, X, noisy, method="reference", seed=0)
