"""What a parallel run costs: the chunks' CPU is booked to the process that solved them, and a
Dask worker's heap setting (MALLOC_TRIM_THRESHOLD_) no longer makes every array a fresh page
fault while a chunk runs."""

import os
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest

from invaudit import parallel
from invaudit.models import adapt


def test_chunk_cpu_is_booked_where_the_chunk_ran(samples, monkeypatch):
    monkeypatch.setattr(parallel, "_STEAL_FROM_COLD_WORKERS", False)
    form = adapt(joblib.load(samples / "breast_cancer_logreg.joblib"))
    X = np.asarray(np.load(samples / "breast_cancer_test.npz")["X"][:8], dtype=np.float64)
    kw = dict(rows=np.arange(8), baseline=np.zeros(X.shape[1]), iterations=4, seed=1)
    parallel.explain_rows(form, X, jobs=1, min_rows=2, **kw)
    serial = dict(parallel.last_run["cpu"])
    assert list(serial) == [os.getpid()] and serial[os.getpid()] > 0
    parallel.explain_rows(form, X, jobs=2, min_rows=2, **kw)
    run = parallel.last_run
    workers = [pid for pid in run["cpu"] if pid != os.getpid()]
    assert run["pool"] >= 1 and len(workers) == 1 and run["cpu"][workers[0]] > 0
    # every delivered chunk was booked somewhere; nothing is booked for an unused process
    assert run["here"] + run["pool"] == 4
    assert set(run["cpu"]) <= {os.getpid(), workers[0]}


@pytest.mark.skipif(parallel._libc() is None, reason="glibc only")
def test_heap_kept_during_a_chunk_under_a_fixed_trim_threshold():
    """Under Dask's MALLOC_TRIM_THRESHOLD_=65536 a loop of 1 MB arrays faults every page of
    every array in; inside ``_heap_kept`` the freed memory is reused (and the process's setting
    is back afterwards: the same loop faults again)."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from invaudit.parallel import _heap_kept

        def faults():
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(200):
                a = np.ones(131072)  # 1 MiB
                a.sum()
                del a
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

        before = faults()
        with _heap_kept():
            inside = faults()
        after = faults()
        print(before, inside, after)
    """)
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, inside, after = map(int, out.stdout.split())
    assert before > 200 * 200  # 256 pages per array, faulted in each time
    assert inside < before / 20
    assert after > 200 * 200
