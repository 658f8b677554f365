"""Ray Data pipeline: raw preference rows -> validated, tokenized pairs plus a data report.

Tokenization runs in parallel ``map_batches`` tasks; every row comes out with a ``status`` (``ok``
or the skip reason), so skipped rows are counted and sampled, never silently lost. Training streams
``tokenized_rows`` (:mod:`rmray.data.stream` counts the report as the rows pass); ``build_preferences``
materializes it first, for a schedule and a report known before the first step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col, monotonically_increasing_id

from rmray.core.formats import BadRow, detect_format, normalize_row, read_group
from rmray.core.loss import count_pairs
from rmray.core.packing import shared_prefix_length
from rmray.core.report import DataReport
from rmray.core.spec import ScoringSpec
from rmray.core.steps import StepTokens, read_steps, tokenize_steps
from rmray.core.tokenize import EncodedGroup, EncodedPair, encode_group, encode_pair

from .lines import parse_line
from .read import read_lines
from .source import open_source

# A pair row fills chosen_ids/rejected_ids/margin; a rated row group_ids/ratings (its K sequences), and
# attribute_ratings ([K][A]) when its ratings are per attribute.
# A stepwise row (a process reward model's) is its one sequence in chosen_ids and its labelled steps'
# positions and labels (rmray.core.steps).
PAIR_COLUMNS = ["row_id", "chosen_ids", "rejected_ids", "margin", "group_ids", "ratings", "attribute_ratings",
                "step_positions", "step_labels"]
SPLIT_COLUMNS = PAIR_COLUMNS + ["split_key"]


@dataclass
class TokenizedPreferences:
    dataset: ray.data.Dataset
    """Lazy over the materialized tokens (a filter away from them), in the source's row order. Columns
    ``row_id`` (str), ``chosen_ids``/``rejected_ids`` (int lists), ``margin`` (float), ``split_key``."""
    report: DataReport
    tokenized: ray.data.Dataset | None = None
    """Every row with its ``status`` (materialized): what the trainer's ``RowStream`` reads."""


@dataclass(frozen=True)
class RowRules:
    """How raw rows become tokenized ones: what every ``map_batches`` task is handed, in one object."""

    tokenizer: object
    spec: ScoringSpec
    fmt: str = "auto"
    """A format every row must have (``pair``, ``conversational``, ...), or ``auto``: decided per row."""
    strict: bool = False
    """Raise at the first bad row (``on_bad_row=error``) instead of counting it."""
    fields: dict[str, str] | None = None
    """rmray's column names (``prompt``, ``chosen``, ``rejected``) -> the data's own."""
    num_cpus: float = 0.5
    """Logical CPUs per tokenization task."""


def tokenize_batch(batch: pa.Table, rules: RowRules, split: tuple[float, float] | None = None) -> pa.Table:
    """Validate and tokenize one batch; every row comes out with a status.

    With ``fmt="auto"`` the format is decided for each row on its own: a file may mix implicit rows
    (``chosen``/``rejected`` only) with standard ones (``prompt`` too), and Arrow gives the implicit rows
    a null ``prompt``. Deciding once per batch would drop the later rows' prompts or refuse them,
    depending on row order. A ``rated`` row stays one row, its K sequences in ``group_ids``: a group is
    kept whole or skipped whole, and trains as one group (the prompt computed once). With
    ``split=(low, high)`` only rows whose ``split_key`` falls in it are tokenized.
    """
    out = _Out()
    renames = {theirs: ours for ours, theirs in (rules.fields or {}).items() if theirs != ours}
    for row in _rows(batch):
        if "_bad_line" in row:  # a JSON line that is not an object: counted, never silently dropped
            out.start_row(0.0)
            message = row["_bad_line"]
            out.add(str(row["_row_id"]), "bad_json", message, stop=rules.strict)
            continue
        if renames:
            row = {renames.get(k, k): v for k, v in row.items() if k not in renames.values() or k in renames}
        generated_id = row.pop("_row_id")
        key = split_key(row)
        if split is not None and not split[0] <= key < split[1]:
            continue  # the other side of the eval split: not tokenized at all
        out.start_row(key)
        row_id = str(row.pop("id")) if row.get("id") is not None else str(generated_id)
        try:
            encoded = _encode_row(row, rules)
        except BadRow as e:
            out.add(row_id, e.reason, str(e), stop=rules.strict)
        except ValueError as e:  # truncation="error": the run stops at this row whatever on_bad_row says
            out.add(row_id, "too_long", str(e), stop=True)
        else:
            out.add(row_id, "ok", "", encoded)
    return out.table()


