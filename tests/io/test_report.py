import json
import math
import os

import numpy as np
import pytest

from invaudit.io import dumps, envelope, jsonable, write_atomic


def test_jsonable_turns_numpy_and_nonfinite_into_json():
    out = jsonable({"a": np.float64(1.5), "b": np.arange(3), "c": [np.nan, np.inf], "d": np.int64(2)})
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [None, None], "d": 2}
    json.dumps(out, allow_nan=False)


def test_envelope_fields():
    rep = envelope("margin", model={"path": "m"}, data=None, params={}, results=[], summary={}, elapsed_s=0.1)
    assert rep["schema"] == "invaudit.margin/1" and rep["command"] == "margin"
    assert set(rep) >= {"invaudit_version", "model", "data", "params", "results", "summary", "elapsed_s"}


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_atomic(target, "old\n")

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new " * 100000)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_dumps_refuses_nan():
    with pytest.raises(ValueError):
        dumps({"x": math.nan})
