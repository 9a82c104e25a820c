"""The table printed without Rich's layout engine is Rich's own table, byte for byte.

``invaudit.render.table.plain_table`` builds the text of ``Table(show_edge=False,
pad_edge=False)`` directly (Rich took ~5 ms a row: 1-2 s for the 200 rows a counterfactual table
shows). Checked here against Rich itself on random tables (unicode of every width, blanks,
leading and trailing spaces, markup-like and emoji-like cells, narrow consoles) and on the real
report tables of every command, and the cases it hands back to Rich are listed.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

from invaudit.io import envelope
from invaudit.io.report import Columns
from invaudit.render import Format, render
from invaudit.render.table import plain_table

ALPHABET = ["a", "b", " ", "1", "-", ".", "é", "中", "😀", "x ", "e\u0301", "[b]", ":smile:", "ｱ", "Ω", "|", "━"]


def _console(width: int, **kw) -> tuple:
    buf = io.StringIO()
    return buf, Console(file=buf, width=width, soft_wrap=False, **kw)


def _rich(headers, justify, cells, width) -> str:
    buf, con = _console(width)
    table = Table(show_edge=False, pad_edge=False)
    for h, j in zip(headers, justify):
        table.add_column(h, justify=j, overflow="fold")
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    con.print(table)
    return buf.getvalue()


def _fast(headers, justify, cells, width):
    buf, con = _console(width)
    text = plain_table(headers, justify, cells, con)
    if text is None:
        return None
    con.print(text, highlight=False, markup=False, emoji=False, soft_wrap=True, end="")
    return buf.getvalue()


def _word(rnd, k, plain=False):
    pool = [a for a in ALPHABET if a not in ("[b]", ":smile:")] if plain else ALPHABET
    return "".join(rnd.choice(pool) for _ in range(rnd.randint(0, k)))


def test_random_tables_equal_rich_byte_for_byte():
    rnd = random.Random(16)
    fast = 0
    for _ in range(250):
        n = rnd.randint(1, 7)
        headers = [_word(rnd, 6, plain=True) for _ in range(n)]
        justify = [rnd.choice(["left", "right"]) for _ in range(n)]
        cells = [[_word(rnd, 9) for _ in range(n)] for _ in range(rnd.randint(1, 6))]
        width = rnd.choice([12, 30, 60, 160])
        got = _fast(headers, justify, cells, width)
        if got is None:
            continue
        fast += 1
        assert got == _rich(headers, justify, cells, width), (headers, justify, cells, width)
    assert fast > 100  # most of these fit their console: the shortcut was exercised


@pytest.mark.parametrize("case", [
    (["a"], ["left"], [["line\nbreak"]]),          # Rich splits the cell into lines
    (["a"], ["left"], [["tab\there"]]),            # Rich expands tabs
    (["[b]x"], ["left"], [["1"]]),                 # header markup
    (["a:smile:"], ["left"], [["1"]]),             # header emoji code
    (["a", "b"], ["center", "left"], [["1", "2"]]),
    (["a"], ["left"], [["x" * 200]]),              # wider than the console: Rich folds it
])
def test_cases_rich_lays_out_itself(case):
    headers, justify, cells = case
    _, con = _console(160)
    assert plain_table(headers, justify, cells, con) is None


def test_consoles_with_colour_or_without_utf8_are_left_to_rich():
    assert plain_table(["a"], ["left"], [["1"]], Console(file=io.StringIO(), color_system="truecolor")) is None
    con = Console(file=io.StringIO(), color_system=None)
    con._encoding = "ascii"  # what Rich reads as console.encoding for a file without one
    if not con.encoding.lower().startswith("utf"):
        assert plain_table(["a"], ["left"], [["1"]], con) is None


def _report(command: str, results) -> dict:
    model = {"path": "m.joblib", "sha256": "0" * 64, "estimator": "LogisticRegression", "form": "linear",
             "classes": ["no", "yes"], "n_features": 3, "feature_names": ["a", "b", "c"], "preprocessing": []}
    return envelope(command, model=model, data=None, params={"norm": "l2", "target": "yes"}, results=results,
                    summary={"rows": 3}, elapsed_s=0.0)


def _counterfactual_columns(n: int) -> Columns:
    rng = np.random.default_rng(0)
    cols = Columns(n)
    cols.add("row", "int", np.arange(n))
    cols.add("original_class", "cat", np.zeros(n, dtype=np.intp), values=["no", "yes"])
    cols.add("target_class", "cat", np.ones(n, dtype=np.intp), values=["no", "yes"])
    cols.add("status", "cat", np.where(np.arange(n) % 5 == 0, 1, 0), values=["found", "already-target"])
    cols.add("counterfactual", "vec", rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-5, 6, size=(n, 1)))
    cols.add("distance", "num", np.where(np.arange(n) % 7 == 0, np.nan, rng.exponential(size=n) * 1e4))
    cols.add("target_probability", "num", rng.uniform(size=n))
    cols.add("exact", "bool", rng.uniform(size=n) < 0.5)
    cols.add("changed_features", "obj", [["a", "c"][: i % 3] for i in range(n)])
    return cols


def _margin_columns(n: int) -> Columns:
    rng = np.random.default_rng(1)
    cols = Columns(n)
    cols.add("row", "int", np.arange(n))
    cols.add("row_id", "obj", [f"client-{i:05d}" if i % 4 else f"клиент {i}" for i in range(n)])
    cols.add("label", "cat", rng.integers(-1, 2, size=n), values=["no", "yes"])
    cols.add("predicted_class", "cat", rng.integers(0, 2, size=n), values=["no", "yes"])
    cols.add("margin", "num", rng.exponential(size=n) * 10.0 ** rng.integers(-6, 6, size=n))
    cols.add("lower_bound", "num", rng.exponential(size=n))
    cols.add("nearest_class", "cat", rng.integers(0, 2, size=n), values=["no", "yes"])
    cols.add("perturbation", "vec", rng.normal(size=(n, 3)))
    cols.add("exact", "bool", rng.uniform(size=n) < 0.5)
    return cols


def _rich_render(report: dict, width: int) -> str:
    """What render_table printed before the shortcut: every table through Rich."""
    from rich.markup import escape

    from invaudit.render.views import fmt_num, view_for

    buf, con = _console(width)
    view = view_for(report)
    con.print(f"[bold]{escape(view.title(report))}[/bold]", highlight=False)
    for key, value in view.summary(report):
        con.print(f"  {key}: {value}", highlight=False, markup=False)
    shown, total = view.shown(report)
    table = Table(show_edge=False, pad_edge=False)
    for col in view.columns:
        table.add_column(col.header, justify=col.justify, overflow="fold")
    for row in shown:
        table.add_row(*(Text(fmt_num(col.get(row))) for col in view.columns))
    con.print(table)
    if len(shown) < total:
        con.print(f"  ... {total - len(shown)} more rows in the JSON report (--format json or --json PATH)",
                  highlight=False, markup=False)
    return buf.getvalue()


@pytest.mark.parametrize("command,build,n,width", [("counterfactual", _counterfactual_columns, 205, 160),
                                                   ("margin", _margin_columns, 57, 160),
                                                   ("margin", _margin_columns, 57, 60)])
def test_report_tables_equal_rich(command, build, n, width):
    report = _report(command, build(n))
    buf, con = _console(width)
    render(report, Format.table, con)
    assert buf.getvalue() == _rich_render(report, width)
    if width == 160:  # the shortcut printed it (at 60 columns Rich shrinks the columns itself)
        from invaudit.render.views import fmt_num, view_for

        view = view_for(report)
        shown, _ = view.shown(report)
        cells = [[fmt_num(c.get(r)) for c in view.columns] for r in shown]
        assert plain_table([c.header for c in view.columns], [c.justify for c in view.columns], cells, con)


def test_table_rows_never_build_the_long_vectors():
    """A table reads a few fields of the rows it shows: the vectors stay arrays."""
    cols = _counterfactual_columns(5)
    seen = []
    original = cols._value

    def spy(name, i):
        seen.append(name)
        return original(name, i)

    cols._value = spy
    buf, con = _console(160)
    render(_report("counterfactual", cols), Format.table, con)
    assert seen and "counterfactual" not in seen
    assert "0" in buf.getvalue()


@pytest.mark.parametrize("estimator,note", [(":smile: LogisticRegression", "ok :thumbs_up: done"),
                                            ("Pipe:line", "a:b:c :not_an_emoji: x"),
                                            ("LogisticRegression", "time: 3 s, ratio 1:2")])
def test_titles_and_summaries_print_emoji_codes_as_rich_does(estimator, note):
    """Rich replaces ``:name:`` codes in printed text; the table turns that off (and never loads
    Rich's emoji table) only for text that holds no such code, so the output is Rich's either way."""
    report = _report("margin", _margin_columns(7))
    report["model"]["estimator"] = estimator
    report["summary"] = {"rows": 7, "note": note}
    buf, con = _console(160)
    render(report, Format.table, con)
    assert buf.getvalue() == _rich_render(report, 160)
    if "smile" in estimator:
        assert "😄" in buf.getvalue() and "👍" in buf.getvalue()
