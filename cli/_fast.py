"""``invaudit info`` read without Typer's argument coercion (issue 16: process start).

Typer 0.29 coerces every parameter through a pydantic ``TypeAdapter``: importing pydantic and
building one adapter per parameter took ~0.28 s of the ~0.8 s that ``invaudit info MODEL`` took.
``info`` is what a CI step calls to see what a model file is, and its command line is short, so
:func:`direct` reads it here when it is in a form whose meaning is certain:

- one positional ``MODEL`` (not empty, not starting with ``-``);
- ``--trust``, ``--quiet`` / ``-q``;
- ``--sha256 HEX``, ``--format table|json|jsonl|markdown`` (exactly those spellings),
  ``--json PATH``, ``--schema 1``, each as ``--opt VALUE`` or ``--opt=VALUE``, with a value
  that is not empty and does not start with ``-``;
- each option at most once.

Anything else -- help, an unknown, repeated or misspelt option, ``--``, a second positional, a
format in capitals, ``--schema 2``, shell completion (``_INVAUDIT_COMPLETE``), Windows (where
Click expands wildcards first) -- gives None, and
the Typer app parses the command line as it always has: help, usage errors and their exit codes
are Typer's own, byte for byte. What :func:`direct` accepts is called exactly as Typer calls it:
the same function, the same keyword values, the option callbacks in Click's order (those given
on the command line as they appear, then the rest as declared), and the same handling of what
escapes the command (tests/cli/test_startup_info.py runs both paths on every form and compares
the calls, the output and the exit codes).

Typer itself is still imported (cli/_common.py declares the options with it, ~0.05 s); pydantic,
and the Click command Typer would build from ``info``'s signature, are not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Option -> (keyword, "flag" | "value"), as ``info`` declares them.
_INFO_OPTIONS = {
    "--trust": ("trust", "flag"),
    "--sha256": ("sha256", "value"),
    "--format": ("format", "value"),
    "--json": ("json", "value"),
    "--schema": ("schema", "value"),
    "--quiet": ("quiet", "flag"),
    "-q": ("quiet", "flag"),
}
#: ``info``'s keywords in declaration order (Click runs the callbacks of the rest in this order).
_INFO_ORDER = ("model", "trust", "sha256", "format", "json", "schema", "quiet")


class _Defer(Exception):
    """This command line is for Typer to read."""


def _value(keyword: str, text: str):
    if not text or text.startswith("-"):
        raise _Defer
    if keyword == "sha256":
        return text
    if keyword == "json":
        return Path(text)
    if keyword == "schema":
        if text != "1":
            raise _Defer
        return 1
    if keyword == "format":
        from invaudit.render import Format

        if text not in {f.value for f in Format}:
            raise _Defer
        return Format(text)
    raise _Defer  # pragma: no cover - every value option is listed above


def parse_info(args) -> tuple | None:
    """``(keywords, order)`` for ``info``'s arguments ``args`` (after the command's name), or None
    when Typer should read them. ``order``: the keywords given, as they appear."""
    given: dict = {}
    order: list = []
    try:
        it = iter(args)
        for arg in it:
            if not arg.startswith("-"):
                if "model" in given or not arg:
                    raise _Defer
                given["model"] = Path(arg)
                order.append("model")
                continue
            name, eq, attached = arg.partition("=")
            if name not in _INFO_OPTIONS:
                raise _Defer
            keyword, kind = _INFO_OPTIONS[name]
            if keyword in given:
                raise _Defer
            if kind == "flag":
                if eq:
                    raise _Defer
                given[keyword] = True
            else:
                given[keyword] = _value(keyword, attached if eq else next(it, ""))
            order.append(keyword)
    except _Defer:
        return None
    if "model" not in given:
        return None
    return given, order


def direct(args):
    """A zero-argument callable that runs the command ``args`` names without Typer, or None
    (then the Typer app reads ``args``). Only ``info`` is read here."""
    # Windows: Click expands wildcards in the arguments first (click.utils._expand_args)
    if not args or args[0] != "info" or "_INVAUDIT_COMPLETE" in os.environ or os.name == "nt":
        return None
    parsed = parse_info(args[1:])
    if parsed is None:
        return None
    given, order = parsed
    return lambda: _run_info(given, order)


def _run_info(given: dict, order: list):
    import inspect

    from . import _common, info as info_module

    # the defaults Typer takes: the function's own (tests/cli/test_startup_info.py checks that
    # the options, their spellings and their callbacks are the ones this module reads)
    kwargs = {name: p.default for name, p in inspect.signature(info_module.info).parameters.items()
              if p.default is not p.empty}
    kwargs.update(given)
    callbacks = {"json": _common._writable_json, "quiet": _common._set_quiet}
    # what Typer does with what escapes the parsing or the command (typer.core._main): Ctrl-C
    # ends it with 130, silently; end of input prints a new line and aborts
    running = _common.RUNNING
    running["command"] = "info"
    try:
        # Click's processing order: the parameters given, as they appear; then the rest as declared
        for keyword in [*order, *(k for k in _INFO_ORDER if k not in order)]:
            if keyword in callbacks:
                kwargs[keyword] = callbacks[keyword](kwargs[keyword])
        return info_module.info(**kwargs)
    except KeyboardInterrupt:
        return 130
    except EOFError:
        sys.stderr.write("\n")
        from typer import Abort

        raise Abort() from None
    finally:
        running["command"] = None
