"""From a worker's Ray Data shard to model inputs: length grouping, then padded or packed layouts.

Every row is a group of sequences sharing a prompt: a pair is ``[chosen, rejected]`` rated ``[1, 0]``,
a rated row its K responses. A chunk's rewards come back as ``[G, K]`` for the ``[G, K]`` losses, so
pairs and groups take one path. Three layouts, chosen once per run (``choose_layout``):

- ``padded``: the TRL layout, one right-padded row per sequence; for pairs, chosen rows then rejected.
- ``packed``: padding-free; every sequence in its own attention block, several per row. Exact for
  causal LMs and encoders.
- ``shared``: packed, and each group is one ``[prompt | response_1 | ... | response_K]`` block, the
  prompt run once. Exact for causal attention only, so encoders fall back to ``packed``.

A micro-batch is always ``per_device_train_batch_size`` rows, so every rank takes the same number
of steps (DDP needs that). ``max_tokens_per_batch`` bounds the tokens of one forward: a larger
micro-batch is split into forward chunks whose gradients add up to the micro-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from rmray.core.batching import length_grouped_batches
from rmray.core.collate import pad_sequences
from rmray.core.loss import count_pairs
from rmray.core.packing import PackRule, model_inputs, pack_for_model, sequence_groups, shared_prefix_length


@dataclass(frozen=True)
class Layout(PackRule):
    """A training micro-batch's layout: the packing rule (pad id, causal, segments, row length, attention
    cost; keywords), plus how groups become rows and how many tokens one forward takes."""

    kind: str  # "padded" | "packed" | "shared"
    pad_to_multiple_of: int | None = None
    max_tokens_per_batch: int | None = None


@dataclass
class Chunk:
    inputs: dict  # keyword arguments of RewardModel.forward (tensors, and the segment plan)
    index: torch.Tensor  # [G, K] long: where each response's reward is among the forward's; -1 past a group's end
    ratings: torch.Tensor  # [G, K] higher is better; a pair is [1, 0]
    margins: torch.Tensor | None  # [G, K, K] subtracted from r_i - r_j (a pair's margin at [g, 0, 1]); None if all 0
    targets: torch.Tensor | None  # [G, K, A] per-attribute ratings (NaN where not rated); None if none is
    grouped: torch.Tensor  # [G] bool: a rated row (its ratings may set margins), not a pair
    num_pairs: int  # ordered pairs whose ratings differ
    num_groups: int
    computed_tokens: int  # positions the model runs over, padding included
    real_tokens: int  # tokens of every sequence, each counted whole
    lengths: torch.Tensor | None = None  # [G, K] each response's tokens after its group's common prefix

    def group_rewards(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward's rewards ``[N]`` (or outputs ``[N, A]``) as ``[G, K]`` (``[G, K, A]``), and the mask
        of responses present."""
        index = self.index.to(flat.device)
        mask = index >= 0
        picked = flat[index.clamp_min(0)]
        return picked.masked_fill(~(mask.unsqueeze(-1) if picked.dim() == 3 else mask), 0.0), mask


def choose_layout(padding_free: bool, share_prompt: bool, causal: bool) -> str:
    if not padding_free:
        return "padded"
    return "shared" if share_prompt and causal else "packed"


