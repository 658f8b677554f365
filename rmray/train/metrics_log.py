"""``<output_dir>/metrics.jsonl``: one JSON object per logged step, eval, resume, and a final summary."""

from __future__ import annotations

import json
import math
import os


class MetricsLog:
    def __init__(self, output_dir: str, enabled: bool, sinks=None):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.enabled = enabled
        self.sinks = sinks
        if enabled:
            os.makedirs(output_dir, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:  # one line per write: a crash loses at most the line being written
            f.write(json.dumps(clean) + "\n")
        if self.sinks is not None:
            self.sinks.write(clean)

    def close(self) -> None:
        if self.sinks is not None:
            self.sinks.close()


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
