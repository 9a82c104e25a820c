"""The one place where exceptions become exit codes (DESIGN.md: 0/1/2/3/4).

Beyond DESIGN.md's codes, two follow the shell's conventions: 128 + the signal's number when a
signal ends the run (130 SIGINT, 143 SIGTERM: ``audit`` returns these itself) and 141 (128 +
SIGPIPE) when the reader of stdout goes away (``invaudit ... | head``): nothing more is written,
no message, no traceback, and exit code 1 stays "an audit check failed".
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback

from invaudit.errors import InvauditError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_SOLVER = 0, 1, 2, 3, 4
#: stdout closed under us: what a shell reports for a process killed by SIGPIPE.
EXIT_CLOSED_PIPE = 128 + int(getattr(signal, "SIGPIPE", 13))


def _closed_pipe(exc: BaseException | None) -> bool:
    """True for the error of a write to a pipe whose reader is gone, or for an exception raised
    while handling one (Click turns EPIPE into ``sys.exit(1)``)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit has nowhere to fail (Python
    would print "Exception ignored ... BrokenPipeError" and turn the exit code into 120)."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _caught(name: str, *, typer_too: bool = True) -> tuple:
    """The exception classes called ``name`` (UsageError, Exit, Abort) in Click and, with
    ``typer_too``, in Typer itself; () when Typer was never imported, for then none of them can
    have been raised (mapping exit codes needs no Typer: cli/_fast.py runs ``info`` without its
    parser). An ``except`` clause evaluates this only when an exception reaches it."""
    if "typer" not in sys.modules:
        return ()
    import typer

    try:  # recent Typer vendors Click as typer._click; older releases depend on Click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - depends on the installed Typer
        from click import exceptions as click_exceptions
    found = [getattr(click_exceptions, name, None), getattr(typer, name, None) if typer_too else None]
    return tuple(dict.fromkeys(c for c in found if isinstance(c, type)))


def __getattr__(name: str):
    # ``from ._errors import click_exceptions``: Click's exceptions module (Typer's vendored copy
    # in recent releases), imported on first use only
    if name == "click_exceptions":
        try:
            from typer._click import exceptions
        except ImportError:  # pragma: no cover - depends on the installed Typer
            from click import exceptions
        return exceptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def usage_line(exc) -> str:
    """A usage error in one line: ``invaudit margin: error: <what>; see 'invaudit margin -h'.``"""
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "invaudit"
    message = exc.format_message().strip().replace("\n", " ").replace("Value error, ", "")
    message = message[:-1] if message.endswith(".") else message
    if message.endswith(("?", "!")):  # "Did you mean 'explain'?": a sentence of its own
        return f"{where}: error: {message} See '{where} -h'.\n"
    return f"{where}: error: {message}; see '{where} -h'.\n"


def run_guarded(call) -> int:
    """Run the Click/Typer entry point and map whatever comes out of it to an exit code."""
    try:
        rv = call()
    except _caught("UsageError", typer_too=False) as exc:  # includes BadParameter, NoSuchOption, MissingParameter
        sys.stderr.write(usage_line(exc))
        return EXIT_USAGE
    except _caught("Exit") as exc:
        return exc.exit_code
    except _caught("Abort"):
        sys.stderr.write("aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except SystemExit as exc:  # Click's answer to a closed pipe is sys.exit(1): not a failed check
        if _closed_pipe(exc.__context__):
            _silence_stdout()
            return EXIT_CLOSED_PIPE
        raise
    except InvauditError as exc:
        if _closed_pipe(exc.__context__):
            _silence_stdout()
            return EXIT_CLOSED_PIPE
        sys.stderr.write(f"invaudit: error: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        if not _closed_pipe(exc):
            return _internal(exc)
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    except Exception as exc:  # a bug: one line, the traceback only on request
        if _closed_pipe(exc):
            _silence_stdout()
            return EXIT_CLOSED_PIPE
        return _internal(exc)
    return rv if isinstance(rv, int) else EXIT_OK


def _internal(exc: BaseException) -> int:
    if os.environ.get("INVAUDIT_DEBUG"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    sys.stderr.write(f"invaudit: internal error: {type(exc).__name__}: {exc} "
                     "(set INVAUDIT_DEBUG=1 for the traceback)\n")
    return EXIT_SOLVER
