import numpy as np
import pytest

from invaudit.errors import InputError
from invaudit.io import load_data, parse_columns, parse_rows


def write(path, text):
    path.write_text(text)
    return path


def test_csv_columns_matched_by_name_in_any_order(tmp_path):
    p = write(tmp_path / "d.csv", "b,target,a\n2,1,1\n4,0,3\n")
    ds = load_data(p, feature_names=["a", "b"], n_features=2, classes=np.array([0, 1]), label_column="target")
    np.testing.assert_array_equal(ds.X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(ds.y, [1, 0])
    np.testing.assert_array_equal(ds.y_index, [1, 0])
    assert ds.X.dtype == np.float64 and ds.columns == ["a", "b"] and ds.n_rows == 2
    assert len(ds.sha256) == 64


@pytest.mark.parametrize("text, names, label, fragment", [
    ("a,b\n1,2\n", ["a", "c"], None, "lacks the model's feature column 'c'"),
    ("a,b\n1,x\n", None, None, "line 2, column 'b': 'x' is not a number"),
    ("a,b\n1,2\n3,nan\n", None, None, "row 1, line 3, column 'b'"),
    ("a,b\n1,inf\n", None, None, "NaN or infinity"),
    ("", None, None, "is empty"),
    ("a,b\n", None, None, "has no rows"),
    ("a,b\n1,2,3\n", None, None, "line 2: 3 cells where the header has 2"),
    ("a,y\n1,7\n", None, "y", "label 7 is not a class of the model"),
    ("a,y\n1,cat\n", None, "y", "label 'cat' is not a class"),
    ("a,y\n1,0.5\n", None, "y", "label 0.5 is not a class"),
])
def test_csv_errors_name_file_row_and_column(tmp_path, text, names, label, fragment):
    p = write(tmp_path / "d.csv", text)
    with pytest.raises(InputError) as err:
        load_data(p, feature_names=names, classes=np.array([0, 1]), label_column=label)
    msg = str(err.value)
    assert fragment in msg and str(p) in msg and "\n" not in msg


def test_columns_the_model_does_not_read_are_left_out_by_name(tmp_path):
    p = write(tmp_path / "d.csv", "note,b,a\nx,2,1\ny,4,3\n")
    ds = load_data(p, feature_names=["a", "b"], n_features=2, classes=np.array([0, 1]))
    np.testing.assert_array_equal(ds.X, [[1, 2], [3, 4]])
    assert ds.file_columns == ["note", "b", "a"] and ds.columns == ["a", "b"]


def test_missing_markers_in_categorical_cells_are_blanks_unless_a_known_category(tmp_path):
    p = write(tmp_path / "d.csv", "x,c\n1,NA\n2,a\n3,null\n4,\n5,N/A\n")
    ds = load_data(p, schema=[("x", "numeric", None), ("c", "categorical", ["a", "b"])])
    assert ds.frame["c"].isna().tolist() == [True, False, True, True, True]
    ds = load_data(p, schema=[("x", "numeric", None), ("c", "categorical", ["a", "NA"])])
    assert ds.frame["c"].tolist()[:2] == ["NA", "a"] and ds.frame["c"].isna().tolist()[2:] == [True] * 3


def test_label_column_missing_is_an_error_only_where_labels_are_needed(tmp_path):
    p = write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(InputError, match="has no column 'target'"):
        load_data(p, classes=np.array([0, 1]), label_column="target", require_labels=True)
    ds = load_data(p, classes=np.array([0, 1]), label_column="target")
    assert ds.y is None and ds.X.shape == (1, 2)


def test_feature_count_mismatch(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((3, 4)))
    with pytest.raises(InputError, match="has 4 feature columns but the model expects 5"):
        load_data(p, n_features=5)


def test_npy_is_memory_mapped_and_labels_from_second_file(tmp_path):
    p, lp = tmp_path / "x.npy", tmp_path / "y.npy"
    X = np.random.default_rng(0).normal(size=(20, 3))
    np.save(p, X)
    np.save(lp, np.arange(20) % 2)
    ds = load_data(p, n_features=3, classes=np.array([0, 1]), labels_path=lp)
    assert isinstance(ds.X, np.memmap)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y_index, np.arange(20) % 2)


def test_npy_refuses_pickled_objects_and_bad_shapes(tmp_path):
    p = tmp_path / "o.npy"
    np.save(p, np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError):
        load_data(p)
    q = tmp_path / "one.npy"
    np.save(q, np.zeros(5))
    with pytest.raises(InputError, match="1-D"):
        load_data(q)


def test_npz_x_and_y_with_string_classes(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, X=np.ones((2, 2)), y=np.array(["no", "yes"]))
    ds = load_data(p, classes=np.array(["no", "yes"], dtype=object))
    np.testing.assert_array_equal(ds.y_index, [0, 1])
    np.savez(p, X=np.ones((2, 2)), y=np.array(["no", "maybe"]))
    with pytest.raises(InputError, match="'maybe' is not a class"):
        load_data(p, classes=np.array(["no", "yes"], dtype=object))
    np.savez(p, Z=np.ones((2, 2)))
    with pytest.raises(InputError, match="no array 'X'"):
        load_data(p)


def test_missing_labels_when_required(tmp_path):
    p = write(tmp_path / "d.csv", "a\n1\n")
    with pytest.raises(InputError, match="pass --label-column"):
        load_data(p, require_labels=True)


def test_wrong_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="must end in .csv"):
        load_data(write(tmp_path / "d.txt", "a\n1\n"))
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "nope.csv")


def test_parse_rows():
    np.testing.assert_array_equal(parse_rows("0,3,7-9", 10), [0, 3, 7, 8, 9])
    np.testing.assert_array_equal(parse_rows(None, 3), [0, 1, 2])
    np.testing.assert_array_equal(parse_rows("2,2,1", 3), [2, 1])
    for bad in ("10", "a", "5-3", ",", "-1"):
        with pytest.raises(InputError):
            parse_rows(bad, 10)


def test_parse_columns_by_name_or_index():
    mask = parse_columns("age,2", ["age", "income", "debt"], 3, what="--immutable")
    np.testing.assert_array_equal(mask, [True, False, True])
    with pytest.raises(InputError, match="'height' is not a feature"):
        parse_columns("height", ["age"], 1, what="--immutable")
    with pytest.raises(InputError, match="out of range"):
        parse_columns("5", None, 3, what="--immutable")
