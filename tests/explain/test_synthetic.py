"""Synthetic black boxes whose explanations are known exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from invaudit.errors import InputError
from invaudit.explain import explain_row, explain_rows, records
from tests.explain.synthetic_models import PredictOnly, RegionModel, black_box


def _sets(res):
    return [set(e.features.tolist()) for e in res.explanations]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_or_image_two_disjoint_explanations_one_in_each_region(or_image, seed):
    x, A, B = or_image
    form = black_box(RegionModel(x, A, B, "or"), 16)
    res = explain_row(form, x, baseline=np.zeros(16), shape=(4, 4), seed=seed)
    # the only 1-minimal sufficient sets of an OR of two intact regions are A and B themselves
    assert sorted(map(sorted, _sets(res))) == sorted([sorted(A), sorted(B)])
    assert all(e.sufficient and e.minimal for e in res.explanations)
    outside = np.setdiff1d(np.arange(16), np.union1d(A, B))
    assert np.all(res.responsibility[outside] == 0.0)
    assert np.all(res.responsibility[np.union1d(A, B)] > 0.0)
    assert not res.baseline_gets_label and res.input_sufficient


@pytest.mark.parametrize("seed", [0, 5])
def test_or_tabular_random_regions(seed):
    rng = np.random.default_rng(seed)
    D = 12
    perm = rng.permutation(D)
    A, B = np.sort(perm[:3]), np.sort(perm[3:7])
    x = rng.uniform(1, 2, D)
    form = black_box(RegionModel(x, A, B, "or"), D)
    res = explain_row(form, x, baseline=np.zeros(D), seed=seed)
    assert sorted(map(sorted, _sets(res))) == sorted([A.tolist(), B.tolist()])
    outside = np.setdiff1d(np.arange(D), np.union1d(A, B))
    assert np.all(res.responsibility[outside] == 0.0)


@pytest.mark.parametrize("shape", [(4, 4), None])
def test_and_model_explanations_touch_both_regions(or_image, shape):
    x, A, B = or_image
    form = black_box(RegionModel(x, A, B, "and"), 16)
    for overlap in (0.0, 0.9):
        res = explain_row(form, x, baseline=np.zeros(16), shape=shape, overlap=overlap)
        assert len(res.explanations) >= 1
        for s in _sets(res):
            assert s & set(A) and s & set(B)
            assert s == set(A) | set(B)  # the only minimal sufficient set
        outside = np.setdiff1d(np.arange(16), np.union1d(A, B))
        assert np.all(res.responsibility[outside] == 0.0)
        # with an AND, every feature of A and B is counterfactual: responsibility 1 at the leaf
        assert np.allclose(res.responsibility[np.union1d(A, B)], 1.0)


def test_or_of_two_single_features():
    """Feature 0 OR feature 7 keeps the label: both get responsibility, nothing else does."""
    x = np.arange(1.0, 9.0)
    A, B = np.array([0]), np.array([7])
    form = black_box(RegionModel(x, A, B, "or"), 8)
    res = explain_row(form, x, baseline=np.zeros(8), iterations=4)
    assert res.responsibility[0] > 0 and res.responsibility[7] > 0
    assert np.all(res.responsibility[1:7] == 0)
    assert sorted(map(sorted, _sets(res))) == [[0], [7]]


def test_baseline_already_gets_label(or_image):
    x, A, B = or_image
    x = x.copy()
    x[A] = 0.0  # A is intact in x and in the all-zero baseline alike
    form = black_box(RegionModel(np.zeros(16), A, B, "or"), 16)
    res = explain_row(form, x, baseline=np.zeros(16), shape=(4, 4))
    assert res.predicted_index == 1 and res.input_sufficient
    assert res.baseline_gets_label
    assert res.explanations == ()
    assert np.all(res.responsibility == 0)
    assert records([res], form.classes)[0]["baseline_gets_label"] is True


def test_confidence_requires_probabilities(or_image):
    x, A, B = or_image
    est = PredictOnly(RegionModel(x, A, B, "or"))
    form = black_box(est, 16)
    form_res = explain_row(form, x, baseline=np.zeros(16), shape=(4, 4))
    assert len(form_res.explanations) == 2
    assert all(e.confidence is None and e.sufficient for e in form_res.explanations)
    with pytest.raises(InputError):
        explain_row(form, x, baseline=np.zeros(16), confidence=0.5)


def test_confidence_above_input_probability_gives_nothing(or_image):
    x, A, B = or_image
    form = black_box(RegionModel(x, A, B, "or", p=0.8), 16)
    res = explain_row(form, x, baseline=np.zeros(16), confidence=0.85)
    assert not res.input_sufficient and res.explanations == ()
    res = explain_row(form, x, baseline=np.zeros(16), confidence=0.8)
    assert res.input_sufficient and len(res.explanations) == 2
    assert all(e.confidence >= 0.8 for e in res.explanations)


def test_max_explanations_caps(or_image):
    x, A, B = or_image
    form = black_box(RegionModel(x, A, B, "or"), 16)
    res = explain_row(form, x, baseline=np.zeros(16), shape=(4, 4), max_explanations=1)
    assert len(res.explanations) == 1
    assert _sets(res)[0] in (set(A), set(B))


def test_explain_rows_matches_explain_row_and_is_deterministic():
    """A row's answer depends on (seed, row number, values) only, not on its batch."""
    rng = np.random.default_rng(3)
    D = 10
    forms_x = rng.uniform(1, 2, (5, D))
    A, B = np.array([0, 1, 2]), np.array([5, 6])
    x0 = forms_x[0]
    X = np.tile(x0, (5, 1))
    X[1:, 9] = forms_x[1:, 9]  # rows differ outside A and B
    form = black_box(RegionModel(x0, A, B, "or"), D)
    batch = explain_rows(form, X, baseline=np.zeros(D), rows=[10, 11, 12, 13, 14], seed=7)
    again = explain_rows(form, X[::-1], baseline=np.zeros(D), rows=[14, 13, 12, 11, 10], seed=7)
    for r, s in zip(batch, again[::-1]):
        assert r.row == s.row
        assert np.array_equal(r.responsibility, s.responsibility)
        assert _sets(r) == _sets(s)
    single = explain_row(form, X[2], baseline=np.zeros(D), row=12, seed=7)
    assert np.array_equal(single.responsibility, batch[2].responsibility)
    assert _sets(single) == _sets(batch[2])
    assert all(sorted(map(sorted, _sets(r))) == [A.tolist(), B.tolist()] for r in batch)


