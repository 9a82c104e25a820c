"""Red team: tree composites whose class scores tie in exact arithmetic but not in the
estimator's floats.

``VotingClassifier(voting="hard", weights=[0.1, 0.2, 0.3])`` sums its weights with ``bincount``:
two trees (0.1 + 0.2 = 0.30000000000000004) outvote the third (0.3), while the trees form's
votes tie exactly. The MILP used to resolve the tie by class index, proved "no other class /
target is reachable" and reported wrong exact margins and "infeasible" counterfactuals. The
reference is a brute force over the cells the member trees' split points cut, classed by the
estimator's own ``predict``.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from exact_helpers import cells, nearest_cell_distance, tree_cuts
from sklearn.ensemble import VotingClassifier
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from invaudit.counterfactual import counterfactuals
from invaudit.margins import margins
from invaudit.margins._trees import ties_resolved
from invaudit.models import adapt


@lru_cache(maxsize=None)
def _model(weights):
    rng = np.random.default_rng(5)
    X = np.round(rng.normal(size=(80, 2)) * 2) / 2 * np.array([1e-5, 1e5])  # ties, rows on splits
    k = (X[:, 0] * 1e5 + (X[:, 1] * 1e-5) ** 2 > 0.4).astype(int) + (X[:, 1] > 0.5e5)
    y = np.array(["zeta", "alpha", "Mid"])[k]  # string labels, sorted order != first-seen order
    est = VotingClassifier([("a", DecisionTreeClassifier(max_depth=2, random_state=0)),
                            ("b", ExtraTreeClassifier(max_depth=3, random_state=1)),
                            ("c", DecisionTreeClassifier(max_depth=1))],
                           voting="hard", weights=list(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X


def test_float_weights_make_ties_the_estimators_own_call():
    est, _ = _model((0.1, 0.2, 0.3))
    assert not ties_resolved(adapt(est))
    est_int, _ = _model((1, 2, 3))
    assert ties_resolved(adapt(est_int))  # integer weights add exactly: the index rule holds


@pytest.mark.parametrize("weights", [(0.1, 0.2, 0.3), (1, 2, 3)])
def test_hard_voting_margins_and_counterfactuals_match_the_cells(weights):
    est, X = _model(weights)
    form = adapt(est)
    assert form.kind == "trees"
    grid = cells(tree_cuts(est, 2))
    Xq = X[:8]
    own = est.predict(Xq)
    b = margins(form, Xq, time_limit=10)
    for i, x in enumerate(Xq):
        ref = nearest_cell_distance(est, grid, x, other_than=own[i])
        tol = 1e-9 * ref + 1e-12
        assert est.predict((x + b.perturbation[i])[None])[0] != own[i]
        assert b.lower_bound[i] <= ref + tol and b.margin[i] >= ref - tol
        if b.exact[i]:
            assert b.margin[i] == pytest.approx(ref, rel=1e-9)
    # tiny programs: every row settles (one used to stop at a cell met deeper than its nearest point)
    assert b.exact.all()
    for t, label in enumerate(est.classes_):
        r = counterfactuals(form, Xq, target=np.full(len(Xq), t), norm="l2", time_limit=10)
        for i, x in enumerate(Xq):
            ref = nearest_cell_distance(est, grid, x, target=label)
            if r.status[i] == "infeasible":
                assert not np.isfinite(ref), (i, label, ref)
                continue
            if r.status[i] not in ("found", "already-target"):
                continue
            assert est.predict(r.x_cf[i][None])[0] == label
            d = float(np.linalg.norm(r.x_cf[i] - x))
            assert d >= ref * (1 - 1e-9)
            if r.exact[i]:
                assert d == pytest.approx(ref, rel=1e-9, abs=1e-12)
