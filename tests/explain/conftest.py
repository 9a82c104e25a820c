from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def or_image():
    """4x4 image: A = top-left 2x2, B = bottom-right 2x2."""
    x = np.arange(1.0, 17.0)
    A = np.array([0, 1, 4, 5])
    B = np.array([10, 11, 14, 15])
    return x, A, B
