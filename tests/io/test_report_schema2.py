"""The compact reports ``invaudit.counterfactual/2`` and ``invaudit.margin/2`` (``--schema 2``).

What is checked: every /2 report validates against its shipped JSON Schema, and
``expand_report`` rebuilds from it, given the rows the run read, the /1 report of the same run
with every float bit for bit (the /1 report itself is the reference: it writes every vector in
full); sparse vectors are chosen only where shorter; a ``delta`` or ``feature_importance`` that is
not recomputable bit for bit is written, never dropped.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.io.report import Columns, expand_report, sparse_decode
from invaudit.schemas import schema, schema_for

SCALES = np.array([1e-5, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e5, 1.0])
NAMES = ["age", "income", "ratio", "score", "tenure", "balance", "volume", "rate"]


def _bits(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64).view(np.uint64)


def assert_same_report(r1: dict, r2: dict) -> None:
    """Equal results, float vectors compared bit for bit (NaN and -0.0 included)."""
    assert len(r1["results"]) == len(r2["results"])
    for a, b in zip(r1["results"], r2["results"]):
        assert set(a) == set(b), set(a) ^ set(b)
        for k, v in a.items():
            if isinstance(v, list) and v and all(isinstance(x, float) or x is None for x in v):
                assert np.array_equal(_bits(v), _bits(b[k])), (a["row"], k)
            else:
                assert v == b[k], (a["row"], k, v, b[k])
    assert r1["summary"] == r2["summary"]


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    """A 3-class linear pipeline fitted on named columns at scales 1e-5..1e5, and a CSV of rows
    with an ID column and the columns in another order."""
    d = tmp_path_factory.mktemp("schema2")
    rng = np.random.default_rng(7)
    Z = rng.normal(size=(240, len(NAMES)))
    y = np.where(Z[:, 0] + Z[:, 3] > 0.5, "approve", np.where(Z[:, 1] - Z[:, 6] > 0, "review", "decline"))
    train = pd.DataFrame(Z * SCALES, columns=NAMES)
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=2000)).fit(train, y)
    mlp = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(6,), max_iter=400, random_state=0)).fit(train, y)
    import joblib

    joblib.dump(lr, d / "lr.joblib")
    joblib.dump(mlp, d / "mlp.joblib")
    rows = pd.DataFrame(rng.normal(size=(14, len(NAMES))) * SCALES, columns=NAMES)
    rows.loc[2, "ratio"] = -0.0  # a negative zero must come back as one
    shuffled = rows[NAMES[::-1]].copy()
    shuffled.insert(3, "customer", [f"c{i:03d}" for i in range(len(rows))])
    shuffled.to_csv(d / "rows.csv", index=False, float_format="%.17g")
    X = pd.read_csv(d / "rows.csv")[NAMES].to_numpy(dtype=np.float64)  # the model's column order
    return d, X


def _pair(invaudit, tmp_path, *args):
    """Run a command twice, writing /1 and /2 reports; return both (parsed)."""
    p1, p2 = tmp_path / "r1.json", tmp_path / "r2.json"
    r = invaudit(*args, "--json", p1)
    assert r.code == 0, r.err
    r2 = invaudit(*args, "--json", p2, "--schema", "2")
    assert r2.code == 0, r2.err
    assert r.out == r2.out  # the table on stdout does not depend on the report's version
    one, two = orjson.loads(p1.read_bytes()), orjson.loads(p2.read_bytes())
    jsonschema.validate(one, schema(one["command"]))
    jsonschema.validate(two, schema_for(two))
    assert one["schema"].endswith("/1") and two["schema"].endswith("/2")
    return one, two, p1.stat().st_size, p2.stat().st_size


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_counterfactual_v2_rebuilds_v1_bit_for_bit(invaudit, credit, tmp_path, norm):
    d, X = credit
    one, two, s1, s2 = _pair(invaudit, tmp_path, "counterfactual", d / "lr.joblib", d / "rows.csv",
                             "--id-column", "customer", "--norm", norm, "--target", "review", "--rows", "0-12")
    assert_same_report(one, expand_report(two, X))
    found = [r for r in two["results"] if r["status"] == "found"]
    assert found
    for r in two["results"]:
        # delta = counterfactual - x exactly, and changed features are where they differ: not written
        assert "delta" not in r and "changed_features" not in r
        assert r["n_changed"] == sum(1 for _ in next(o for o in one["results"] if o["row"] == r["row"])["changed_features"])
    # a linear model's importance is its class-pair gradient times delta, bit for bit
    assert all(r["feature_importance"] == {"gradient": r["feature_importance"]["gradient"]} for r in found)
    assert 1 <= len(two["gradients"]) <= 2  # (approve, review) and (decline, review) at most
    assert s2 < s1
    if norm == "l1":  # L1 moves few features: the counterfactual is written as changes to the row
        assert all(isinstance(r["counterfactual"], dict) for r in found)
        assert all(len(r["counterfactual"]["index"]) < len(NAMES) for r in found)


def test_counterfactual_v2_of_a_network_writes_its_importance(invaudit, credit, tmp_path):
    # a network's gradient differs row by row: its feature importance is written (a list), not a table
    d, X = credit
    one, two, _, _ = _pair(invaudit, tmp_path, "counterfactual", d / "mlp.joblib", d / "rows.csv",
                           "--id-column", "customer", "--rows", "0")
    assert "gradients" not in two
    assert any(isinstance(r.get("feature_importance"), list) for r in two["results"])
    assert_same_report(one, expand_report(two, X))


def test_model_inversion_v2_keeps_delta_and_needs_no_rows(invaudit, credit, tmp_path):
    # --from zeros: the start is not a data row, so delta and changed_features stay in the report
    d, _ = credit
    one, two, _, _ = _pair(invaudit, tmp_path, "counterfactual", d / "lr.joblib", "--from", "zeros",
                           "--target", "approve")
    r = two["results"][0]
    assert "delta" in r and "changed_features" in r and isinstance(r["counterfactual"], list)
    assert_same_report(one, expand_report(two))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_margin_v2_rebuilds_v1_bit_for_bit(invaudit, credit, tmp_path, norm):
    d, _ = credit
    one, two, s1, s2 = _pair(invaudit, tmp_path, "margin", d / "lr.joblib", d / "rows.csv",
                             "--id-column", "customer", "--norm", norm)
    assert_same_report(one, expand_report(two))
    pert = [r["perturbation"] for r in two["results"] if r["perturbation"] is not None]
    if norm == "l1":  # one feature moves per row: sparse, and the report shrinks
        assert pert and all(isinstance(p, dict) and len(p["index"]) <= 2 for p in pert)
        assert s2 < s1
    else:  # every feature moves: the plain list is shorter, and /2 is /1 but for its name
        assert all(isinstance(p, list) for p in pert)


def test_margin_v2_as_json_lines(invaudit, credit):
    d, _ = credit
    r = invaudit("margin", d / "lr.joblib", d / "rows.csv", "--id-column", "customer", "--norm", "l1",
                 "--format", "jsonl", "--schema", "2")
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert lines[0]["schema"] == "invaudit.margin/2"
    report = {**lines[0], "results": lines[1:-1], **lines[-1]}
    jsonschema.validate(report, schema_for(report))
    assert any(isinstance(x["perturbation"], dict) for x in lines[1:-1])


def test_schema_3_is_a_usage_error(invaudit, credit):
    d, _ = credit
    r = invaudit("margin", d / "lr.joblib", d / "rows.csv", "--id-column", "customer", "--schema", "3")
    assert r.code == 2


# --- the encoder on its own -----------------------------------------------------------------------

def test_sparse_vectors_are_exact_and_chosen_only_when_shorter():
    rng = np.random.default_rng(3)
    n, D = 9, 40
    M = rng.normal(size=(n, D)) * 10.0 ** rng.integers(-5, 6, size=(n, D))
    M[1] = 0.0                           # nothing moves
    M[2, 5:] = 0.0                       # five entries move
    M[3, ::2] = -0.0                     # negative zeros are entries too (their bits are not +0.0)
    M[4, 3] = np.nan                     # a NaN entry is written as null and read back as NaN
    M[5] = np.where(rng.random(D) < 0.5, 0.0, 1.0)  # half ones: "1.0" is as short as an index
    present = np.ones(n, dtype=bool)
    present[6] = False
    cols = Columns(n).add("row", "int", np.arange(n)).add("v", "vec", M, present=present)
    plain = [orjson.loads(x)["v"] for x in next(cols.lines())]
    dense_len = [len(orjson.dumps(v)) for v in plain]
    cols.sparse("v")
    rows = [orjson.loads(x) for x in next(cols.lines())]
    for i, r in enumerate(rows):
        v = r["v"]
        if not present[i]:
            assert v is None
            continue
        assert len(orjson.dumps(v)) <= dense_len[i]
        back = sparse_decode(v, D)
        assert np.array_equal(back.view(np.uint64), M[i].view(np.uint64)), i
    assert rows[1]["v"] == {"index": [], "value": []}
    assert isinstance(rows[2]["v"], dict) and rows[2]["v"]["index"] == [0, 1, 2, 3, 4]
    assert isinstance(rows[0]["v"], list)  # dense: a list is shorter
    assert cols.row(2)["v"] == M[2].tolist()  # rows as dicts (tables) are not affected


def test_sparse_against_a_base_row():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3, 30)) * 1e3
    M = base.copy()
    M[0, [4, 17]] += 1e-9
    M[1, 2] = -M[1, 2]
    M[2] = rng.normal(size=30)
    cols = Columns(3).add("row", "int", np.arange(3)).add("cf", "vec", M).sparse("cf", base=base)
    rows = [orjson.loads(x) for x in next(cols.lines())]
    assert rows[0]["cf"]["index"] == [4, 17] and rows[1]["cf"]["index"] == [2]
    assert isinstance(rows[2]["cf"], list)
    for i in range(3):
        back = sparse_decode(rows[i]["cf"], 30, base=base[i])
        assert np.array_equal(back.view(np.uint64), M[i].view(np.uint64))


def test_delta_or_importance_that_does_not_recompute_is_written(credit):
    """A delta that is not counterfactual - x bit for bit, or an importance that is not the
    pair's gradient times delta, is written in full: /2 never drops a value it cannot rebuild."""
    import joblib

    from invaudit.counterfactual import counterfactuals_with_extras
    from invaudit.counterfactual.result import CounterfactualBatch
    from invaudit.io import envelope
    from invaudit.io.report import dumps
    from invaudit.models import adapt

    d, X = credit
    form = adapt(joblib.load(d / "lr.joblib"))
    batch, extras = counterfactuals_with_extras(form, X, target=np.full(len(X), 1), norm="l2")
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    found = np.flatnonzero(np.asarray(batch.status) == "found")
    assert len(found) >= 2
    a, b = found[:2]
    delta = np.array(batch.delta, copy=True)
    delta[a, 0] = np.nextafter(delta[a, 0], np.inf)      # one ulp off counterfactual - x
    fi = np.array(extras["feature_importance"], copy=True)
    fi[b, 1] = np.nextafter(fi[b, 1], -np.inf)           # one ulp off gradient * delta
    fields["delta"] = delta
    tampered = CounterfactualBatch(**fields)

    def report(version):
        cols = tampered.columns(form.classes, np.arange(len(X)), feature_names=form.feature_names)
        cols.add("feature_importance", "vec", fi)
        extra = tampered.compact(cols, X, form=form) if version == 2 else None
        rep = envelope("counterfactual", model={"n_features": len(NAMES), "feature_names": form.feature_names},
                       data=None, params={}, results=cols, summary={}, elapsed_s=0.0, extra=extra, version=version)
        return orjson.loads(dumps(rep))

    one, two = report(1), report(2)
    assert "delta" in two["results"][a] and sum("delta" in r for r in two["results"]) == 1
    assert isinstance(two["results"][b]["feature_importance"], list)
    assert_same_report(one, expand_report(two, X))


