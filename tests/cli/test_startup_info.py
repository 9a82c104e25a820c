"""``invaudit info`` read without Typer (cli/_fast.py; issue 16's process-start target).

- A fresh ``info`` on a linear model imports neither pydantic nor scikit-learn, scipy, joblib
  or pandas, and prints what the Typer path prints.
- Every command line the direct reader accepts is called exactly as Typer calls it (same
  keywords and values) and gives the same output, stderr and exit code, including the failures
  that come after parsing (missing file, --json into a folder, a wrong --sha256, Ctrl-C, end of
  input) and the plain progress line; everything else is left to Typer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from invaudit.cli import _fast
from invaudit.cli import info as info_module
from invaudit.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "breast_cancer_logreg.joblib"
SHA = hashlib.sha256(MODEL.read_bytes()).hexdigest()

_CHILD = r"""
import json, sys
argv = json.loads(sys.argv[1])
if argv[0] == "--through-typer":
    import invaudit.cli._fast as fast
    fast.direct = lambda args: None
    argv = argv[1:]
code = 0
try:
    from invaudit.cli.app import main
    main(argv)
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\n")
"""


def _fresh(argv):
    env = {**os.environ, "INVAUDIT_NO_PROGRESS": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    env.pop("_INVAUDIT_COMPLETE", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(a) for a in argv])], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    state = json.loads(last)
    return state["code"], proc.stdout, "\n".join(err), set(state["modules"])


def _imported(modules: set, package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


def _no_elapsed(text: str) -> str:
    return re.sub(r'"elapsed_s": ?[0-9.eE+-]+', '"elapsed_s": 0', text)


def test_a_fresh_info_imports_no_pydantic_and_prints_what_typer_prints(tmp_path):
    report = tmp_path / "r.json"
    argv = ["info", MODEL, "--format", "json", "--json", report, "--sha256", SHA, "-q", "--schema", "1"]
    code, out, err, modules = _fresh(argv)
    assert code == 0, err
    for package in ("pydantic", "pydantic_core", "typer._adapters", "sklearn", "scipy", "joblib", "pandas"):
        assert not _imported(modules, package), f"info imported {package}"
    written = report.read_text()
    report.unlink()
    code_t, out_t, err_t, _ = _fresh(["--through-typer", *argv])
    assert (code_t, err_t) == (code, err)
    assert _no_elapsed(out_t) == _no_elapsed(out) and json.loads(out)["model"]["form"] == "linear"
    assert _no_elapsed(report.read_text()) == _no_elapsed(written)


# Command lines the direct reader takes (``{P}``: a report path, ``{M}``: the model).
ACCEPTED = [
    ["info", "{M}"],
    ["info", "{M}", "--format", "json"],
    ["info", "--format=markdown", "{M}"],
    ["info", "{M}", "--format", "jsonl", "--quiet"],
    ["info", "{M}", "--trust", "-q", "--sha256", SHA, "--json", "{P}", "--schema", "1"],
    ["info", "--quiet", "--schema=1", "--json={P}", "--sha256=" + SHA, "{M}", "--format", "table"],
]
# Command lines left to Typer (help, usage errors, forms whose reading is Typer's business).
DEFERRED = [
    ["info"], ["info", "--help"], ["info", "-h"], ["info", "{M}", "{M}"], ["info", "{M}", "--format", "JSON"],
    ["info", "{M}", "--format", "xml"], ["info", "{M}", "--schema", "2"], ["info", "{M}", "--schema", "01"],
    ["info", "{M}", "--trust=yes"], ["info", "{M}", "--tru"], ["info", "--", "{M}"], ["info", "{M}", "--json"],
    ["info", "{M}", "--json", "-"], ["info", "{M}", "-q", "-q"], ["info", "{M}", "-qq"], ["info", ""], ["info", "-"],
    ["info", "{M}", "--sha256="], ["info", "{M}", "--format"], ["info", "{M}", "--trust", "--trust"],
    ["info", "{M}", "--version"], ["margin", "{M}", "{M}"], ["--help"], [],
]


def _id(argv) -> str:
    return " ".join(argv).replace(SHA, "HEX") or "(nothing)"


def test_the_reader_knows_every_option_info_declares():
    """If ``info`` gains, renames or re-spells an option, or one gets a callback, the direct reader
    must learn it too: it reads the options it knows and runs only the json and quiet callbacks
    (--schema's accepts 1, the only value the reader takes)."""
    import typer

    from invaudit.cli.app import build_app

    command = typer.main.get_command(build_app(["info"])).commands["info"]
    params = [p for p in command.params if p.name != "help"]
    assert tuple(p.name for p in params) == _fast._INFO_ORDER
    declared = {opt: p.name for p in params if p.name != "model" for opt in (*p.opts, *p.secondary_opts)}
    assert declared == {opt: keyword for opt, (keyword, _kind) in _fast._INFO_OPTIONS.items()}
    for p in params:
        if p.name != "model":
            assert bool(getattr(p, "is_flag", False)) == (_fast._INFO_OPTIONS[p.opts[0]][1] == "flag"), p.name
        assert p.nargs == 1 and not p.multiple and not p.envvar and not p.is_eager, p.name
    assert {p.name for p in params if p.callback is not None} == {"json", "schema", "quiet"}


def _fill(argv, tmp_path):
    return [a.replace("{M}", str(MODEL)).replace("{P}", str(tmp_path / "r.json")) for a in argv]


@pytest.mark.parametrize("argv", DEFERRED, ids=_id)
def test_other_command_lines_are_left_to_typer(argv, tmp_path, monkeypatch):
    monkeypatch.delenv("_INVAUDIT_COMPLETE", raising=False)
    assert _fast.direct(_fill(argv, tmp_path)) is None


def test_shell_completion_is_left_to_typer(monkeypatch):
    monkeypatch.setenv("_INVAUDIT_COMPLETE", "bash_complete")
    assert _fast.direct(["info", str(MODEL)]) is None


def _calls(monkeypatch, argv, *, through_typer: bool) -> list:
    """The keywords ``info`` is called with for ``argv`` (the call recorded, not run)."""
    seen = []
    original = info_module.info

    @functools.wraps(original)
    def recorder(**kwargs):
        seen.append(kwargs)

    with monkeypatch.context() as m:
        m.setattr(info_module, "info", recorder)
        if through_typer:
            m.setattr(_fast, "direct", lambda args: None)
        with pytest.raises(SystemExit) as exc:
            main(argv)
    assert exc.value.code == 0
    return seen


@pytest.mark.parametrize("argv", ACCEPTED, ids=_id)
def test_accepted_command_lines_call_info_as_typer_does(argv, tmp_path, monkeypatch):
    argv = _fill(argv, tmp_path)
    monkeypatch.delenv("_INVAUDIT_COMPLETE", raising=False)
    assert _fast.direct(argv) is not None
    direct = _calls(monkeypatch, argv, through_typer=False)
    typer_ = _calls(monkeypatch, argv, through_typer=True)
    assert len(direct) == 1 and direct == typer_
    assert {type(v) for v in direct[0].values()} == {type(v) for v in typer_[0].values()}


def _both(invaudit, monkeypatch, argv):
    fast = invaudit(*argv)
    with monkeypatch.context() as m:
        m.setattr(_fast, "direct", lambda args: None)
        slow = invaudit(*argv)
    return fast, slow


@pytest.mark.parametrize("argv", [a for a in ACCEPTED if "--trust" not in a], ids=_id)  # --trust: the full load
def test_accepted_command_lines_print_what_typer_prints(argv, tmp_path, invaudit, monkeypatch):
    argv = _fill(argv, tmp_path)
    fast, slow = _both(invaudit, monkeypatch, argv)
    assert fast.code == slow.code == 0
    assert _no_elapsed(fast.out) == _no_elapsed(slow.out) and fast.err == slow.err


def test_failures_after_parsing_are_the_same(tmp_path, invaudit, monkeypatch):
    not_a_model = tmp_path / "notes.pkl"
    not_a_model.write_bytes(b"not a pickle")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["info", tmp_path / "missing.joblib"], 3),
        (["info", not_a_model], 3),
        (["info", MODEL, "--sha256", "0" * 64], 3),
        (["info", MODEL, "--json", folder], 3),
        (["info", MODEL, "--json", tmp_path / "a" / "b.json", "--format", "json"], 0),
    ]
    for argv, code in cases:
        assert _fast.direct([str(a) for a in argv]) is not None
        fast, slow = _both(invaudit, monkeypatch, argv)
        assert fast.code == slow.code == code, (argv, fast.err, slow.err)
        assert (_no_elapsed(fast.out), fast.err) == (_no_elapsed(slow.out), slow.err)
        assert code == 0 or fast.err.count("\n") == 1 and "Traceback" not in fast.err