def _encode_row(row: dict, rules: RowRules) -> EncodedPair | EncodedGroup | StepTokens:
    """A pair row's two sequences, a ``rated`` row's K sequences and ratings, or (a process model's run) a
    stepwise row's sequence and labelled steps."""
    if rules.fmt == "stepwise":
        return tokenize_steps(rules.tokenizer, read_steps(row), rules.spec.step_separator, rules.spec.max_length)
    row_format = _row_format(row, rules.fmt)
    if row_format == "rated":
        return encode_group(rules.tokenizer, rules.spec, read_group(row, rules.spec.weights_by_attribute()))
    return encode_pair(rules.tokenizer, rules.spec, normalize_row(row, row_format))


_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("status", pa.string()), ("message", pa.string()),
    ("chosen_ids", pa.list_(pa.int64())), ("rejected_ids", pa.list_(pa.int64())), ("margin", pa.float64()),
    ("group_ids", pa.list_(pa.list_(pa.int64()))), ("ratings", pa.list_(pa.float64())),
    ("attribute_ratings", pa.list_(pa.list_(pa.float64()))),
    ("step_positions", pa.list_(pa.int64())), ("step_labels", pa.list_(pa.int64())),
    ("truncated", pa.bool_()), ("pairs", pa.int64()), ("num_tokens", pa.int64()), ("shared_tokens", pa.int64()),
    ("split_key", pa.float64()), ("stop", pa.bool_()),
])


class _Out:
    """The output columns of one batch, a row per input row: its sequences, or the reason it was skipped.
    Typed by one schema, so a batch of only pairs (empty ``group_ids``) joins a batch of groups."""

    def __init__(self):
        self.columns = {name: [] for name in _SCHEMA.names}
        self.split = 0.0

    def start_row(self, split: float) -> None:
        """The next output comes from a new input row, on this side of the eval split."""
        self.split = split

    def add(self, row_id: str, status: str, message: str = "", encoded=None, stop: bool = False) -> None:
        """``stop``: this row ends the run (a bad row under ``on_bad_row=error``, a too-long one under
        ``truncation=error``); whoever reads the rows stops at the first such row, naming it."""
        if isinstance(encoded, StepTokens):
            return self._add_steps(row_id, encoded)
        group = encoded if isinstance(encoded, EncodedGroup) else None
        pair = encoded if isinstance(encoded, EncodedPair) else None
        sequences = group.ids if group else ([pair.chosen_ids, pair.rejected_ids] if pair else [])
        values = {"row_id": row_id, "status": status, "message": message, "split_key": self.split, "stop": stop,
                  "chosen_ids": pair.chosen_ids if pair else [], "rejected_ids": pair.rejected_ids if pair else [],
                  "margin": pair.margin if pair else 0.0, "group_ids": group.ids if group else [],
                  "ratings": group.ratings if group else [],
                  "attribute_ratings": (group.attribute_ratings or []) if group else [], "truncated": bool(encoded and encoded.truncated),
                  "pairs": count_pairs(group.ratings) if group else int(pair is not None),
                  "num_tokens": sum(len(s) for s in sequences),
                  # tokens the shared-prompt layout computes once instead of K times
                  "shared_tokens": (len(sequences) - 1) * shared_prefix_length(*sequences) if sequences else 0,
                  "step_positions": [], "step_labels": []}
        for key, value in values.items():
            self.columns[key].append(value)

    def _add_steps(self, row_id: str, steps: StepTokens) -> None:
        """A stepwise row: its sequence, and each labelled step's position and label; ``pairs`` counts its steps."""
        values = {"row_id": row_id, "status": "ok", "message": "", "split_key": self.split, "stop": False,
                  "chosen_ids": steps.input_ids, "rejected_ids": [], "margin": 0.0, "group_ids": [], "ratings": [],
                  "attribute_ratings": [], "truncated": steps.prompt_cut > 0, "pairs": len(steps.positions),
                  "num_tokens": len(steps.input_ids), "shared_tokens": 0, "step_positions": steps.positions,
                  "step_labels": [steps.labels[p] for p in steps.positions]}
        for key, value in values.items():
            self.columns[key].append(value)

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=_SCHEMA)


def _rows(batch: pa.Table) -> list[dict]:
    """The batch's rows. JSON lines arrive as their text (``read.read_lines``) and are parsed here, value
    for value: Arrow's and pandas' JSON readers infer one type per column and convert values to it (a
    ``" 4"`` beside a ``4`` came out as the int 4), so a row's data would depend on its neighbours."""
    if "_line" not in batch.column_names:
        return batch.to_pylist()
    rows = []
    for line, where, unreadable in zip(*(batch.column(c).to_pylist() for c in ("_line", "_where", "_error"))):
        row, error = parse_line(line, unreadable)
        if error:
            row = {"_bad_line": error}
        row["_row_id"] = where  # file:line
        rows.append(row)
    return rows


