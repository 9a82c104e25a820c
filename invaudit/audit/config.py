"""Reading an audit suite (YAML) into checked, typed settings.

A bad suite is an :class:`~invaudit.errors.InputError` naming the YAML path of the offending key,
e.g. ``suite.yaml: checks[2].eps: expected a number, got 'high'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import InputError

SUITE_KEYS = {"model", "trust", "sha256", "train", "test", "data", "label_column", "checks"}
# Keys a check may carry besides its own parameters: it may point at another model or data.
CHECK_COMMON = {"name", "kind", "model", "trust", "sha256", "train", "test", "data", "label_column"}


@dataclass(frozen=True)
class Source:
    """Where a check's model and data come from (paths already resolved against the suite)."""

    model: Path
    trust: bool = False
    sha256: Optional[str] = None
    train: Optional[Path] = None
    test: Optional[Path] = None
    label_column: Optional[str] = None


@dataclass(frozen=True)
class CheckSpec:
    index: int
    kind: str
    name: str
    params: dict
    source: Source

    @property
    def where(self) -> str:
        return f"checks[{self.index}]"


@dataclass(frozen=True)
class Suite:
    path: Path
    source: Source
    checks: list = field(default_factory=list)


def load_suite(path) -> Suite:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"suite file {p} does not exist.")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"suite file {p} is not valid YAML{where}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read suite file {p}: {exc}.") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p}: the suite must be a mapping with 'model' and 'checks'.")
    unknown = sorted(set(doc) - SUITE_KEYS)
    if unknown:
        raise InputError(f"{p}: {unknown[0]}: unknown key (known: {', '.join(sorted(SUITE_KEYS))}).")
    base = p.parent
    default = _source(doc, base, p, "", None)
    checks = doc.get("checks")
    if not isinstance(checks, list) or not checks:
        raise InputError(f"{p}: checks: expected a non-empty list of checks.")
    from .registry import REGISTRY

    specs = []
    names = set()
    for i, raw in enumerate(checks):
        where = f"checks[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{p}: {where}: expected a mapping with at least 'kind'.")
        kind = raw.get("kind")
        if kind not in REGISTRY:
            raise InputError(f"{p}: {where}.kind: unknown kind {kind!r} (known: {', '.join(sorted(REGISTRY))}).")
        name = raw.get("name", kind)
        if not isinstance(name, str) or not name:
            raise InputError(f"{p}: {where}.name: expected a non-empty string.")
        if name in names:
            name = f"{name}-{i}"
        names.add(name)
        src = _source(raw, base, p, where + ".", default)
        params = {k: v for k, v in raw.items() if k not in CHECK_COMMON}
        params = REGISTRY[kind].validate(params, f"{p}: {where}")
        specs.append(CheckSpec(index=i, kind=kind, name=name, params=params, source=src))
    return Suite(path=p, source=default, checks=specs)


def _source(doc: dict, base: Path, p: Path, prefix: str, default: Optional[Source]) -> Source:
    def path_of(key):
        v = doc.get(key)
        if v is None:
            return None if default is None else getattr(default, key if key != "data" else "test")
        if not isinstance(v, str):
            raise InputError(f"{p}: {prefix}{key}: expected a file path, got {v!r}.")
        f = (base / v) if not Path(v).is_absolute() else Path(v)
        if not f.is_file():
            raise InputError(f"{p}: {prefix}{key}: file {f} does not exist.")
        return f

    model = path_of("model")
    if model is None:
        raise InputError(f"{p}: {prefix or ''}model: the suite must name a model file.")
    test = path_of("test") if doc.get("test") is not None else path_of("data")
    trust = doc.get("trust", default.trust if default else False)
    if not isinstance(trust, bool):
        raise InputError(f"{p}: {prefix}trust: expected true or false.")
    label_column = doc.get("label_column", default.label_column if default else None)
    if label_column is not None and not isinstance(label_column, str):
        raise InputError(f"{p}: {prefix}label_column: expected a column name.")
    sha = doc.get("sha256", default.sha256 if default and "model" not in doc else None)
    return Source(model=model, trust=trust, sha256=sha, train=path_of("train"), test=test,
                  label_column=label_column)


# --- parameter validation helpers used by the checks ---------------------------------------------

def number(params: dict, key: str, where: str, *, default: Any = None, lo=None, hi=None,
           integer: bool = False, required: bool = False):
    if key not in params or params[key] is None:
        if required:
            raise InputError(f"{where}.{key}: required.")
        return default
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise InputError(f"{where}.{key}: expected {'an integer' if integer else 'a number'}, got {v!r}.")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{where}.{key}: {v} is outside [{lo}, {hi}].")
    return v


def choice(params: dict, key: str, where: str, options, *, default=None):
    v = params.get(key, default)
    if v not in options:
        raise InputError(f"{where}.{key}: expected one of {', '.join(map(str, options))}, got {v!r}.")
    return v


def text(params: dict, key: str, where: str, *, default=None):
    v = params.get(key, default)
    if v is not None and not isinstance(v, (str, int)):
        raise InputError(f"{where}.{key}: expected a string, got {v!r}.")
    return None if v is None else str(v)


def reject_unknown(params: dict, known, where: str) -> None:
    extra = sorted(set(params) - set(known))
    if extra:
        raise InputError(f"{where}.{extra[0]}: unknown parameter (known: {', '.join(sorted(known))}).")
