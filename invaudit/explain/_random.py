"""Counter-based random numbers: a value is a pure function of (seed, keys).

The explanation search draws its random partitions, tie-breaks and spotlights from a hash of
``(seed, row, iteration, node path, feature)`` instead of a stateful generator. A row's answer
therefore depends only on the seed, the row's own number and its values -- not on which other
rows were explained in the same batch, nor on how the rows were chunked.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)

# Stream identifiers: independent random streams for the separate uses.
STREAM_PARTITION = 1
STREAM_WITNESS = 2
STREAM_SPOTLIGHT = 3


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014), vectorised, wrapping uint64 arithmetic."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def uniform(seed: int, *keys) -> np.ndarray:
    """Uniform floats in ``[0, 1)``, one per element of the broadcast of ``keys``.

    Each key is an integer array (or scalar) >= 0; the result is a deterministic function of
    ``seed`` and the key values only.
    """
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([seed], dtype=np.uint64))
        for k in keys:
            h = _mix(h ^ np.asarray(k).astype(np.uint64))
        return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)
