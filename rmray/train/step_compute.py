"""The forward (and backward) of a process reward model's micro-batch: step logits, the step cross-entropy.

The counterpart of :mod:`rmray.train.compute` for stepwise rows (``data_format=stepwise``), with the same
face to the training loop (``chunks``, ``forward_backward``, ``eval_sums``, ``summarize``): a row is one
sequence whose labelled steps' positions and labels ride beside it (:mod:`rmray.data.preferences`).
Layouts: ``padded`` (TRL's ``PRMTrainer``: right-padded rows) or packed (each solution its own attention
block, several per row; :func:`rmray.core.steps.pack_steps`), exact for causal models and encoders alike.
The loss is the mean cross-entropy over a micro-batch's labelled steps, whatever its chunks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rmray.core.collate import pad_sequences
from rmray.core.packing import PackRule
from rmray.core.steps import IGNORE, StepTokens, metrics_from_step_sums, pack_steps, step_sums

from .batches import split_by_tokens
from .compute import wants_bf16


@dataclass
class StepChunk:
    inputs: dict  # keyword arguments of StepModel.forward
    rows: torch.Tensor  # [S] row of each labelled step in the forward
    cols: torch.Tensor  # [S] its column
    labels: torch.Tensor  # [S] 0/1
    num_pairs: int  # labelled steps (what the loss averages over; the loop's "pairs")
    computed_tokens: int
    real_tokens: int


def batch_items(batch: dict) -> list[StepTokens]:
    """A micro-batch's stepwise rows as token lists with their labelled positions."""
    items = []
    for ids, positions, labels in zip(batch["chosen_ids"], batch["step_positions"], batch["step_labels"]):
        per_position = [IGNORE] * len(ids)
        for p, label in zip(positions, labels):
            per_position[int(p)] = int(label)
        items.append(StepTokens([int(i) for i in ids], [int(p) for p in positions], per_position, 0))
    return items


def step_chunks(items: list[StepTokens], layout) -> list[StepChunk]:
    """Forward chunks of at most ``layout.max_tokens_per_batch`` tokens, padded or packed."""
    spans = split_by_tokens([len(t.input_ids) for t in items], layout.max_tokens_per_batch)
    return [_chunk(items[a:b], layout) for a, b in spans]


def _chunk(items: list[StepTokens], layout) -> StepChunk:
    real = sum(len(t.input_ids) for t in items)
    steps = sum(len(t.positions) for t in items)
    if layout.kind == "padded":
        ids, mask = pad_sequences([t.input_ids for t in items], layout.pad_token_id, layout.pad_to_multiple_of)
        rows = torch.tensor([b for b, t in enumerate(items) for _ in t.positions], dtype=torch.long)
        cols = torch.tensor([p for t in items for p in t.positions], dtype=torch.long)
        labels = torch.tensor([t.labels[p] for t in items for p in t.positions], dtype=torch.long)
        return StepChunk({"input_ids": ids, "attention_mask": mask}, rows, cols, labels, steps, ids.numel(), real)
    rule = PackRule(pad_token_id=layout.pad_token_id, causal=layout.causal, attention_ratio=layout.attention_ratio,
                    row_tokens=layout.row_tokens)
    packed = pack_steps(items, rule)
    return StepChunk(packed.inputs, packed.rows, packed.cols, packed.labels, steps,
                     packed.inputs["input_ids"].numel(), real)


@dataclass
class StepCompute:
    """Everything a process model's forward needs besides the data, built once per worker."""

    model: torch.nn.Module  # the strategy-wrapped StepModel
    raw: torch.nn.Module  # the StepModel inside it
    strategy: object
    device: torch.device
    use_bf16: bool

    @classmethod
    def for_run(cls, model, raw, strategy, device, opt) -> "StepCompute":
        return cls(model, raw, strategy, device, wants_bf16(opt, device))

    def chunks(self, batch: dict, layout) -> tuple[list[StepChunk], int]:
        """The micro-batch's forward chunks, and what TRL's padded layout would compute for it."""
        items = batch_items(batch)
        return step_chunks(items, layout), len(items) * max(len(t.input_ids) for t in items)

    def _step_logits(self, chunk: StepChunk, model=None) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            inputs = {k: v.to(self.device) for k, v in chunk.inputs.items()}
            logits = (model or self.model)(**inputs)
        return logits[chunk.rows.to(self.device), chunk.cols.to(self.device)].float()

    def forward_backward(self, chunks: list, accumulation: int = 1, final_sync: bool = True) -> tuple[torch.Tensor, int]:
        """Loss and gradients of one micro-batch chunk by chunk, each chunk's mean loss weighted by its share
        of the micro-batch's steps (FSDP's zero-weight chunks keep the ranks' forwards in step). Returns the
        step sums and the real token count."""
        total = max(sum(c.num_pairs for c in chunks), 1)
        sums, tokens = torch.zeros(8, dtype=torch.float64, device=self.device), 0
        weighted = self.strategy.equalize(chunks)
        for k, (chunk, weight) in enumerate(weighted):
            last = k == len(weighted) - 1
            with self.strategy.no_sync(self.model) if not (last and final_sync) else contextlib.nullcontext():
                logits = self._step_logits(chunk)
                labels = chunk.labels.to(self.device)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                (loss * (weight * chunk.num_pairs / total) / accumulation).backward()
            if weight:
                sums += step_sums(logits, labels, loss.detach() * chunk.num_pairs)
                tokens += chunk.real_tokens
        return sums, tokens

    def eval_sums(self, batch: dict, layout, model) -> tuple[torch.Tensor, list[float]]:
        """An eval batch's step sums (no margins: a process model has no pairs to calibrate)."""
        sums = torch.zeros(8, dtype=torch.float64)
        for chunk in step_chunks(batch_items(batch), layout):
            logits = self._step_logits(chunk, model)
            labels = chunk.labels.to(self.device)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            sums += step_sums(logits, labels, loss * chunk.num_pairs).cpu()
        return sums, []

    @staticmethod
    def summarize(sums: torch.Tensor) -> dict[str, float]:
        return metrics_from_step_sums(sums)
