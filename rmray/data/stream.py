"""The order rule, and the actor that streams it: which rows each rank trains on, window by window.

**Order rule** (the one rule of the streamed and the materialized path). The train rows that are kept,
in the source's order (files sorted, rows in file order), are cut into windows of
``world * rows_per_window`` rows; rank ``r`` takes rows ``r, r + world, r + 2 world, ...`` of each
window. The last window is cut to a multiple of ``world`` (at most ``world - 1`` rows an epoch are left
out), so in every window every rank has as many rows as every other: the ranks take the same number of
micro-batches however uneven the files are, and the end of the stream ends the epoch for every rank
at the same micro-batch. The order is a pure function of the data; where the rows of a window go
inside a rank (length grouping) is a function of (seed, epoch, rank, window). A resumed epoch asks for
its stream from window ``k``: the windows before it are read but never shipped.

``RowStream`` is an actor the driver starts. It runs the Ray Data pipeline (read, then validate and
tokenize in tasks; Ray Data's backpressure bounds how far ahead they run), counts the data report as
the rows pass (no counting pass), and puts each rank's share of a window in the object store, where
that rank's next request finds it. A data error (a bad row under ``on_bad_row=error``, no row kept,
no eval row) ends every rank's stream at the same window with the message, and the driver raises it.
The eval rows are read beside training once the first window is out, so no evaluation waits on a pass
over the data. A pass that fits in ``replay_bytes`` is kept: later epochs replay its windows (the same
ones, by the rule) instead of reading and tokenizing the source again.

Example, 2 ranks, ``rows_per_window=2``, kept rows ``a b c d e f g``: windows ``[a b c d]``,
``[e f g]`` -> ``[e f]``; rank 0 trains ``a c | e``, rank 1 ``b d | f``; ``g`` is left out, in every epoch
alike (the cut is by position, not by chance).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from rmray.core.files import write_json_atomic
from rmray.core.report import DataReport

from .position import Ranges, contains
from .preferences import PAIR_COLUMNS, REPORT_COLUMNS, count_report, first_stop


def rank_share(table: pa.Table, rank: int, world: int) -> pa.Table:
    """Rows ``rank, rank + world, ...`` of ``table``."""
    return table.take(pa.array(range(rank, table.num_rows, world), type=pa.int64()))


def kept_rows(table: pa.Table, split: tuple[float, float] | None) -> pa.Table:
    """The rows tokenized without a problem (and on this side of the eval split), as ``PAIR_COLUMNS``."""
    keep = pc.equal(table.column("status"), "ok")
    if split is not None:
        low, high = split
        key = table.column("split_key")
        keep = pc.and_(keep, pc.and_(pc.greater_equal(key, low), pc.less(key, high)))
    return table.filter(keep).select(PAIR_COLUMNS)


@dataclass(frozen=True)
class StreamShape:
    """How a ``RowStream`` cuts and shares its rows."""

    world: int
    """Ranks the rows are shared between."""
    rows_per_window: int
    """Rows per rank per window: ``per_device_train_batch_size x length_group_window``."""
    eval_split_ratio: float = 0.0
    """Rows whose ``split_key`` is under this are eval rows, the rest train rows (0: no split)."""
    max_eval_rows: int | None = None
    """The first this many eval rows are evaluated on; None: all."""
    count_reports: bool = True
    """Count the data report as the rows pass (False when the rows were read and counted whole first)."""
    replay_bytes: int = 0
    """A whole pass whose windows take at most this many bytes is kept and replayed to later epochs
    (the same windows, by the order rule) instead of read and tokenized again; 0: read every epoch."""


class _Windows:
    """One pass over a tokenized dataset, cut into windows by the order rule; counts its report."""

    def __init__(self, dataset, shape: StreamShape, split, skip: int, report: DataReport | None,
                 exclude: Ranges | None = None):
        self.batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        world = shape.world
        self.world, self.size, self.split, self.report = world, world * shape.rows_per_window, split, report
        self.buffer: list[pa.Table] = []
        self.buffered, self.produced, self.skip, self.ended = 0, 0, skip, False
        self.ordinals, self.exclude = 0, exclude or []  # kept rows numbered so far; rows a resume left out
        self.queues = [deque() for _ in range(world)]
        self.primer: threading.Thread | None = None
        self.primed: list = []
        self.kept: list[list] | None = [] if shape.replay_bytes and skip == 0 and not exclude else None  # for a replay
        self.kept_bytes, self.replay_bytes = 0, shape.replay_bytes

    def prime(self) -> "_Windows":
        """Start reading and tokenizing the first window now, while the ranks still load their model."""
        self.primer = threading.Thread(target=self._prime, daemon=True)
        self.primer.start()
        return self

    def _prime(self) -> None:
        try:
            self.primed.append(self._next_window())
        except Exception as e:  # noqa: BLE001 - raised to the first rank that asks
            self.primed.append(e)

    def next_for(self, rank: int):
        """``rank``'s next share (an object ref), or None at the end of the pass."""
        if self.primer is not None:
            self.primer.join()
            self.primer = None
        while not self.queues[rank]:
            window = self._next_window()
            if window is None:
                return None
            self.produced += 1
            if self.produced > self.skip:  # a resumed epoch: the windows before its position are not shipped
                shares = [ray.put(rank_share(window, r, self.world)) for r in range(self.world)]
                for r in range(self.world):
                    self.queues[r].append(shares[r])
                self._keep(shares, window.nbytes)
        return self.queues[rank].popleft()

    def _keep(self, shares: list, nbytes: int) -> None:
        if self.kept is None:
            return
        self.kept_bytes += nbytes
        if self.kept_bytes > self.replay_bytes:
            self.kept = None  # too big to hold: later epochs read the source again
        else:
            self.kept.append(shares)

    def replay(self) -> list[list] | None:
        """The whole pass's shares, window by window, once it ended within ``replay_bytes``."""
        return self.kept if self.ended else None

    def _next_window(self) -> pa.Table | None:
        if self.primed:
            window = self.primed.pop()
            if isinstance(window, Exception):
                raise window
            return window
        while self.buffered < self.size and not self.ended:
            try:
                block = next(self.batches)
            except StopIteration:
                self.ended = True
                break
            _stop_at_stop_row(block)
            if self.report is not None:
                count_report(self.report, block.select(REPORT_COLUMNS))
            kept = self._numbered(kept_rows(block, self.split))
            if kept.num_rows:
                self.buffer.append(kept)
                self.buffered += kept.num_rows
        take = self.size if self.buffered >= self.size else self.buffered - self.buffered % self.world
        if take == 0:
            return None
        rows = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [rows.slice(take)], rows.num_rows - take
        return rows.slice(0, take)


    def _numbered(self, kept: pa.Table) -> pa.Table:
        """``kept`` with each row's ``ordinal`` in the pass (``rmray.data.position``), less the excluded rows."""
        ordinals = np.arange(self.ordinals, self.ordinals + kept.num_rows, dtype=np.int64)
        self.ordinals += kept.num_rows
        kept = kept.append_column("ordinal", pa.array(ordinals))
        return kept.filter(pa.array(~contains(self.exclude, ordinals))) if self.exclude else kept


