"""The stream training reads: the order rule (rank r takes rows r, r + world, ... of each window; the
last window cut to a multiple of world), resume by window, data errors, and the row counts a
streamed schedule starts from. The runs that train over it are in test_stream_training.py."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmray.data.preferences import _SCHEMA
from rmray.data.source import open_source


def tokenized(ids: list[str], bad: set[str] = frozenset(), split: dict | None = None,
              stop: set[str] = frozenset()) -> pa.Table:
    """Rows as the tokenizer emits them: chosen_ids encode the row's number, so a share is checkable;
    ``bad`` rows miss a field, and ``stop`` ones among them end the run (``on_bad_row=error``)."""
    n = len(ids)
    return pa.table({
        "row_id": ids, "status": ["missing_field" if i in bad else "ok" for i in ids],
        "message": ["no chosen" if i in bad else "" for i in ids],
        "chosen_ids": [[int(i[1:]), 1] for i in ids], "rejected_ids": [[int(i[1:]), 2] for i in ids],
        "margin": [0.0] * n, "group_ids": [[] for _ in ids], "ratings": [[] for _ in ids],
        "attribute_ratings": [[] for _ in ids], "step_positions": [[] for _ in ids], "step_labels": [[] for _ in ids],
        "truncated": [False] * n, "pairs": [0 if i in bad else 1 for i in ids],
        "num_tokens": [4] * n, "shared_tokens": [0] * n,
        "split_key": [(split or {}).get(i, 0.5) for i in ids], "stop": [i in stop for i in ids],
    }, schema=_SCHEMA)


def shares(stream, key, world, skip=0):
    from rmray.data.stream import rank_windows

    return [[list(w["row_id"]) for w in rank_windows(stream, key, r, skip)] for r in range(world)]


def test_each_rank_takes_every_world_th_row_of_each_window_and_the_last_window_is_cut(ray_cluster):
    import ray

    from rmray.data.stream import RowStream, StreamShape

    ids = [f"r{i}" for i in range(11)]
    # three blocks of uneven sizes: the windows must not depend on them
    ds = ray.data.from_arrow([tokenized(ids[:2], bad={"r1"}), tokenized(ids[2:9]), tokenized(ids[9:])])
    stream = RowStream.remote(ds, None, StreamShape(world=3, rows_per_window=2))
    # kept: r0 r2 r3 ... r10 (10 rows); windows of 6: [r0 r2 r3 r4 r5 r6], [r7 r8 r9 r10] -> cut to [r7 r8 r9]
    assert shares(stream, "a/0", 3) == [[["r0", "r4"], ["r7"]], [["r2", "r5"], ["r8"]], [["r3", "r6"], ["r9"]]]
    # a resumed pass (new key) from window 1 ships only what follows
    assert shares(stream, "b/0", 3, skip=1) == [[["r7"]], [["r8"]], [["r9"]]]
    status = ray.get(stream.data_report.remote())
    report = status["reports"][0]
    assert status["complete"] and status["error"] is None
    assert (report["rows_read"], report["rows_kept"], report["skipped"]) == (11, 10, {"missing_field": 1})


def test_rows_are_numbered_in_the_pass_and_a_pass_leaves_out_the_excluded_ones_before_cutting(ray_cluster):
    """Each kept row carries its ordinal (bad rows take none); a pass resumed on another world excludes
    the trained ordinals first, then cuts the rest by the rule for its own world."""
    import ray

    from rmray.data.stream import RowStream, StreamShape, rank_windows

    ids = [f"r{i}" for i in range(11)]
    ds = ray.data.from_arrow([tokenized(ids[:2], bad={"r1"}), tokenized(ids[2:9]), tokenized(ids[9:])])
    stream = RowStream.remote(ds, None, StreamShape(world=2, rows_per_window=2))
    windows = [w for r in range(2) for w in rank_windows(stream, "a/0", r)]
    numbered = {row: int(o) for w in windows for row, o in zip(w["row_id"], w["ordinal"])}
    assert numbered == {f"r{i}": (0 if i == 0 else i - 1) for i in range(11) if i != 1}  # r1 is bad: no number
    # ordinals 0-2 and 5 trained (r0 r2 r3 r6): the 6 others, windows of 4 on 2 ranks -> [r4 r5 r7 r8], [r9 r10]
    left = [[list(w["row_id"]) for w in rank_windows(stream, "b/0", r, exclude=[[0, 3], [5, 6]])] for r in range(2)]
    assert left == [[["r4", "r7"], ["r9"]], [["r5", "r8"], ["r10"]]]
    # everything excluded: an empty rest ends the pass without an error
    assert [list(rank_windows(stream, "c/0", r, exclude=[[0, 10]])) for r in range(2)] == [[], []]


def test_a_pass_that_fits_is_replayed_to_later_epochs_without_reading_again(ray_cluster, tmp_path):
    import ray

    from rmray.data.stream import RowStream, StreamShape

    log = tmp_path / "reads"

    def count(batch):  # runs in Ray Data's tasks: each read of a row leaves a trace here
        with open(log, "a") as f:
            f.write(f"{batch.num_rows}\n")
        return batch

    def pipeline():
        return ray.data.from_arrow(tokenized([f"r{i}" for i in range(10)])).map_batches(count, batch_format="pyarrow")

    def rows_read() -> int:
        return sum(int(n) for n in log.read_text().split())

    kept = RowStream.remote(pipeline(), None, StreamShape(world=2, rows_per_window=2, replay_bytes=2**20))
    first = shares(kept, "a/0", 2)
    assert first == [[["r0", "r2"], ["r4", "r6"], ["r8"]], [["r1", "r3"], ["r5", "r7"], ["r9"]]]
    assert rows_read() == 10
    assert shares(kept, "a/1", 2) == first and rows_read() == 10  # epoch 2: the same windows, not read again
    assert shares(kept, "b/1", 2, skip=1) == [w[1:] for w in first]  # a restarted attempt resumes inside it
    log.unlink()
    again = RowStream.remote(pipeline(), None, StreamShape(world=2, rows_per_window=2, replay_bytes=1))
    assert shares(again, "a/0", 2) == first and shares(again, "a/1", 2) == first
    assert rows_read() == 20  # too big to keep: every epoch reads the source


def test_eval_rows_are_split_by_their_key_and_shared_by_rank(ray_cluster):
    import ray

    from rmray.data.stream import RowStream, StreamShape, eval_batches

    ids = [f"r{i}" for i in range(8)]
    held_out = {"r1": 0.01, "r4": 0.02, "r5": 0.03, "r7": 0.04}
    ds = ray.data.from_arrow(tokenized(ids, split=held_out))
    stream = RowStream.remote(ds, None, StreamShape(world=2, rows_per_window=8, eval_split_ratio=0.1))
    train = shares(stream, "a/0", 2)
    assert train == [[["r0", "r3"]], [["r2", "r6"]]]
    by_rank = [[i for b in eval_batches(stream, r, 1) for i in b["row_id"]] for r in range(2)]
    assert by_rank == [["r1", "r5"], ["r4", "r7"]]
    assert sorted(i for b in eval_batches(stream, 1, 3, everything=True) for i in b["row_id"]) == ["r1", "r4", "r5", "r7"]


def test_a_stop_row_ends_every_ranks_stream_naming_it(ray_cluster):
    """The stream stops at the first row whose status says ``stop`` (a bad row under on_bad_row=error),
    read from the rows, not from an exception's text: the message names the row, its field and reason."""
    import ray

    from rmray.data.stream import RowStream, StreamError, StreamShape, rank_windows

    rows = tokenized([f"r{i}" for i in range(8)], bad={"r5", "r6"}, stop={"r5", "r6"})
    stream = RowStream.remote(ray.data.from_arrow(rows), None, StreamShape(world=2, rows_per_window=1))
    for rank in range(2):
        with pytest.raises(StreamError, match=r"^row r5: no chosen, reason missing_field; fix the row or set on_bad_row=skip"):
            list(rank_windows(stream, "a/0", rank))
    assert ray.get(stream.data_report.remote())["error"].startswith("row r5: no chosen")


