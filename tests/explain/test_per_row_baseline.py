"""One baseline per row ((n, D)): each row's answer is the one it gets alone with its own (D,)
baseline, and every explanation is sufficient and 1-minimal by brute force over all masks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from invaudit.errors import InputError
from invaudit.explain import explain_row, explain_rows
from invaudit.explain._oracle import SufficiencyOracle
from tests.explain.synthetic_models import black_box, brute_force_table, code_of

D = 4


def _problem(kind, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, D))
    y = (X[:, 0] + X[:, 1] - 0.7 * X[:, 2] + 0.3 * X[:, 3] > 0).astype(int)
    est = LogisticRegression().fit(X, y) if kind == "logreg" else \
        DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)
    form = black_box(est, D)
    rows = X[:24]
    pred = est.predict(rows)
    # per row: the mean of the training rows of the other class (a contrast baseline), jittered
    base = np.stack([X[y != p].mean(axis=0) for p in pred]) + rng.normal(scale=0.1, size=(len(rows), D))
    return form, rows, base


@pytest.mark.parametrize("kind", ["logreg", "tree"])
@pytest.mark.parametrize("confidence", [None, 0.6])
def test_per_row_baseline_equals_rows_alone_and_brute_force(kind, confidence):
    form, X, base = _problem(kind)
    row_numbers = np.arange(100, 100 + len(X))
    res = explain_rows(form, X, rows=row_numbers, baseline=base, confidence=confidence, seed=3)
    n_explained = 0
    for i, r in enumerate(res):
        alone = explain_row(form, X[i], baseline=base[i], confidence=confidence, seed=3, row=int(row_numbers[i]))
        assert r.row == alone.row and r.label_index == alone.label_index
        assert [tuple(e.features) for e in r.explanations] == [tuple(e.features) for e in alone.explanations]
        assert np.array_equal(r.responsibility, alone.responsibility)
        assert r.baseline_gets_label == alone.baseline_gets_label and r.n_queries == alone.n_queries
        ok, _ = brute_force_table(form, X[i], base[i], r.label_index, confidence)
        assert r.baseline_gets_label == bool(ok[0])
        assert r.input_sufficient == bool(ok[(1 << D) - 1])
        for e in r.explanations:
            c = code_of(e.features)
            assert ok[c] and e.sufficient, "sufficient with this row's own baseline"
            assert e.minimal and not any(ok[c ^ (1 << int(f))] for f in e.features), "1-minimal"
        n_explained += bool(r.explanations)
    assert n_explained >= len(X) // 2


def test_same_baseline_in_every_row_is_the_1d_baseline():
    form, X, base = _problem("logreg")
    b = base[0]
    one = explain_rows(form, X, baseline=b, seed=1)
    tiled = explain_rows(form, X, baseline=np.tile(b, (len(X), 1)), seed=1)
    for a, t in zip(one, tiled):
        assert [tuple(e.features) for e in a.explanations] == [tuple(e.features) for e in t.explanations]
        assert np.array_equal(a.responsibility, t.responsibility) and a.n_queries == t.n_queries


def test_oracle_mutants_use_each_rows_baseline():
    form, X, base = _problem("logreg")
    oracle = SufficiencyOracle(form, X[:3], base[:3], np.zeros(3, dtype=np.intp))
    masks = np.array([[True, False, False, False]] * 4)
    m = oracle.mutants(np.array([0, 1, 2, 1]), masks)
    assert np.array_equal(m[:, 0], X[[0, 1, 2, 1], 0])
    assert np.array_equal(m[:, 1:], base[[0, 1, 2, 1], 1:])


def test_per_row_baseline_checked():
    form, X, base = _problem("logreg")
    with pytest.raises(InputError, match="one per"):
        explain_rows(form, X, baseline=base[:-1])
    bad = base.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InputError):
        explain_rows(form, X, baseline=bad)
