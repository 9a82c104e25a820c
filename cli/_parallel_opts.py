"""``--jobs`` and ``--scheduler``: the option types of the row-parallel commands
(counterfactual, margin, explain, influence, mislabel); the work is :mod:`invaudit.parallel`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from invaudit.parallel import AUTO_PARALLEL_S, AUTO_PARALLEL_SPAWN_S, SCHEDULER_ENV


def _check_jobs(value: Optional[int]) -> Optional[int]:
    if value is not None and (value == 0 or value < -1):
        raise typer.BadParameter(f"{value}: expected a number of processes >= 1, or -1 for all cores.")
    return value


def _check_scheduler(value: Optional[str]) -> Optional[str]:
    """An empty address (``INVAUDIT_SCHEDULER=``) means none; Dask must be importable before
    any work starts."""
    value = None if value is None or not value.strip() else value.strip()
    if value is not None:
        from invaudit.errors import InputError

        try:
            import dask.distributed  # noqa: F401  (needed to reach the scheduler anyway)
        except ImportError:
            raise InputError("--scheduler needs Dask, which is not installed (pip install 'invaudit[dask]').") from None
    return value


Jobs = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", metavar="N", callback=_check_jobs, show_default=False,
    help=("Processes for the rows, on this machine; results are identical whatever N. Default: all cores, "
          f"but only once one chunk, timed alone, shows the rest would take over {AUTO_PARALLEL_S:g} s serially "
          f"({AUTO_PARALLEL_SPAWN_S:g} s off Linux, where a worker takes ~0.5-1 s to start), so small runs stay "
          "serial. 1: serial; -1: all cores, always."))]

Scheduler = Annotated[Optional[str], typer.Option(
    "--scheduler", metavar="ADDRESS", envvar=SCHEDULER_ENV, callback=_check_scheduler, show_default=False,
    help=(f"Run the rows on a Dask cluster (e.g. tcp://host:8786; default ${SCHEDULER_ENV}); needs the 'dask' "
          "extra. Same chunks and results as on one machine."))]