def test_an_error_raised_inside_a_data_task_ends_every_ranks_stream_with_its_own_line(ray_cluster):
    """A file that cannot be read fails inside a Ray Data task: each rank gets the task's one-line
    message, not Ray's wrapped traceback."""
    import ray

    from rmray.data.stream import RowStream, StreamError, StreamShape, rank_windows

    def unreadable(batch):
        raise OSError("data/part-3.parquet: Parquet magic bytes not found")

    ds = ray.data.from_arrow(tokenized(["r0", "r1"])).map_batches(unreadable, batch_format="pyarrow")
    stream = RowStream.remote(ds, None, StreamShape(world=2, rows_per_window=4))
    for rank in range(2):
        with pytest.raises(StreamError, match=r"^data/part-3.parquet: Parquet magic bytes not found$"):
            list(rank_windows(stream, "a/0", rank))


def test_an_all_skipped_stream_is_an_error_not_an_empty_epoch(ray_cluster):
    import ray

    from rmray.data.stream import RowStream, StreamError, StreamShape

    stream = RowStream.remote(ray.data.from_arrow(tokenized(["r0", "r1"], bad={"r0", "r1"})), None,
                              StreamShape(world=1, rows_per_window=4))
    with pytest.raises(StreamError, match="all 2 rows were skipped"):
        shares(stream, "a/0", 1)


def test_row_counts_come_from_metadata_and_line_counts(tmp_path):
    rows = [{"chosen": f"a{i}", "rejected": f"b{i}"} for i in range(7)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "\n  \n")
    with gzip.open(tmp_path / "j" / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert open_source(str(tmp_path / "j")).count_rows() == 10  # blank lines are not rows
    assert open_source(str(tmp_path / "j" / "*.jsonl")).count_rows() == 3
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=2)
    assert open_source(str(tmp_path / "p.parquet")).count_rows() == 7
    (tmp_path / "c.csv").write_text("chosen,rejected\n" + "".join(f"a{i},b{i}\n" for i in range(5)))
    assert open_source(str(tmp_path / "c.csv")).count_rows() == 5
    (tmp_path / "doc.json").write_text(json.dumps(rows))
    assert open_source(str(tmp_path / "doc.json")).count_rows() is None  # no count without parsing it
    assert open_source("demo").count_rows() == 400


def test_a_saved_dataset_is_counted_from_its_record_batches(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"chosen": f"a{i}", "rejected": f"b{i}"} for i in range(9)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    assert open_source(str(tmp_path / "hf")).count_rows() == 9
