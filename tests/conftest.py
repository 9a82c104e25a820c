import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples (reproducible, no flaky reds);
# a developer's run draws new examples each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from invaudit.cli.app import main
from invaudit.schemas import schema_for

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

# invaudit feeds arrays to models fitted with feature names; the CLI silences this warning too.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@pytest.fixture
def samples() -> Path:
    return SAMPLES



@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def invaudit(capsys, monkeypatch):
    """Run the real command line in-process: ``invaudit("info", path)`` -> Result."""
    monkeypatch.setenv("INVAUDIT_NO_PROGRESS", "1")
    monkeypatch.setenv("NO_COLOR", "1")

    def run(*args) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(exc.value.code, out, err)

    return run


def validate(report: dict) -> dict:
    """Validate a report against its command's JSON Schema (shipped in the package)."""
    jsonschema.validate(report, schema_for(report))
    return report


@pytest.fixture(name="validate")
def validate_fixture():
    return validate


@pytest.fixture(scope="session")
def cluster():
    """One Dask LocalCluster (2 worker processes) for the whole run: the scheduler's address."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture
def pool_answers(monkeypatch):
    """This process never takes over a cold worker's chunks: the pool's answers are the ones
    compared (use with ``pytestmark = pytest.mark.usefixtures("pool_answers")``)."""
    from invaudit import parallel

    monkeypatch.setattr(parallel, "_STEAL_FROM_COLD_WORKERS", False)
