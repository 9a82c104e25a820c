"""Rich tables for a terminal."""

from __future__ import annotations

import re
from typing import Optional

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape

from .views import fmt_num, view_for

# what Rich's emoji replacement could match (rich._emoji_replace: ":name:", ":name-emoji:"): text
# without it prints the same with the replacement off, which spares loading Rich's emoji table
_EMOJI_CODE = re.compile(r":\S*?:")


def _emoji(text: str) -> Optional[bool]:
    """``emoji=`` for ``console.print(text)``: the console's default where the text could hold an
    emoji code, else off (the same output)."""
    return None if _EMOJI_CODE.search(text) else False


def render_table(report: dict, console: Console) -> None:
    view = view_for(report)
    # Values are data, never markup: "[lower 0.9, upper 0.95]" must print as it is.
    title = f"[bold]{escape(view.title(report))}[/bold]"
    console.print(title, highlight=False, emoji=_emoji(title))
    for key, value in view.summary(report):
        line = f"  {key}: {value}"
        console.print(line, highlight=False, markup=False, emoji=_emoji(line))
    shown, total = view.shown(report)
    if shown:
        headers = [col.header for col in view.columns]
        justify = [col.justify for col in view.columns]
        cells = [[fmt_num(col.get(row)) for col in view.columns] for row in shown]
        text = plain_table(headers, justify, cells, console)
        if text is not None:
            console.print(text, highlight=False, markup=False, emoji=False, soft_wrap=True, end="")
        else:
            from rich.table import Table
            from rich.text import Text

            table = Table(show_edge=False, pad_edge=False)
            for head, just in zip(headers, justify):
                table.add_column(head, justify=just, overflow="fold")
            for row in cells:
                table.add_row(*(Text(c) for c in row))
            console.print(table)
        if len(shown) < total:
            console.print(f"  ... {total - len(shown)} more rows in the JSON report (--format json or --json PATH)",
                          highlight=False, markup=False, emoji=False)
    for extra in view.extras:
        for heading, block in extra(report):
            heading = f"[bold]{escape(heading)}[/bold]"
            console.print(heading, highlight=False, emoji=_emoji(heading))
            console.print(block, highlight=False, markup=False,
                          emoji=_emoji(block) if isinstance(block, str) else None)


def plain_table(headers: list, justify: list, cells: list, console: Console) -> Optional[str]:
    """The text Rich prints for ``Table(show_edge=False, pad_edge=False)`` with these columns
    (``justify``: "left" or "right") and rows of cell strings, built directly: Rich measures
    and lays out every cell as styled segments, ~5 ms a row, which made printing a 200-row table
    cost more than many solvers. None where this shortcut does not apply and Rich renders the
    table: a console with colours (the header is bold there) or without UTF-8 (Rich swaps the
    box characters), a cell that is not one line of printable characters (Rich folds, expands
    tabs and splits lines), a header that could hold markup or an emoji code, a table wider
    than the console (Rich wraps and shrinks columns).
    tests/render/test_table_fast.py checks it against Rich byte for byte."""
    if console.color_system is not None or console.legacy_windows or \
            not str(console.encoding).lower().startswith("utf"):
        return None
    n = len(headers)
    if n == 0 or any(j not in ("left", "right") for j in justify):
        return None
    # a header is a string Rich reads as markup and emoji codes: only plain ones here
    if not all(h.isprintable() and not any(c in h for c in "[]:") for h in headers):
        return None
    content = [cell_len(h) for h in headers]
    for row in cells:
        if len(row) != n:
            return None
        for j, c in enumerate(row):
            if not c.isprintable():
                return None
            w = cell_len(c)
            if w > content[j]:
                content[j] = w
    pad_left = [0] + [1] * (n - 1)
    pad_right = [1] * (n - 1) + [0]
    widths = [max(1, c + a + b) for c, a, b in zip(content, pad_left, pad_right)]
    if sum(widths) + (n - 1) > console.width:
        return None
    inner = [w - a - b for w, a, b in zip(widths, pad_left, pad_right)]

    def line(row: list, divider: str) -> str:
        parts = []
        for j, c in enumerate(row):
            if justify[j] == "right":
                c = c.rstrip()  # as Rich does before right-justifying
                c = " " * (inner[j] - cell_len(c)) + c
            else:
                c = c + " " * (inner[j] - cell_len(c))
            parts.append(" " * pad_left[j] + c + " " * pad_right[j])
        return divider.join(parts)

    out = [line(headers, "┃"), "╇".join("━" * w for w in widths)]
    out += [line(row, "│") for row in cells]
    return "\n".join(out) + "\n"
