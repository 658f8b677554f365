"""Hub datasets (``org/name`` or ``org/name:split``), read by Ray Data tasks from the dataset's files.

``datasets.load_dataset`` on the driver downloads and loads the whole split before Ray sees a row;
here the driver only lists file names, and Ray Data's read tasks fetch and parse the files, each its
own, in name order (the row order is the files' order, as the training order rule needs).

Which files: the hub's Parquet conversion of the split (``refs/convert/parquet``, ``<config>/<split>/``
-- present for nearly every public dataset), else the repository's own data files of that split by
the hub's naming rule (a ``<split>`` folder, or a file named ``<split>``, ``<split>-...`` or
``<split>.…``). Every config's files of the split are read, as ``load_dataset`` does for datasets
whose subsets are folders (Anthropic/hh-rlhf).
"""

from __future__ import annotations

import time

import ray

from rmray.errors import UsageError

from .kinds import file_kind

CONVERTED = "@refs%2Fconvert%2Fparquet"  # the hub's Parquet conversion branch, as a path revision


def hub_filesystem():
    """The hub as an fsspec filesystem (token from ``HF_TOKEN`` or the cached login)."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def read_hub(source: str) -> ray.data.Dataset:
    """The split's rows as a Ray Dataset, read on the cluster."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem


    fs = hub_filesystem()
    files = hub_files(source, fs)
    kinds = {file_kind(f) for f in files}
    if len(kinds) > 1:
        raise UsageError(f"{source}: the split's files mix formats ({sorted(kinds)}); fix: download them and "
                         "point train_data at the files of one format")
    arrow_fs = PyFileSystem(FSSpecHandler(fs))
    kind = kinds.pop()
    if kind == "parquet":
        return ray.data.read_parquet(files, filesystem=arrow_fs)
    if kind == "json":
        return ray.data.read_json(files, filesystem=arrow_fs)  # Arrow's reader: JSON lines or one document
    return ray.data.read_csv(files, filesystem=arrow_fs)


LISTING_TTL_S = 60.0
_listings: dict[tuple[str, int], tuple[float, list[str]]] = {}


def hub_files(source: str, fs=None) -> list[str]:
    """The data files of ``org/name[:split]`` (default ``train``), in name order; a one-line error when
    the hub cannot be reached or the split has no files.

    A run's check, row count and read share one listing (each is a network round trip, and a split can
    change between them): a listing is kept for ``LISTING_TTL_S`` per source and file system (fsspec
    keeps one file-system object per configuration), so a later run in the same process lists again."""
    fs = fs or hub_filesystem()
    key = (source, id(fs))
    kept = _listings.get(key)
    if kept and time.monotonic() - kept[0] < LISTING_TTL_S:
        return list(kept[1])
    files = _list_files(source, fs)
    _listings[key] = (time.monotonic(), files)
    return list(files)


def _list_files(source: str, fs) -> list[str]:
    repo, _, split = source.partition(":")
    split = split or "train"
    try:
        converted = _converted(fs, repo, split)
        files = converted or sorted(fs.find(f"datasets/{repo}"))
    except Exception as e:  # offline, gated, missing: say which and what to do
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise UsageError(f"could not list hub dataset {repo!r}: {type(e).__name__}: {first_line}; offline or "
                         "gated? fix: log in (huggingface-cli login) or point train_data at a local file") from None
    if converted:
        return converted
    mine = [f for f in files if file_kind(f) and _in_split(f[len(f"datasets/{repo}/"):], split)]
    if not mine:
        raise UsageError(f"{source}: hub dataset {repo!r} has no data files for split {split!r} "
                         "(fix: name the split as org/name:split, e.g. :test)")
    return mine


def _converted(fs, repo: str, split: str) -> list[str]:
    """The split's files in the hub's Parquet conversion; none where the dataset has no such branch."""
    try:
        return sorted(fs.glob(f"datasets/{repo}{CONVERTED}/*/{split}/*.parquet"))
    except FileNotFoundError:
        return []


def _in_split(relative: str, split: str) -> bool:
    """The hub's naming rule: a folder named after the split, or a file named ``split``, ``split-*`` or
    ``split.*`` (``train_prefs-0.parquet`` is split ``train_prefs``, not ``train``)."""
    *folders, base = relative.split("/")
    stem = base.split(".")[0]
    return split in folders or stem == split or stem.startswith(f"{split}-")

