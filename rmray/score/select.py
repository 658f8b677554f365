"""Best-of-n / quality filtering over scored rows: per prompt, keep the top-k and/or rewards above a
threshold. Runs as a Ray Data groupby, so only one prompt's rows are in memory at a time.

Ties are broken deterministically: equal rewards keep the lexicographically smaller response first
(then the smaller row as JSON), so a rerun selects the same rows whatever the block order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import pyarrow as pa

from rmray.errors import UsageError

GROUP_KEY = "__rmray_group"


def _key(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _add_key(batch: pa.Table, group_by: str) -> pa.Table:
    keys = [_key(v) for v in batch.column(group_by).to_pylist()] if group_by in batch.column_names else \
        [""] * batch.num_rows
    return batch.append_column(GROUP_KEY, pa.array(keys, pa.string()))


@dataclass(frozen=True)
class Selection:
    """Which scored rows to keep, per prompt."""

    top_k: int | None = None
    """Keep the best this many rows of each prompt."""
    threshold: float | None = None
    """Keep rows whose reward is at least this."""
    group_by: str = "prompt"
    """The column whose equal values form one prompt's group."""
    response_field: str = "response"
    """The column breaking ties between equal rewards."""

    def __post_init__(self):
        if self.top_k is None and self.threshold is None:
            raise UsageError("selection: give --top-k, --threshold, or both")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")


def select_rows(rows: list[dict], rule: Selection) -> list[dict]:
    """The selection rule for one prompt's rows (pure; rows without a reward are never selected)."""
    scored = [r for r in rows if r.get("reward") is not None]
    scored.sort(key=lambda r: (-r["reward"], _key(r.get(rule.response_field)), json.dumps(r, sort_keys=True, default=str)))
    if rule.threshold is not None:
        scored = [r for r in scored if r["reward"] >= rule.threshold]
    return scored[:rule.top_k] if rule.top_k is not None else scored


def _select_group(group: pa.Table, rule: Selection) -> pa.Table:
    kept = select_rows(group.drop_columns([GROUP_KEY]).to_pylist(), rule)
    schema = group.schema.remove(group.schema.get_field_index(GROUP_KEY))
    return pa.Table.from_pylist(kept, schema=schema)


def select_best(scored_dir: str, output: str, rule: Selection) -> int:
    """Write the selected rows of ``scored_dir`` (``rmray score`` output) to Parquet in ``output``
    (atomically: a temp folder renamed into place). Returns the number of rows kept."""
    import ray

    group_by = rule.group_by
    ds = ray.data.read_parquet(scored_dir)
    if group_by not in ds.schema().names:
        raise ValueError(f"{scored_dir}: no column {group_by!r} to group by (columns: {ds.schema().names})")
    selected = (ds.map_batches(_add_key, fn_kwargs={"group_by": group_by}, batch_format="pyarrow", num_cpus=0.25)
                .groupby(GROUP_KEY)
                .map_groups(_select_group, fn_kwargs={"rule": rule}, batch_format="pyarrow", num_cpus=0.25))
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        selected.write_parquet(tmp)
        kept = ray.data.read_parquet(tmp).count() if os.listdir(tmp) else 0
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return kept
