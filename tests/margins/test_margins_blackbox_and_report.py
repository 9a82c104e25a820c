"""Black-box boundary search, the records / summary of a batch, and input errors."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from margin_helpers import Box, linear_form
from sklearn.linear_model import LogisticRegression

from invaudit.errors import InputError
from invaudit.margins import MarginBatch, default_eps, margins, summarize
from invaudit.models.base import BlackBoxForm
from invaudit.schemas import schema


def _logreg(seed=0, d=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, d))
    y = (X[:, 0] - X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
    return LogisticRegression(max_iter=1000).fit(X, y), X, y


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("with_train", [True, False])
def test_black_box_upper_bound_is_verified_and_above_the_exact_margin(norm, with_train):
    clf, X, _ = _logreg()
    box = BlackBoxForm(estimator=clf, classes=clf.classes_, n_features=3)
    exact_form = linear_form(clf.coef_, clf.intercept_, estimator=clf)
    Xq = X[:15]
    exact = margins(exact_form, Xq, norm=norm)
    batch = margins(box, Xq, norm=norm, X_train=X if with_train else None, seed=3)
    assert not batch.exact.any()
    assert np.all(np.isnan(batch.lower_bound))
    found = np.isfinite(batch.margin)
    assert found.all()
    after = box.predict_index(Xq + batch.perturbation)
    assert np.all(after != batch.predicted_index) and np.array_equal(after, batch.nearest_index)
    assert np.all(batch.margin >= exact.margin * (1 - 1e-9))
    if norm == "l2":  # in 3-D the search gets reasonably close
        assert np.median(batch.margin / exact.margin) < 1.5
    again = margins(box, Xq, norm=norm, X_train=X if with_train else None, seed=3)
    np.testing.assert_array_equal(again.perturbation, batch.perturbation)  # deterministic


def test_black_box_respects_boxes():
    clf, X, _ = _logreg(1)
    box = BlackBoxForm(estimator=clf, classes=clf.classes_, n_features=3)
    Xq = X[:10]
    lower, upper = Xq - 2.0, Xq + 2.0
    lower[:, 1] = upper[:, 1] = Xq[:, 1]
    batch = margins(box, Xq, constraints=Box(lower, upper, np.ones(3)), X_train=X)
    ok = np.isfinite(batch.margin)
    assert ok.any()
    Z = Xq[ok] + batch.perturbation[ok]
    assert np.all(Z >= lower[ok]) and np.all(Z <= upper[ok])
    assert np.all(batch.perturbation[ok][:, 1] == 0.0)


def test_records_match_the_report_schema():
    clf, X, y = _logreg(2)
    form = linear_form(clf.coef_, clf.intercept_, estimator=clf)
    Xq = X[:5].copy()
    batch = margins(form, Xq, y_index=y[:5])
    recs = batch.records(clf.classes_, row_ids=np.arange(10, 15), labels=y[:5])
    item = schema("margin")["properties"]["results"]["items"]
    for r in recs:
        jsonschema.validate(r, item)
        assert r["norm"] == "l2" and r["exact"] is True and r["method"] == "linear-closed-form"
    assert [r["row"] for r in recs] == list(range(10, 15))
    assert recs[0]["perturbation"] == batch.perturbation[0].tolist()
    summary = summarize(batch, classes=clf.classes_, row_ids=np.arange(10, 15))
    jsonschema.validate(summary, schema("margin")["properties"]["summary"])
    assert summary["robust_accuracy_basis"] == "labels"


def _batch(margin, lower, exact, pred, nearest=None):
    n = len(margin)
    return MarginBatch(margin=np.asarray(margin, float), lower_bound=np.asarray(lower, float),
                       nearest_index=np.zeros(n, int) if nearest is None else np.asarray(nearest),
                       perturbation=np.zeros((n, 2)), perturbation_norm=np.asarray(margin, float),
                       exact=np.asarray(exact, bool), method=np.full(n, "m", dtype=object),
                       predicted_index=np.asarray(pred), norm="l2")


def test_summary_counts_by_hand():
    b = _batch([0.1, 0.5, 1.0, np.inf, 2.0], [0.1, 0.5, 1.0, np.inf, 2.0], [True] * 5, [0, 1, 1, 0, 1])
    y = np.array([0, 1, 0, 0, 1])  # row 2 misclassified
    s = summarize(b, y, eps=[0.0, 0.3, 1.5])
    assert s["robust_accuracy"] == {"0": 4 / 5, "0.3": 3 / 5, "1.5": 2 / 5}
    assert s["median_margin"] == 1.0 and s["min_margin"] == 0.1
    assert [r["row"] for r in s["most_fragile"]][:2] == [0, 1]
    s2 = summarize(b, None, eps=[0.3])
    assert s2["robust_accuracy"]["0.3"] == 4 / 5 and s2["robust_accuracy_basis"].startswith("predictions")


def test_summary_gives_intervals_when_not_exact():
    # row 0: bounds [0.2, 0.4]; row 1: no lower bound, upper 0.8; row 2: nothing found
    b = _batch([0.4, 0.8, np.nan], [0.2, np.nan, 0.3], [False, False, False], [0, 0, 1])
    s = summarize(b, np.array([0, 0, 1]), eps=[0.1, 0.5])
    assert s["robust_accuracy"]["0.1"] == {"lower": 2 / 3, "upper": 1.0}
    assert s["robust_accuracy"]["0.5"] == {"lower": 0.0, "upper": 2 / 3}
    assert s["min_margin"] == 0.4  # over rows with a margin


def test_default_eps_spread_over_margins():
    m = np.array([0.01, 0.1, 0.2, 0.3, 1.0, np.inf, np.nan, 0.0])
    eps = default_eps(m)
    assert eps == sorted(eps) and 0 < len(eps) <= 5
    assert min(eps) >= 0.01 and max(eps) <= 1.0
    assert default_eps(np.array([np.nan, np.inf])) == []


def test_input_errors():
    clf, X, _ = _logreg(3)
    form = linear_form(clf.coef_, clf.intercept_, estimator=clf)
    with pytest.raises(InputError):
        margins(form, X[:, :2])
    with pytest.raises(InputError):
        margins(form, X, norm="l3")
    bad = X[:3].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError):
        margins(form, bad)
    with pytest.raises(InputError):
        margins(form, X[:3], constraints=Box(None, None, np.array([1.0, 0.0, 1.0])))
    with pytest.raises(InputError):
        margins(form, X[:3], y_index=np.array([0, 1]))
    empty = margins(form, X[:0])
    assert len(empty) == 0 and empty.records(clf.classes_) == []
