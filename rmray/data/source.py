"""Where rows come from: one type per kind of source, each checking, counting and reading itself.

Training, ``rmray score`` and ``rmray eval`` name their data with one string (``demo``, a file, folder or
glob, a pyarrow URI, a ``save_to_disk`` folder, a hub id). :func:`open_source` is the one place that
string is told apart; every command then asks the same object the same questions:

- ``check(key)``: before Ray starts, in seconds -- the source exists and its files are readable as what
  their names say (one line naming the file and line, and the fix);
- ``count_rows()``: the rows it holds from its own metadata (a streamed run's schedule), None if unknown;
- ``files()``: its local files (the run identity's fingerprint), [] for the others;
- ``read()``: a Ray Dataset of its raw rows, in a fixed order.

Adding a kind of source is a subclass here, listed in :data:`SOURCE_TYPES` before the types whose
``matches`` would also take it, plus a case in ``tests/train/test_train_ray.py::test_reads_every_source_format``.
"""

from __future__ import annotations

import glob
import os

from rmray.core.demo_data import DEMO_SETS
from rmray.core.files import storage_problem
from rmray.errors import UsageError

from . import rowcount
from .kinds import file_kind, is_lines, looks_local
from .readable import check_readable, folder_files, local_files
from .saved import is_saved_dataset


class Source:
    """A source string and what every command asks of it (see the module docstring)."""

    def __init__(self, spec: str):
        self.spec = spec

    @classmethod
    def matches(cls, spec: str) -> bool:
        raise NotImplementedError

    def check(self, key: str = "data", *, parse_lines: bool = True) -> None:
        """Raise :class:`UsageError` naming ``key`` when the source cannot be read. ``parse_lines=False``
        checks JSON-lines files as text only (``rmray score`` keeps a line that is not JSON as a row)."""

    def count_rows(self) -> int | None:
        return None

    def files(self) -> list[str]:
        return []

    def read(self):
        raise NotImplementedError


class Demo(Source):
    """A built-in set (``demo``, ``demo-rated``): rows made in memory, no file."""

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec in DEMO_SETS

    def count_rows(self) -> int:
        return len(DEMO_SETS[self.spec]())

    def read(self):
        import ray

        return ray.data.from_items(DEMO_SETS[self.spec]())


class Uri(Source):
    """A file or glob on any pyarrow filesystem (``s3://``, ``gs://``, ``file://``), read where it lies."""

    @classmethod
    def matches(cls, spec: str) -> bool:
        return "://" in spec

    def check(self, key: str = "data", *, parse_lines: bool = True) -> None:
        """The bucket answers with these credentials and holds the file (or a file the glob matches): one
        line naming the URI and what to check, before Ray starts reading."""
        import pyarrow
        import pyarrow.fs

        self._kind()
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(self.spec)
            bucket = path.split("/")[0]
            if not isinstance(fs, pyarrow.fs.LocalFileSystem) and fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
                raise UsageError(f"{key} {self.spec}: the bucket {bucket!r} does not exist (fix: correct the URI)")
            found = bool(self._expand())
        except (OSError, pyarrow.ArrowException) as err:
            raise UsageError(f"{key} {self.spec}: {storage_problem(err)}") from None
        if not found:
            raise UsageError(f"{key} {self.spec}: no such file (fix: check the path; the bucket answered)")

    def _expand(self) -> list[str]:
        """The file URIs the spec names: itself, or what its glob matches (Ray Data reads no URI globs)."""
        import fnmatch

        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.spec)
        if "*" not in path and "?" not in path:
            return [self.spec] if fs.get_file_info(path).type == pyarrow.fs.FileType.File else []
        folder = path[:min(i for i in (path.find("*"), path.find("?")) if i >= 0)].rsplit("/", 1)[0]
        listed = fs.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True, allow_not_found=True))
        scheme, _, rest = self.spec.partition("://")
        query = rest.partition("?")[2]  # e.g. endpoint_override: each matched file's URI keeps it
        return sorted(f"{scheme}://{info.path}" + (f"?{query}" if query else "") for info in listed
                      if info.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(info.path, path))

    def _kind(self) -> str:
        kind = file_kind(self.spec)
        if kind is None:
            raise UsageError(f"cannot read {self.spec!r}: a URI names a .jsonl/.json/.parquet/.csv file or glob "
                             "(fix: add the file name or pattern)")
        return kind

    def files(self) -> list[str]:
        return self._expand()

    def read(self):
        return read_files(self._kind(), self._expand() or self.spec, self.spec)


