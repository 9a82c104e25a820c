"""invaudit: audit trained scikit-learn classifiers.

Exact and fast where the mathematics allows; honest about it where it does not.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
