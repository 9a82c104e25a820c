"""Against brute force over every subset of at most 12 features, with the model's own predict."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from invaudit.explain import explain_rows
from invaudit.explain._responsibility import part_responsibility
from tests.explain.synthetic_models import black_box, brute_force_table, code_of


def _problem(seed, kind):
    rng = np.random.default_rng(seed)
    D = int(rng.integers(6, 13))
    X = rng.normal(size=(150, D))
    y = (X[:, :3].sum(axis=1) + 0.5 * X[:, 3] * X[:, 4] > 0).astype(int) + (X[:, 5] > 1)
    est = {"logreg": LogisticRegression(max_iter=500),
           "mlp": MLPClassifier((16,), max_iter=300, random_state=0),
           "tree": DecisionTreeClassifier(max_depth=4, random_state=0)}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return black_box(est, D), X[:12], X.mean(axis=0)


PROBLEMS = [(s, k) for s in range(4) for k in ("logreg", "mlp", "tree")]


def test_explanations_sufficient_minimal_and_smallest():
    """Every explanation is sufficient and 1-minimal (strict); the smallest one is a smallest
    sufficient set and two disjoint ones are found whenever two exist (the search is a
    heuristic on non-monotone models: required on at least 90% of rows)."""
    n_rows = n_smallest = n_disjoint = n_disjoint_found = 0
    for seed, kind in PROBLEMS:
        form, X, base = _problem(seed, kind)
        D = X.shape[1]
        for confidence in (None, 0.6):
            res = explain_rows(form, X, baseline=base, confidence=confidence, seed=seed)
            for i, r in enumerate(res):
                ok, masks = brute_force_table(form, X[i], base, r.label_index, confidence)
                assert r.input_sufficient == bool(ok[(1 << D) - 1])
                assert r.baseline_gets_label == bool(ok[0])
                if not r.input_sufficient or r.baseline_gets_label:
                    assert r.explanations == ()
                    continue
                assert r.explanations
                for e in r.explanations:
                    c = code_of(e.features)
                    assert ok[c] and e.sufficient
                    assert not any(ok[c ^ (1 << int(f))] for f in e.features) and e.minimal
                    if confidence is not None:
                        assert e.confidence >= confidence
                for a, b in itertools.combinations(r.explanations, 2):
                    assert not set(a.features) & set(b.features)  # overlap 0: disjoint
                n_rows += 1
                n_smallest += min(e.size for e in r.explanations) == masks.sum(axis=1)[ok].min()
                codes = np.nonzero(ok)[0]
                disjoint = bool(np.any(ok[codes[:, None]] & ok[codes[None, :]]
                                       & ((codes[:, None] & codes[None, :]) == 0)))
                n_disjoint += disjoint
                n_disjoint_found += disjoint and len(r.explanations) >= 2
    assert n_rows >= 100
    assert n_smallest >= 0.9 * n_rows
    assert n_disjoint >= 10 and n_disjoint_found >= 0.9 * n_disjoint


def _responsibility_by_definition(f):
    """Chockler & Halpern degree of responsibility of each of 4 parts, by enumeration."""
    full = 15
    out = np.zeros(4)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        best = None
        for k in range(4):
            for W in itertools.combinations(others, k):
                w = sum(1 << j for j in W)
                kept = full & ~w
                if f[kept] and not f[kept & ~(1 << i)]:
                    best = k
                    break
            if best is not None:
                break
        out[i] = 0.0 if best is None else 1.0 / (1 + best)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=14, max_size=14), st.integers(0, 2**32 - 1))
def test_part_responsibility_matches_definition(bits, seed):
    f = np.array([False] + bits + [True])
    tie = np.random.default_rng(seed).random((1, 4, 8))
    r, kept = part_responsibility(f[None], tie)
    assert np.allclose(r[0], _responsibility_by_definition(f))
    for i in range(4):
        if r[0, i] > 0:  # the witness keeps the label with part i and loses it without
            K = kept[0, i]
            assert K & (1 << i) and f[K] and not f[K & ~(1 << i)]
            assert 1.0 / (1 + bin(15 & ~K).count("1")) == r[0, i]


