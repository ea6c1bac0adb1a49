"""Data sources: where rows to score come from."""

from foretell.sources.files import FILE_FORMATS, read_rows

__all__ = ["FILE_FORMATS", "read_rows"]
