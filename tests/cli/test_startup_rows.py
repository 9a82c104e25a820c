"""``--rows`` on a CSV (issue 16): the rows after the last one named are counted, not parsed or
decoded, in binary blocks from the byte where the parser stopped; the file is hashed on another
thread meanwhile. The count must equal what reading the whole file gives, whatever the file holds
before that point: a byte-order mark, CRLF endings, non-ASCII cells, a quoted cell over two lines,
blank lines."""

from __future__ import annotations

import hashlib
import random

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from invaudit.errors import InputError
from invaudit.io.data import _count_lines, load_data


def _reference(data: bytes, offset: int) -> int:
    """Non-blank lines from ``offset`` on: split on newlines, a line of nothing or one carriage
    return is blank."""
    return sum(1 for line in data[offset:].split(b"\n") if line not in (b"", b"\r"))


def test_count_lines_equals_splitting_the_bytes(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "f.bin"
    for _ in range(200):
        data = bytes(rng.choice(b"\n\n\r\ra,\xc3\xa9") for _ in range(rng.randint(0, 30)))
        path.write_bytes(data)
        offset = rng.randint(0, len(data))
        for block in (1, 2, 3, 5, 1 << 20):  # lines and CRLF pairs cut across blocks
            assert _count_lines(path, offset, block) == _reference(data, offset), (data, offset, block)


FEATURES = ["income", "age", "debt"]


def _csv(tmp_path, *, bom: bool, newline: str, n: int = 40):
    """A CSV with an ID column (non-ASCII, one quoted over two lines), a label column and the
    features in another order than the model's; blank lines here and there."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, 3)) * np.array([1e5, 10.0, 1e-5])
    y = np.where(X[:, 0] / 1e5 - X[:, 2] / 1e-5 > 0, "good", "bad")
    ids = [f"kund-{i}-ä" for i in range(n)]
    ids[1] = '"two\nlines"'  # a quoted cell spanning two physical lines, inside the read part
    lines = ["id,debt,label,age,income"]
    for i in range(n):
        lines.append(f"{ids[i]},{float(X[i, 2])!r},{y[i]},{float(X[i, 1])!r},{float(X[i, 0])!r}")
        if i in (4, 17):
            lines.append("")  # a blank line (CRLF files: a lone "\r")
    text = newline.join(lines) + newline + newline  # and a blank line at the end
    path = tmp_path / f"rows_{int(bom)}_{len(newline)}.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    model = LogisticRegression(max_iter=5000).fit(pd.DataFrame(X, columns=FEATURES), y)
    return path, model, n


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_rows_counts_the_rest_of_the_file_as_a_full_read_does(tmp_path, bom, newline):
    path, model, n = _csv(tmp_path, bom=bom, newline=newline)
    kw = dict(feature_names=FEATURES, classes=model.classes_, label_column="label", id_column="id")
    full = load_data(path, **kw)
    assert full.n_rows == n and full.n_rows_in_file is None
    for spec, last in (("0-2", 2), ("5", 5), ("1,18", 18)):
        part = load_data(path, rows=spec, **kw)
        assert part.n_rows == last + 1 and part.describe()["n_rows"] == n
        np.testing.assert_array_equal(part.X, full.X[: last + 1])
        assert list(part.ids) == list(full.ids[: last + 1]) and part.ids[1] == "two\nlines"
        assert part.sha256 == full.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_rows_through_the_cli_reports_the_files_row_count(tmp_path, invaudit, validate):
    path, model, n = _csv(tmp_path, bom=True, newline="\r\n")
    joblib.dump(model, tmp_path / "m.joblib")
    args = ("margin", tmp_path / "m.joblib", path, "--label-column", "label", "--id-column", "id",
            "--format", "json")
    part = invaudit(*args, "--rows", "0-2")
    assert part.code == 0, part.err
    rep = validate(part.json())
    assert rep["data"]["n_rows"] == n and [r["row"] for r in rep["results"]] == [0, 1, 2]
    assert [r["row_id"] for r in rep["results"]] == ["kund-0-ä", "two\nlines", "kund-2-ä"]
    whole = invaudit(*args).json()
    assert rep["results"] == whole["results"][:3]
    assert rep["data"]["sha256"] == whole["data"]["sha256"]


def test_an_unreadable_tail_is_not_read_but_a_bad_row_named_is(tmp_path):
    """What follows the last row named is counted, never decoded (beyond the text reader's own
    read-ahead of a few kilobytes): a stray Latin-1 byte there does not stop the run; naming its row
    does, with the usual sentence."""
    path, model, n = _csv(tmp_path, bom=False, newline="\n", n=400)
    lines = path.read_bytes().split(b"\n")
    lines[352] = lines[352].replace(b"\xc3\xa4", b"\xe4")  # Latin-1 'ä' in row 349's ID
    path.write_bytes(b"\n".join(lines))
    kw = dict(feature_names=FEATURES, classes=model.classes_, label_column="label", id_column="id")
    assert load_data(path, rows="0-3", **kw).describe()["n_rows"] == n
    with pytest.raises(InputError, match="not UTF-8"):
        load_data(path, rows="0-360", **kw)
