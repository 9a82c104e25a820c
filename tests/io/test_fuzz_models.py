"""Hostile and broken model files (issue 14): refused or loaded, never a crash, hang or blow-up.

Two parts:

- the attack corpus (``attack_corpus.py`` builds it in a temporary folder): every file is refused
  with one sentence, in under 10 s, in a process limited to 1.5 GB of address space, and through
  the command line as exit 3;
- property tests that mutate the real sample models byte-wise and structure-wise: each mutant
  either loads or is refused with the project's InputError, never a signal, a hang or another
  exception.

Every load runs in a child process (``attack_corpus.Sandbox``) under ``RLIMIT_AS``, so a file that
would crash or exhaust the machine fails the test instead of the test run.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import pickletools
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("attack_corpus", _HERE / "attack_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

SAMPLES = _HERE.parents[1] / "sample_models"
FUZZED = ("breast_cancer_tree.joblib", "breast_cancer_logreg.joblib", "wine_forest.joblib")
ONE_GB = 1 << 30


@pytest.fixture(scope="module")
def sandbox():
    box = corpus.Sandbox()
    yield box
    box.close()


@pytest.fixture(scope="module")
def attacks(tmp_path_factory):
    return corpus.build(tmp_path_factory.mktemp("attacks"))


def _one_sentence(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


@pytest.mark.parametrize("name", corpus.MODEL_ATTACKS)
def test_every_attack_is_refused_quickly_in_bounded_memory(attacks, sandbox, name, invaudit):
    answer = sandbox.load(attacks[name])
    assert answer["status"] == "refused", answer
    assert answer["seconds"] < corpus.SECONDS, answer
    assert answer["max_rss"] < ONE_GB, answer
    assert _one_sentence(answer["message"]), answer
    # the same file through the command line: exit 3 and one line on stderr
    r = invaudit("info", str(attacks[name]))
    assert r.code == 3, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err


@pytest.mark.parametrize("name, expected", [("yaml-alias-bomb", "aliases expand"),
                                            ("yaml-python-tag", "tags are not allowed")])
def test_hostile_suites_are_exit_3(attacks, name, expected, invaudit):
    r = invaudit("audit", str(attacks[name]))
    assert r.code == 3 and expected in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_the_samples_themselves_load_in_the_sandbox(sandbox):
    for name in FUZZED:
        assert sandbox.load(SAMPLES / name)["status"] == "ok", name


# --------------------------------------------------------------------------------------------
# property tests on mutated real models

def _raw_joblib(name: str) -> bytes:
    """The uncompressed joblib stream of a sample (the samples are zlib-compressed)."""
    return zlib.decompress((SAMPLES / name).read_bytes())


def _plain_pickle(name: str, protocol: int) -> bytes:
    return pickle.dumps(joblib.load(SAMPLES / name), protocol=protocol)


def _opcode_spans(stream: bytes) -> list:
    spans, last = [], None
    try:
        for op, _arg, pos in pickletools.genops(io.BytesIO(stream)):
            if last is not None:
                spans.append((last[0], last[1], pos))
            last = (op.name, pos)
    except Exception:
        pass
    if last is not None:
        spans.append((last[0], last[1], len(stream)))
    return spans


_FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def _check(sandbox, tmp_path, data: bytes, suffix=".joblib"):
    path = tmp_path / f"mutant{suffix}"
    path.write_bytes(data)
    answer = sandbox.load(path)
    assert answer["status"] in ("ok", "refused"), answer
    assert answer["seconds"] < corpus.SECONDS, answer


@_FUZZ
@given(which=st.sampled_from(FUZZED), raw=st.booleans(),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                                st.sampled_from(["set", "insert", "delete"])),
                      min_size=1, max_size=6))
def test_byte_mutations_load_or_are_refused(sandbox, tmp_path, which, raw, edits):
    data = bytearray(_raw_joblib(which) if raw else (SAMPLES / which).read_bytes())
    for where, value, how in edits:
        i = int(where * len(data))
        if how == "set":
            data[i] = value
        elif how == "insert":
            data[i:i] = bytes([value])
        else:
            del data[i:i + 1 + value % 8]
    _check(sandbox, tmp_path, bytes(data))


_INT_WIDTH = {"BININT1": 1, "BININT2": 2, "BININT": 4, "BINGET": 1, "LONG_BINGET": 4}


@_FUZZ
@given(which=st.sampled_from(FUZZED), protocol=st.sampled_from([2, 5]),
       edits=st.lists(st.tuples(st.sampled_from(["int", "delete", "duplicate", "swap"]),
                                st.floats(0, 1, exclude_max=True), st.integers(1, 6),
                                st.sampled_from([0, 1, 2, 255, 2**15, 2**31 - 1, 2**32 - 1])),
                      min_size=1, max_size=4))
def test_structure_mutations_load_or_are_refused(sandbox, tmp_path, which, protocol, edits):
    data = _plain_pickle(which, protocol)
    for how, where, length, value in edits:
        spans = _opcode_spans(data)
        if len(spans) < 3:
            break
        i = int(where * (len(spans) - 1))
        name, start, end = spans[i]
        stop = spans[min(i + length, len(spans) - 1)][1]
        if how == "int":
            # an integer argument (a size, an index, a memo key) replaced by an extreme value
            ints = [s for s in spans[i:] if s[0] in _INT_WIDTH]
            if not ints:
                continue
            name, start, _ = ints[0]
            width = _INT_WIDTH[name]
            data = data[:start + 1] + (value % (1 << (8 * width))).to_bytes(width, "little") \
                + data[start + 1 + width:]
        elif how == "delete":
            data = data[:start] + data[stop:]
        elif how == "duplicate":
            data = data[:start] + data[start:stop] + data[start:]
        else:  # swap two runs of opcodes
            j = min(i + length, len(spans) - 2)
            a, b = spans[i], spans[j + 1] if j + 1 < len(spans) else spans[j]
            if a[1] < b[1]:
                data = data[:a[1]] + data[b[1]:b[2]] + data[a[2]:b[1]] + data[a[1]:a[2]] \
                    + data[b[2]:]
    _check(sandbox, tmp_path, data, suffix=".pkl")


def test_corpus_files_are_built_not_committed():
    committed = [p for p in _HERE.iterdir() if p.suffix in (".pkl", ".pickle", ".joblib")]
    assert committed == []
    assert np  # numpy is imported by the corpus; keep the import explicit here
