"""Keep native solvers' prints off stdout, which carries only the report (DESIGN.md).

HiGHS (inside :func:`scipy.optimize.milp`) ``printf``\\ s debug lines such as
``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();`` on the C library's
stdout whatever its ``disp`` / ``output_flag`` options say, so ``--format json`` output around a
MILP did not parse. :func:`native_stdout_silenced` points file descriptor 1 at the null device
for the duration of a native call and flushes the C library's buffer before putting it back.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

__all__ = ["native_stdout_silenced"]

_lock = threading.Lock()
_state = {"depth": 0, "saved": None}
_libc = {}


def _fresh_lock_in_child() -> None:
    # a worker forked while another thread held the lock would otherwise wait on it forever
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def _fflush_all() -> None:
    """``fflush(NULL)``: the C library's buffered stdout goes where fd 1 points now."""
    if "f" not in _libc:
        try:
            import ctypes

            _libc["f"] = ctypes.CDLL(None).fflush
        except (OSError, AttributeError, TypeError):   # no C library handle (e.g. Windows)
            _libc["f"] = None
    f = _libc["f"]
    if f is not None:
        f(None)


@contextmanager
def native_stdout_silenced():
    """Within the block, whatever native code writes to fd 1 goes to the null device.

    Re-entrant and thread-safe (the redirection is process-wide: the first block in redirects,
    the last one out restores); Python's own ``sys.stdout`` is flushed first, so nothing of the
    report can be lost. A process without a usable fd 1 runs the block unchanged.
    """
    with _lock:
        if _state["depth"] == 0:
            saved = None
            try:
                sys.stdout.flush()
            except (OSError, ValueError, AttributeError):
                pass
            try:
                _fflush_all()
                saved = os.dup(1)
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, 1)
                finally:
                    os.close(null)
            except OSError:
                if saved is not None:
                    os.close(saved)
                saved = None
            _state["saved"] = saved
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            saved = _state["saved"]
            if _state["depth"] == 0 and saved is not None:
                try:
                    _fflush_all()
                    os.dup2(saved, 1)
                finally:
                    os.close(saved)
                    _state["saved"] = None
