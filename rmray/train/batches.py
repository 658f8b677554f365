"""From a worker's Ray Data shard to model inputs: length grouping, then padded or packed layouts.

Three layouts, chosen once per run (``choose_layout``):

- ``padded``: the TRL layout, chosen rows then rejected rows, right-padded (``collate_pairs``).
- ``packed``: padding-free; every sequence in its own attention block, several per row. Exact for
  causal LMs and encoders.
- ``shared``: packed, and each pair is one ``[prompt | chosen | rejected]`` group, the prompt run
  once. Exact for causal attention only, so encoders fall back to ``packed``.

A micro-batch is always ``per_device_train_batch_size`` pairs, so every rank takes the same number
of steps (DDP needs that). ``max_tokens_per_batch`` bounds the tokens of one forward: a larger
micro-batch is split into forward chunks whose gradients add up to the micro-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from rmray.core.batching import length_grouped_batches
from rmray.core.collate import collate_pairs
from rmray.core.packing import model_inputs, pack_for_model, pair_groups, pair_readout_order


@dataclass
class Layout:
    kind: str  # "padded" | "packed" | "shared"
    causal: bool
    pad_token_id: int
    pad_to_multiple_of: int | None = None
    row_tokens: int | None = None  # None: per micro-batch, by choose_row_tokens
    attention_ratio: float = 2304.0  # see choose_row_tokens; 6 * hidden_size
    max_tokens_per_batch: int | None = None
    segments: bool = False  # segment attention (rmray.core.attention): one unpadded row per chunk, no 4D mask


@dataclass
class Chunk:
    inputs: dict  # keyword arguments of RewardModel.forward (tensors, and the segment plan)
    margin: torch.Tensor  # [n_pairs]
    num_pairs: int
    computed_tokens: int  # positions the model runs over, padding included
    real_tokens: int  # chosen + rejected tokens, each sequence counted whole


def choose_layout(padding_free: bool, share_prompt: bool, causal: bool) -> str:
    if not padding_free:
        return "padded"
    return "shared" if share_prompt and causal else "packed"


def iter_pair_batches(shard, *, batch_size: int, group_by_length: bool, window: int, seed: int) -> Iterator[dict]:
    """Yield dicts of numpy columns with ``batch_size`` pairs (the last may be smaller)."""
    if not group_by_length:
        yield from shard.iter_batches(batch_size=batch_size, batch_format="numpy")
        return
    for w, block in enumerate(shard.iter_batches(batch_size=batch_size * window, batch_format="numpy")):
        lengths = [len(c) + len(r) for c, r in zip(block["chosen_ids"], block["rejected_ids"])]
        for idx in length_grouped_batches(lengths, batch_size, seed=seed * 100_003 + w):
            yield {key: value[np.asarray(idx)] for key, value in block.items()}


def to_chunks(batch: dict, layout: Layout) -> list[Chunk]:
    chosen, rejected = list(batch["chosen_ids"]), list(batch["rejected_ids"])
    margin = torch.as_tensor(np.asarray(batch["margin"], dtype=np.float32)) if "margin" in batch else torch.zeros(len(chosen))
    spans = _split_by_tokens(chosen, rejected, layout)
    return [_chunk(chosen[a:b], rejected[a:b], margin[a:b], layout) for a, b in spans]


def _split_by_tokens(chosen, rejected, layout: Layout) -> list[tuple[int, int]]:
    if not layout.max_tokens_per_batch:
        return [(0, len(chosen))]
    spans, start, total = [], 0, 0
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        size = len(c) + len(r)
        if i > start and total + size > layout.max_tokens_per_batch:
            spans.append((start, i))
            start, total = i, 0
        total += size
    spans.append((start, len(chosen)))
    return spans


def _chunk(chosen, rejected, margin, layout: Layout) -> Chunk:
    n = len(chosen)
    real = sum(len(s) for s in chosen) + sum(len(s) for s in rejected)
    if layout.kind == "padded":
        out = collate_pairs({"chosen_ids": chosen, "rejected_ids": rejected}, layout.pad_token_id, layout.pad_to_multiple_of)
        inputs = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
        return Chunk(inputs, margin, n, out["input_ids"].numel(), real)
    share = layout.kind == "shared"
    groups = pair_groups(chosen, rejected, share)
    packed = pack_for_model(groups, pad_token_id=layout.pad_token_id, causal=layout.causal, segments=layout.segments,
                            attention_ratio=layout.attention_ratio, row_tokens=layout.row_tokens)
    order = pair_readout_order(n, share)
    inputs = model_inputs(packed, layout.segments)
    inputs["readout_row"], inputs["readout_col"] = packed.readout_row[order], packed.readout_col[order]
    return Chunk(inputs, margin, n, packed.input_ids.numel(), real)


def padded_equivalent_tokens(batch: dict) -> int:
    """What TRL's layout would compute for this batch: 2B rows padded to the longest sequence."""
    longest = max(max(len(c), len(r)) for c, r in zip(batch["chosen_ids"], batch["rejected_ids"]))
    return 2 * len(batch["chosen_ids"]) * longest
