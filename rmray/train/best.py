"""``load_best_model_at_end``: which checkpoint was best by ``metric_for_best_model``, and loading it back.

Every rank sees the same evaluation metrics (pair sums are all-reduced, benchmark rewards gathered), so
every rank tracks the same best step; rank 0 alone names its checkpoint folder (names depend on what
storage already holds) and tells the others at the end. The live model competes too: ``final/`` is the
last step's model unless a checkpoint scored strictly better.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch.distributed as dist

from .checkpoint import load_model_weights


class BestCheckpoint:
    def __init__(self, metric: str, greater: bool):
        self.metric, self.greater = metric, greater
        self.value, self.step, self.name = (-math.inf if greater else math.inf), None, None

    def better(self, value) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value > self.value if self.greater else value < self.value

    def saw(self, metrics: dict, step: int, name: str | None) -> None:
        """A checkpoint was saved with these metrics (``name`` on rank 0 only)."""
        if self.better(metrics.get(self.metric)):
            self.value, self.step, self.name = metrics[self.metric], step, name

    def restore_if_better(self, last_eval: dict, compute, run_dir: str | None, storage_root: str) -> int | None:
        """Load the best checkpoint's weights into the live model when it beat the last evaluation; returns
        its step (every rank loads; under FSDP the load is sharded), or None when the live model stays."""
        if self.step is None or not self.better_than_last(last_eval):
            return None
        name = self.name
        if dist.is_available() and dist.is_initialized():
            box = [name]
            dist.broadcast_object_list(box, src=0)
            name = box[0]
        if run_dir:
            context = contextlib.nullcontext(os.path.join(run_dir, name))
        else:  # remote storage: Ray downloads it
            import ray.train

            context = ray.train.Checkpoint(f"{storage_root.rstrip('/')}/{name}").as_directory()
        strategy, model, raw = compute.strategy, compute.model, compute.raw
        with context as directory:
            load_model_weights(raw.model, directory, lambda sd: strategy.load_model_state(model, raw, sd))
        return self.step

    def better_than_last(self, last_eval: dict) -> bool:
        last = last_eval.get(self.metric)
        return last is None or (self.value > last if self.greater else self.value < last)
