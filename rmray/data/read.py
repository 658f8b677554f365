"""Local JSON-lines files as text rows, parsed value for value later (:mod:`rmray.data.lines`); every
other source is read by its :class:`rmray.data.source.Source`."""

from __future__ import annotations

import ray

from .kinds import file_kind, is_lines
from .readable import local_files


def read_lines(source: str, include_paths: bool = False) -> ray.data.Dataset | None:
    """Local JSON-lines files as text rows ``_line`` named ``_where`` = ``file:line`` (parsed later,
    value for value; see :mod:`rmray.data.lines`), or None for any other source. Blank lines are not rows."""
    from .lines import JsonLinesText

    files = [f for f in local_files(source) if file_kind(f) == "json" and is_lines(f)]
    if not files or "://" in source:
        return None
    return ray.data.read_datasource(JsonLinesText(files, include_paths=include_paths))
