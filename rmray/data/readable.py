"""Is each local input file readable as what its name says? Checked on the driver before Ray starts.

Ray Data's readers stop on the first unreadable byte with a traceback from inside a read task that
names neither file nor line, after Ray's start-up. These checks open each local file the way its reader
will and answer in seconds with one line: the file, the line where there is one, and the fix. JSON-lines
files are parsed whole up to a total of ``SCAN_BYTES`` (a bad line there would stop the read anyway);
above it only their first lines are read, as for every other kind.
"""

from __future__ import annotations

import glob
import gzip
import json
import os

from rmray.core.demo_data import DEMO_SETS
from rmray.errors import UsageError

from .kinds import file_kind, is_lines

SCAN_BYTES = 512 * 2**20
FIRST_LINES = 20


def local_files(source: str) -> list[str]:
    """The local files behind ``source`` (a file, folder or glob); [] for hub ids, URIs and ``demo``."""

    path = os.path.expanduser(source)
    if "://" in source or source in DEMO_SETS:
        return []
    if any(c in path for c in "*?["):
        return sorted(f for f in glob.glob(path) if os.path.isfile(f))
    if os.path.isdir(path):
        return folder_files(path)
    return [path] if os.path.isfile(path) else []


def folder_files(folder: str) -> list[str]:
    """The data files of a folder, sorted; one line naming the files left out when they are of several
    kinds. Ray Data reads a dataset with one reader, so a folder of ``a.jsonl`` and ``b.parquet`` would
    train on one kind and drop the other's rows without a word; every command refuses it the same way."""

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if file_kind(f))
    kinds = sorted({file_kind(f) for f in files})
    if len(kinds) > 1:
        first = file_kind(files[0])
        left_out = [os.path.basename(f) for f in files if file_kind(f) != first]
        raise UsageError(f"{folder}: holds {' and '.join(kinds)} files, read as one kind only: "
                         f"{', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''} would be left out "
                         "(fix: one kind per folder, e.g. move the other files to a folder of their own)")
    return files


def check_readable(source: str, *, parse_lines: bool = True) -> None:
    """Raise :class:`UsageError` naming the first file (and line) its reader could not read.

    ``parse_lines=False`` checks JSON-lines files as text only (UTF-8, whole gzip streams): for
    ``rmray score``, which keeps a line that is not JSON as a row with its reason."""

    files = local_files(source)
    budget = SCAN_BYTES
    for path in files:
        kind = file_kind(path)
        if kind == "parquet":
            _check_parquet(path)
        elif kind == "json" and is_lines(path):
            size = os.path.getsize(path)
            _check_json_lines(path, whole=size <= budget, parse=parse_lines)
            budget -= size
        elif kind == "json" and os.path.getsize(path) <= budget:
            _check_json_document(path)
            budget -= os.path.getsize(path)
        elif kind == "csv" and os.path.getsize(path) <= budget:
            _check_first_lines(path, kind)  # names a bad byte's encoding, which the CSV reader may not
            _check_csv(path)
            budget -= os.path.getsize(path)
        elif kind in ("json", "csv"):
            _check_first_lines(path, kind)


