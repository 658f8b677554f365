"""Open any supported preference source as a Ray Dataset of raw rows."""

from __future__ import annotations

import glob
import os

import ray

from rmray.core.demo_data import DEMO_SETS
from rmray.errors import UsageError

from .kinds import file_kind, is_lines, looks_local
from .readable import folder_files, local_files
from .saved import is_saved_dataset, read_saved_dataset


def read_source(source: str) -> ray.data.Dataset:
    """``demo``, a file/glob/URI (by extension), a ``save_to_disk`` folder, or a hub dataset id.

    A hub id may carry a split: ``Anthropic/hh-rlhf:test`` (default ``train``).
    """
    if source in DEMO_SETS:
        return ray.data.from_items(DEMO_SETS[source]())
    kind = file_kind(source)
    if kind and "://" not in source and any(c in source for c in "*?["):
        # Ray's readers take files and folders, not patterns: the matches, sorted (a fixed row order)
        return _read_files(kind, sorted(f for f in glob.glob(os.path.expanduser(source)) if os.path.isfile(f)), source)
    if kind:
        return _read_files(kind, source, source)
    if os.path.isdir(source):
        if is_saved_dataset(source):
            return read_saved_dataset(source)
        files = folder_files(source)  # refuses a folder of several kinds, naming the files left out
        if not files:
            raise UsageError(f"{source}: folder has no .jsonl/.json/.parquet/.csv files and is not a saved "
                             "`datasets` dataset (fix: give a folder of data files)")
        return _read_files(file_kind(files[0]), files, source)
    if "://" not in source and not looks_local(source):  # "org/name" or "org/name:split"
        from .hub import read_hub

        return read_hub(source)
    raise UsageError(
        f"cannot read {source!r}: expected a .jsonl/.json/.parquet/.csv path or glob, a saved `datasets` folder, "
        "a hub dataset id (online), or 'demo'"
    )


def read_lines(source: str, include_paths: bool = False) -> ray.data.Dataset | None:
    """Local JSON-lines files as text rows ``_line`` named ``_where`` = ``file:line`` (parsed later,
    value for value; see :mod:`rmray.data.lines`), or None for any other source. Blank lines are not rows."""
    from .lines import JsonLinesText

    files = [f for f in local_files(source) if file_kind(f) == "json" and is_lines(f)]
    if not files or "://" in source:
        return None
    return ray.data.read_datasource(JsonLinesText(files, include_paths=include_paths))


def _read_files(kind: str, paths, source: str) -> ray.data.Dataset:
    if isinstance(paths, list) and not paths:
        raise UsageError(f"{source}: no file matches (fix: check the path and pattern)")
    if kind == "json":
        return ray.data.read_json(paths, lines=is_lines(source))
    if kind == "parquet":
        return ray.data.read_parquet(paths)
    return ray.data.read_csv(paths)


def check_source(key: str, source: str) -> None:
    """A local file, folder or glob must exist; a hub id (``org/name[:split]``) must list files of its
    split (a network call of a second, before Ray starts); ``demo`` and URIs pass."""
    if source in DEMO_SETS or "://" in source:
        return
    if not looks_local(source):
        from .hub import hub_files

        hub_files(source)
        return
    path = os.path.expanduser(source)
    if any(c in path for c in "*?["):
        if not glob.glob(path):
            raise UsageError(f"{key}={source}: no file matches (fix: check the path and pattern)")
    elif not os.path.exists(path):
        raise UsageError(f"{key}={source}: file not found (fix: give an existing .jsonl/.json/.parquet/.csv file, "
                         "folder or glob, a hub dataset id, or demo)")
