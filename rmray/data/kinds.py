"""What kind of data file a path names, by its ending: the one table every reader, check and count uses.

Kept in a module of its own, below :mod:`rmray.data.read` and :mod:`rmray.data.readable`, so that the
checks before Ray and the Ray readers share it without importing each other.
"""

from __future__ import annotations

import os

READERS = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json", ".jsonl.zst": "json",
    ".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv",
}


def file_kind(path: str) -> str | None:
    """``json``, ``parquet`` or ``csv`` by the file's ending; None for any other file."""
    return READERS.get(_suffix(path))


def is_lines(path: str) -> bool:
    """A JSON-lines file (one object per line), as opposed to one JSON document."""
    return ".jsonl" in path.lower()


def looks_local(source: str) -> bool:
    """A local path or pattern rather than a hub id (``org/name``)."""
    return (os.path.exists(source) or source.startswith((".", "/", "~")) or any(c in source for c in "*?[")
            or bool(file_kind(source)) or source.count("/") > 1)


def _suffix(path: str) -> str:
    lower = path.lower()
    for ext in sorted(READERS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return ""
