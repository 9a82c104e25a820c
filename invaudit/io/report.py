"""Report files: the JSON envelope shared by every command, and atomic writes.

An interrupted run leaves the old file or none, never half a file: text goes to a temporary file
in the target's folder, is flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__


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


def write_atomic(path, text) -> None:
    """Write ``text`` (str or bytes) to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        binary = isinstance(text, (bytes, bytearray))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
