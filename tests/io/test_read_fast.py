"""The numeric CSV fast path reads exactly what the csv module path reads.

``invaudit.io.data._read_numeric_fast`` splits plain numeric CSV text in bulk instead of going
through ``csv.reader`` and an object array (1.4-1.6x less CPU, measured on a loaded machine). Every file here is
read twice, with the fast path and with it switched off, and the two must agree bit for bit
(features, labels, IDs, what ``describe`` reports) or fail with the same sentence; the files
the fast path must hand back to the reader (quotes, lone carriage returns, cells ``float`` does
not take from bytes) are checked to be handed back.
"""

from __future__ import annotations

import numpy as np
import pytest

from invaudit.errors import InputError
from invaudit.io import data as data_mod
from invaudit.io import load_data

NAMES = ["income", "age", "debt"]


def _both(path, monkeypatch, **kw):
    """``(fast, slow, fast path used)``: each a Dataset or the InputError message."""
    used = []
    original = data_mod._read_numeric_fast

    def spy(*a):
        out = original(*a)
        used.append(out is not None)
        return out

    def read():
        try:
            return load_data(path, **kw)
        except InputError as exc:
            return str(exc)

    monkeypatch.setattr(data_mod, "_read_numeric_fast", spy)
    fast = read()
    monkeypatch.setattr(data_mod, "_read_numeric_fast", lambda *a: None)
    slow = read()
    monkeypatch.setattr(data_mod, "_read_numeric_fast", original)
    return fast, slow, any(used)


def _same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert a.X.dtype == b.X.dtype == np.float64 and a.X.shape == b.X.shape
    assert np.array_equal(a.X.view(np.uint64), b.X.view(np.uint64))  # -0.0, subnormals: the same bits
    for k in ("y", "y_index", "ids"):
        va, vb = getattr(a, k), getattr(b, k)
        assert (va is None) == (vb is None), k
        if va is not None:
            assert va.dtype == vb.dtype and va.tolist() == vb.tolist(), k
    assert a.columns == b.columns and a.file_columns == b.file_columns and a.describe() == b.describe()


def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


def _numbers(rng, n, d):
    """Values at scales 1e-5..1e5, some integers, some -0.0, written in many forms."""
    X = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-5, 6, size=(n, d))
    whole = rng.uniform(size=(n, d)) < 0.1
    X[whole] = np.round(X[whole])
    X[0, 0] = -0.0
    cells = [[repr(float(v)) for v in row] for row in X]
    forms = [lambda v: v, lambda v: f"{float(v):.17g}", lambda v: f"{float(v):.3e}", lambda v: f" {v}",
             lambda v: f"{v} ", lambda v: f"+{v}" if not v.startswith("-") else v,
             lambda v: f"{float(v):.25f}"]
    for i in range(n):
        for j in range(d):
            cells[i][j] = forms[int(rng.integers(len(forms)))](cells[i][j])
    return cells


CLEAN = {
    "named, other order, ID and label, CRLF": dict(
        sep="\r\n", header=["id", "debt", "label", "income", "notes", "age"],
        kw=dict(feature_names=NAMES, id_column="id", label_column="label", classes=np.array(["no", "yes"]))),
    "unnamed, by position": dict(sep="\n", header=["a", "b", "c"], kw=dict(n_features=3)),
    "blank lines and no final newline": dict(sep="\n", header=["income", "age", "debt"], blank=True,
                                             kw=dict(feature_names=NAMES)),
    "byte-order mark, IDs with spaces": dict(sep="\n", header=["id", "income", "age", "debt"], bom=True,
                                             kw=dict(feature_names=NAMES, id_column="id")),
}


@pytest.mark.parametrize("case", sorted(CLEAN))
def test_clean_numeric_files_take_the_fast_path_and_read_the_same(case, tmp_path, monkeypatch):
    spec = CLEAN[case]
    rng = np.random.default_rng(len(case))
    n = 60
    nums = _numbers(rng, n, 3)
    lines = [",".join(spec["header"])]
    for i in range(n):
        row = {"id": f" r-{i} " if spec.get("bom") else f"r{i}", "label": ["no", "yes"][i % 2],
               "notes": f"note {i}; ünïcode", "income": nums[i][0], "age": nums[i][1], "debt": nums[i][2],
               "a": nums[i][0], "b": nums[i][1], "c": nums[i][2]}
        lines.append(",".join(row[h] for h in spec["header"]))
        if spec.get("blank") and i % 17 == 3:
            lines.append("")
    text = spec["sep"].join(lines) + ("" if spec.get("blank") else spec["sep"])
    if spec.get("bom"):
        text = "\ufeff" + text
    path = _write(tmp_path, text)
    fast, slow, used = _both(path, monkeypatch, **spec["kw"])
    assert used and not isinstance(fast, str)
    _same(fast, slow)
    assert fast.n_rows == n


