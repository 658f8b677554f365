"""Every input column of ``rmray score`` comes out as it went in, whatever the rows hold.

JSON lines promise nothing about columns: a key may be missing from the first row, first appear
thousands of rows later, or hold text in one row and a list of messages (or an int) in the next.
Arrow needs one type per column, so:

- inside Ray Data a JSON line travels as its text (blocks of different column types would not
  concatenate there); the driver builds a batch's columns when it writes them, over the union of its
  rows' keys (a key missing from a row is null there), not from the first row's keys;
- a column whose values do not share one Arrow type is written as JSON text: every value
  ``json.dumps``-ed (``"hi"`` becomes ``"\\"hi\\""``, ``[1]`` stays ``[1]``), and the column is listed in
  the output file's ``rmray.json_columns`` metadata;
- a file's pieces are written as they come (a new part when its columns change); a file of one part
  is kept as written, several are unified once at the end (columns in order of first appearance,
  missing ones null, ints with floats as floats, any other disagreement as JSON text) -- so a column
  first seen late, or typed differently in a later batch, never fails the run.

The scorer reads the prompt and response from hidden JSON columns (``TEXT_COLUMN``), so a chat prompt
is scored as messages even when its visible column had to become JSON text.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

JSON_FLAG = {b"rmray_json": b"1"}
JSON_COLUMNS_KEY = b"rmray.json_columns"
TEXT_COLUMN = "__rmray_text_{}"  # the scorer's copy of a text field, as JSON
WHERE_COLUMN = "__rmray_where"  # file:line of a JSON line, for the run's report of bad rows
LINE_COLUMN = "__rmray_line"  # a JSON line as read; its columns are built by the driver (expand_lines)


def to_json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def rows_to_columns(rows: list[dict]) -> tuple[list[pa.Field], list[pa.Array]]:
    """One column per key seen in any row, in order of first appearance; JSON text where types differ."""
    fields, arrays = [], []
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        try:
            array = pa.array(values)
            field = pa.field(key, array.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            array = pa.array([to_json(v) for v in values], pa.string())
            field = pa.field(key, pa.string(), metadata=JSON_FLAG)
        fields.append(field)
        arrays.append(array)
    return fields, arrays


def expand_lines(piece: pa.Table) -> pa.Table:
    """The user's columns from the JSON lines, then the scorer's (reward, score_error, ...)."""
    if LINE_COLUMN not in piece.column_names:
        return piece
    rows = [json.loads(line) if line is not None else {} for line in piece.column(LINE_COLUMN).to_pylist()]
    fields, arrays = rows_to_columns(rows)
    rest = piece.drop_columns([LINE_COLUMN])
    ours = set(rest.column_names)
    keep = [i for i, f in enumerate(fields) if f.name not in ours]  # a user column named "reward" yields to ours
    return pa.Table.from_arrays([arrays[i] for i in keep] + rest.columns,
                                schema=pa.schema([fields[i] for i in keep] + list(rest.schema)))


def is_json(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"rmray_json") == b"1"


class FileParts:
    """One output file, written as parts while its rows stream in, made one Parquet file at the end."""

    def __init__(self, tmp_base: str, metadata: dict[bytes, bytes]):
        self.tmp_base, self.metadata = tmp_base, metadata
        self.parts: list[str] = []
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None

    def write(self, piece: pa.Table) -> None:
        fitted = _fit(piece, self.schema) if self.schema is not None else None
        if fitted is None:  # a new column or type: a new part
            self._close()
            self.schema = piece.schema
            self.parts.append(f"{self.tmp_base}.part{len(self.parts)}")
            self.writer = pq.ParquetWriter(self.parts[-1], self._with_metadata(self.schema))
            fitted = piece
        self.writer.write_table(fitted)

    def finish(self, final_path: str) -> None:
        """One part (the common case: the file's columns never changed) is the file already; several
        are rewritten once, to their unified schema."""
        self._close()
        if len(self.parts) > 1:
            unified = unify([pq.read_schema(p) for p in self.parts])
            whole = f"{self.tmp_base}.whole"
            with pq.ParquetWriter(whole, self._with_metadata(unified)) as writer:
                for part in self.parts:
                    for batch in pq.ParquetFile(part).iter_batches():
                        writer.write_table(conform(pa.Table.from_batches([batch]), unified))
            for part in self.parts:
                os.remove(part)
            self.parts = [whole]
        os.replace(self.parts[0], final_path)

    def _with_metadata(self, schema: pa.Schema) -> pa.Schema:
        json_columns = [f.name for f in schema if is_json(f)]
        extra = {JSON_COLUMNS_KEY: json.dumps(json_columns).encode()} if json_columns else {}
        return schema.with_metadata(dict(self.metadata) | extra)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _fit(piece: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """``piece`` cast to ``schema`` when it has the same columns with the same types (null columns aside)."""
    if piece.schema.names != schema.names:
        return None
    for got, want in zip(piece.schema, schema):
        if is_json(got) != is_json(want) or (got.type != want.type and got.type != pa.null()):
            return None
    return conform(piece, schema)


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    names = list(dict.fromkeys(name for s in schemas for name in s.names))
    fields = []
    for name in names:
        seen = [s.field(name) for s in schemas if name in s.names]
        types = {f.type for f in seen if f.type != pa.null()}
        if any(is_json(f) for f in seen) or (len(types) > 1 and not all(pa.types.is_integer(t) or pa.types.is_floating(t)
                                                                       for t in types)):
            fields.append(pa.field(name, pa.string(), metadata=JSON_FLAG))
        elif len(types) > 1:
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, types.pop() if types else pa.null()))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if is_json(field) and not is_json(table.schema.field(field.name)):
            arrays.append(pa.array([to_json(v) for v in column.to_pylist()], pa.string()))
        else:
            arrays.append(column.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
