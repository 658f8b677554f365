"""``datasets.save_to_disk`` folders, read by Ray Data tasks file by file.

A saved dataset is a list of Arrow IPC stream files named in its ``state.json``. Loading it with
``datasets.load_from_disk`` on the driver and handing it to Ray (``from_huggingface``) would pass the
whole table through the driver; here each file is read by its own task, in the listed order, and the
driver reads only the folder's JSON. A ``DatasetDict`` folder (``dataset_dict.json``) gives its
``train`` split.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import ray

from rmray.errors import UsageError


def is_saved_dataset(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in ("state.json", "dataset_dict.json"))


def read_saved_dataset(folder: str) -> ray.data.Dataset:
    folder, files = saved_files(folder)
    if files is None:  # a selected or shuffled view: its row order lives in an index
        import datasets

        return ray.data.from_huggingface(datasets.load_from_disk(folder).flatten_indices())
    return ray.data.from_items([{"path": path} for path in files]).map_batches(
        _read_stream, batch_size=1, batch_format="pyarrow", num_cpus=0.25)


def saved_files(folder: str) -> tuple[str, list[str] | None]:
    """The split's folder (a DatasetDict gives its ``train``) and its Arrow files in order; None for a
    view whose rows are chosen by an index file."""
    if os.path.exists(os.path.join(folder, "dataset_dict.json")):
        with open(os.path.join(folder, "dataset_dict.json")) as f:
            splits = json.load(f).get("splits", [])
        if "train" not in splits:
            raise UsageError(f"{folder}: a saved DatasetDict without a 'train' split (it has {splits}); "
                             f"fix: point at one split's folder, e.g. {os.path.join(folder, splits[0] if splits else 'SPLIT')}")
        folder = os.path.join(folder, "train")
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    if state.get("_indices_data_files"):
        return folder, None
    return folder, [os.path.join(os.path.abspath(folder), entry["filename"]) for entry in state["_data_files"]]


def _read_stream(batch: pa.Table) -> pa.Table:
    """One saved file's rows (Ray splits a large result into blocks of its target size)."""
    with pa.memory_map(batch.column("path")[0].as_py()) as source:
        return pa.ipc.open_stream(source).read_all()
