"""``combined``'s default forest and ``mixture`` source (issue 18), computed on threads beside the
other sources. Checked against an independent scikit-learn fit, against the mixture computed
alone, against the same ranking computed with every source in turn (``jobs=1``); a reference
forest that cannot read the rows stops the ranking with one sentence."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.errors import InputError
from invaudit.models import adapt
from invaudit.triage import _rank, rank_mislabels, recall_at
from invaudit.triage import _mixture as MX
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


def test_reference_forest_is_one_out_of_bag_fit_and_mixture_as_alone(problem, serial):
    X, noisy, wrong, form = problem
    r = serial
    rf = RandomForestClassifier(n_estimators=100, bootstrap=True, max_samples=0.5, oob_score=True,
                                random_state=3).fit(X, noisy)
    np.testing.assert_allclose(r.source_proba["reference"], rf.oob_decision_function_, rtol=0, atol=1e-12)
    alone = rank_mislabels(form, X, noisy, method="mixture", seed=3)
    Z, _ = S.model_space(form, X)
    P, ms, aside = MX.mixture_proba(Z, noisy, 3, seed=3, suspects=_rank._suspects)
    assert ms == (1, 2, 3, 4) and aside > 0
    np.testing.assert_array_equal(r.source_proba["mixture"], P)
    np.testing.assert_array_equal(alone.score, -np.log(np.clip(P[np.arange(noisy.size), noisy], 1e-300, 1)))
    for x in r.records(top=5):
        i = x["train_row"]
        assert x["sources"]["mixture"] == pytest.approx(-np.log(max(P[i, noisy[i]], 1e-300)))
    assert abs(sum(r.weights.values()) - 1) < 1e-12 and min(r.weights.values()) >= 0


def test_sources_on_threads_give_the_same_ranking_as_in_turn(problem, serial, monkeypatch):
    X, noisy, _, form = problem
    where = []
    real_oob, real_mix = S.oob_proba, MX.mixture_proba

    def spy(est, *a, **kw):
        where.append((type(est).__name__, threading.current_thread().name, est.n_jobs))
        return real_oob(est, *a, **kw)

    def spy_mix(*a, **kw):
        where.append(("mixture", threading.current_thread().name, 1))
        return real_mix(*a, **kw)

    monkeypatch.setattr(S, "oob_proba", spy)
    monkeypatch.setattr(MX, "mixture_proba", spy_mix)
    beside = rank_mislabels(form, X, noisy, method="combined", seed=3, jobs=2)
    assert sorted(n for n, _, _ in where) == ["RandomForestClassifier", "mixture"]
    assert all(t.startswith("invaudit-source") and nj == 1 for _, t, nj in where)
    assert np.array_equal(serial.order, beside.order) and np.array_equal(serial.score, beside.score)
    assert serial.weights == beside.weights and serial.temperatures == beside.temperatures
    assert list(serial.sources) == ["model", "knn", "reference", "kernel", "mixture"]


def test_a_reference_forest_that_cannot_read_the_rows_stops_with_one_sentence(problem, monkeypatch):
    X, noisy, _, form = problem

    class Refuses(RandomForestClassifier):
        def fit(self, X, y, sample_weight=None):
            raise ValueError("Input X contains NaN.\nmore detail")

    # the reference forest itself failing is an input error (one sentence), not a traceback
    monkeypatch.setattr(_rank._sources, "default_reference",
                        lambda n, seed=0, n_jobs=-1: Refuses(n_estimators=5))
    with pytest.raises(InputError, match="reference forest cannot read these rows"):
        rank_mislabels(form, X, noisy, method="reference", seed=0)
