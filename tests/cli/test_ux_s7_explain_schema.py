"""explain's JSON Schema lists every field an explain report carries (``method``, ``minimal``,
``summary.time_limited``, ...): real reports, numeric and typed rows, cut short by a time limit or
not, validate against it, and a field the report has that the schema does not name fails."""

from __future__ import annotations

import pytest

from invaudit.schemas import schema


def unlisted(report, sch, path="$") -> list:
    """Keys of ``report`` (recursively, through objects and arrays of objects) that ``sch`` does not
    list under ``properties``. A value described by ``anyOf`` (params.baseline) is not walked."""
    out = []
    if isinstance(report, dict):
        props = sch.get("properties")
        if props is None:
            return [f"{path} (an object the schema describes without properties)"]
        for key, value in report.items():
            if key not in props:
                out.append(f"{path}.{key}")
            elif "anyOf" not in props[key]:
                out += unlisted(value, props[key], f"{path}.{key}")
    elif isinstance(report, list) and "items" in sch:
        for i, item in enumerate(report[:3]):
            if isinstance(item, (dict, list)):
                out += unlisted(item, sch["items"], f"{path}[{i}]")
    return out


def test_the_walk_finds_a_field_the_schema_does_not_list():
    sch = schema("explain")
    rep = {"results": [{"row": 0, "explanations": [{"features": [1], "novel": 1}]}], "summary": {"rows_cut": 2}}
    assert unlisted(rep, sch) == ["$.results[0].explanations[0].novel", "$.summary.rows_cut"]


def test_a_time_limited_numeric_report_is_fully_described(invaudit, validate, samples, tmp_path):
    """--time-limit 0 cuts every row short: method then says what was cut, summary.time_limited counts
    them; --id-column adds row_id. Every field is in the schema and every value fits it."""
    import csv

    with open(samples / "breast_cancer_test.csv", newline="") as fh:
        rows = list(csv.reader(fh))[:5]
    data = tmp_path / "named.csv"
    with open(data, "w", newline="") as fh:  # an ID column in front, the label column last
        csv.writer(fh).writerows([["patient"] + rows[0]] + [[f"p{i}"] + r for i, r in enumerate(rows[1:])])
    r = invaudit("explain", samples / "breast_cancer_logreg.joblib", data, "--label-column", "target",
                 "--id-column", "patient", "--baseline", "mean", "--train", samples / "breast_cancer_train.csv",
                 "--time-limit", "0", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert unlisted(rep, schema("explain")) == []
    assert rep["summary"]["time_limited"] >= 1
    assert any(x["method"].startswith("multirex; stopped by the time limit") for x in rep["results"])
    assert [x["row_id"] for x in rep["results"]] == ["p0", "p1", "p2", "p3"]
    assert {"method", "exact", "explained_class"} <= set(rep["results"][0])
    # the schema requires the summary's counts: a report without time_limited is refused
    import jsonschema

    del rep["summary"]["time_limited"]
    with pytest.raises(jsonschema.ValidationError):
        validate(rep)


def test_a_typed_rows_report_is_fully_described(invaudit, validate, samples):
    r = invaudit("explain", samples / "credit_logreg.joblib", samples / "credit_test.csv", "--train",
                 samples / "credit_train.csv", "--label-column", "approved", "--id-column", "customer",
                 "--rows", "0-2", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert unlisted(rep, schema("explain")) == []
    assert "input_schema" in rep["model"] and rep["results"][0]["explanations"][0]["columns"]
