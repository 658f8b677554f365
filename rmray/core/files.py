"""Writing a file so that a reader never sees half of it: the one helper every JSON, text and report
writer of rmray calls.

The text goes to a hidden temporary file in the same folder, is flushed to disk, and replaces the target
with ``os.replace`` -- atomic on POSIX within one file system, so a crash or a kill leaves the old file or
the new one, never a truncated mix that a resume or a rerun would then trust.
"""

from __future__ import annotations

import json
import os


def write_text_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (see the module docstring); returns ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: str, obj, indent: int | None = 2) -> str:
    """``obj`` as JSON at ``path``, atomically; values JSON cannot hold are written with ``str``."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))
