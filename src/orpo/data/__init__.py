"""Preference data: loading, formats, validation, tokenization and batching."""

from .collate import ORPODataCollator
from .errors import DataError
from .load import ColumnMapping, load_preference_data
from .prepare import DataReport, prepare_preference_dataset
from .tokenize import LengthLimits, PairTokenizer, TokenizeReport, tokenize_dataset

__all__ = [
    "ColumnMapping",
    "DataError",
    "DataReport",
    "LengthLimits",
    "ORPODataCollator",
    "PairTokenizer",
    "TokenizeReport",
    "load_preference_data",
    "prepare_preference_dataset",
    "tokenize_dataset",
]
