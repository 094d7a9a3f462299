"""Preference data: loading, formats, validation, tokenization (batching is :mod:`orpo.scoring`'s)."""

from .errors import DataError
from .load import ColumnMapping, load_preference_data
from .policy import RowPolicies
from .prepare import DataReport, prepare_dataset, prepare_preference_dataset, tokenize_dataset
from .tokenize import LengthLimits, PairTokenizer, RowTokenizer, TokenizeReport

__all__ = [
    "ColumnMapping",
    "DataError",
    "DataReport",
    "LengthLimits",
    "PairTokenizer",
    "RowPolicies",
    "RowTokenizer",
    "TokenizeReport",
    "load_preference_data",
    "prepare_dataset",
    "prepare_preference_dataset",
    "tokenize_dataset",
]