@pytest.mark.parametrize("escape", [KeyboardInterrupt, EOFError])
@pytest.mark.parametrize("where", ["loading the model", "the --json callback"])
def test_what_escapes_the_command_ends_it_as_under_typer(escape, where, invaudit, monkeypatch, tmp_path):
    import invaudit.io.model_file as model_file
    import invaudit.io.report as report

    def interrupted(*args, **kwargs):
        raise escape()

    if where == "loading the model":
        monkeypatch.setattr(model_file, "load_model", interrupted)
    else:
        monkeypatch.setattr(report, "check_writable", interrupted)
    fast, slow = _both(invaudit, monkeypatch, ["info", MODEL, "--json", tmp_path / "r.json"])
    assert (fast.code, fast.out, fast.err) == (slow.code, slow.out, slow.err)
    assert fast.code == 130


def test_the_plain_progress_line_names_the_command(capsys, monkeypatch):
    """A log's progress line says ``invaudit info: ...`` without Typer's context too."""
    import time

    import invaudit.io.model_file as model_file

    original = model_file.load_model

    def slow_load(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(model_file, "load_model", slow_load)
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.05")
    monkeypatch.setenv("NO_COLOR", "1")
    errs = []
    for through_typer in (False, True):
        with monkeypatch.context() as m:
            if through_typer:
                m.setattr(_fast, "direct", lambda args: None)
            capsys.readouterr()
            with pytest.raises(SystemExit) as exc:
                main(["info", str(MODEL), "--format", "json"])
            assert exc.value.code == 0
            errs.append(capsys.readouterr().err)
    for err in errs:
        assert re.search(r"^invaudit info: loading the model, \d+ s elapsed$", err, re.M), err


_GUARDED = r"""
import sys
from invaudit.cli._errors import run_guarded
from invaudit.errors import InputError

def bad():
    raise InputError("no such model.")

def interrupted():
    raise KeyboardInterrupt

codes = [run_guarded(bad), run_guarded(interrupted), run_guarded(lambda: 7)]
print(codes, "typer" in sys.modules)
"""


def test_exit_codes_need_no_typer():
    """cli/_errors.py maps exceptions to exit codes without importing Typer (what escapes a
    command that ran without it cannot be one of Typer's)."""
    proc = subprocess.run([sys.executable, "-c", _GUARDED], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[0] == "[3, 130, 7] False", proc.stderr
    assert proc.stderr == "invaudit: error: no such model.\ninterrupted\n"


def test_installed_sklearn_version_read_without_metadata_matches_metadata():
    """The light load's version guard reads the dist-info folder's name: it must be the version
    importlib.metadata reports (a wrong one would let the light load accept another version's pickle)."""
    from importlib import metadata

    from invaudit.io._light import installed_sklearn_version

    assert installed_sklearn_version() == metadata.version("scikit-learn")
