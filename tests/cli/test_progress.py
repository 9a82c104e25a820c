"""Progress on a non-terminal stderr (a CI log): a plain line at most every interval, none for quick runs."""

import re
import time

from invaudit.cli import _common

LINE = re.compile(r"^invaudit( \w+)?: (?P<what>[\w ]+) (?P<done>\d+)/(?P<total>\d+), (?P<elapsed>\d+) s elapsed$")


def _plain_lines(err: str) -> list:
    return [m for m in map(LINE.match, err.splitlines()) if m]


def test_plain_lines_on_a_log_at_most_every_interval(monkeypatch, capsys):
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.1")
    assert not _common.err_console.is_terminal  # pytest captures stderr: a log, not a terminal
    started = time.monotonic()
    with _common.progress("rows", 5) as update:
        for done in range(1, 6):
            time.sleep(0.12)
            update(done)
    elapsed = time.monotonic() - started
    lines = _plain_lines(capsys.readouterr().err)
    assert lines, "no plain progress line on a non-terminal stderr"
    assert all(m["what"] == "rows" and m["total"] == "5" for m in lines)
    done = [int(m["done"]) for m in lines]
    assert done == sorted(done) and done[-1] >= 3
    assert len(lines) <= elapsed / 0.1 + 1  # at most one per interval


def test_quick_runs_print_nothing(monkeypatch, capsys):
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS", raising=False)
    monkeypatch.delenv("INVAUDIT_PROGRESS_INTERVAL", raising=False)  # the default: 10 s
    with _common.progress("rows", 3) as update:
        for done in range(1, 4):
            update(done)
    assert capsys.readouterr().err == ""


def test_no_progress_silences_the_log_lines(monkeypatch, capsys):
    monkeypatch.setenv("INVAUDIT_NO_PROGRESS", "1")
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.05")
    with _common.progress("rows", 2) as update:
        time.sleep(0.2)
        update(2)
    assert capsys.readouterr().err == ""


def test_a_command_names_itself_in_its_progress_lines(invaudit, monkeypatch, samples, tmp_path):
    """End to end: a slow check still shows the run is alive, and the line names the command."""
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.05")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"model: {samples / 'digits_mlp.joblib'}\ntest: {samples / 'digits_test.npz'}\n"
                     "checks:\n  - kind: explain\n    rows: 10\n    min_multiple: 0.0\n")
    r = invaudit("audit", suite)
    assert r.code == 0, r.err
    lines = _plain_lines(r.err)
    assert lines and all(m.group(1) == " audit" and m["what"] == "checks" for m in lines)
    assert r.out.strip()  # the report still goes to stdout, the progress to stderr only
    assert "elapsed" not in r.out