class _Replay:
    """A later epoch's pass served from the first pass's shares: no read, no tokenization."""

    report = None
    exclude: list = []  # a replay is a whole pass: nothing left out

    def __init__(self, windows: list[list], skip: int, world: int):
        self.windows, self.produced = windows, len(windows)
        self.next = [skip] * world

    def next_for(self, rank: int):
        at = self.next[rank]
        if at >= len(self.windows):
            return None
        self.next[rank] += 1
        return self.windows[at][rank]


@ray.remote(num_cpus=0)
class RowStream:
    """Serves every rank its windows of the train rows and its share of the eval rows (see the module)."""

    def __init__(self, train, eval_data, shape: StreamShape):
        self.train, self.eval_data, self.shape = train, eval_data, shape
        self.world, self.ratio = shape.world, shape.eval_split_ratio
        self.passes: dict[str, _Windows] = {}
        self.reports: dict[str, DataReport] = {}  # "train"/"eval": a whole pass's report
        self.partial: DataReport | None = None
        self.eval_shares: list[list] | None = None
        self.error: str | None = None
        self.replayed: list[list] | None = None  # a whole pass kept for the later epochs (replay_bytes)
        self.first = self._windows(skip=0).prime()  # the first pass's first window, before any rank asks
        self.eval_reader: threading.Thread | None = None
        self.eval_problem: Exception | None = None
        if eval_data is not None or self.ratio > 0:  # the eval rows, read once the first window is out
            self.eval_reader = threading.Thread(target=self._prime_eval, args=(self.first.primer,), daemon=True)
            self.eval_reader.start()

    def next_window(self, key: str, rank: int, skip: int = 0, exclude: Ranges | None = None) -> dict:
        """``{"window": [ref]}``, ``{"end": True}`` or ``{"error": message}``. ``key`` names one pass
        (an attempt's epoch): the first rank to ask for a new key starts it, the passes of other keys end.
        ``exclude``: ordinals a resume on another world leaves out (``rmray.data.position``)."""
        if self.error:
            return {"error": self.error}
        try:
            if key not in self.passes:
                self._start(key, skip, exclude or [])
            ref = self.passes[key].next_for(rank)
        except Exception as e:  # noqa: BLE001 - the message ends every rank's stream
            self.error = _message(e)
            return {"error": self.error}
        if ref is None:
            return self._ended(key)
        return {"window": [ref]}

    def _start(self, key: str, skip: int, exclude: Ranges) -> None:
        self.passes = {k: v for k, v in self.passes.items() if k.split("/")[0] == key.split("/")[0]}
        first, self.first = self.first, None
        if first is not None and skip == 0 and not exclude:
            self.passes[key] = first
        elif self.replayed is not None and not exclude:
            self.passes[key] = _Replay(self.replayed, skip, self.world)
        else:
            self.passes[key] = self._windows(skip, exclude)

    def _windows(self, skip: int, exclude: Ranges | None = None) -> _Windows:
        split = (self.ratio, 1.0) if self.ratio > 0 else None
        self.partial = DataReport(name="train") if self.shape.count_reports else None
        return _Windows(self.train, self.shape, split, skip, self.partial, exclude)

    def _ended(self, key: str) -> dict:
        done = self.passes[key]
        if done.report is not None and "train" not in self.reports:
            self.reports["train"] = done.report
            problem = _empty_problem(done.report)
            if problem:
                self.error = problem
                return {"error": problem}
        if done.produced == 0 and not done.exclude:  # a resumed epoch's rest may be empty
            self.error = (f"the train data has fewer kept rows than workers ({self.world}): no rank has a row "
                          "to train on; use more data or fewer workers")
            return {"error": self.error}
        if self.replayed is None and isinstance(done, _Windows):
            self.replayed = done.replay()
        return {"end": True}

    def eval_share(self, rank: int, everything: bool = False) -> dict:
        """``{"shares": [ref, ...]}``: rank ``rank``'s rows of the eval set (every row with ``everything``,
        for strategies whose every forward is a collective), read once and kept for later evaluations."""
        if self.error:
            return {"error": self.error}
        try:
            if self.eval_reader is not None:
                self.eval_reader.join()
                self.eval_reader = None
            if self.eval_problem is not None:
                raise self.eval_problem
            if self.eval_shares is None:
                self._read_eval()
        except Exception as e:  # noqa: BLE001
            self.error = _message(e)
            return {"error": self.error}
        if everything:
            return {"shares": [ref for share in self.eval_shares for ref in share]}
        return {"shares": self.eval_shares[rank]}

    def _prime_eval(self, first_window: threading.Thread | None) -> None:
        """Read the eval rows beside training, after the first window (the one the first step waits
        for): the first evaluation then waits on no pass over the data."""
        if first_window is not None:
            first_window.join()
        try:
            self._read_eval()
        except Exception as e:  # noqa: BLE001 - raised to the first rank that evaluates
            self.eval_problem = e

    def _read_eval(self) -> None:
        # with a hash split, eval_data (when given) is the train source read for its held-out rows only
        source = self.eval_data if self.eval_data is not None else self.train
        split = (0.0, self.ratio) if self.ratio > 0 else None
        report = DataReport(name="eval") if self.shape.count_reports and split is None else None
        shares, seen, limit = [[] for _ in range(self.world)], 0, self.shape.max_eval_rows
        for block in source.iter_batches(batch_size=None, batch_format="pyarrow"):
            _stop_at_stop_row(block)
            if report is not None:
                count_report(report, block.select(REPORT_COLUMNS))
            kept = kept_rows(block, split)
            if limit is not None:
                kept = kept.slice(0, max(0, limit - seen))
            for r in range(self.world):  # row i of the eval set is rank (i % world)'s
                share = rank_share(kept, (r - seen) % self.world, self.world)
                if share.num_rows:
                    shares[r].append(ray.put(share))
            seen += kept.num_rows
        if report is not None:
            self.reports["eval"] = report
        if seen == 0:
            raise ValueError("no eval rows: eval_split_ratio held out none of the train rows (or eval_data kept none); "
                             "raise eval_split_ratio, give eval_data, or set eval_split_ratio=0")
        self.eval_shares = shares

    def fail(self, message: str) -> None:
        """A data error a rank met (an epoch with no step): every later request answers it."""
        self.error = self.error or message

    def data_report(self) -> dict:
        """The reports of the passes so far: whole ones, else the train pass counted up to now."""
        reports = dict(self.reports)
        if "train" not in reports and self.partial is not None:
            reports["train"] = self.partial
        ordered = [reports[name] for name in ("train", "eval") if name in reports]  # eval may end first
        return {"reports": [r.to_dict() for r in ordered], "complete": "train" in self.reports, "error": self.error}


