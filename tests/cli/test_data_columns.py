"""Columns as users' files have them: order, ID columns, encodings. A column order that cannot be
checked is said out loud; one that contradicts another file is an error, never a silent answer."""

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression


@pytest.fixture
def unnamed(tmp_path):
    """A model fitted on a plain array (no feature names), its training CSV (with an ID column)
    and the true margins of its first rows (|score| / ||w||), computed here independently."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * [1.0, 10.0, 100.0]
    y = (X[:, 0] + X[:, 1] / 10 - X[:, 2] / 100 > 0).astype(int)
    m = LogisticRegression().fit(X, y)
    joblib.dump(m, tmp_path / "m.joblib")
    lines = ["id,a,b,c,y"] + [f"r{i},{float(x[0])!r},{float(x[1])!r},{float(x[2])!r},{t}" for i, (x, t) in enumerate(zip(X, y))]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    true = np.abs(X[:5] @ m.coef_[0] + m.intercept_[0]) / np.linalg.norm(m.coef_[0])
    return tmp_path, X, y, true


def _write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_unnamed_model_reading_by_position_says_so(invaudit, validate, unnamed):
    d, X, y, true = unnamed
    r = invaudit("margin", d / "m.joblib", d / "train.csv", "--label-column", "y", "--id-column", "id",
                 "--rows", "0-4", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["data"]["column_match"] == "position"
    assert "no feature names" in r.err and "by position" in r.err
    got = {x["row"]: x["margin"] for x in rep["results"]}
    np.testing.assert_allclose([got[i] for i in range(5)], true, rtol=1e-9)
    assert [x["row_id"] for x in sorted(rep["results"], key=lambda x: x["row"])] == [f"r{i}" for i in range(5)]


def test_unnamed_model_with_files_in_different_orders_is_an_error(invaudit, unnamed):
    d, X, y, true = unnamed
    test = _write(d / "test.csv", ["id", "c", "a", "b"],
                  [[f"t{i}", repr(float(x[2])), repr(float(x[0])), repr(float(x[1]))] for i, x in enumerate(X[:3])])
    for cmd in (["margin", d / "m.joblib", test, "--train", d / "train.csv", "--label-column", "y",
                 "--bounds", "data", "--id-column", "id"],
                ["counterfactual", d / "m.joblib", test, "--train", d / "train.csv", "--label-column", "y",
                 "--scale", "std", "--target", "1", "--id-column", "id"]):
        r = invaudit(*cmd)
        assert r.code == 3, r.err
        assert "another order" in r.err and "train.csv" in r.err and "Traceback" not in r.err
        assert r.out == ""


def test_named_model_matches_columns_by_name_in_any_order(invaudit, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3)) * [1e-5, 1.0, 1e5]
    y = (X[:, 0] * 1e5 - X[:, 1] + X[:, 2] * 1e-5 > 0).astype(int)
    m = LogisticRegression().fit(X, y)
    m.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)
    joblib.dump(m, tmp_path / "named.joblib")
    shuffled = _write(tmp_path / "s.csv", ["row_name", "c", "a", "b"],
                      [[f"x{i}", repr(float(x[2])), repr(float(x[0])), repr(float(x[1]))] for i, x in enumerate(X[:4])])
    r = invaudit("margin", tmp_path / "named.joblib", shuffled, "--id-column", "row_name", "--format", "json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["data"]["column_match"] == "name" and "by position" not in r.err
    true = np.abs(X[:4] @ m.coef_[0] + m.intercept_[0]) / np.linalg.norm(m.coef_[0])
    got = {x["row_id"]: x["margin"] for x in rep["results"]}
    np.testing.assert_allclose([got[f"x{i}"] for i in range(4)], true, rtol=1e-8)
    table = invaudit("margin", tmp_path / "named.joblib", shuffled, "--id-column", "row_name")
    assert table.code == 0 and "x0" in table.out


@pytest.mark.parametrize("raw, fragment", [
    ("a,b,c\n1,2,3\n".encode("utf-8-sig"), None),                       # a BOM is not part of 'a'
    ("a,b,c\n1,caf\xe9,3\n".encode("latin-1"), "is not UTF-8 text"),
    (b"a,b,c\n1,20.5\x006,3\n", "holds a NUL byte"),
    (b"a,b,c\n1,,3\n", "is blank"),
])
def test_csv_encodings_and_cells(invaudit, unnamed, raw, fragment):
    d = unnamed[0]
    (d / "x.csv").write_bytes(raw)
    r = invaudit("margin", d / "m.joblib", d / "x.csv", "--format", "json")
    if fragment is None:
        assert r.code == 0, r.err
    else:
        assert r.code == 3 and fragment in r.err and "x.csv" in r.err and len(r.err.strip().splitlines()) <= 2


def test_npz_that_is_not_a_zip_or_declares_too_much(invaudit, unnamed):
    import io
    import zipfile

    d = unnamed[0]
    (d / "bad.npz").write_bytes(b"not a zip at all")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**6)})
    with zipfile.ZipFile(d / "huge.npz", "w") as z:
        z.writestr("X.npy", buf.getvalue() + b"\0" * 64)
    for name, fragment in (("bad.npz", "not a readable NPZ"), ("huge.npz", "declares shape")):
        r = invaudit("margin", d / "m.joblib", d / name)
        assert r.code == 3 and fragment in r.err, r.err
