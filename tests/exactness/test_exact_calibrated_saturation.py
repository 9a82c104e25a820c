"""Red team: CalibratedClassifierCV (sigmoid, one calibrator) over a linear model with 3+ classes.

The composite is read as a linear form with the ``ovr`` link and its answers are marked exact:
``argmax_k expit(-(a_k s_k + b_k))`` is the argmax of the affine scores ``-(a_k s_k + b_k)``
in exact arithmetic. In floats ``expit`` saturates: above ~36.7 every calibrated probability is
exactly 1.0 (below ~-745 exactly 0.0, then scikit-learn returns uniform probabilities), and the
estimator's ``predict`` takes the *first* tied class. Far from the training data (here rows 300
standard deviations out) the estimator therefore predicts the target on regions the linear form
does not have, much nearer than the "exact" answer.

Reference: along 720 rays from the row, the first point the estimator's own ``predict`` puts in
the target class (bisection); any such point is a valid counterfactual, so an exact answer can
never be farther. Before the fix this failed (4.3 vs 183.7 reported exact): multiclass sigmoid calibration is now
read as the composed smooth form (verified answers, ``exact: false``), and any answer that is
marked exact must still be no farther than this reference.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression

from invaudit.counterfactual import counterfactuals
from invaudit.models import adapt


def _first_hit(predict, x0, label, dirs, tmax, n_scan=200, iters=50):
    ts = np.geomspace(tmax * 1e-6, tmax, n_scan)
    P = x0 + (ts[None, :, None] * dirs[:, None, :]).reshape(-1, x0.size)
    hit = (predict(P) == label).reshape(len(dirs), n_scan)
    i = np.argmax(hit, axis=1)
    a = np.where(i > 0, ts[np.maximum(i - 1, 0)], 0.0)
    b = ts[i]
    for _ in range(iters):
        m = 0.5 * (a + b)
        q = predict(x0 + m[:, None] * dirs) == label
        a, b = np.where(q, a, m), np.where(q, m, b)
    return np.where(hit.any(axis=1), b, np.inf)


def test_multiclass_calibrated_exact_counterfactuals_are_never_beaten_by_the_estimator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    k = np.argmax(X @ np.array([[3.0, 0, -3], [0, 3.0, -1]]) + rng.normal(size=(300, 3)) * 0.3, axis=1)
    y = np.array(["z", "a", "m"])[k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CalibratedClassifierCV(LogisticRegression(C=100), ensemble=False, cv=3).fit(X, y)
    form = adapt(est)
    assert form.kind != "linear"  # not exact-linear: saturated classes tie in predict
    near = counterfactuals(form, X[:20], target=np.zeros(20, dtype=int))
    ok = near.status == "found"
    assert np.all(near.status != "failed") and ok.sum() >= 10 and not np.any(near.exact[ok])
    assert np.all(est.predict(near.x_cf[ok]) == est.classes_[0])
    Xq = X[[12]] * 300  # a row far out: every probability saturated; an honest failure is allowed
    r = counterfactuals(form, Xq, target=np.array([0]))
    if r.status[0] != "found":
        return
    assert est.predict(r.x_cf)[0] == est.classes_[0]
    th = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    ref = _first_hit(est.predict, Xq[0], est.classes_[0], np.c_[np.cos(th), np.sin(th)],
                     10 * np.linalg.norm(Xq[0])).min()
    if r.exact[0]:
        assert r.distance[0] <= ref * (1 + 1e-9)
