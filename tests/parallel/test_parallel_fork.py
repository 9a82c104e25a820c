"""Forked workers that take their chunks from a shared counter (Linux), and guided chunk plans
(largest chunks first): every chunk solved once, in any process, with the serial answers; a
failing or dying worker ends the run with an error instead of a hang."""

import gc
import os
import time

import joblib
import numpy as np
import pytest

from invaudit import parallel
from invaudit.models import adapt

pytestmark = [pytest.mark.skipif(not parallel._can_fork(), reason="forked workers: Linux only"),
              pytest.mark.usefixtures("pool_answers")]


def _where(shared, part, a, b, progress):
    """A chunk's rows doubled, and who solved it (module level: forked workers inherit it)."""
    if shared.get("sleep"):
        time.sleep(shared["sleep"])
    if shared.get("fail_at") is not None and a <= shared["fail_at"] < b and os.getpid() != shared["parent"]:
        if shared.get("die"):
            os._exit(7)
        raise ValueError(f"row {shared['fail_at']} is bad")
    return {"y": part["X"] * 2.0, "pid": np.full(b - a, os.getpid())}


@pytest.mark.parametrize("n,lo,hi", [(6144, 128, 512), (1000, 128, 512), (8, 3, 512), (255, 128, 512),
                                     (100_003, 128, 512), (97, 1, 40), (5000, 64, 64)])
