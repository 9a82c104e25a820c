"""Rich tables for a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .views import fmt_num, view_for


def render_table(report: dict, console: Console) -> None:
    view = view_for(report)
    # Values are data, never markup: "[lower 0.9, upper 0.95]" must print as it is.
    console.print(f"[bold]{escape(view.title(report))}[/bold]", highlight=False)
    for key, value in view.summary(report):
        console.print(f"  {key}: {value}", highlight=False, markup=False)
    shown, total = view.shown(report)
    if shown:
        table = Table(show_edge=False, pad_edge=False)
        for col in view.columns:
            table.add_column(col.header, justify=col.justify, overflow="fold")
        for row in shown:
            table.add_row(*(Text(fmt_num(col.get(row))) for col in view.columns))
        console.print(table)
        if len(shown) < total:
            console.print(f"  ... {total - len(shown)} more rows in the JSON report (--format json or --json PATH)",
                          highlight=False, markup=False)
    for extra in view.extras:
        for heading, block in extra(report):
            console.print(f"[bold]{escape(heading)}[/bold]", highlight=False)
            console.print(block, highlight=False, markup=False)
