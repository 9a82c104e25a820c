import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

# invaudit feeds arrays to models fitted with feature names; the CLI silences this warning too.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@pytest.fixture
def samples() -> Path:
    return SAMPLES
