"""Report files: the JSON envelope shared by every command, and atomic writes.

An interrupted run leaves the old file or none, never half a file: text goes to a temporary file
in the target's folder (``.NAME.PID.XXXX.tmp``), is flushed to disk, then renamed over the
target. SIGINT and SIGTERM during the write remove the temporary; a temporary that a killed
process left behind (SIGKILL, power loss) is swept by the next write to the same target. A
symbolic link is written through to its target, and an existing report keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import InputError

# A temporary of the same target older than this, or whose writer is gone, is swept.
STALE_SECONDS = 3600.0


def envelope(command: str, *, model: Optional[dict], data: Optional[dict], params: dict,
             results: list, summary: dict, elapsed_s: float, extra: Optional[dict] = None) -> dict:
    """The report every command emits (DESIGN.md, "JSON report")."""
    report = {
        "schema": f"invaudit.{command}/1",
        "invaudit_version": __version__,
        "command": command,
        "model": model,
        "data": data,
        "params": params,
        "results": results,
        "summary": summary,
        "elapsed_s": round(float(elapsed_s), 6),
    }
    if extra:
        report.update(extra)
    return jsonable(report)


def jsonable(obj: Any) -> Any:
    """Numpy scalars and arrays to plain Python; NaN and infinities to ``None`` (JSON has none)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def check_writable(path, *, option: str = "--json") -> Path:
    """Refuse (InputError) a report path that :func:`write_atomic` could not write.

    Called before any work starts, so an unwritable target costs nothing: the path must not be a
    folder, and its folder (after following a symbolic link) must exist, or be creatable inside
    the nearest existing folder, and accept a new file (probed by creating and removing one,
    which also holds for root and for read-only mounts).
    """
    target = _resolved(Path(path))
    if target.is_dir():
        raise InputError(f"{option} {path}: this is a folder; give a file path.")
    folder = target.parent
    probe_in = folder
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"{option} {path}: {probe_in} is not a folder, so the report cannot be "
                         "written there.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.probe.", suffix=".tmp", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{option} {path}: the folder {probe_in} is not writable "
                         f"({exc.strerror or exc}).") from None
    return target


def _resolved(target: Path) -> Path:
    # a symbolic link is written through: the link stays, its target gets the new text
    if target.is_symlink():
        return Path(os.path.realpath(target))
    return target


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temporaries(target, *, max_age: float = STALE_SECONDS) -> list:
    """Remove ``.NAME.*.tmp`` files next to ``target`` whose writer died or that are stale.

    A name carrying a pid (``.NAME.PID.XXXX.tmp``, what :func:`write_atomic` writes) is removed
    when that process is gone; any matching temporary older than ``max_age`` seconds is removed.
    Returns the paths removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(r"^\." + re.escape(target.name) + r"\.(?:(\d+)\.)?[^/]*\.tmp$")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or ".probe." in entry.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            pid = int(m.group(1)) if m.group(1) else None
            dead = pid is not None and pid != os.getpid() and not _pid_alive(pid)
            if dead or now - st.st_mtime > max_age:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except (OSError, ValueError):
            continue
    return removed


class _Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """While writing: SIGTERM (and SIGINT) raise, so the temporary is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        raise _Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def write_atomic(path, text) -> None:
    """Write ``text`` (str or bytes) to ``path`` so that readers see the old file or the whole new one.

    The temporary is removed if the write fails or SIGINT/SIGTERM arrives (the signal is then
    delivered as it would have been); stale temporaries of the same target are swept first. A
    symbolic link is written through to its target; an existing file keeps its mode, a new one
    gets the umask's default (not the 0600 of a temporary file).
    """
    target = _resolved(Path(path))
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    tmp = None
    try:
        with _signals_raise():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                       dir=folder)
            binary = isinstance(text, (bytes, bytearray))
            with os.fdopen(fd, "wb" if binary else "w",
                           **({} if binary else {"encoding": "utf-8"})) as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            tmp = None
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, _Interrupted):
            # deliver the signal as if nothing had caught it (default: terminate; SIGINT raises
            # KeyboardInterrupt through Python's own handler)
            if exc.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            os.kill(os.getpid(), exc.signum)
        raise
