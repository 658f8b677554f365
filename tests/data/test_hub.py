"""Hub dataset ids are read by Ray Data tasks from the dataset's own files -- the hub's Parquet conversion
when it has one, else the split's data files -- never loaded whole on the driver by ``datasets``.

The hub is a folder here laid out as the hub's file system lists a dataset repository (no network):
``datasets/<org>/<name>/...`` and the conversion branch ``datasets/<org>/<name>@refs%2Fconvert%2Fparquet/``.
"""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmray.errors import UsageError


def pair(tag: str, i: int) -> dict:
    return {"prompt": f"{tag} question {i}", "chosen": f" good {i}", "rejected": f" bad {i}"}


def write_jsonl_gz(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local stand-in for the hub's file system, and ``datasets.load_dataset`` made to fail."""
    import datasets
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    import rmray.data.hub

    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset ran on the driver")

    root = tmp_path / "hub"
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(rmray.data.hub, "hub_filesystem", lambda: DirFileSystem(path=str(root), fs=LocalFileSystem()))
    return root


def rows_of(source: str) -> list[dict]:
    import ray

    from rmray.data.source import open_source

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in open_source(source).read().take_all()]


def test_a_hub_id_reads_its_splits_files_on_the_cluster(ray_cluster, hub):
    # hh-rlhf's layout: subsets in folders, a train and a test file in each, and files of another split
    repo = hub / "datasets" / "org" / "pairs"
    write_jsonl_gz(repo / "harmless-base" / "train.jsonl.gz", [pair("harmless", i) for i in range(3)])
    write_jsonl_gz(repo / "harmless-base" / "test.jsonl.gz", [pair("harmless-test", i) for i in range(2)])
    write_jsonl_gz(repo / "helpful-base" / "train.jsonl.gz", [pair("helpful", i) for i in range(4)])
    write_jsonl_gz(repo / "data" / "train_prefs-00000.jsonl.gz", [pair("prefs", i) for i in range(2)])
    (repo / "README.md").write_text("---\nlicense: mit\n---\n")

    assert rows_of("org/pairs") == [pair("harmless", i) for i in range(3)] + [pair("helpful", i) for i in range(4)]
    assert rows_of("org/pairs:test") == [pair("harmless-test", i) for i in range(2)]
    assert rows_of("org/pairs:train_prefs") == [pair("prefs", i) for i in range(2)]
    with pytest.raises(UsageError, match="has no data files for split 'validation'"):
        rows_of("org/pairs:validation")


def test_the_hubs_parquet_conversion_is_read_first_in_file_order(ray_cluster, hub):
    write_jsonl_gz(hub / "datasets" / "org" / "conv" / "train.jsonl.gz", [pair("raw", 0)])
    converted = hub / "datasets" / "org" / "conv@refs%2Fconvert%2Fparquet" / "default" / "train"
    converted.mkdir(parents=True)
    for k, (start, stop) in enumerate([(0, 5), (5, 6), (6, 9)]):  # uneven files
        pq.write_table(pa.Table.from_pylist([pair("conv", i) for i in range(start, stop)]), converted / f"000{k}.parquet")
    assert rows_of("org/conv") == [pair("conv", i) for i in range(9)]


def test_an_unreachable_hub_is_one_line_that_says_what_to_do(monkeypatch):
    import rmray.data.hub

    class Offline:
        def glob(self, path):
            raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(rmray.data.hub, "hub_filesystem", Offline)
    with pytest.raises(UsageError, match="could not list hub dataset 'org/x'.*huggingface-cli login.*local file"):
        rows_of("org/x")


def test_a_runs_check_count_and_read_share_one_listing_of_the_hub(ray_cluster, hub, monkeypatch):
    """Check, row count and read each asked the hub for the split's files (three round trips, and the
    split could change between them): they share one listing."""
    import rmray.data.hub
    from rmray.data.source import open_source

    write_jsonl_gz(hub / "datasets" / "org" / "once" / "train.jsonl.gz", [pair("once", i) for i in range(3)])
    listed, real = [], rmray.data.hub._list_files
    monkeypatch.setattr(rmray.data.hub, "_list_files", lambda source, fs: listed.append(source) or real(source, fs))
    open_source("org/once").check("train_data")
    open_source("org/once").count_rows()  # None for JSON lines (no metadata to count from): it still lists
    assert rows_of("org/once") == [pair("once", i) for i in range(3)]
    assert listed == ["org/once"]
