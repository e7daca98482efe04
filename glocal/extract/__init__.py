"""Extraction: batches of images to feature records."""
from glocal.extract.batch import ExtractionFailure, extract_many, extract_one

__all__ = ["ExtractionFailure", "extract_many", "extract_one"]
