"""Inputs, outputs and a real model checked through its weights (independent of predict)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from invaudit.errors import InputError
from invaudit.explain import explain_rows, parse_shape, records, resolve_baseline, summary
from invaudit.models.base import LinearForm
from tests.explain.synthetic_models import RegionModel, black_box


@pytest.fixture(scope="module")
def digits_linear():
    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=300).fit(X[:400], y[:400])
    form = LinearForm(estimator=clf, W=clf.coef_.copy(), b=clf.intercept_.copy(),
                      link="softmax", classes=clf.classes_, n_features=64)
    return form, X[400:406]


def test_digits_logreg_explanations_checked_through_weights(digits_linear):
    form, X = digits_linear
    res = explain_rows(form, X, baseline=np.zeros(64), shape="8x8", confidence=0.5, seed=1)
    n_multi = 0
    for x, r in zip(X, res):
        assert r.input_sufficient and not r.baseline_gets_label
        assert np.all((r.responsibility >= 0) & (r.responsibility <= 1))
        for e in r.explanations:
            keep = np.zeros(64, dtype=bool)
            keep[e.features] = True
            # probabilities from W and b (softmax of X W^T + b), not from the estimator
            P = form.proba(np.where(keep, x, 0.0)[None])[0]
            assert np.argmax(P) == r.label_index and P[r.label_index] >= 0.5
            assert e.confidence == pytest.approx(P[r.label_index], rel=1e-9)
            drops = np.repeat(keep[None], e.size, axis=0)
            drops[np.arange(e.size), e.features] = False
            Pd = form.proba(np.where(drops, x, 0.0))
            assert np.all((np.argmax(Pd, axis=1) != r.label_index)
                          | (Pd[:, r.label_index] < 0.5))  # 1-minimal
        sets = [set(e.features) for e in r.explanations]
        assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
        n_multi += len(sets) >= 2
    assert n_multi >= 5
    doc = json.loads(json.dumps(records(res, form.classes)))
    assert doc[0]["row"] == 0 and len(doc[0]["responsibility"]) == 64
    assert set(doc[0]["explanations"][0]) == {"features", "size", "confidence", "sufficient",
                                              "minimal"}
    s = summary(res)
    assert s["n_rows"] == 6 and s["rows_with_multiple"] == n_multi and s["all_sufficient"]


def test_label_indices_and_rows(digits_linear):
    form, X = digits_linear
    other = (form.predict_index(X[:2]) + 1) % 10
    res = explain_rows(form, X[:2], rows=[40, 41], label_indices=other, baseline=np.zeros(64))
    for r, k in zip(res, other):
        assert r.row in (40, 41) and r.label_index == k and r.predicted_index != k
        assert not r.input_sufficient and r.explanations == ()


def test_resolve_baseline():
    Xt = np.arange(12.0).reshape(4, 3)
    assert np.array_equal(resolve_baseline("zero", 3), np.zeros(3))
    assert np.array_equal(resolve_baseline("mean", 3, Xt), Xt.mean(axis=0))
    assert np.array_equal(resolve_baseline("2.5", 3), np.full(3, 2.5))
    assert np.array_equal(resolve_baseline(-1, 3), np.full(3, -1.0))
    assert np.array_equal(resolve_baseline([1, 2, 3], 3), [1.0, 2.0, 3.0])
    for bad, kw in [("mean", {}), ("median", {}), ("nan", {}), ([1, 2], {}),
                    ("mean", {"X_train": np.ones((2, 4))})]:
        with pytest.raises(InputError):
            resolve_baseline(bad, 3, **kw)


def test_parse_shape():
    assert parse_shape("8x8", 64) == (8, 8)
    assert parse_shape((2, 3), 6) == (2, 3)
    assert parse_shape(None, 5) is None
    for bad in ("8x7", "8", "axb", "0x64", (8,)):
        with pytest.raises(InputError):
            parse_shape(bad, 64)


@pytest.mark.parametrize("kw", [
    {"confidence": 0.0}, {"confidence": 1.5}, {"overlap": -0.1}, {"overlap": 2},
    {"max_explanations": 0}, {"iterations": 0}, {"seed": -1}, {"max_refine": 5},
    {"shape": "3x3"}, {"baseline": np.zeros(5)}, {"label_indices": [2]},
])
def test_bad_parameters_are_input_errors(kw):
    x = np.arange(1.0, 17.0)
    form = black_box(RegionModel(x, [0, 1], [5, 6]), 16)
    args = {"baseline": np.zeros(16)}
    args.update(kw)
    with pytest.raises(InputError):
        explain_rows(form, x[None], **args)


def test_bad_data_is_input_error():
    x = np.arange(1.0, 17.0)
    form = black_box(RegionModel(x, [0, 1], [5, 6]), 16)
    with pytest.raises(InputError):
        explain_rows(form, np.ones((2, 15)), baseline=np.zeros(16))
    X = np.ones((2, 16))
    X[0, 3] = np.nan
    with pytest.raises(InputError):
        explain_rows(form, X, baseline=np.zeros(16))
    assert explain_rows(form, np.ones((0, 16)), baseline=np.zeros(16)) == []


def test_image_rows_independent_of_batch_and_progress(digits_linear):
    form, X = digits_linear
    seen = []
    res = explain_rows(form, X, baseline=np.zeros(64), shape=(8, 8), seed=4,
                       progress=seen.append)
    assert seen[-1] == len(X)
    from invaudit.explain import explain_row

    one = explain_row(form, X[3], baseline=np.zeros(64), shape=(8, 8), seed=4, row=3)
    assert np.array_equal(one.responsibility, res[3].responsibility)
    assert [e.features.tolist() for e in one.explanations] == \
        [e.features.tolist() for e in res[3].explanations]
    other_seed = explain_row(form, X[3], baseline=np.zeros(64), shape=(8, 8), seed=5, row=3)
    assert not np.array_equal(other_seed.responsibility, res[3].responsibility)
