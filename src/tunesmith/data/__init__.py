"""Data in: reading, inferring column roles and task, inspecting, cleaning, augmenting, encoding, splitting.

Row numbers in every error are 1-based data rows (the header is not counted).
"""

from tunesmith.data.augment import NeighbourTable, TextAugmenter
from tunesmith.data.balance import resample
from tunesmith.data.clean import CleanAction, CleanReport, clean_data, clean_frame
from tunesmith.data.inspect import Finding, InspectionReport, inspect_data
from tunesmith.data.io import SUPPORTED_FORMATS, DataWarning, file_sha256, read_table, write_table
from tunesmith.data.label_issues import LabelIssues, find_label_issues
from tunesmith.data.normalize import NumericScaler
from tunesmith.data.schema import ROW_COLUMN, Schema, Task, infer_schema, label_string
from tunesmith.data.split import SplitResult, split_frame
from tunesmith.data.validate import ROW_INDEX, DropReport, encode_target, prepare_frame, texts_of

__all__ = [
    "ROW_COLUMN",
    "ROW_INDEX",
    "SUPPORTED_FORMATS",
    "CleanAction",
    "CleanReport",
    "DataWarning",
    "DropReport",
    "Finding",
    "InspectionReport",
    "LabelIssues",
    "NeighbourTable",
    "NumericScaler",
    "Schema",
    "SplitResult",
    "Task",
    "TextAugmenter",
    "clean_data",
    "clean_frame",
    "encode_target",
    "file_sha256",
    "find_label_issues",
    "infer_schema",
    "inspect_data",
    "label_string",
    "prepare_frame",
    "read_table",
    "resample",
    "split_frame",
    "texts_of",
    "write_table",
]
