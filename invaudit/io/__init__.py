"""Reading model and data files safely, and writing reports atomically."""

from .data import Dataset, load_data, parse_columns, parse_rows
from .report import dumps, envelope, jsonable, write_atomic

__all__ = ["Dataset", "load_data", "parse_columns", "parse_rows", "dumps", "envelope", "jsonable",
           "write_atomic"]
