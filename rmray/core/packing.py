"""Padding-free packing and shared-prefix groups: many sequences in few rows, no attention between them.

A *group* is one prefix and any number of responses: ``[prefix | resp_1 | ... | resp_n]``. Each
response token attends causally to the prefix and to its own earlier tokens, never to another
response; positions of every response continue from the end of the prefix. For a causal LM this
computes exactly what scoring ``prefix + resp_k`` alone computes, with the prefix run once. A
preference pair is the group (longest common token prefix of chosen and rejected, [chosen suffix,
rejected suffix]); group scoring at serving time is the same call with N responses.

Encoders attend bidirectionally, so a shared prefix would see the responses: for them every sequence
is its own group with an empty prefix (plain padding-free packing), which is exact.

Groups are laid into rows of at most ``row_tokens`` tokens (first-fit by decreasing length). Layout
for two pairs, causal, prefixes P and Q (``c``/``r`` = chosen/rejected suffix tokens, ``.`` = pad)::

    input_ids     row 0: P0 P1 P2 c0 c1 r0 r1 r2 Q0 Q1 c0 r0 r1 .
    position_ids  row 0:  0  1  2  3  4  3  4  5  0  1  2  2  3  0
    readout       row 0:          ^c  at 4   ^r at 7        ^c ^r  (last token of each response)

``attention_mask`` is boolean ``[rows, 1, L, L]`` (True = may attend), the 4D form transformers
models take as-is. Pad tokens attend only to themselves so no softmax row is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Group = tuple[Sequence[int], Sequence[Sequence[int]]]  # (prefix ids, [response ids, ...])


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [R, L] long
    position_ids: torch.Tensor  # [R, L] long
    attention_mask: torch.Tensor | None  # [R, 1, L, L] bool; None when not built (segment attention)
    readout_row: torch.Tensor  # [N] long: row of each response's read-out token, in input order
    readout_col: torch.Tensor  # [N] long: its column
    real_tokens: int  # tokens computed (prefixes once)
    plan: list  # per row [(start, prefix length, [response lengths])]: rmray.core.attention's segment plan


def shared_prefix_length(*sequences: Sequence[int]) -> int:
    """Longest common prefix of id lists, leaving each at least one own token to read out at."""
    first = sequences[0]
    n = max(min(len(seq) for seq in sequences) - 1, 0)
    for seq in sequences[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


def split_shared_prefix(group: Sequence[Sequence[int]]) -> Group:
    """A group of full sequences as (common prefix, suffixes); every suffix keeps a token to read at."""
    n = shared_prefix_length(*group)
    return list(group[0][:n]), [list(seq[n:]) for seq in group]


def sequence_groups(groups: Sequence[Sequence[Sequence[int]]], share_prefix: bool) -> list[Group]:
    """Groups of full sequences (one prompt, K responses each) as packing groups. Through
    :func:`pack_groups` the read-outs come back group by group, each group's responses in order -- with
    or without the shared prefix (without it, every sequence is its own group with an empty prefix)."""
    if share_prefix:
        return [split_shared_prefix(group) for group in groups]
    return [([], [list(seq)]) for group in groups for seq in group]


def pair_groups(chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], share_prefix: bool) -> list[Group]:
    """Groups for B pairs; read-outs come back ordered chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}
    when passed through :func:`pack_groups` with ``order=pair_order(B)``."""
    groups: list[Group] = []
    if share_prefix:
        for c, r in zip(chosen, rejected):
            n = shared_prefix_length(c, r)
            groups.append((list(c[:n]), [list(c[n:]), list(r[n:])]))
    else:
        groups = [([], [list(seq)]) for seq in list(chosen) + list(rejected)]
    return groups


def _first_fit(sizes: Sequence[int], capacity: int) -> tuple[list[list[int]], list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for g in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # first-fit decreasing
        for k, free in enumerate(room):
            if free >= sizes[g]:
                rows[k].append(g)
                room[k] -= sizes[g]
                break
        else:
            rows.append([g])
            room.append(capacity - sizes[g])
    return rows, room


def choose_row_tokens(sizes: Sequence[int], attention_ratio: float) -> int:
    """Row length minimising the estimated cost of a packed batch.

    A row of length L costs about ``L * (1 + L / attention_ratio)``: per-token work (linear layers) plus
    attention, which a dense mask makes quadratic in the row length even across sequences that cannot
    see each other. ``attention_ratio`` is the row length at which attention costs as much as the rest
    (about ``6 * hidden_size`` for MLP width 4x hidden). Long rows waste attention, short rows waste
    padding; the candidates are multiples of the longest group.
    """
    longest = max(sizes)
    best, best_cost = longest, float("inf")
    for factor in (1, 1.25, 1.5, 2, 3, 4, 6, 8):
        capacity = int(longest * factor)
        _, room = _first_fit(sizes, capacity)
        length = max(capacity - free for free in room)
        cost = len(room) * length * (1 + length / attention_ratio)
        if cost < best_cost:
            best, best_cost = capacity, cost
    return best


def pack_groups(groups: Sequence[Group], *, row_tokens: int, pad_token_id: int, causal: bool,
                dense_mask: bool = True) -> PackedBatch:
    """Pack groups into rows; read-outs are returned in group order, responses in their order.

    The read-out is a response's last token for causal models and its first ([CLS]) for encoders.
    ``dense_mask=False`` skips the ``[R, 1, L, L]`` mask (segment attention needs only ``plan``).
    """
    sizes = [len(p) + sum(len(r) for r in rs) for p, rs in groups]
    capacity = max(row_tokens, max(sizes))
    rows, room = _first_fit(sizes, capacity)  # group indices per row, free tokens per row
    length = max(capacity - free for free in room)
    n_rows = len(rows)
    input_ids = torch.full((n_rows, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    seg = torch.full((n_rows, length), -1, dtype=torch.long)  # group slot in the row, -1 = pad
    resp = torch.zeros((n_rows, length), dtype=torch.long)  # 0 = prefix, k = k-th response
    readout: dict[tuple[int, int], tuple[int, int]] = {}
    plan: list = []
    for row, members in enumerate(rows):
        col = 0
        plan.append([])
        for slot, g in enumerate(members):
            prefix, responses = groups[g]
            p = len(prefix)
            plan[row].append((col, p, [len(r) for r in responses]))
            input_ids[row, col:col + p] = torch.as_tensor(list(prefix), dtype=torch.long)
            position_ids[row, col:col + p] = torch.arange(p)
            seg[row, col:col + p] = slot
            col += p
            for k, response in enumerate(responses, start=1):
                n = len(response)
                input_ids[row, col:col + n] = torch.as_tensor(list(response), dtype=torch.long)
                position_ids[row, col:col + n] = torch.arange(p, p + n)
                seg[row, col:col + n] = slot
                resp[row, col:col + n] = k
                readout[(g, k)] = (row, col + n - 1) if causal else (row, col)
                col += n
    mask = _dense_mask(seg, resp, causal) if dense_mask else None
    order = [(g, k) for g, (_, rs) in enumerate(groups) for k in range(1, len(rs) + 1)]
    return PackedBatch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
        readout_row=torch.tensor([readout[key][0] for key in order]),
        readout_col=torch.tensor([readout[key][1] for key in order]),
        real_tokens=sum(sizes), plan=plan,
    )


@dataclass(frozen=True, kw_only=True)
class PackRule:
    """How groups are laid out for one forward: scoring's rule, and the base of training's
    ``train.batches.Layout``."""

    pad_token_id: int
    causal: bool
    segments: bool = False
    """Segment attention (rmray.core.attention): one unpadded row, no 4D mask."""
    attention_ratio: float = 2304.0
    """Cost of a token of attention against one of padding, for ``choose_row_tokens`` (6 x hidden size)."""
    row_tokens: int | None = None
    """A fixed row length; None: chosen per batch."""


def pack_for_model(groups: Sequence[Group], rule: PackRule) -> PackedBatch:
    """The one rule for laying groups out for a forward: with segment attention (rmray.core.attention)
    the cost does not grow with the row, so all groups go in one unpadded row and no 4D mask is built;
    with a dense mask the row length trades padding against wasted attention (choose_row_tokens).
    ``rule``: a :class:`PackRule` (the training loop's ``Layout`` is one)."""
    sizes = [len(p) + sum(len(r) for r in rs) for p, rs in groups]
    row_tokens = rule.row_tokens
    if row_tokens is None:
        row_tokens = sum(sizes) if rule.segments else choose_row_tokens(sizes, rule.attention_ratio)
    return pack_groups(groups, row_tokens=row_tokens, pad_token_id=rule.pad_token_id, causal=rule.causal,
                       dense_mask=not rule.segments)


def model_inputs(packed: PackedBatch, segments: bool) -> dict:
    """Keyword arguments of :meth:`rmray.core.model.RewardModel.forward` for a packed batch."""
    inputs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids,
              "readout_row": packed.readout_row, "readout_col": packed.readout_col}
    if segments:
        inputs["segments"] = packed.plan
    else:
        inputs["attention_mask"] = packed.attention_mask
    return inputs


def on_device(inputs: dict, device) -> dict:
    """Tensors to ``device``; the segment plan (plain Python) as it is."""
    return {key: v.to(device) if torch.is_tensor(v) else v for key, v in inputs.items()}


def _dense_mask(seg: torch.Tensor, resp: torch.Tensor, causal: bool) -> torch.Tensor:
    length = seg.shape[1]
    same_group = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    if causal:
        visible_resp = (resp[:, None, :] == 0) | (resp[:, :, None] == resp[:, None, :])
        mask = same_group & visible_resp & torch.ones(length, length, dtype=torch.bool).tril()
    else:
        mask = same_group
    mask |= torch.eye(length, dtype=torch.bool)  # pads see themselves: no empty softmax rows
    return mask[:, None]


def pair_readout_order(num_pairs: int, share_prefix: bool) -> torch.Tensor:
    """Permutation taking :func:`pack_groups` read-outs to chosen-first order (as the padded path)."""
    if not share_prefix:
        return torch.arange(2 * num_pairs)
    # shared: read-outs come c0 r0 c1 r1 ...; want c0 c1 ... r0 r1 ...
    return torch.cat([torch.arange(0, 2 * num_pairs, 2), torch.arange(1, 2 * num_pairs, 2)])
