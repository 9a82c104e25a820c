"""The report's bulk encoding writes the bytes a row-by-row encoding writes.

What changed for speed (issue 16) and is checked here against independent references:

- vectors of 48 or more entries are encoded one orjson call per row, shorter ones in one call per
  chunk (both paths, and a width on each side of the switch);
- a chunk of rows is joined by one ``bytes.join`` over interleaved pieces (``EncodedRows.join``)
  instead of a format call per row;
- ``leave_out`` does not encode a chunk whose rows all leave the field out;
- ``jsonable`` converts finite float and integer arrays with one ``tolist``.

The reference for a row is ``orjson.dumps`` of the row as a plain dict, built here from the raw
arrays (NaN and infinities as None), and the whole report must equal the report whose results
are that list of dicts, byte for byte, in JSON and JSON Lines.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from invaudit.io import envelope, jsonable
from invaudit.io.report import Columns, EncodedRows, encode, encode_jsonl, json_chunk, jsonl_chunk


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _vectors(rng, n, d):
    V = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-5, 6, size=(n, d))
    if V.size:
        flat = V.reshape(-1)
        k = max(1, flat.size // 20)
        flat[rng.choice(flat.size, k)] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e308], k)
    return V


def _build(n: int, d: int, seed: int):
    """Columns of every kind and the same rows as plain dicts (the reference)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n) * 3
    num = rng.normal(size=n) * 10.0 ** rng.integers(-5, 6, size=n)
    num[rng.uniform(size=n) < 0.2] = np.nan
    opt = np.where(rng.uniform(size=n) < 0.5, np.nan, rng.uniform(size=n))
    codes = rng.integers(-1, 3, size=n)
    labels = ["yes", 'say "no"', "é,∞],["]
    flags = rng.uniform(size=n) < 0.5
    V = _vectors(rng, n, d)
    W = _vectors(rng, n, d)
    present = rng.uniform(size=n) < 0.8
    objs = [None if i % 4 == 0 else {"k": i, "s": "x%sy"} for i in range(n)]
    cols = (Columns(n).add("row", "int", rows).add("num", "num", num).add("norm", "const", "l2")
            .add("label", "cat", codes, values=labels).add("exact", "bool", flags)
            .add("v", "vec", V, present=present).add("w", "vec", W).add("o", "obj", objs)
            .add("lb", "num", opt, optional=True))
    dicts = []
    for i in range(n):
        r = {"row": int(rows[i]), "num": _plain(float(num[i])), "norm": "l2",
             "label": None if codes[i] < 0 else labels[codes[i]], "exact": bool(flags[i]),
             "v": [_plain(x) for x in V[i].tolist()] if present[i] else None,
             "w": [_plain(x) for x in W[i].tolist()], "o": objs[i]}
        if not math.isnan(opt[i]):
            r["lb"] = float(opt[i])
        dicts.append(r)
    return cols, dicts


@pytest.mark.parametrize("d", [0, 1, 5, 47, 48, 130])
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_chunks_write_each_row_as_its_dict(d, chunk):
    cols, dicts = _build(23, d, seed=d)
    expected = [orjson.dumps(r) for r in dicts]
    encs = list(cols.chunks(chunk))
    assert sum(len(e) for e in encs) == 23
    lines = [line for e in encs for line in e.lines()]
    assert lines == expected
    text = b"".join(json_chunk(e, first=i == 0) for i, e in enumerate(encs))
    assert text == b"\n    " + b",\n    ".join(expected)
    assert b"".join(jsonl_chunk(e) for e in encs) == b"".join(x + b"\n" for x in expected)


def test_whole_reports_equal_the_reports_of_plain_dicts():
    cols, dicts = _build(40, 60, seed=1)
    kw = dict(model={"path": "m", "classes": np.array([0, 1])}, data=None, params={"eps": [np.float64(0.5)]},
              summary={"min": np.float32(0.25), "v": np.array([1.0, np.nan])}, elapsed_s=1.0,
              extra={"gradients": np.arange(6.0).reshape(2, 3)})
    fast = envelope("margin", results=cols, **kw)
    plain = envelope("margin", results=dicts, **kw)
    assert b"".join(encode(fast)) == b"".join(encode(plain))
    assert b"".join(encode_jsonl(fast)) == b"".join(encode_jsonl(plain))
    empty = envelope("margin", results=Columns(0), **kw)
    assert b"".join(encode(empty)) == b"".join(encode(envelope("margin", results=[], **kw)))


def test_left_out_and_sparse_fields_are_not_encoded_where_every_row_leaves_them_out(monkeypatch):
    cols, dicts = _build(12, 50, seed=2)
    cols.leave_out("w", rows=np.ones(12, dtype=bool))
    cols.leave_out("v", rows=np.arange(12) % 3 == 0)
    calls = []
    original = Columns._encoded

    def spy(self, name, lo, hi):
        calls.append(name)
        return original(self, name, lo, hi)

    monkeypatch.setattr(Columns, "_encoded", spy)
    lines = [x for e in cols.chunks() for x in e.lines()]
    assert "w" not in calls and "v" in calls
    for i, (line, r) in enumerate(zip(lines, dicts)):
        r = {k: v for k, v in r.items() if k != "w" and not (k == "v" and i % 3 == 0)}
        assert line == orjson.dumps(r)


@pytest.mark.parametrize("ids", [["r1", "r 2", 'q"uote', "é∞", "", "tab\tnew\nline"],
                                 ["a,b", "c"], ["x", 3, None], ["x", np.str_("y")]])
def test_string_cells_are_encoded_as_one_by_one(ids):
    cols = Columns(len(ids)).add("row", "int", np.arange(len(ids))).add("row_id", "obj", ids)
    expected = [orjson.dumps({"row": i, "row_id": v}) for i, v in enumerate(ids)]
    assert [x for e in cols.chunks() for x in e.lines()] == expected


def test_join_and_lines_agree_on_keys_holding_percent_signs():
    enc = EncodedRows(2, [b'"a%s":', b',"%b":', b""], [[b"1", b"2"], [b"[]", b"null"], [b',"c":3', b""]])
    assert enc.lines() == [b'{"a%s":1,"%b":[]' + b',"c":3}', b'{"a%s":2,"%b":null}']
    assert enc.join(b"<", b"|", b">") == b"<" + b"|".join(enc.lines()) + b">"


def _reference_jsonable(obj):
    """The conversion as it was: every array walked value by value."""
    if isinstance(obj, dict):
        return {str(k): _reference_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_reference_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _reference_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@pytest.mark.parametrize("arr", [
    np.arange(6.0).reshape(2, 3), np.array([1.0, np.nan, -np.inf]), np.array([[0.5], [np.inf]]),
    np.arange(4, dtype=np.int32), np.array([True, False]), np.array([1.5, 2.25], dtype=np.float32),
    np.zeros((0, 3)), np.float64(np.nan) * np.ones(()), np.array(["a", "b"]), np.array(np.nan),
])
def test_jsonable_arrays_convert_as_before(arr):
    got, ref = jsonable({"x": arr}), _reference_jsonable({"x": arr})
    assert got == ref and orjson.dumps(got) == orjson.dumps(ref)
    assert type(got["x"]) is type(ref["x"])
