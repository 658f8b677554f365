"""JSON-lines files as text rows named ``file:line``, read as a stream.

Ray's ``read_text`` reads a whole file into memory and numbers nothing, and its JSON reader infers one
type per column (converting values to it). This datasource reads each file in chunks, keeps every
non-blank line's text for the caller to parse value for value, and names it by file and line -- the
name the data report and ``on_bad_row=error`` use, so a bad row is found in an editor, not by Ray's
block offsets. Compressed files (``.gz``, ``.zst``) are decompressed by pyarrow as they are read.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

CHUNK_BYTES = 8 * 2**20
ROWS_PER_BLOCK = 512


class JsonLinesText(FileBasedDatasource):
    """Rows ``{"_line": text, "_where": "name.jsonl:17"}``; a line that is not UTF-8 has ``_line`` None
    and its reason in ``_where``'s place of the report (``_error``)."""

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        name = os.path.basename(path)
        lines, wheres, errors = [], [], []
        number, rest = 0, b""
        while True:
            chunk = f.read(CHUNK_BYTES)
            pieces = (rest + chunk).split(b"\n")
            rest = pieces.pop() if chunk else b""  # a line cut by the chunk's end waits for the next one
            for raw in pieces:
                number += 1
                if not raw.strip():
                    continue
                try:
                    text, error = raw.decode("utf-8"), None
                except UnicodeDecodeError as e:
                    text, error = None, f"line is not UTF-8 text ({e.reason} at byte {e.start})"
                lines.append(text)
                wheres.append(f"{name}:{number}")
                errors.append(error)
                if len(lines) >= ROWS_PER_BLOCK:
                    yield _block(lines, wheres, errors)
                    lines, wheres, errors = [], [], []
            if not chunk:
                break
        if lines:
            yield _block(lines, wheres, errors)


def parse_line(line: str | None, unreadable: str | None) -> tuple[dict, str | None]:
    """A line's JSON object, or ``({}, reason)`` for a line that is not UTF-8 or not a JSON object."""
    if unreadable:
        return {}, unreadable
    try:
        row = json.loads(line)
    except ValueError as e:
        return {}, f"line is not a JSON object: {e}"
    if not isinstance(row, dict):
        return {}, f"line is not a JSON object: expected a JSON object, got {type(row).__name__}"
    return row, None


def _block(lines, wheres, errors) -> pa.Table:
    return pa.table({"_line": pa.array(lines, pa.string()), "_where": pa.array(wheres, pa.string()),
                     "_error": pa.array(errors, pa.string())})