def test_guided_plan_covers_every_row_once_largest_first(n, lo, hi):
    chunks = parallel.plan(n, min_rows=lo, max_chunks=64, max_rows=hi)
    sizes = [b - a for a, b in chunks]
    assert [a for a, _ in chunks[1:]] == [b for _, b in chunks[:-1]]
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert len(chunks) <= 64
    assert all(s >= lo for s in sizes) or len(chunks) == 1
    if len(chunks) > 1 and hi > lo:
        least = max(lo, -(-n // 64))  # max_chunks wins over min_rows
        big = max(least, hi)
        assert all(least <= s <= big for s in sizes[:-1]) and least <= sizes[-1] < big + least
        assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # largest first
    if hi <= lo:  # no guided plan asked for: equal chunks, as before
        assert chunks == parallel.plan(n, min_rows=lo, max_chunks=64)


def test_guided_plan_pays_fewer_fixed_costs_with_a_small_tail():
    sizes = [b - a for a, b in parallel.plan(6144, min_rows=128, max_rows=512)]
    equal = parallel.plan(6144, min_rows=128)
    assert len(sizes) <= len(equal) // 2          # 48 equal chunks of 128 rows -> 22
    assert sizes[0] == 512 and sizes[-2] == 128    # the last chunks are the small ones


def test_every_chunk_once_and_in_row_order_from_both_processes():
    n = 60
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    shared = {"sleep": 0.01, "parent": os.getpid()}
    done = []
    out = parallel.map_chunks(_where, n, shared=shared, parts={"X": X}, jobs=2, min_rows=1, max_chunks=30,
                              progress=lambda d, t: done.append(d))
    y = np.concatenate([o["y"] for o in out])
    assert np.array_equal(y, X * 2.0)
    pids = set(np.concatenate([o["pid"] for o in out]).tolist())
    assert os.getpid() in pids and len(pids) == 2  # this process and one worker both solved chunks
    assert parallel.last_run["here"] + parallel.last_run["pool"] == 30
    assert done[-1] == n and done == sorted(done)
    assert gc.get_freeze_count() == 0  # the objects frozen for the fork are back


def test_a_worker_error_is_raised_as_itself_and_the_workers_stop():
    n = 40
    X = np.zeros((n, 1))
    # chunk 1 is the worker's first: only the worker meets the bad row
    shared = {"fail_at": 3, "parent": os.getpid()}
    with pytest.raises(ValueError, match="row 3 is bad"):
        parallel.map_chunks(_where, n, shared=shared, parts={"X": X}, jobs=2, min_rows=2, max_chunks=20)
    assert gc.get_freeze_count() == 0
    assert not [p for p in __import__("multiprocessing").active_children() if p.name.startswith("invaudit-worker")]


def test_a_worker_that_dies_ends_the_run_with_a_sentence_not_a_hang(monkeypatch):
    monkeypatch.setattr(parallel, "_WAIT_S", 0.05)
    n = 40
    X = np.zeros((n, 1))
    shared = {"fail_at": 3, "die": True, "parent": os.getpid(), "sleep": 0.02}
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="worker process stopped .exit code 7"):
        parallel.map_chunks(_where, n, shared=shared, parts={"X": X}, jobs=2, min_rows=2, max_chunks=20)
    assert time.perf_counter() - t0 < 30
    assert gc.get_freeze_count() == 0


def test_mlp_margins_on_a_guided_plan_equal_serial(samples, monkeypatch):
    # a network's attack has a fixed cost per chunk: few, small chunks keep the test short
    monkeypatch.setattr(parallel, "_margin_rows", lambda form: 1)
    monkeypatch.setattr(parallel, "_margin_max_rows", lambda form: 2)
    monkeypatch.setattr(parallel, "GUIDE", 2)
    form = adapt(joblib.load(samples / "digits_mlp.joblib"))
    X = np.asarray(np.load(samples / "digits_test.npz")["X"][:5], dtype=np.float64)
    sizes = [b - a for a, b in parallel.plan(5, min_rows=1, max_rows=2)]
    assert sizes == [2, 2, 1]  # largest first
    serial = parallel.margins(form, X, jobs=1)
    pool = parallel.margins(form, X, jobs=2)
    assert parallel.last_run["pool"] >= 1
    for f in ("margin", "perturbation", "exact", "lower_bound", "method", "predicted_index"):
        a, b = np.asarray(getattr(serial, f)), np.asarray(getattr(pool, f))
        assert a.shape == b.shape and (np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f"
                                       else np.array_equal(a, b)), f
    ok = np.isfinite(serial.margin)
    assert ok.sum() >= 4  # and the answers are real: the model changes its mind at each one
    assert np.all(form.estimator.predict(X[ok] + serial.perturbation[ok]) != form.estimator.predict(X[ok]))


_SOLVED_HERE: list = []


def _logged(shared, part, a, b, progress):
    if os.getpid() == shared["parent"]:
        _SOLVED_HERE.append(a)
    time.sleep(shared["sleep"] * (b - a))
    return [a, b]


def test_auto_jobs_times_the_smallest_chunk_alone_and_keeps_row_order():
    """With the default --jobs, a chunk runs alone before the workers start: of a guided plan,
    one of its smallest, not its largest (first); the results still come in row order."""
    _SOLVED_HERE.clear()
    n = 120
    chunks = parallel.plan(n, min_rows=4, max_rows=16)
    shared = {"parent": os.getpid(), "sleep": 0.01}  # 40 ms alone, then ~1.2 s: the pool starts
    got = list(parallel.imap_chunks(_logged, n, shared=shared, parts={"X": np.zeros((n, 1))}, jobs=None,
                                    min_rows=4, max_rows=16))
    assert [c for c, _ in got] == chunks and [r for _, r in got] == [list(c) for c in chunks]
    size = {a: b - a for a, b in chunks}
    assert size[_SOLVED_HERE[0]] == min(size.values()) < size[0]  # a smallest chunk first (the rest > 0.5 s)
    assert parallel.last_run["pool"] >= 1 and parallel.last_run["here"] + parallel.last_run["pool"] == len(chunks)


def _noisy(shared, part, a, b, progress):
    if os.getpid() != shared["parent"]:
        print("stray output from a worker")  # must not reach stdout, which carries the report
        import sys

        sys.stderr.write("worker says hello\n")
    return [a]


def test_a_workers_stdout_never_reaches_the_report_its_stderr_does(capfd):
    out = parallel.map_chunks(_noisy, 6, shared={"parent": os.getpid()}, parts={"X": np.zeros((6, 1))}, jobs=2,
                              min_rows=1, max_chunks=6)
    assert [r for c in out for r in c] == list(range(6)) and parallel.last_run["pool"] >= 1
    captured = capfd.readouterr()
    assert "stray output" not in captured.out
    assert "worker says hello" in captured.err


def test_mislabel_on_a_lightgbm_model_with_two_jobs_does_not_hang(tmp_path):
    """LightGBM runs OpenMP teams of its own size in this process (past threadpoolctl's cap), and
    GNU libgomp is not fork-safe: a forked worker refitting the model waited forever (the run
    hung at its second fold). With lightgbm loaded, workers are spawned; the ranking equals the
    serial one."""
    import json
    import subprocess
    import sys

    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    joblib.dump(lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y), tmp_path / "m.joblib")
    np.savez(tmp_path / "train.npz", X=X, y=y)
    scores = []
    for jobs in ("1", "2"):
        r = subprocess.run([sys.executable, "-m", "invaudit.cli.app", "mislabel", str(tmp_path / "m.joblib"),
                            str(tmp_path / "train.npz"), "--format", "json", "--jobs", jobs],
                           capture_output=True, text=True, timeout=240,
                           env={**os.environ, "INVAUDIT_NO_PROGRESS": "1"})
        assert r.returncode == 0, r.stderr
        scores.append([row["score"] for row in json.loads(r.stdout)["results"]])
    assert scores[0] == scores[1]
