"""Reading an audit suite (YAML) into checked, typed settings.

A bad suite is an :class:`~invaudit.errors.InputError` naming the YAML path of the offending key,
e.g. ``suite.yaml: checks[2].eps: expected a number, got 'high'``.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import InputError

# A suite is a few dozen values. Aliases may share a block (``<<: *defaults``), but a document
# whose aliases expand to more than this many values ("billion laughs": 599 bytes, 10^9 values)
# is refused before anything walks it.
MAX_SUITE_VALUES = 100_000
SUITE_BYTES = 1 << 20

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxstring, _repr.maxother = 2, 4, 4, 60, 60


def _shown(value) -> str:
    """A value for an error message: bounded, whatever its size (never a full repr())."""
    return _repr.repr(value)


class _AliasBomb(Exception):
    pass


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand beyond MAX_SUITE_VALUES."""

    def construct_document(self, node):
        sizes: dict = {}
        todo = [(node, False)]
        while todo:  # post-order, memoised on node identity: linear in the document's text
            current, done = todo.pop()
            if id(current) in sizes:
                continue
            children = []
            if isinstance(current, yaml.SequenceNode):
                children = list(current.value)
            elif isinstance(current, yaml.MappingNode):
                children = [n for pair in current.value for n in pair]
            if done or not children:
                total = 1 + sum(sizes.get(id(c), 1) for c in children)
                if total > MAX_SUITE_VALUES:
                    raise _AliasBomb()
                sizes[id(current)] = total
                continue
            todo.append((current, True))
            todo.extend((c, False) for c in children if id(c) not in sizes)
        return super().construct_document(node)

SUITE_KEYS = {"model", "trust", "sha256", "train", "test", "data", "label_column", "id_column", "time_limit", "checks"}
# Keys a check may carry besides its own parameters: it may point at another model or data.
CHECK_COMMON = {"name", "kind", "model", "trust", "sha256", "train", "test", "data", "label_column", "id_column",
                "time_limit"}


@dataclass(frozen=True)
class Source:
    """Where a check's model and data come from (paths already resolved against the suite)."""

    model: Path
    trust: bool = False
    sha256: Optional[str] = None
    train: Optional[Path] = None
    test: Optional[Path] = None
    label_column: Optional[str] = None
    id_column: Optional[str] = None  # a CSV column naming the rows (not a feature); files without it keep row numbers


@dataclass(frozen=True)
class CheckSpec:
    index: int
    kind: str
    name: str
    params: dict
    source: Source
    time_limit: Optional[float] = None  # seconds for this check (``time_limit:`` in the check)

    @property
    def where(self) -> str:
        return f"checks[{self.index}]"


@dataclass(frozen=True)
class Suite:
    path: Path
    source: Source
    checks: list = field(default_factory=list)
    time_limit: Optional[float] = None  # seconds for the whole suite (top-level ``time_limit:``)


def load_suite(path) -> Suite:
    p = Path(path)
    if not p.exists():
        raise InputError(f"suite file {p} does not exist.")
    from ..io.model_file import open_regular_file

    try:
        with open_regular_file(p, what="suite file") as fh:
            raw = fh.read(SUITE_BYTES + 1)
        if len(raw) > SUITE_BYTES:
            raise InputError(f"suite file {p} is larger than 1 MiB; a suite is a short YAML file.")
        doc = yaml.load(raw.decode("utf-8"), Loader=_SuiteLoader)
    except _AliasBomb:
        raise InputError(f"suite file {p} was refused: its aliases expand to more than "
                         f"{MAX_SUITE_VALUES:,} values.") from None
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        if "tag" in str(getattr(exc, "problem", "")):
            raise InputError(f"suite file {p}: tags are not allowed (found one{where}): a suite "
                             "holds plain YAML values only.") from None
        raise InputError(f"suite file {p} is not valid YAML{where}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"suite file {p} is not valid YAML{where}.") from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read suite file {p}: it is not UTF-8 text.") from None
    except OSError as exc:
        raise InputError(f"cannot read suite file {p}: {exc.strerror or exc}.") from None
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
        if not isinstance(kind, str) or kind not in REGISTRY:
            raise InputError(f"{p}: {where}.kind: unknown kind {_shown(kind)} (known: {', '.join(sorted(REGISTRY))}).")
        name = raw.get("name", kind)
        if not isinstance(name, str) or not name:
            raise InputError(f"{p}: {where}.name: expected a non-empty string.")
        if name in names:
            name = f"{name}-{i}"
        names.add(name)
        src = _source(raw, base, p, where + ".", default)
        params = {k: v for k, v in raw.items() if k not in CHECK_COMMON}
        params = REGISTRY[kind].validate(params, f"{p}: {where}")
        specs.append(CheckSpec(index=i, kind=kind, name=name, params=params, source=src,
                               time_limit=_time_limit(raw, p, where + ".")))
    _check_named_columns(p, doc, default, checks, specs)
    return Suite(path=p, source=default, checks=specs, time_limit=_time_limit(doc, p, ""))