def _empty_problem(report: DataReport) -> str | None:
    if report.rows_read == 0:
        return "the train data has no rows"
    if report.rows_kept == 0:
        return f"the train data: all {report.rows_read} rows were skipped\n{report.format()}"
    return None


class DataStop(Exception):
    """A row that ends the run (its ``stop`` status): the message is the row's own, one line."""


def _stop_at_stop_row(block: pa.Table) -> None:
    message = first_stop(block)
    if message:
        raise DataStop(message)


def _message(error: Exception) -> str:
    """A :class:`DataStop`'s message; for anything else raised inside a Ray Data task (a file that cannot be
    read), the user's error without Ray's wrapping: the first ``XError: message`` line of the remote
    traceback Ray re-raises as text (the task's exception is not chained)."""
    if isinstance(error, DataStop):
        return str(error)
    text = str(error)
    for line in text.splitlines():
        found = re.match(r"^[A-Za-z_][\w.]*(?:Error|Exception): (.+)$", line.strip())
        if found:
            return found.group(1)
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__


class StreamError(Exception):
    """The stream ended on a data error: every rank stops where it met it, and the driver raises it."""


def rank_windows(stream, key: str, rank: int, skip: int = 0, exclude: Ranges | None = None) -> Iterator[dict]:
    """A rank's windows of one pass as numpy columns, the next one requested while this one trains."""
    pending = stream.next_window.remote(key, rank, skip, exclude)
    while True:
        got = ray.get(pending)
        if "error" in got:
            raise StreamError(got["error"])
        if got.get("end"):
            return
        pending = stream.next_window.remote(key, rank, skip, exclude)
        yield as_numpy(ray.get(got["window"][0]))


def eval_batches(stream, rank: int, batch_size: int, everything: bool = False) -> Iterator[dict]:
    """A rank's share of the eval rows (all of them with ``everything``) in batches of numpy columns."""
    got = ray.get(stream.eval_share.remote(rank, everything))
    if "error" in got:
        raise StreamError(got["error"])
    for ref in got["shares"]:
        table = ray.get(ref)
        for start in range(0, table.num_rows, batch_size):
            yield as_numpy(table.slice(start, batch_size))


def as_numpy(table: pa.Table) -> dict:
    """Columns as Ray Data's ``batch_format="numpy"`` gives them (list columns: arrays of arrays)."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table).to_batch_format("numpy")


def stop_stream(stream, message: str) -> None:
    """End the stream with a data error every rank met at the same point, and stop this rank."""
    ray.get(stream.fail.remote(message))
    raise StreamError(message)


def write_data_report(stream, output_dir: str) -> None:
    """``data_report.json`` as counted so far (at a checkpoint; the driver writes the whole one at the end)."""
    import os

    status = ray.get(stream.data_report.remote())
    if status["reports"]:
        write_json_atomic(os.path.join(output_dir, "data_report.json"), status["reports"])
