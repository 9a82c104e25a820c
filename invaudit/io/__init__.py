"""Reading model and data files safely, and writing reports atomically."""

from .model_file import LoadedModel, file_sha256, load_model
from .data import Dataset, load_data, parse_columns, parse_rows
from .report import dumps, envelope, jsonable, write_atomic

__all__ = ["LoadedModel", "file_sha256", "load_model", "Dataset", "load_data", "parse_columns", "parse_rows", "dumps", "envelope", "jsonable",
           "write_atomic"]
