"""Which models get influence, and networks through damped conjugate gradients."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from influence_helpers import data, fit
from invaudit.errors import InputError, UnsupportedModelError
from invaudit.influence import SUPPORTED_MESSAGE, build_objective, influence, verify_loo


@pytest.mark.parametrize("est", [DecisionTreeClassifier(max_depth=3), LinearSVC(),
                                 RandomForestClassifier(n_estimators=3, max_depth=2),
                                 LogisticRegression(l1_ratio=1.0, solver="saga", C=0.5)],
                         ids=["tree", "linear-svc", "forest", "l1-logistic"])
def test_models_without_a_twice_differentiable_loss_are_refused(est):
    X, y = data(n=50, d=3, k=2, seed=0)
    est, form = fit(est, X, y)
    with pytest.raises(UnsupportedModelError) as err:
        build_objective(form, X, y)
    assert err.value.exit_code == 3
    msg = str(err.value)
    # the generic sentence, or the reason `info` gives for this model, word for word
    assert msg.startswith(SUPPORTED_MESSAGE) or msg.startswith("influence is not available for this ")
    assert "twice-differentiable" in msg or "not twice differentiable" in msg


def test_bad_inputs_are_one_sentence_input_errors():
    X, y = data(n=50, d=3, k=2, seed=0)
    est, form = fit(LogisticRegression(), X, y)
    with pytest.raises(InputError):
        build_objective(form, X[:, :2], y)
    with pytest.raises(InputError):
        build_objective(form, X, y[:-1])
    obj = build_objective(form, X, y)
    with pytest.raises(InputError):
        influence(obj, X[:2], np.array([0, 5]))
    with pytest.raises(InputError):
        influence(obj, X[:2], y[:2], top=0)
    with pytest.raises(InputError):
        influence(obj, X[:2], y[:2], estimate="second-order")


def _network(seed=0):
    X, y = data(n=90, d=3, k=3, seed=seed, noise=0.1)
    mlp = MLPClassifier(hidden_layer_sizes=(4,), activation="logistic", alpha=1.0, solver="lbfgs",
                        max_iter=20_000, tol=1e-12, random_state=0)
    est, form = fit(mlp, X[:75], y[:75])
    return X, y, est, form


def test_network_solves_match_a_dense_damped_hessian_from_finite_differences():
    X, y, est, form = _network()
    obj = build_objective(form, X[:75], y[:75], damping=0.05)
    assert obj.kind == "network" and not obj.exact and obj.method == "conjugate-gradient"
    assert any("approximate" in n for n in obj.notes)
    theta = form.params()
    P = theta.size

    def total_grad(t):  # sum of per-row gradients + penalty, via a perturbed copy of the network
        import copy

        from invaudit.models.differentiable import from_estimator, unflatten_params
        m = copy.deepcopy(est)
        c, b = unflatten_params(m, t)
        m.coefs_, m.intercepts_ = [np.array(a) for a in c], [np.array(a) for a in b]
        g = from_estimator(m).param_grad(X[:75], y[:75]).sum(axis=0)
        return g + est.alpha * obj.mask * t

    h = 1e-6
    H = np.column_stack([(total_grad(theta + h * e) - total_grad(theta - h * e)) / (2 * h)
                         for e in np.eye(P)])
    H = 0.5 * (H + H.T) + obj.damping * 75 * np.eye(P)
    G = obj.test_gradients(X[75:78], y[75:78])
    np.testing.assert_allclose(obj.solve(G), np.linalg.solve(H, G.T).T, rtol=1e-5,
                               atol=1e-7 * np.abs(G).max())


def test_network_influence_tracks_real_refits():
    X, y, est, form = _network()
    obj = build_objective(form, X[:75], y[:75], damping=0.0)
    res = influence(obj, X[75:80], y[75:80], top=3, features=True)
    assert not res.exact and res.estimate == "first-order"
    assert len(res.rows[0].helpful[0].feature_gradient) == 3
    v = verify_loo(obj, X[75:80], y[75:80], np.arange(0, 75, 5), max_iter=500)
    assert v.spearman > 0.85 and v.pearson > 0.9


def test_supports_agrees_with_build_objective():
    """info, mislabel and influence ask supports(); it must say exactly what build_objective does."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    from invaudit.errors import UnsupportedModelError
    from invaudit.influence import build_influence_objective, build_objective, supports
    from invaudit.models import adapt
    from invaudit.models.capabilities import capabilities

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    models = [LogisticRegression(), LogisticRegression(l1_ratio=1.0, solver="liblinear"), LinearSVC(),
              DecisionTreeClassifier(max_depth=2), MLPClassifier(hidden_layer_sizes=(3,), max_iter=50)]
    for est in models:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            form = adapt(est.fit(X, y))
        kind = supports(form)
        try:
            build_objective(form, X, y)
            built = True
        except UnsupportedModelError:
            built = False
        assert built == (kind is not None), type(est).__name__
        try:  # info promises what any influence objective builds (trees, KNN, NB/QDA too)
            build_influence_objective(form, X, y)
            any_built = True
        except UnsupportedModelError:
            any_built = False
        influence_cap = next(c for c in capabilities(form) if c.command == "influence")
        assert (influence_cap.available == "yes") == any_built, type(est).__name__
