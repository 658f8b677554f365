"""The training loop's position and counters: what a checkpoint restores and what the summary reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopState:
    """What a checkpoint restores (step, position in the epoch, the counters) and what the summary reads."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch's pass already trained
    excluded: list = None  # ordinal ranges this epoch's pass leaves out: trained before a resume on another world
    train_time_s: float = 0.0  # only the training loop: no start-up, eval or checkpointing
    pairs_seen: int = 0  # global, all ranks
    tokens_seen: int = 0
    computed_tokens: int = 0  # positions run by the model on this rank, padding included
    padded_tokens: int = 0  # what TRL's padded layout would have run on the same batches
    data_wait_s: float = 0.0  # time spent waiting for the next micro-batch from Ray Data (in train_time_s)
    first_step_at: float | None = None
    last_train_accuracy: float | None = None

    def __post_init__(self):
        self.excluded = self.excluded or []