def _open_lines(path: str):
    """Binary lines, decompressed: decoding each line on its own names the line a bad byte is in."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return zstandard.open(path, "rb")
    return open(path, "rb")


def _check_json_lines(path: str, whole: bool, parse: bool) -> None:
    line_no, rows = 0, 0
    try:
        with _open_lines(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not whole and line_no > FIRST_LINES:
                    return
                line = raw.decode("utf-8")
                if parse and line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"expected a JSON object per line, got {type(row).__name__}")
                    rows += 1
    except (EOFError, OSError) as err:  # a cut-short or corrupt compressed stream: the whole file
        raise UsageError(f"{path}: the file is cut short or not the compressed stream its name says "
                         f"({_short(err)}) (fix: copy or download it again)") from None
    except (ValueError, UnicodeDecodeError) as err:
        where = f"{path}:{line_no}" if line_no else path
        raise UsageError(f"{where}: not readable as JSON lines ({_short(err)}) (fix: repair or remove that line, "
                         "or re-export the file as UTF-8)") from None
    if parse and whole and rows == 0:
        raise UsageError(f"{path}: no rows (fix: give a file with one JSON object per line, or leave it out)")


def _check_first_lines(path: str, kind: str) -> None:
    try:
        with _open_lines(path) as f:
            head = "".join(raw.decode("utf-8") for _, raw in zip(range(FIRST_LINES), f))
    except (UnicodeDecodeError, EOFError, OSError) as err:
        raise UsageError(f"{path}: not readable as {kind.upper()} text ({_short(err)}) (fix: re-export it as "
                         "UTF-8)") from None
    if kind == "json" and head.strip()[:1] not in ("[", "{"):
        raise UsageError(f"{path}: does not start as JSON (fix: a .json file holds an array of objects; use "
                         ".jsonl for one object per line)")


def _check_json_document(path: str) -> None:
    try:
        with _open_lines(path) as f:
            document = json.loads(f.read().decode("utf-8"))
    except (EOFError, OSError) as err:
        raise UsageError(f"{path}: the file is cut short or not the compressed stream its name says "
                         f"({_short(err)}) (fix: copy or download it again)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a JSON document ({_short(err)}) (fix: a .json file holds one array of "
                         "objects as UTF-8; name a file of one object per line .jsonl)") from None
    if not isinstance(document, (list, dict)):
        raise UsageError(f"{path}: a JSON {type(document).__name__}, not an array of objects (fix: re-export it)")


def _check_parquet(path: str) -> None:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a bad footer
        raise UsageError(f"{path}: not a readable Parquet file ({_short(err)}) (fix: re-export it)") from None
    if rows == 0:
        raise UsageError(f"{path}: no rows (fix: give a Parquet file with rows, or leave it out)")


def _check_csv(path: str) -> None:
    """The whole file through pyarrow's CSV reader, the one Ray Data uses (an unterminated quote, a row
    of the wrong width)."""
    import pyarrow as pa
    from pyarrow import csv

    try:
        rows = csv.read_csv(path).num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as err:
        raise UsageError(f"{path}: not readable as CSV ({_short(err)}) (fix: repair the quoting or re-export "
                         "it as UTF-8 CSV with a header row)") from None
    if rows == 0:
        raise UsageError(f"{path}: no rows (fix: give a CSV file with a header and rows, or leave it out)")


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]


def check_columns(source: str, required: dict[str, str], *, rated: bool = False,
                  attributes: list[str] | None = None) -> None:
    """Each local file's first row has the ``required`` columns (setting name -> column name), or, with
    ``rated``, is a rated row (``responses`` with ``ratings`` or ``ranking``; ratings per attribute need
    the run's ``attributes``)."""
    for path in local_files(source):
        row = _first_row(path)
        if row is None:
            continue
        if rated and "responses" in row:
            _check_rated(path, row, attributes)
            continue
        for setting, column in required.items():
            if column not in row:
                raise UsageError(f"{path}: no column {column!r} (columns: {', '.join(sorted(row))}) (fix: "
                                 f"{setting}=<the column that holds it>)")


def stepwise_source(source: str) -> bool:
    """Whether a local source's first row is stepwise (``prompt``, ``completions``, ``labels``): the data of a
    process reward model. Hub ids and URIs say so with ``data_format=stepwise``."""
    try:
        rows = [DEMO_SETS[source](1)[0]] if source in DEMO_SETS else (_first_row(p) for p in local_files(source))
        for row in rows:
            if row is not None:
                return "completions" in row and "labels" in row
    except (OSError, EOFError, ValueError):  # unreadable: the source checks that follow name the file and why
        return False
    return False


def check_benchmark_rows(source: str, benchmark: str, columns: tuple[str, ...]) -> None:
    """Each local file's first row has the benchmark's published columns; a hub id is read as published."""
    for path in local_files(source):
        row = _first_row(path)
        missing = [c for c in columns if row is not None and c not in row]
        if missing:
            raise UsageError(f"{path}: not in {benchmark}'s row format: no column {missing[0]!r} (columns: "
                             f"{', '.join(sorted(row))}; a {benchmark} row has {', '.join(columns)})")


def _check_rated(path: str, row: dict, attributes: list[str] | None) -> None:
    if "ratings" not in row and "ranking" not in row:
        raise UsageError(f"{path}: rated rows (with 'responses') need 'ratings' or 'ranking' (columns: "
                         f"{', '.join(sorted(row))})")
    ratings = row.get("ratings")
    if isinstance(ratings, dict) and not attributes:
        raise UsageError(f"{path}: ratings are given per attribute ({', '.join(map(str, ratings))}) (fix: "
                         "attributes=[...] and attribute_weights=[...] in the config)")


def _first_row(path: str) -> dict | None:
    """The first row: its values where a JSON reader gives them, else its column names mapped to None
    (Parquet, CSV); None where it cannot be read cheaply (a huge .json document)."""

    kind = file_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return dict.fromkeys(pq.read_schema(path).names)
    with _open_lines(path) as f:
        if kind == "csv":
            import csv

            return dict.fromkeys(next(csv.reader([f.readline().decode("utf-8")]), []))
        if is_lines(path):  # the first line that is a JSON object (rmray score keeps the others as rows)
            for _, raw in zip(range(FIRST_LINES), f):
                try:
                    row = json.loads(raw) if raw.strip() else None
                except ValueError:
                    continue
                if isinstance(row, dict):
                    return row
            return None
        if os.path.getsize(path) > SCAN_BYTES:
            return None
        document = json.loads(f.read().decode("utf-8"))
    rows = document if isinstance(document, list) else [document]
    return rows[0] if rows and isinstance(rows[0], dict) else {}