def test_overlap_filter_bounds_pairwise_dice():
    """Three overlapping minimal sets: {0,1}, {1,2}, {2,3} (label if any pair is intact)."""

    class Pairs:
        classes_ = np.array(["no", "yes"])

        def __init__(self, x):
            self.x = x

        def predict(self, X):
            keep = np.asarray(X) == self.x
            ok = (keep[:, 0] & keep[:, 1]) | (keep[:, 1] & keep[:, 2]) | (keep[:, 2] & keep[:, 3])
            return self.classes_[ok.astype(int)]

        def predict_proba(self, X):
            ok = self.predict(X) == "yes"
            return np.column_stack([np.where(ok, 0.2, 0.8), np.where(ok, 0.8, 0.2)])

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    form = black_box(Pairs(x), 6)
    for overlap in (0.0, 0.5, 1.0):
        res = explain_row(form, x, baseline=np.zeros(6), overlap=overlap, iterations=6)
        sets = _sets(res)
        assert all(s in ({0, 1}, {1, 2}, {2, 3}) for s in sets)
        for a, b in itertools.combinations(sets, 2):
            assert 2 * len(a & b) / (len(a) + len(b)) <= overlap + 1e-12
        if overlap == 0.0:
            assert sorted(map(sorted, sets)) == [[0, 1], [2, 3]]
        if overlap == 0.5:
            assert len(sets) == 3
    rec = records([res], form.classes)[0]
    assert rec["predicted_class"] == "yes"
