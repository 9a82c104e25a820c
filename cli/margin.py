"""``invaudit margin``: not available yet (issue 5)."""

from __future__ import annotations

import typer

from ._common import not_yet


def margin(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 5); exits 4."""
    not_yet("margin", "issue 5")


def register(app) -> None:
    app.command("margin", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(margin)
