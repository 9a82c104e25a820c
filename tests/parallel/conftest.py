"""The tests here exercise the forked workers with models that never run LightGBM or XGBoost in
this process; other test modules import those packages into the same pytest process, which
alone would switch every run here to spawned workers (``parallel._fork_now``). The LightGBM
case itself is checked in a fresh process (test_parallel_fork.py)."""

import pytest


@pytest.fixture(autouse=True)
def _fork_despite_imported_boosters(monkeypatch):
    from invaudit import parallel

    monkeypatch.setattr(parallel, "_OWN_OPENMP_THREADS", ())
