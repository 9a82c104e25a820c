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


def test_dumps_never_writes_nan():
    # JSON has no NaN or infinity: both become null, in scalars and inside numpy vectors
    text = dumps({"x": math.nan, "v": np.array([1.0, np.inf, -np.inf, np.nan])})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "v": [1.0, None, None, None]}


# --- issue 14: signals, stale temporaries, modes, links, writability checked up front ----------

import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from invaudit.errors import InputError
from invaudit.io.report import check_writable, sweep_stale_temporaries


def test_sigterm_mid_write_removes_the_temporary_and_keeps_the_old_report(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(root)!r})
        from invaudit.io import report

        class Slow(str):
            pass

        real_fsync = os.fsync
        def fsync(fd):
            print("writing", flush=True)
            sys.stdin.readline()  # wait here, mid-write, until the test has sent SIGTERM
        os.fsync = fsync
        report.write_atomic({str(target)!r}, "new " * 1000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert target.read_text() == "old\n"


def test_stale_temporaries_of_the_same_target_are_swept(tmp_path):
    target = tmp_path / "r.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".r.json.{dead}.abc123.tmp"
    orphan.write_text("x" * 100)
    old = tmp_path / ".r.json.zzz.tmp"  # an older naming, without a pid: swept by age
    old.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh_other = tmp_path / f".r.json.{os.getpid()}.live.tmp"  # ours, in progress: kept
    fresh_other.write_text("x")
    unrelated = tmp_path / ".other.json.1.x.tmp"
    unrelated.write_text("x")
    write_atomic(target, "new\n")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["r.json", fresh_other.name, unrelated.name])
    assert sweep_stale_temporaries(target) == []


def test_existing_mode_is_kept_and_new_files_follow_the_umask(tmp_path):
    target = tmp_path / "r.json"
    write_atomic(target, "a\n")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    target.chmod(0o640)
    write_atomic(target, "b\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_text() == "b\n"


def test_a_symlinked_report_is_written_through_to_its_target(tmp_path):
    real = tmp_path / "reports" / "r.json"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    write_atomic(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"


def test_check_writable_refuses_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        check_writable(tmp_path / "file" / "r.json")
    with pytest.raises(InputError, match="this is a folder"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # nothing created by the check
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_unwritable_json_path_fails_before_the_model_is_even_read(tmp_path, invaudit):
    (tmp_path / "file").write_text("x")
    r = invaudit("info", str(tmp_path / "missing-model.joblib"), "--json",
                 str(tmp_path / "file" / "r.json"))
    assert r.code == 3 and "not a folder" in r.err


# --- issue 16: results held as columns, encoded in bulk -------------------------------------------

from invaudit.io.report import AtomicFile, Columns, encode, encode_jsonl, to_json  # noqa: E402


def _columns():
    """Every kind of field, with the values that trip encoders: NaN, infinities, -0.0, huge and
    tiny numbers, quotes, commas, brackets, % signs and non-ASCII text in labels."""
    vec = np.array([[1e-300, -0.0, 1e300], [np.nan, 1.0, 2.0], [0.1, 0.2, 0.30000000000000004]])
    return (Columns(3)
            .add("row", "int", np.array([7, 8, 9]))
            .add("margin", "num", np.array([0.5, np.inf, -np.nan]))
            .add("exact", "bool", np.array([True, False, True]))
            .add("norm", "const", "l2")
            .add("label", "cat", np.array([1, -1, 0]), values=['a "b"', "c,d],[e%s", "é∞"])
            .add("perturbation", "vec", vec, present=np.array([True, False, True]))
            .add("extra", "obj", [{"k": [1, 2]}, None, "x"])
            .add("changed", "raw", [b"[0,2]", b"[]", b'["f%"]'])
            .add("lower_bound", "num", np.array([np.nan, 1.5, np.nan]), optional=True))


def test_columns_encode_each_row_as_its_dict_would_be():
    cols = _columns()
    expected = [
        {"row": 7, "margin": 0.5, "exact": True, "norm": "l2", "label": "c,d],[e%s",
         "perturbation": [1e-300, -0.0, 1e300], "extra": {"k": [1, 2]}, "changed": [0, 2]},
        {"row": 8, "margin": None, "exact": False, "norm": "l2", "label": None, "perturbation": None,
         "extra": None, "changed": [], "lower_bound": 1.5},
        {"row": 9, "margin": None, "exact": True, "norm": "l2", "label": 'a "b"',
         "perturbation": [0.1, 0.2, 0.30000000000000004], "extra": "x", "changed": ["f%"]},
    ]
    for chunk in (1, 2, 5):
        lines = [line for block in cols.lines(chunk) for line in block]
        assert [json.loads(line) for line in lines] == expected
        assert all(b"\n" not in line for line in lines)  # one line per row, vectors included
    assert cols.rows(range(3)) == expected
    got = json.loads(lines[0])["perturbation"]
    assert got[0] == 1e-300 and str(got[1]) == "-0.0"  # shortest round trip, sign of zero kept


def test_the_report_text_parses_to_the_same_report_as_plain_dicts():
    cols = _columns()
    extra = {"interrupted": None}
    rep = envelope("margin", model={"path": "m", "classes": np.array([0, 1])}, data=None,
                   params={"eps": [np.float64(0.5)]}, results=cols, summary={"min": np.float32(0.25)},
                   elapsed_s=1.0, extra=extra)
    plain = envelope("margin", model={"path": "m", "classes": np.array([0, 1])}, data=None,
                     params={"eps": [np.float64(0.5)]}, results=list(cols), summary={"min": np.float32(0.25)},
                     elapsed_s=1.0, extra=extra)
    text = b"".join(encode(rep)).decode()
    assert json.loads(text) == json.loads(b"".join(encode(plain))) == jsonable(plain)
    lines = b"".join(encode_jsonl(rep)).decode().splitlines()
    assert json.loads(lines[0]) == {k: json.loads(text)[k] for k in
                                    ("schema", "invaudit_version", "command", "model", "data", "params")}
    assert [json.loads(x) for x in lines[1:-1]] == json.loads(text)["results"]
    assert json.loads(lines[-1]) == {"summary": {"min": 0.25}, "elapsed_s": 1.0, "interrupted": None}
    empty = envelope("margin", model=None, data=None, params={}, results=Columns(0), summary={}, elapsed_s=0)
    assert json.loads(dumps(empty))["results"] == []


def test_an_atomic_stream_appears_only_when_complete(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as fh:
            fh.write(b"half")
            assert target.read_text() == "old\n"
            raise RuntimeError("stop")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"] and target.read_text() == "old\n"
    write_atomic(target, (piece for piece in [b"a", b"b", to_json([1.5])]))
    assert target.read_text() == "ab[1.5]"
