"""Edge cases, inputs the solver refuses, the report records, and model inversion."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from cf_helpers import make_form
from invaudit.counterfactual import Constraints, invert
from invaudit.counterfactual import linear_counterfactuals as counterfactuals
from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models.base import BlackBoxForm


def _middle_class_model():
    # 1-D, three classes: the middle one is never very likely
    return make_form(np.array([[-2.0], [0.0], [2.0]]), np.array([0.0, 0.5, 0.0]), "softmax")


def test_target_equal_to_current_class_is_already_target():
    rng = np.random.default_rng(0)
    form = make_form(rng.normal(size=(3, 4)), rng.normal(size=3), "softmax")
    X = rng.normal(size=(5, 4))
    pred = form.predict_index(X)
    r = counterfactuals(form, X, target=pred)
    assert np.all(r.status == "already-target")
    assert np.array_equal(r.x_cf, X) and np.all(r.distance == 0) and np.all(r.exact)
    assert not r.changed.any()


def test_current_class_below_the_confidence_is_moved_up():
    form = _middle_class_model()
    X = np.array([[0.15]])                    # predicted class 1, but p_1 < 0.45
    p = form.predict_proba(X)[0, 1]
    assert form.predict_index(X)[0] == 1 and p < 0.45
    r = counterfactuals(form, X, target=[1], confidence=0.45)
    assert r.status[0] == "found" and r.exact[0]
    assert r.target_probability[0] >= 0.45


def test_unreachable_confidence_is_infeasible_with_the_reachable_maximum():
    form = _middle_class_model()
    grid = np.linspace(-20, 20, 400001)[:, None]
    pmax = softmax(grid @ form.W.T + form.b, axis=1)[:, 1].max()   # brute force
    X = np.array([[3.0], [-4.0]])
    r = counterfactuals(form, X, target=[1, 1], confidence=0.5)
    assert pmax < 0.5
    assert np.all(r.status == "infeasible")
    assert "cannot reach" in r.reason[0]
    assert np.all(np.isnan(r.x_cf)) and np.all(np.isnan(r.distance))
    # just below the brute-force maximum it is reachable, and found exactly
    r2 = counterfactuals(form, X, target=[1, 1], confidence=float(pmax) - 1e-3)
    assert np.all(r2.status == "found") and np.all(r2.exact)


def test_a_box_that_excludes_the_target_is_infeasible():
    form = make_form(np.array([[1.0, 1.0]]), np.array([-10.0]), "sigmoid")
    X = np.zeros((1, 2))
    cons = Constraints.build(X, data_lower=np.array([-1.0, -1.0]), data_upper=np.array([1.0, 1.0]))
    r = counterfactuals(form, X, target=[1], constraints=cons)
    assert r.status[0] == "infeasible" and r.reason[0]
    rng = np.random.default_rng(2)
    form3 = make_form(rng.normal(size=(3, 2)), np.array([0.0, 0.0, -50.0]), "softmax")
    r3 = counterfactuals(form3, X, target=[2], constraints=cons, confidence=0.9)
    assert r3.status[0] == "infeasible"


def test_all_features_frozen():
    rng = np.random.default_rng(1)
    form = make_form(rng.normal(size=(3, 3)), rng.normal(size=3), "softmax")
    X = rng.normal(size=(4, 3))
    cons = Constraints.build(X, immutable=np.ones(3, dtype=bool))
    t = (form.predict_index(X) + 1) % 3
    r = counterfactuals(form, X, target=t, constraints=cons)
    assert np.all(r.status == "infeasible")
    assert all("frozen" in s for s in r.reason)


def test_frozen_features_never_move():
    rng = np.random.default_rng(4)
    form = make_form(rng.normal(size=(4, 6)), rng.normal(size=4), "softmax")
    X = rng.normal(size=(8, 6))
    imm = np.array([True, False, True, False, False, False])
    for norm in ("l2", "l1", "linf"):
        r = counterfactuals(form, X, target="other", norm=norm,
                            constraints=Constraints.build(X, immutable=imm))
        f = r.status == "found"
        assert f.any()
        assert np.array_equal(r.x_cf[f][:, imm], X[f][:, imm])


def test_degenerate_weights():
    X = np.array([[0.5, -0.5]])
    # a binary model whose score ignores every feature
    flat = make_form(np.zeros((1, 2)), np.array([-1.0]), "sigmoid")
    r = counterfactuals(flat, X, target=[1])
    assert r.status[0] == "infeasible"
    # two classes with identical weights and a worse intercept: class 2 never wins
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    tied = make_form(W, np.array([0.0, 0.0, -1.0]), "softmax")
    r = counterfactuals(tied, X, target=[2])
    assert r.status[0] == "infeasible"
    for norm in ("l1", "linf"):
        assert counterfactuals(tied, X, target=[2], norm=norm).status[0] == "infeasible"


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    form = make_form(rng.normal(size=(3, 2)), rng.normal(size=3), "softmax")
    X = np.zeros((2, 2))
    with pytest.raises(InputError):
        counterfactuals(form, np.zeros((2, 3)), target=[0, 1])
    with pytest.raises(InputError):
        counterfactuals(form, np.array([[np.nan, 0.0], [0.0, 0.0]]), target=[0, 1])
    with pytest.raises(InputError):
        counterfactuals(form, X, target=[0, 3])
    with pytest.raises(InputError):
        counterfactuals(form, X, target="closest")
    with pytest.raises(InputError):
        counterfactuals(form, X, target=[0, 1], confidence=1.0)
    with pytest.raises(InputError):
        counterfactuals(form, X, target=[0, 1], norm="l3")
    svm = make_form(rng.normal(size=(3, 2)), rng.normal(size=3), "none")
    with pytest.raises(InputError, match="probability"):
        counterfactuals(svm, X, target=[0, 1], confidence=0.8)
    bb = BlackBoxForm(estimator=object(), classes=np.arange(3), n_features=2)
    with pytest.raises(UnsupportedModelError, match="black-box form"):
        counterfactuals(bb, X, target=[0, 1])


def test_records_have_the_design_fields_and_are_json():
    rng = np.random.default_rng(5)
    classes = np.array(["low", "mid", "high"])
    form = make_form(rng.normal(size=(3, 3)), rng.normal(size=3), "softmax", classes=classes)
    X = rng.normal(size=(3, 3))
    pred = form.predict_index(X)
    t = pred.copy()
    t[0] = (pred[0] + 1) % 3
    r = counterfactuals(form, X, target=t, confidence=0.6)
    recs = r.records(form.classes, row_ids=[10, 11, 12], feature_names=["a", "b", "c"])
    json.dumps(recs)
    expected = {"row", "original_class", "target_class", "status", "counterfactual", "delta",
                "distance", "norm", "target_probability", "predicted_class", "exact", "method",
                "changed_features", "kkt_residual", "iterations", "reason"}
    assert all(set(rec) == expected for rec in recs)
    r0 = recs[0]
    assert r0["row"] == 10 and r0["status"] == "found"
    assert r0["original_class"] == classes[pred[0]] and r0["target_class"] == classes[t[0]]
    assert r0["predicted_class"] == r0["target_class"]
    assert set(r0["changed_features"]) <= {"a", "b", "c"} and r0["changed_features"]
    assert isinstance(r0["kkt_residual"], float) and r0["exact"] is True
    bad = counterfactuals(make_form(np.zeros((1, 3)), [-1.0], "sigmoid"), X[:1], target=[1])
    rec = bad.records(np.array([0, 1]), row_ids=[0])[0]
    assert rec["status"] == "infeasible" and rec["counterfactual"] is None
    assert rec["distance"] is None and rec["predicted_class"] is None and rec["reason"]


def test_invert_is_the_solver_from_a_reference_point():
    rng = np.random.default_rng(6)
    form = make_form(rng.normal(size=(4, 5)), rng.normal(size=4), "softmax")
    ref = np.zeros(5)
    r = invert(form, ref, target=[0, 1, 2, 3], confidence=0.9)
    r2 = counterfactuals(form, np.zeros((4, 5)), target=np.arange(4), confidence=0.9)
    assert np.array_equal(r.status, r2.status)
    assert np.allclose(r.x_cf, r2.x_cf, equal_nan=True)
    assert np.all(form.predict_index(r.x_cf[r.status == "found"]) == np.arange(4)[r.status == "found"])


def test_one_vs_rest_with_confidence_is_verified_but_not_exact():
    rng = np.random.default_rng(8)
    form = make_form(rng.normal(size=(3, 4)), rng.normal(size=3), "ovr")
    X = rng.normal(size=(4, 4))
    t = (form.predict_index(X) + 1) % 3
    r = counterfactuals(form, X, target=t, confidence=0.5)
    f = r.status == "found"
    assert f.any()
    assert np.all(form.predict_index(r.x_cf[f]) == t[f])
    assert np.all(form.predict_proba(r.x_cf[f])[np.arange(f.sum()), t[f]] >= 0.5)
    assert not r.exact.any() and set(r.method[f]) == {"slsqp-local"}
    # without a confidence the argmax region is convex again: exact
    r2 = counterfactuals(form, X, target=t)
    assert np.all(r2.exact[r2.status == "found"])


def test_one_way_features_move_one_way():
    rng = np.random.default_rng(9)
    form = make_form(rng.normal(size=(3, 5)), rng.normal(size=3), "softmax")
    X = rng.normal(size=(10, 5))
    inc = np.array([True, True, False, False, False])
    dec = np.array([False, False, True, False, False])
    for norm in ("l2", "l1", "linf"):
        # Linf with a softmax confidence is the cutting plane, ~1-5 s of CPU per row here (most
        # rows end at its round limit, not exact): 4 rows of the 10 (one exact, three not)
        Xn = X[:4] if norm == "linf" else X
        cons = Constraints.build(Xn, increase_only=inc, decrease_only=dec)
        r = counterfactuals(form, Xn, target="other", confidence=0.6, norm=norm, constraints=cons)
        f = r.status == "found"
        assert f.any()
        assert np.all(r.delta[f][:, inc] >= 0) and np.all(r.delta[f][:, dec] <= 0)
