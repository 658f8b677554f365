"""Local JSON-lines files as text rows, parsed value for value later (:mod:`rmray.data.lines`); every
other source is read by its :class:`rmray.data.source.Source`."""

from __future__ import annotations

import ray

from .kinds import file_kind, is_lines
from .readable import local_files


def read_lines(source: str, include_paths: bool = False) -> ray.data.Dataset | None:
    """JSON-lines files -- local, or objects behind a URI -- as text rows ``_line`` named ``_where`` =
    ``file:line`` (parsed later, value for value; see :mod:`rmray.data.lines`), or None for any other
    source. Blank lines are not rows."""
    from .lines import JsonLinesText
    from .source import open_source

    found = open_source(source).files() if "://" in source else local_files(source)
    files = [f for f in found if file_kind(f) == "json" and is_lines(f)]
    if not files:
        return None
    return ray.data.read_datasource(JsonLinesText(files, include_paths=include_paths))
