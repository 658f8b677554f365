"""How many rows a source holds, from what it says of itself: no read, no tokenization.

A streamed run needs its schedule (the learning rate's decay, the progress bar) before the first
step, long before the stream has passed every row. The count comes from metadata where the source
has it -- Parquet footers, a saved dataset's Arrow record-batch headers, the hub conversion's
Parquet footers -- and from a line count of JSON-lines and CSV files (a scan of bytes, about a
second per few hundred MB). ``None`` where no such count exists (one JSON document, a URI): the
caller then reads the data whole first. Skipped rows are known only as they pass; the run reports
the exact count at the end. Which count a source has is its :class:`rmray.data.source.Source`'s answer.
"""

from __future__ import annotations

from .kinds import file_kind, is_lines


def file_rows(files: list[str]) -> int | None:
    """Rows of local data files before validation (blank JSON lines are not rows), or None when one of
    them is a JSON document (no count without parsing it)."""
    total = 0
    for file in files:
        kind = file_kind(file)
        if kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(file).metadata.num_rows
        elif kind == "json" and is_lines(file):
            total += _lines(file, skip_blank=True)
        elif kind == "csv":
            total += max(0, _lines(file, skip_blank=True) - 1)  # the header
        else:
            return None
    return total


def _lines(path: str, *, skip_blank: bool) -> int:
    from .readable import _open_lines

    with _open_lines(path) as f:
        return sum(1 for line in f if not skip_blank or line.strip())


def saved_rows(folder: str) -> int | None:
    import pyarrow as pa

    from .saved import saved_files

    _, files = saved_files(folder)
    if files is None:
        return None
    total = 0
    for path in files:
        with pa.memory_map(path) as source:
            total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return total


def hub_rows(source: str) -> int | None:
    """The hub's Parquet files of the split, by their footers (a ranged read each); None for other files."""
    import pyarrow.parquet as pq

    from .hub import hub_files, hub_filesystem

    fs, files = hub_filesystem(), hub_files(source)
    if not files or not all(f.endswith(".parquet") for f in files):
        return None
    total = 0
    for file in files:
        with fs.open(file, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