def test_expand_report_refuses_what_it_cannot_rebuild(credit):
    assert expand_report({"schema": "invaudit.margin/1", "results": []}) == {"schema": "invaudit.margin/1", "results": []}
    with pytest.raises(ValueError, match="schema"):
        expand_report({"schema": "invaudit.influence/2", "results": []})
    two = {"schema": "invaudit.counterfactual/2", "model": {"n_features": 2, "feature_names": None},
           "results": [{"row": 0, "status": "found", "counterfactual": {"index": [1], "value": [2.0]}}]}
    with pytest.raises(ValueError, match="rows it read"):
        expand_report(two)
    back = expand_report(two, np.array([[1.0, -3.0]]))["results"][0]
    assert back["counterfactual"] == [1.0, 2.0] and back["delta"] == [0.0, 5.0] and back["changed_features"] == [1]


@pytest.mark.parametrize("command", ["counterfactual", "margin"])
def test_v2_schemas_are_valid_and_reject_a_v1_envelope(command):
    s = schema(command, 2)
    jsonschema.Draft202012Validator.check_schema(s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": f"invaudit.{command}/2"}, s)
    with pytest.raises(KeyError):
        schema_for({"schema": f"invaudit.{command}/3"})


def test_typed_rows_v2_keeps_their_column_lists(invaudit, samples, tmp_path):
    # a typed-row model answers in its own columns (categories as strings): short lists, kept as in /1
    one, two, _, _ = _pair(invaudit, tmp_path, "counterfactual", samples / "credit_logreg.joblib",
                           samples / "credit_test.csv", "--id-column", "customer", "--label-column", "approved",
                           "--rows", "0-2")
    assert any(isinstance(v, str) for r in two["results"] for v in (r["counterfactual"] or []))
    assert_same_report(one, expand_report(two))