def test_blocks_split_anywhere_read_the_same(tmp_path, monkeypatch):
    """Blocks of a few bytes: a line cut at every position is carried to the next block."""
    rng = np.random.default_rng(3)
    nums = _numbers(rng, 25, 3)
    text = "id,income,age,debt\n" + "".join(f"x{i},{','.join(r)}\n" for i, r in enumerate(nums)) + "\n\n"
    path = _write(tmp_path, text)
    for block in (7, 64, 1000):
        monkeypatch.setattr(data_mod, "_FAST_BLOCK", block)
        fast, slow, used = _both(path, monkeypatch, feature_names=NAMES, id_column="id")
        assert used
        _same(fast, slow)


HANDED_BACK = {
    # the reader's own message (or value), never the fast path's
    "a blank cell": "1,2,3\n4,,6\n",
    "NA": "1,2,3\nNA,5,6\n",
    "an Arabic-Indic digit (float takes it from a str)": "1,2,3\n\u0661,5,6\n",
    "a no-break space around a number": "1,2,3\n\u00a04,5,6\n",
    "a quoted cell": '1,"2",3\n4,5,6\n',
    "a quoted cell holding a comma": '1,"2,5",3\n4,5,6\n',
    "a lone carriage return": "1,2,3\r4,5,6\n",
    "a missing cell": "1,2,3\n4,5\n",
    "an extra cell": "1,2,3\n4,5,6,7\n",
    "a line of spaces": "1,2,3\n   \n4,5,6\n",
    "text": "1,2,3\nfour,5,6\n",
    "true": "1,2,3\ntrue,5,6\n",
}


@pytest.mark.parametrize("case", sorted(HANDED_BACK))
def test_files_the_reader_must_read_are_handed_back(case, tmp_path, monkeypatch):
    path = _write(tmp_path, "income,age,debt\n" + HANDED_BACK[case])
    fast, slow, used = _both(path, monkeypatch, feature_names=NAMES)
    assert not used
    _same(fast, slow)


def test_underscores_read_as_the_reader_reads_them(tmp_path, monkeypatch):
    """``float`` takes ``1_000`` from bytes as from a str: the same number either way."""
    path = _write(tmp_path, "income,age,debt\n1_000,2,3\n4,5,6_5.5\n")
    fast, slow, _ = _both(path, monkeypatch, feature_names=NAMES)
    _same(fast, slow)
    assert fast.X[0, 0] == 1000.0


@pytest.mark.parametrize("body", ["1,2,3\nnan,5,6\n", "1,2,3\n4,inf,6\n", "1,2,3\n4,1e400,6\n",
                                  "1,2,3\n4,-Infinity,6\n"])
def test_non_finite_cells_fail_with_the_same_sentence(body, tmp_path, monkeypatch):
    path = _write(tmp_path, "income,age,debt\n" + body)
    fast, slow, _ = _both(path, monkeypatch, feature_names=NAMES)
    assert isinstance(fast, str) and "not allowed" in fast
    _same(fast, slow)


def test_an_ignored_column_that_is_not_utf8_or_too_long_still_fails(tmp_path, monkeypatch):
    bad = _write(tmp_path, b"income,age,debt,notes\n1,2,3,ok\n4,5,6,caf\xe9\n", "latin1.csv")
    fast, slow, used = _both(bad, monkeypatch, feature_names=NAMES)
    assert not used and isinstance(fast, str) and "UTF-8" in fast
    _same(fast, slow)
    long = _write(tmp_path, "income,age,debt,notes\n1,2,3," + "x" * 140_000 + "\n", "long.csv")
    fast, slow, used = _both(long, monkeypatch, feature_names=NAMES)
    assert not used and isinstance(fast, str)
    _same(fast, slow)


def test_wide_file_reads_the_same(tmp_path, monkeypatch):
    """500 columns, no names: the whole-row conversion path."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 500)) * 10.0 ** rng.integers(-5, 6, size=(12, 500))
    text = ",".join(f"x{j}" for j in range(500)) + "\n" + "".join(",".join(map(repr, r.tolist())) + "\n" for r in X)
    path = _write(tmp_path, text)
    fast, slow, used = _both(path, monkeypatch, n_features=500)
    assert used
    _same(fast, slow)
    assert np.array_equal(fast.X, X)