def split_key(row: dict) -> float:
    """A number in [0, 1) that is a pure function of the row's content (its ``id`` included): the eval
    split takes the rows under ``eval_split_ratio``. No shuffle of the whole set and no dependence on
    Ray's block layout, so a new driver -- or another cluster -- splits the same data the same way, and
    duplicated rows land on the same side (no copy of a training pair in the eval set)."""
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") / 2**64


def _row_format(row: dict, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return detect_format(row)
    except ValueError as e:
        raise BadRow("missing_field", None, str(e)) from None


def tokenized_rows(source: str, rules: RowRules, *, limit: int | None = None,
                   split: tuple[float, float] | None = None) -> ray.data.Dataset:
    """Read ``source`` and validate and tokenize it, lazily: every row comes out with its ``status``
    (``tokenize_batch``), in the source's row order -- what each rank trains on must be a function of
    the data, so that a resume in a new driver finds the same pairs at the same positions. With
    ``split=(low, high)`` only rows whose ``split_key`` falls in it come out (the eval rows of a hash
    split, found without tokenizing the train rows)."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    lines = read_lines(source)
    ds = lines if lines is not None else open_source(source).read()
    if limit:
        ds = ds.limit(limit)
    # A row's own "id" column names it in reports when present; otherwise file:line for JSON lines, or a
    # generated id that is unique per row ("block:offset" after formatting) for other sources.
    if lines is None:
        ds = ds.with_column("_row_id", monotonically_increasing_id())
    return ds.map_batches(tokenize_batch, batch_format="pyarrow", batch_size=256, num_cpus=rules.num_cpus,
                          fn_kwargs={"rules": rules, "split": split})


def build_preferences(source: str, rules: RowRules, *, name: str, limit: int | None = None) -> TokenizedPreferences:
    """``tokenized_rows`` materialized, with its report: the whole set read and tokenized before anything
    trains (``stream_data=false``; the tests of the data path). Raises when no row is kept."""
    tokenized = tokenized_rows(source, rules, limit=limit).materialize()
    report = DataReport(name=name)
    for batch in tokenized.select_columns(REPORT_COLUMNS).iter_batches(batch_format="pyarrow", batch_size=4096):
        stop = first_stop(batch)
        if stop:
            raise ValueError(stop)
        count_report(report, batch)
    if report.rows_read == 0:
        raise ValueError(f"{name} data {source!r} has no rows")
    # Not materialized again: the caller's split (or the trainer) runs this filter in its own pass.
    kept = tokenized.filter(expr=col("status") == "ok").select_columns(SPLIT_COLUMNS)
    if report.rows_kept == 0:
        raise ValueError(f"{name} data {source!r}: all {report.rows_read} rows were skipped\n{report.format()}")
    return TokenizedPreferences(kept, report, tokenized)


REPORT_COLUMNS = ["row_id", "status", "message", "truncated", "pairs", "num_tokens", "shared_tokens", "stop"]


def first_stop(batch: pa.Table) -> str | None:
    """The one-line error of the batch's first row that ends the run (``stop``), or None.

    The decision is read from the rows' status, not from an exception: a tokenization task never raises
    for a bad row, so every row before it is counted in the data report and the message is the row's own."""
    at = pc.index(batch.column("stop"), True).as_py()
    if at < 0:
        return None
    status, message = batch.column("status")[at].as_py(), batch.column("message")[at].as_py()
    where = f"row {_format_row_id(batch.column('row_id')[at].as_py())}"
    if status == "too_long":
        return f"{where}: {message}"
    return f"{where}: {message}, reason {status}; fix the row or set on_bad_row=skip to skip and count such rows"


def count_report(report: DataReport, batch: pa.Table) -> None:
    """Add a batch of tokenized rows (``REPORT_COLUMNS``) to ``report``: counts as the rows pass, no pass of its own."""
    status = batch.column("status").to_pylist()
    report.rows_read += len(status)
    report.rows_kept += status.count("ok")
    report.pairs += int(pc.sum(batch.column("pairs")).as_py() or 0)
    report.rows_truncated += int(pc.sum(pc.cast(batch.column("truncated"), pa.int64())).as_py() or 0)
    report.tokens += int(pc.sum(batch.column("num_tokens")).as_py() or 0)
    report.shared_prefix_tokens += int(pc.sum(batch.column("shared_tokens")).as_py() or 0)
    if len(status) != status.count("ok"):
        ids, messages = batch.column("row_id").to_pylist(), batch.column("message").to_pylist()
        for i, value in enumerate(status):
            if value != "ok":
                report.add_skip(value, _format_row_id(ids[i]), messages[i])


def _format_row_id(row_id: str) -> str:
    if row_id.isdigit() and int(row_id) >= 2**33:  # monotonically_increasing_id: task in the upper bits
        value = int(row_id)
        return f"{value >> 33}:{value & (2**33 - 1)}"
    return row_id
