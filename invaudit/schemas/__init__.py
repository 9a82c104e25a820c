"""JSON Schemas for every command's report (``invaudit.<command>/1``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

COMMANDS = ("info", "counterfactual", "margin", "influence", "mislabel", "explain", "audit")


@lru_cache(maxsize=None)
def schema(command: str) -> dict:
    """The JSON Schema of ``command``'s report."""
    if command not in COMMANDS:
        raise KeyError(command)
    text = resources.files(__package__).joinpath(f"{command}.json").read_text(encoding="utf-8")
    return json.loads(text)
