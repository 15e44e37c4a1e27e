"""Data in: reading tables, inferring column roles and task, cleaning, encoding and splitting.

Row numbers in every error are 1-based data rows (the header is not counted).
"""

from tunesmith.data.io import SUPPORTED_FORMATS, file_sha256, read_table, write_table
from tunesmith.data.schema import ROW_COLUMN, Schema, Task, infer_schema, label_string
from tunesmith.data.split import SplitResult, split_frame
from tunesmith.data.validate import ROW_INDEX, DropReport, encode_target, prepare_frame, texts_of

__all__ = [
    "ROW_COLUMN",
    "ROW_INDEX",
    "SUPPORTED_FORMATS",
    "DropReport",
    "Schema",
    "SplitResult",
    "Task",
    "encode_target",
    "file_sha256",
    "infer_schema",
    "label_string",
    "prepare_frame",
    "read_table",
    "split_frame",
    "texts_of",
    "write_table",
]
