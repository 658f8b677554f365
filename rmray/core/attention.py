"""Segment attention: packed rows computed block by block, so no work is spent where the mask is False.

A dense ``[L, L]`` mask makes SDPA pay for attention between every pair of positions in a packed row,
including sequences that cannot see each other; on CPU (and in SDPA's masked GPU kernels) that is
quadratic in the *row* length. Here each group ``[prefix | resp_1 | ... | resp_n]`` is computed on
its own: ``[prefix | resp_1]`` is one causal SDPA call (the fast ``is_causal`` kernel, no mask),
each further response is one call whose queries are its own tokens and whose keys are the prefix
and itself. Cost: the sum over groups, not the row squared -- so rows can be as long as the whole
micro-batch, with no padding at all. Encoders (bidirectional) get one unmasked call per sequence.

It is registered as a transformers attention implementation (``rmray_segments``); the segment plan
of the current forward is set with :func:`segment_plan` by :class:`rmray.core.model.RewardModel`.
Without a plan (padded batches) the layer runs plain SDPA, with the usual masks.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "rmray_segments"

# Per row: [(start column, prefix length, [response lengths...]), ...]; the rest of the row is padding.
Plan = Sequence[Sequence[tuple[int, int, Sequence[int]]]]
_PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("rmray_segment_plan", default=None)


@contextlib.contextmanager
def segment_plan(plan: Plan | None):
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers attention interface: ``query`` ``[B, H, L, D]`` -> ``([B, L, H, D], None)``."""
    plan = _PLAN.get()
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = bool(getattr(module, "is_causal", True))
    dropout = dropout if module.training else 0.0
    batch, heads, length, dim = query.shape
    rows = []
    for b, row_plan in enumerate(plan):
        q, k, v = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        parts, end = [], 0
        for start, prefix, responses in row_plan:
            if not causal:  # encoders: each sequence is its own group with no prefix
                stop = start + prefix + sum(responses)
                parts.append(F.scaled_dot_product_attention(q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop],
                                                            dropout_p=dropout, scale=scaling))
                end = stop
                continue
            first = start + prefix + responses[0]
            parts.append(F.scaled_dot_product_attention(q[:, :, start:first], k[:, :, start:first], v[:, :, start:first],
                                                        is_causal=True, dropout_p=dropout, scale=scaling))
            col = first
            for n in responses[1:]:
                keys = torch.cat([k[:, :, start:start + prefix], k[:, :, col:col + n]], 2)
                values = torch.cat([v[:, :, start:start + prefix], v[:, :, col:col + n]], 2)
                parts.append(F.scaled_dot_product_attention(q[:, :, col:col + n], keys, values,
                                                            attn_mask=_prefix_causal_mask(prefix, n, q.device),
                                                            dropout_p=dropout, scale=scaling))
                col += n
            end = col
        if end < length:  # padding: its outputs are never read and nothing attends to it
            parts.append(query.new_zeros(1, heads, length - end, dim))
        rows.append(torch.cat(parts, 2))
    return torch.cat(rows, 0).transpose(1, 2).contiguous(), None


def _prefix_causal_mask(prefix: int, n: int, device) -> torch.Tensor:
    """``[n, prefix + n]``: every prefix key visible, own keys causally."""
    mask = torch.ones(n, prefix + n, dtype=torch.bool, device=device)
    mask[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return mask


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # padded batches build the same masks as SDPA


def enable(hf_model) -> bool:
    """Switch a transformers model to segment attention where it runs SDPA or eager attention."""
    if getattr(hf_model.config, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False  # flash / flex / custom kernels: leave the user's choice alone
    try:
        hf_model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError):
        return False
    return hf_model.config._attn_implementation == NAME