class SavedDataset(Source):
    """A folder written by ``datasets``' ``save_to_disk`` (Arrow files plus ``state.json``)."""

    @classmethod
    def matches(cls, spec: str) -> bool:
        return os.path.isdir(os.path.expanduser(spec)) and is_saved_dataset(os.path.expanduser(spec))

    def count_rows(self) -> int | None:
        return rowcount.saved_rows(os.path.expanduser(self.spec))

    def read(self):
        from .saved import read_saved_dataset

        return read_saved_dataset(os.path.expanduser(self.spec))


class LocalFiles(Source):
    """A local file, a folder of files of one kind, or a glob (its matches in name order)."""

    @classmethod
    def matches(cls, spec: str) -> bool:
        return looks_local(spec)

    def check(self, key: str = "data", *, parse_lines: bool = True) -> None:
        path = os.path.expanduser(self.spec)
        if any(c in path for c in "*?["):
            if not glob.glob(path):
                raise UsageError(f"{key}={self.spec}: no file matches (fix: check the path and pattern)")
        elif not os.path.exists(path):
            raise UsageError(f"{key}={self.spec}: file not found (fix: give an existing .jsonl/.json/.parquet/.csv "
                             "file, folder or glob, a hub dataset id, or demo)")
        elif os.path.isdir(path) and not folder_files(path):
            raise UsageError(f"{key}={self.spec}: the folder has no .jsonl/.json/.parquet/.csv files and is not a "
                             "saved `datasets` dataset (fix: give a folder of data files)")
        check_readable(self.spec, parse_lines=parse_lines)

    def count_rows(self) -> int | None:
        return rowcount.file_rows(self.files())

    def files(self) -> list[str]:
        return local_files(self.spec)

    def read(self):
        path = os.path.expanduser(self.spec)
        if os.path.isfile(path):
            if file_kind(path) is None:
                raise UsageError(f"cannot read {self.spec!r}: not a .jsonl/.json/.parquet/.csv file (fix: rename it by "
                                 "its format, or give a folder or glob of data files)")
            return read_files(file_kind(path), path, self.spec)
        files = self.files()  # a folder of one kind (a mixed one is refused, naming the files left out), or a glob
        if not files:
            raise UsageError(f"{self.spec}: no .jsonl/.json/.parquet/.csv file there (fix: check the path and pattern)")
        return read_files(file_kind(files[0]), files, self.spec)


class Hub(Source):
    """A hub dataset id, ``org/name`` or ``org/name:split`` (default ``train``), read by Ray Data tasks."""

    @classmethod
    def matches(cls, spec: str) -> bool:
        return not looks_local(spec)

    def check(self, key: str = "data", *, parse_lines: bool = True) -> None:
        from .hub import hub_files

        hub_files(self.spec)  # a network call of a second: the split must list files

    def count_rows(self) -> int | None:
        return rowcount.hub_rows(self.spec)

    def read(self):
        from .hub import read_hub

        return read_hub(self.spec)


SOURCE_TYPES = (Demo, Uri, SavedDataset, LocalFiles, Hub)
"""In the order :func:`open_source` tries them: the first whose ``matches`` takes the string."""


def open_source(spec: str) -> Source:
    """The source a data string names (see :data:`SOURCE_TYPES`)."""
    for kind in SOURCE_TYPES:
        if kind.matches(spec):
            return kind(spec)
    raise UsageError(f"cannot read {spec!r}: expected a .jsonl/.json/.parquet/.csv path or glob, a saved `datasets` "
                     "folder, a hub dataset id (online), or 'demo'")


def read_files(kind: str, paths, spec: str):
    """Ray Data's reader for one kind of file (a path, a URI or a list of them)."""
    import ray

    if kind == "json":
        return ray.data.read_json(paths, lines=is_lines(spec))
    if kind == "parquet":
        return ray.data.read_parquet(paths)
    return ray.data.read_csv(paths)
