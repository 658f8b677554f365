"""Batch layout for the padded pairwise forward."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` of shape ``[N, T]``.

    Always right padding: the tokenizer's ``padding_side`` never reaches the model, and the reward
    read-out uses the attention mask, so the side cannot change a score.
    """
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    return input_ids, attention_mask


def collate_pairs(batch: dict, pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack B pairs into one forward of 2B rows, chosen half first (as TRL's collator does).

    ``batch`` holds columns ``chosen_ids``, ``rejected_ids`` (B lists of ids) and optionally ``margin`` (B floats).
    Returns, for B=2 pairs with chosen lengths 3, 2 and rejected lengths 2, 4 (``p`` = pad id)::

        input_ids      = [[c00 c01 c02 p  ],      attention_mask = [[1 1 1 0],
                          [c10 c11 p   p  ],                        [1 1 0 0],
                          [r00 r01 p   p  ],                        [1 1 0 0],
                          [r10 r11 r12 r13]]                        [1 1 1 1]]
        margin         = [m0, m1]             # zeros when the data has no margin
        num_pairs      = tensor(2)
    """
    chosen, rejected = list(batch["chosen_ids"]), list(batch["rejected_ids"])
    input_ids, attention_mask = pad_sequences(chosen + rejected, pad_token_id, pad_to_multiple_of)
    margin = batch.get("margin")
    margin = torch.zeros(len(chosen)) if margin is None else torch.as_tensor(margin, dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "margin": margin,
        "num_pairs": torch.tensor(len(chosen)),
    }
