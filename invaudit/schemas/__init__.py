"""JSON Schemas for every command's report (``invaudit.<command>/1``), and the compact reports
``invaudit.counterfactual/2`` and ``invaudit.margin/2`` (``--schema 2``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

COMMANDS = ("info", "counterfactual", "margin", "influence", "mislabel", "explain", "audit")

#: The report versions each command can write (``--schema``).
VERSIONS = {command: (1,) for command in COMMANDS} | {"counterfactual": (1, 2), "margin": (1, 2)}


@lru_cache(maxsize=None)
def schema(command: str, version: int = 1) -> dict:
    """The JSON Schema of ``command``'s report, version ``version``
    (``<command>.json`` for /1, ``<command>.v<N>.json`` after)."""
    if command not in COMMANDS or int(version) not in VERSIONS[command]:
        raise KeyError(f"{command}/{version}")
    name = f"{command}.json" if int(version) == 1 else f"{command}.v{int(version)}.json"
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def schema_for(report: dict) -> dict:
    """The schema a report names in its ``schema`` field (``invaudit.<command>/<version>``)."""
    name = str(report.get("schema", ""))
    command, _, version = name.removeprefix("invaudit.").rpartition("/")
    try:
        return schema(command, int(version))
    except (KeyError, ValueError):
        raise KeyError(f"no JSON Schema for report schema {name!r}") from None