def _check_named_columns(p: Path, doc: dict, default: Source, raws: list, specs: list) -> None:
    """A ``label_column`` / ``id_column`` the suite writes must be a column of at least one CSV file
    it applies to, as the commands' ``--label-column`` must (cli/_common.py ``check_label_column``):
    a name no file has is a typo that would drop the labels (or read the IDs as a feature), so the
    suite is refused before any check runs. Where the key is written decides the files: a check's
    own key, that check's ``train`` / ``test``; the top-level key, the suite's files (or, when it
    names none, those of the checks that inherit the key). A check that only inherits the key may
    read files without the column (labels are optional where no check needs them)."""
    for key in ("label_column", "id_column"):
        if doc.get(key) is not None:
            files = [default.train, default.test]
            if not any(_is_csv(f) for f in files):
                files = [f for raw, spec in zip(raws, specs) if raw.get(key) is None
                         for f in (spec.source.train, spec.source.test)]
            _require_column(p, key, doc[key], files)
        for raw, spec in zip(raws, specs):
            if raw.get(key) is not None:
                _require_column(p, f"{spec.where}.{key}", raw[key], [spec.source.train, spec.source.test])


def _is_csv(f: Optional[Path]) -> bool:
    return f is not None and f.suffix.lower() == ".csv"


def _require_column(p: Path, entry: str, column: str, files) -> None:
    from ..io.data import missing_column

    why = missing_column(column, [f for f in files if _is_csv(f)])
    if why is not None:  # no CSV to check (NPZ files carry their labels as 'y'), or one has it: None
        raise InputError(f"{p}: {entry}: {why}.")


def _time_limit(doc: dict, p: Path, prefix: str) -> Optional[float]:
    v = doc.get("time_limit")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise InputError(f"{p}: {prefix}time_limit: expected a positive number of seconds, got {_shown(v)}.")
    return float(v)


def _source(doc: dict, base: Path, p: Path, prefix: str, default: Optional[Source]) -> Source:
    def path_of(key):
        v = doc.get(key)
        if v is None:
            return None if default is None else getattr(default, key if key != "data" else "test")
        if not isinstance(v, str):
            raise InputError(f"{p}: {prefix}{key}: expected a file path, got {_shown(v)}.")
        f = (base / v) if not Path(v).is_absolute() else Path(v)
        if not f.is_file():
            raise InputError(f"{p}: {prefix}{key}: file {f} does not exist.")
        return f

    model = path_of("model")
    if model is None:
        raise InputError(f"{p}: {prefix or ''}model: the suite must name a model file.")
    test = path_of("test") if doc.get("test") is not None else path_of("data")
    # trust and sha256 belong to the model file next to them: a check that names its own model
    # vouches for and pins it itself; one that does not inherits the suite's model with both.
    inherits = default is not None and "model" not in doc
    trust = doc.get("trust", default.trust if inherits else False)
    if not isinstance(trust, bool):
        raise InputError(f"{p}: {prefix}trust: expected true or false, got {_shown(trust)}.")
    label_column = doc.get("label_column", default.label_column if default else None)
    if label_column is not None and not isinstance(label_column, str):
        raise InputError(f"{p}: {prefix}label_column: expected a column name.")
    id_column = doc.get("id_column", default.id_column if default else None)
    if id_column is not None and not isinstance(id_column, str):
        raise InputError(f"{p}: {prefix}id_column: expected a column name.")
    if id_column is not None and id_column == label_column:
        raise InputError(f"{p}: {prefix}id_column: '{id_column}' is also the label_column.")
    sha = doc.get("sha256", default.sha256 if inherits else None)
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha.strip())):
        raise InputError(f"{p}: {prefix}sha256: expected the model file's SHA-256 as 64 hexadecimal digits, got {_shown(sha)}.")
    sha = None if sha is None else sha.strip().lower()
    return Source(model=model, trust=trust, sha256=sha, train=path_of("train"), test=test,
                  label_column=label_column, id_column=id_column)


# --- parameter validation helpers used by the checks ---------------------------------------------

def number(params: dict, key: str, where: str, *, default: Any = None, lo=None, hi=None,
           integer: bool = False, required: bool = False):
    if key not in params or params[key] is None:
        if required:
            raise InputError(f"{where}.{key}: required.")
        return default
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise InputError(f"{where}.{key}: expected {'an integer' if integer else 'a number'}, got {_shown(v)}.")
    if v != v or v in (float("inf"), float("-inf")):  # YAML's .nan and .inf
        raise InputError(f"{where}.{key}: expected a finite number, got {_shown(v)}.")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        allowed = (f"between {lo} and {hi}" if lo is not None and hi is not None
                   else f"at least {lo}" if lo is not None else f"at most {hi}")
        raise InputError(f"{where}.{key}: expected {'an integer' if integer else 'a number'} {allowed}, got {_shown(v)}.")
    return v


def choice(params: dict, key: str, where: str, options, *, default=None):
    v = params.get(key, default)
    if v not in options:
        raise InputError(f"{where}.{key}: expected one of {', '.join(map(str, options))}, got {_shown(v)}.")
    return v


def text(params: dict, key: str, where: str, *, default=None):
    v = params.get(key, default)
    if v is not None and not isinstance(v, (str, int)):
        raise InputError(f"{where}.{key}: expected a string, got {_shown(v)}.")
    return None if v is None else str(v)


def reject_unknown(params: dict, known, where: str) -> None:
    extra = sorted(set(params) - set(known))
    if extra:
        raise InputError(f"{where}.{extra[0]}: unknown parameter (known: {', '.join(sorted(known))}).")
