"""Which model made a scored file: a fingerprint stored in each output Parquet file's metadata.

A rerun into the same output folder skips files already scored -- but only when the same models,
under the same scoring specs and text columns, scored them. Rewards of another model must never be
left behind as if they were this one's: a mismatch is refused, naming the file and what differs,
unless ``overwrite`` asks for the files to be scored again.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from rmray.core.fingerprint import model_fingerprint
from rmray.errors import UsageError

METADATA_KEY = b"rmray.scored_by"


def provenance(model_dirs: list[str], names: list[str], prompt_field: str, response_field: str) -> dict:
    return {"models": [{"name": n, "fingerprint": model_fingerprint(d)} for n, d in zip(names, model_dirs)],
            "prompt_field": prompt_field, "response_field": response_field}


def recorded(path: str, schema=None) -> dict | None:
    metadata = (schema if schema is not None else pq.read_schema(path)).metadata or {}
    raw = metadata.get(METADATA_KEY)
    return json.loads(raw) if raw else None


def check_scored_by(path: str, expected: dict, schema=None) -> bool:
    """True when ``path`` (whose Parquet ``schema`` may be given, read from an object store) was scored as
    ``expected`` (skip it); raise when it was not."""
    found = recorded(path, schema)
    if found == expected:
        return True
    if found is None:
        what = "it records no model (written by an older rmray or another tool)"
    else:
        diff = [key for key in expected if found.get(key) != expected[key]]
        what = "; ".join(f"{key}: {_show(found.get(key))} there, {_show(expected[key])} now" for key in diff)
    raise UsageError(f"{path} was scored differently: {what} (fix: another output folder, or --overwrite to "
                     "score those files again)")


def _show(value) -> str:
    if isinstance(value, list):  # models: names and short fingerprints
        return "[" + ", ".join(f"{m.get('name')}@{str(m.get('fingerprint'))[:12]}" for m in value) + "]"
    return repr(value)
