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
import functools
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
    if query.device.type == "cpu" and (query.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")):
        # CPU SDPA is slower in half precision than in float32 (torch 2.13, AVX512-BF16: the flash
        # kernel's backward 2.5x slower, a quarter of a bf16 Qwen2 step), so attention runs in float32
        # there, autocast or not; the matmuls around it keep bf16. GPUs keep the input dtype.
        with torch.autocast("cpu", enabled=False):
            out, _ = segment_attention(module, query.float(), key.float(), value.float(), attention_mask,
                                       dropout, scaling, is_causal, **kwargs)
        return out.to(query.dtype), None
    plan = _PLAN.get()
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = bool(getattr(module, "is_causal", True))
    sdpa = functools.partial(F.scaled_dot_product_attention, dropout_p=dropout if module.training else 0.0,
                             scale=scaling)
    rows = []
    for b, row_plan in enumerate(plan):
        # One split per tensor and row, never a slice per segment: a slice's backward writes its gradient
        # into a zero tensor the size of the whole row, so per-segment slices cost segments x row length
        # (measured: a quarter of a MiniLM step); a split's backward is one concatenation.
        sizes = _piece_sizes(row_plan, query.shape[2], causal)
        q, k, v = (t[b:b + 1].split(sizes, 2) for t in (query, key, value))
        parts, i = [], 0
        for _, prefix, responses in row_plan:
            if not causal:  # encoders: each sequence is its own group with no prefix, attending both ways
                parts.append(sdpa(q[i], k[i], v[i]))
                i += 1
                continue
            # [prefix | first response]: the plain causal kernel, no mask.
            parts.append(sdpa(q[i], k[i], v[i], is_causal=True))
            prefix_k, prefix_v = k[i][:, :, :prefix], v[i][:, :, :prefix]
            i += 1
            for n in responses[1:]:  # every further response sees the prefix and itself, causally
                parts.append(sdpa(q[i], torch.cat([prefix_k, k[i]], 2), torch.cat([prefix_v, v[i]], 2),
                                  attn_mask=_prefix_causal_mask(prefix, n, query.device)))
                i += 1
        if i < len(sizes):  # padding: its outputs are never read and nothing attends to it
            parts.append(query.new_zeros(1, query.shape[1], sizes[-1], query.shape[3]))
        rows.append(torch.cat(parts, 2))
    return torch.cat(rows, 0).transpose(1, 2).contiguous(), None


def _piece_sizes(row_plan, length: int, causal: bool) -> list[int]:
    """Lengths of the pieces one SDPA call each reads, in row order, then the padding (if any)."""
    sizes = []
    for start, prefix, responses in row_plan:
        if start != sum(sizes):
            raise ValueError(f"segment plan: a group starts at column {start}, expected {sum(sizes)} "
                             "(groups must be laid back to back from column 0, as pack_groups does)")
        if causal:
            sizes += [prefix + responses[0], *responses[1:]]
        else:
            sizes.append(prefix + sum(responses))
    used = sum(sizes)
    return sizes + [length - used] if used < length else sizes


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
