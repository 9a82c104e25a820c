"""``invaudit mislabel``: not available yet (issue 7)."""

from __future__ import annotations

import typer

from ._common import not_yet


def mislabel(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 7); exits 4."""
    not_yet("mislabel", "issue 7")


def register(app) -> None:
    app.command("mislabel", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(mislabel)
