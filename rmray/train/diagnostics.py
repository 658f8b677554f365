"""Test and audit tools a run can switch on: the consumed-pairs log and chaos kills.

They live outside the training recipe because they are not training: ``log_consumed_pairs`` writes
which rows each micro-batch held (how the resume tests audit that nothing is trained twice or
skipped), and ``chaos_kill_at_step`` / ``chaos_damage_checkpoint`` kill a worker the way a preempted
node would, so fault tolerance is exercised by real kills rather than mocks.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import uuid


class ConsumedLog:
    """Per-rank JSON lines of the row ids each micro-batch held, tagged with the step the worker started
    from and an attempt id: an audit that a resumed epoch trains no pair twice and skips none."""

    def __init__(self, output_dir: str | None, rank: int, start_step: int):
        self.path = os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl") if output_dir else None
        self.start_step = start_step
        self.attempt = uuid.uuid4().hex[:12]  # two restarts from the same step are two attempts
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def write(self, state, batch_index: int, batch: dict, kind: str) -> None:
        if not self.path:
            return
        record = {"attempt": self.attempt, "started_at_step": self.start_step, "epoch": state.epoch,
                  "batch": batch_index, "step": state.step, "kind": kind,
                  "row_ids": [str(r) for r in batch["row_id"]]}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def chaos_kill(cfg, run_dir: str | None, step: int) -> None:
    """SIGKILL this worker once per listed step (a marker file remembers the steps already killed at);
    with ``chaos_damage_checkpoint``, that step's checkpoint weights are cut in half first."""
    marker = os.path.join(cfg.checkpoints.output_dir, ".chaos_killed")
    done = open(marker).read().split() if os.path.exists(marker) else []
    if str(step) in done:  # the restarted worker passes this step
        return
    with open(marker, "a") as f:
        f.write(f"{step}\n")
    damaged = cfg.debug.chaos_damage_checkpoint
    if damaged is not None and run_dir:
        for weights in glob.glob(os.path.join(run_dir, f"checkpoint-{damaged:06d}*", "*.safetensors")):
            os.truncate(weights, os.path.getsize(weights) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
