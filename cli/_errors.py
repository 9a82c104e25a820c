"""The one place where exceptions become exit codes (DESIGN.md: 0/1/2/3/4)."""

from __future__ import annotations

import os
import sys
import traceback

import typer

try:  # recent Typer vendors Click as typer._click; older releases depend on Click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_exceptions

from invaudit.errors import InvauditError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_SOLVER = 0, 1, 2, 3, 4


def run_guarded(call) -> int:
    """Run the Click/Typer entry point and map whatever comes out of it to an exit code."""
    try:
        rv = call()
    except click_exceptions.UsageError as exc:  # includes BadParameter, NoSuchOption, MissingParameter
        exc.show(file=sys.stderr)
        return EXIT_USAGE
    except (typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)) as exc:
        return exc.exit_code
    except (typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)):
        sys.stderr.write("aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except InvauditError as exc:
        sys.stderr.write(f"invaudit: error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:  # `invaudit ... | head`
        return EXIT_OK
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("INVAUDIT_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"invaudit: internal error: {type(exc).__name__}: {exc} "
                         "(set INVAUDIT_DEBUG=1 for the traceback)\n")
        return EXIT_SOLVER
    return rv if isinstance(rv, int) else EXIT_OK