def iter_pair_batches(windows, *, batch_size: int, group_by_length: bool, seed: int, first_window: int = 0) -> Iterator[dict]:
    """Micro-batches of ``batch_size`` rows (a window's last may be smaller) from a rank's windows
    (dicts of numpy columns, ``rmray.data.stream``): in order, or grouped by length inside each window
    (seeded by ``seed`` and the window's index, so a resumed epoch groups its windows the same way)."""
    for w, block in enumerate(windows, start=first_window):
        n = len(block["chosen_ids"])
        if group_by_length:
            order = length_grouped_batches(row_sizes(block), batch_size, seed=seed * 100_003 + w)
        else:
            order = [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        for idx in order:
            yield {key: value[np.asarray(idx)] for key, value in block.items()}


class Rows(NamedTuple):
    """A batch's rows as groups: a pair row is ``[chosen, rejected]`` rated ``[1, 0]`` with its margin; a
    rated row its ``group_ids`` and ``ratings``, margin 0, and its per-attribute ratings if it has them."""

    groups: list  # [row][k] token ids
    ratings: list  # [row][k]
    margins: list  # [row]
    targets: list  # [row] None, or [k][a] per-attribute ratings
    grouped: list  # [row] a rated row, not a pair


def row_sizes(batch: dict) -> list[int]:
    """Tokens of each row, all its sequences together (read from the columns, nothing converted)."""
    grouped = batch.get("group_ids")
    return [sum(map(len, grouped[i])) if grouped is not None and len(grouped[i]) else len(c) + len(r)
            for i, (c, r) in enumerate(zip(batch["chosen_ids"], batch["rejected_ids"]))]


def batch_groups(batch: dict) -> Rows:
    n = len(batch["row_id"]) if "row_id" in batch else len(batch["chosen_ids"])
    grouped = batch.get("group_ids", [()] * n)
    attributed = batch.get("attribute_ratings", [()] * n)
    margins = batch["margin"] if "margin" in batch else np.zeros(n)
    rows = Rows([], [], [], [], [])
    for i in range(n):
        if len(grouped[i]):
            rows.groups.append([list(seq) for seq in grouped[i]])
            rows.ratings.append([float(r) for r in batch["ratings"][i]])
            rows.margins.append(0.0)
        else:
            rows.groups.append([list(batch["chosen_ids"][i]), list(batch["rejected_ids"][i])])
            rows.ratings.append([1.0, 0.0])
            rows.margins.append(float(margins[i]))
        rows.targets.append([[float(v) for v in per] for per in attributed[i]] if len(attributed[i]) else None)
        rows.grouped.append(bool(len(grouped[i])))
    return rows


def to_chunks(batch: dict, layout: Layout) -> list[Chunk]:
    return chunks_of(batch_groups(batch), layout)


def chunks_of(rows: Rows, layout: Layout) -> list[Chunk]:
    """A micro-batch's rows as forward chunks of at most ``max_tokens_per_batch`` tokens."""
    spans = split_by_tokens([sum(len(seq) for seq in group) for group in rows.groups], layout.max_tokens_per_batch)
    return [_chunk(Rows(*(column[a:b] for column in rows)), layout) for a, b in spans]


def split_by_tokens(sizes: list[int], budget: int | None) -> list[tuple[int, int]]:
    if not budget:
        return [(0, len(sizes))]
    spans, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            spans.append((start, i))
            start, total = i, 0
        total += size
    spans.append((start, len(sizes)))
    return spans


def _chunk(rows: Rows, layout: Layout) -> Chunk:
    groups = rows.groups
    real = sum(len(seq) for group in groups for seq in group)
    if layout.kind == "padded":  # response k of every group, then response k + 1: chosen rows, then rejected
        order = [(g, k) for k in range(max(map(len, groups))) for g in range(len(groups)) if k < len(groups[g])]
        input_ids, attention_mask = pad_sequences([groups[g][k] for g, k in order], layout.pad_token_id,
                                                  layout.pad_to_multiple_of)
        inputs, computed = {"input_ids": input_ids, "attention_mask": attention_mask}, input_ids.numel()
    else:  # pack_groups reads out group by group
        order = [(g, k) for g, group in enumerate(groups) for k in range(len(group))]
        packed = pack_for_model(sequence_groups(groups, layout.kind == "shared"), layout)
        inputs, computed = model_inputs(packed, layout.segments), packed.input_ids.numel()
    width = max(map(len, groups))
    index = torch.full((len(groups), width), -1, dtype=torch.long)
    for position, (g, k) in enumerate(order):
        index[g, k] = position
    rating = torch.tensor([r + [0.0] * (width - len(r)) for r in rows.ratings])
    pairs = sum(count_pairs(r) for r in rows.ratings)
    return Chunk(inputs, index, rating, _margins(rows.margins, width), _targets(rows.targets, width),
                 torch.tensor(rows.grouped), pairs, len(groups), computed, real, _lengths(groups, width))


def _lengths(groups: list, width: int) -> torch.Tensor:
    """``[G, K]`` response lengths: a sequence's tokens after the prompt its group shares (the common
    prefix of its sequences), 0 past a group's end."""
    out = torch.zeros(len(groups), width)
    for g, group in enumerate(groups):
        prefix = shared_prefix_length(*group)
        out[g, :len(group)] = torch.tensor([float(len(seq) - prefix) for seq in group])
    return out


def _margins(margins: list[float], width: int) -> torch.Tensor | None:
    """``[G, K, K]`` with each pair's margin at ``[g, 0, 1]``; None when every margin is 0."""
    if not any(margins):
        return None
    out = torch.zeros(len(margins), width, width)
    out[:, 0, 1] = torch.tensor(margins)
    return out


def _targets(targets: list, width: int) -> torch.Tensor | None:
    """``[G, K, A]`` per-attribute ratings, NaN where a row has none; None when no row has any."""
    present = [t for t in targets if t is not None]
    if not present:
        return None
    out = torch.full((len(targets), width, len(present[0][0])), float("nan"))
    for g, t in enumerate(targets):
        if t is not None:
            out[g, :len(t)] = torch.tensor(t)
    return out


def padded_equivalent_tokens(rows: Rows) -> int:
    """What TRL's layout would compute for these rows: every ordered pair as two rows, padded to the
    longest sequence."""
    longest = max(len(seq) for group in rows.groups for seq in group)
    return 2 * sum(count_pairs(r) for r in rows.ratings) * longest
