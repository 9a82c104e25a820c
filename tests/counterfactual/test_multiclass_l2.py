"""Multiclass (softmax and score-argmax) L2 counterfactuals against SLSQP, plus the structure
the exact solver relies on (KKT certificate, invariance, the span of weight differences)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_helpers import make_form, random_problem, ref_l2
from invaudit.counterfactual import counterfactuals

SEEDS = st.integers(0, 2**32 - 1)


def _problem(seed, K, extra_d, box, frozen, scaled, link="softmax", n=3):
    # enough features for the K-1 weight differences
    return random_problem(seed, K, K - 1 + extra_d, box=box, frozen=frozen, scaled=scaled, link=link, n=n, pad=2)


def _check_against_reference(form, X, cons, t, conf, r, seed):
    for i in range(len(X)):
        st_ = r.status[i]
        if st_ == "already-target":
            assert form.predict_index(X[i:i + 1])[0] == t[i]
            continue
        ref = ref_l2(form.W, form.b, X[i], t[i], conf, cons.lower[i], cons.upper[i], cons.weights,
                     starts=5, seed=seed % 997)
        if st_ == "found":
            x = r.x_cf[i:i + 1]
            assert form.predict_index(x)[0] == t[i]
            if conf is not None:
                assert form.predict_proba(x)[0, t[i]] >= conf
            assert np.all(x >= cons.lower[i]) and np.all(x <= cons.upper[i])
            assert r.exact[i] and r.kkt_residual[i] <= 1e-9, (r.method[i], r.kkt_residual[i])
            if ref is not None:
                # no feasible point is closer (to the reference's accuracy)
                assert r.distance[i] <= ref * (1 + 1e-6) + 1e-8, (r.distance[i], ref, r.method[i])
        else:
            assert st_ == "infeasible", (st_, r.reason[i])
            assert ref is None


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, K=st.integers(3, 5), extra_d=st.integers(0, 3), box=st.booleans(),
       frozen=st.booleans(), scaled=st.booleans(),
       conf=st.sampled_from([None, 0.3, 0.45, 0.6, 0.9]))
def test_softmax_against_slsqp(seed, K, extra_d, box, frozen, scaled, conf):
    form, X, cons, t = _problem(seed, K, extra_d + (1 if frozen else 0), box, frozen, scaled)
    r = counterfactuals(form, X, target=t, confidence=conf, constraints=cons)
    _check_against_reference(form, X, cons, t, conf, r, seed)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, K=st.integers(3, 5), box=st.booleans())
def test_argmax_models_without_probabilities(seed, K, box):
    form, X, cons, t = _problem(seed, K, 1, box, False, False, link="none")
    r = counterfactuals(form, X, target=t, constraints=cons)
    _check_against_reference(form, X, cons, t, None, r, seed)
    assert np.all(np.isnan(r.target_probability))


def test_optimum_moves_only_within_the_span_of_weight_differences():
    rng = np.random.default_rng(1)
    K, d = 6, 40
    W, b = rng.normal(size=(K, d)), rng.normal(size=K)
    form = make_form(W, b, "softmax")
    X = rng.normal(size=(10, d))
    t = (form.predict_index(X) + 1) % K
    r = counterfactuals(form, X, target=t, confidence=0.8)
    assert np.all(r.exact)
    for i in range(len(X)):
        D = np.delete(W, t[i], axis=0) - W[t[i]]
        coef, *_ = np.linalg.lstsq(D.T, r.delta[i], rcond=None)
        assert np.linalg.norm(D.T @ coef - r.delta[i]) <= 1e-10 * np.linalg.norm(r.delta[i])
    # the confidence constraint is active at the optimum
    assert np.allclose(r.target_probability, 0.8, rtol=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, conf=st.sampled_from([None, 0.4, 0.85]))
def test_adding_a_vector_to_every_softmax_row_changes_nothing(seed, conf):
    rng = np.random.default_rng(seed)
    K, d = 4, 5
    W, b = rng.normal(size=(K, d)), rng.normal(size=K)
    v, c = rng.normal(size=d) * 3, rng.normal() * 3
    X = rng.normal(size=(4, d))
    t = rng.integers(0, K, size=4)
    r1 = counterfactuals(make_form(W, b, "softmax"), X, target=t, confidence=conf)
    r2 = counterfactuals(make_form(W + v, b + c, "softmax"), X, target=t, confidence=conf)
    assert np.array_equal(r1.status, r2.status)
    f = r1.status == "found"
    assert np.allclose(r1.x_cf[f], r2.x_cf[f], rtol=1e-8, atol=1e-9)
    assert np.allclose(r1.distance[f], r2.distance[f], rtol=1e-8, atol=1e-12)


def test_target_other_is_the_closest_explicit_target():
    rng = np.random.default_rng(7)
    K, d = 5, 6
    form = make_form(rng.normal(size=(K, d)), rng.normal(size=K), "softmax")
    X = rng.normal(size=(6, d))
    r = counterfactuals(form, X, target="other", confidence=0.5)
    pred = form.predict_index(X)
    best = np.full(len(X), np.inf)
    for k in range(K):
        rk = counterfactuals(form, X, target=np.full(len(X), k), confidence=0.5)
        ok = (rk.status == "found") & (pred != k)
        best = np.where(ok, np.minimum(best, rk.distance), best)
    assert np.allclose(r.distance, best, rtol=1e-12)
    assert np.all(r.target_index != pred)
