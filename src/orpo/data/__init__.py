"""Preference data: formats, validation, tokenization and batching."""

from .collate import ORPODataCollator
from .prepare import DataReport, prepare_preference_dataset
from .tokenize import LengthLimits, PairTokenizer, TokenizeReport, tokenize_dataset

__all__ = [
    "DataReport",
    "LengthLimits",
    "ORPODataCollator",
    "PairTokenizer",
    "TokenizeReport",
    "prepare_preference_dataset",
    "tokenize_dataset",
]
