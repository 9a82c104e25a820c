"""Constraints.build and spread: semantics of every option, and validation."""

from __future__ import annotations

import numpy as np
import pytest

from invaudit.counterfactual import Constraints, spread
from invaudit.errors import InputError


def test_build_options_combine_per_feature():
    X = np.array([[0.0, 5.0, -1.0, 2.0], [3.0, 1.0, 4.0, -7.0]])
    c = Constraints.build(
        X,
        immutable=np.array([True, False, False, False]),
        increase_only=np.array([False, True, False, False]),
        decrease_only=np.array([False, False, True, False]),
        data_lower=np.array([-1.0, 0.0, 0.0, -5.0]),
        data_upper=np.array([1.0, 2.0, 3.0, 5.0]),
        scale=np.array([1.0, 2.0, 4.0, 0.5]),
    )
    # immutable: frozen at x
    assert np.array_equal(c.lower[:, 0], X[:, 0]) and np.array_equal(c.upper[:, 0], X[:, 0])
    # increase-only: lower = x, upper = data upper widened to contain x
    assert np.array_equal(c.lower[:, 1], X[:, 1])
    assert np.array_equal(c.upper[:, 1], [5.0, 2.0])
    # decrease-only: upper = x, lower = data lower widened to contain x
    assert np.array_equal(c.upper[:, 2], X[:, 2])
    assert np.array_equal(c.lower[:, 2], [-1.0, 0.0])
    # plain data bounds, widened per row: row 1 is below the seen range and may stay there
    assert np.array_equal(c.lower[:, 3], [-5.0, -7.0])
    assert np.array_equal(c.upper[:, 3], [5.0, 5.0])
    assert np.allclose(c.weights, [1.0, 0.5, 0.25, 2.0])
    c.validate(X)


def test_no_options_is_unbounded_with_unit_weights():
    X = np.ones((3, 2))
    c = Constraints.build(X)
    assert np.all(np.isneginf(c.lower)) and np.all(np.isposinf(c.upper))
    assert np.array_equal(c.weights, [1.0, 1.0])


def test_both_directions_freeze():
    X = np.array([[1.0, 2.0]])
    m = np.array([True, False])
    c = Constraints.build(X, increase_only=m, decrease_only=m)
    assert c.lower[0, 0] == c.upper[0, 0] == 1.0


@pytest.mark.parametrize("kw", [
    {"immutable": np.array([True])},
    {"scale": np.array([1.0, 0.0])},
    {"scale": np.array([1.0, np.inf])},
    {"data_lower": np.array([2.0, 0.0]), "data_upper": np.array([1.0, 1.0])},
])
def test_bad_options_raise_input_error(kw):
    with pytest.raises(InputError):
        Constraints.build(np.zeros((2, 2)), **kw)


def test_validate_rejects_rows_outside_their_box():
    X = np.zeros((1, 2))
    c = Constraints(lower=np.array([[0.5, -1.0]]), upper=np.array([[1.0, 1.0]]), weights=np.ones(2))
    with pytest.raises(InputError, match="outside its own bounds"):
        c.validate(X)


def test_spread_std_and_mad_against_numpy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(101, 3)) * [1.0, 3.0, 0.5]
    assert np.allclose(spread(X, "std"), X.std(axis=0))
    med = np.median(X, axis=0)
    assert np.allclose(spread(X, "mad"), np.median(np.abs(X - med), axis=0))


def test_spread_fallbacks():
    # column 0: MAD 0 but non-zero std -> std; column 1: constant -> 1
    X = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [10.0, 5.0]])
    s = spread(X, "mad")
    assert s[0] == pytest.approx(X[:, 0].std())
    assert s[1] == 1.0
    assert spread(X, "std")[1] == 1.0
    with pytest.raises(InputError):
        spread(X, "iqr")


def test_from_options_spells_the_user_options():
    import numpy as np
    import pytest

    from invaudit.counterfactual import Constraints, spread
    from invaudit.errors import InputError

    rng = np.random.default_rng(0)
    X, Xtr = rng.normal(size=(3, 3)), rng.normal(size=(20, 3))
    c = Constraints.from_options(X, feature_names=["a", "b", "c"], X_train=Xtr, immutable="a",
                                 increase_only="2", bounds="data", scale="std")
    ref = Constraints.build(X, immutable=np.array([True, False, False]), increase_only=np.array([False, False, True]),
                            data_lower=Xtr.min(0), data_upper=Xtr.max(0), scale=spread(Xtr, "std"))
    for field in ("lower", "upper", "weights"):
        np.testing.assert_array_equal(getattr(c, field), getattr(ref, field))
    with pytest.raises(InputError, match="--scale needs --train"):
        Constraints.from_options(X, scale="mad")
    with pytest.raises(InputError, match="checks\\[0\\].increase_only and checks\\[0\\].decrease_only"):
        Constraints.from_options(X, increase_only="1", decrease_only="1", option_name=lambda k: f"checks[0].{k}")
