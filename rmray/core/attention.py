"""Segment attention: packed rows computed block by block, so no work is spent where the mask is False.

A dense ``[L, L]`` mask makes SDPA pay for attention between every pair of positions in a packed row,
including sequences that cannot see each other; on CPU (and in SDPA's masked GPU kernels) that is
quadratic in the *row* length. Here each group ``[prefix | resp_1 | ... | resp_n]`` is computed on
its own: ``[prefix | resp_1]`` is one causal attention over its tokens, each further response one
whose queries are its own tokens and whose keys are the prefix and itself. Cost: the sum over
groups, not the row squared -- so rows can be as long as the whole micro-batch, with no padding.
Encoders (bidirectional) get one unmasked attention per sequence.

Two kernels compute the same thing:
- GPU in bf16/fp16 (autocast or not): **one** variable-length flash-attention call per layer
  (``aten._flash_attention_forward`` with cumulative sequence lengths, the kernel behind
  ``torch.nn.attention.varlen``). A further response's keys are gathered as ``[prefix | itself]``;
  flash's causal mask is aligned bottom-right when a sequence has more keys than queries, which is
  exactly "the whole prefix, then causal within the response".
- Otherwise (CPU, or fp32 anywhere): one SDPA call per piece (the fast ``is_causal`` kernel where
  it applies). Flash has no fp32 kernel, and a Python loop of small calls is cheap on CPU.

Registered as a transformers attention implementation (``rmray_segments``). The plan reaches it as
the keyword argument ``rmray_segments`` (a :class:`Segments`), which transformers hands down to every
attention call -- and which gradient checkpointing stores with the layer's inputs, so a recomputed
layer sees the plan too. Without a plan (padded batches) the layer runs plain SDPA.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "rmray_segments"
KWARG = "rmray_segments"
# Set by the read-out last layer (rmray.core.last_layer): only each piece's read-out query is needed --
# its last token (causal) or its first ([CLS], encoders); the other outputs are zeros, never read.
READOUT_ONLY = "rmray_readout_only"

# Per row: [(start column, prefix length, [response lengths...]), ...]; the rest of the row is padding.
Plan = Sequence[Sequence[tuple[int, int, Sequence[int]]]]


@dataclasses.dataclass(eq=False)
class Segments:
    """The plan of one forward, and what each kernel derives from it once (not once per layer)."""

    plan: Plan | None  # None: padded rows, attended by SDPA with the model's mask
    readout: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, cols): the last layer computes only these
    calls: int = 0  # attention calls that received this plan: 0 after a forward means it never arrived
    readout_calls: int = 0  # last-layer calls that took the read-out path (rmray.core.last_layer)
    _derived: dict = dataclasses.field(default_factory=dict, repr=False)
    # a further response's [n, prefix + n] mask by (prefix, n, device): every layer needs the same ones
    prefix_masks: dict = dataclasses.field(default_factory=dict, repr=False)

    def varlen_index(self, length: int, causal: bool, device) -> "VarlenIndex":
        key = (length, causal, str(device))
        if key not in self._derived:
            self._derived[key] = _varlen_index(self.plan, length, causal, device)
        return self._derived[key]


@dataclasses.dataclass(frozen=True)
class VarlenIndex:
    cu_q: torch.Tensor  # int32 [S + 1]: query sequence boundaries in the flattened [B * L] tokens
    cu_k: torch.Tensor  # int32 [S + 1]: key sequence boundaries in the (gathered) keys
    key_index: torch.Tensor | None  # rows of the flattened keys, in key-sequence order; None = keys are the queries
    max_q: int
    max_k: int


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers attention interface: ``query`` ``[B, H, L, D]`` -> ``([B, L, H, D], None)``. The
    signature is transformers' ``AttentionInterface`` (its eight arguments are not ours to bundle)."""
    segments: Segments | None = kwargs.pop(KWARG, None)
    readout_only = kwargs.pop(READOUT_ONLY, False)
    if query.device.type == "cpu" and (query.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")):
        # CPU SDPA is slower in half precision than in float32 (torch 2.13, AVX512-BF16: the flash
        # kernel's backward 2.5x slower, a quarter of a bf16 Qwen2 step), so attention runs in float32
        # there, autocast or not; the matmuls around it keep bf16. GPUs keep the input dtype.
        with torch.autocast("cpu", enabled=False):
            out, _ = segment_attention(module, query.float(), key.float(), value.float(), attention_mask,
                                       dropout, scaling, is_causal, **kwargs,
                                       **{KWARG: segments, READOUT_ONLY: readout_only})
        return out.to(query.dtype), None
    if segments is None or segments.plan is None:  # padded rows (a plan may still carry read-out rows)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    segments.calls += 1
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = bool(getattr(module, "is_causal", True))
    call = _Call(dropout if module.training else 0.0, scaling, causal)
    half = flash_dtype(query)
    if half is not None:
        index = segments.varlen_index(query.shape[2], causal, query.device)
        return _flash_varlen((query, key, value), index, half, call), None  # every query
    return _per_piece((query, key, value), segments, call, readout_only), None


class _Call(NamedTuple):
    """How every attention call of one layer runs."""

    dropout: float
    scaling: float | None
    causal: bool


def flash_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half dtype the varlen flash kernel would run in for this query, or None where it cannot run."""
    if not query.is_cuda or query.shape[-1] % 8 or query.shape[-1] > 256:
        return None
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if dtype not in (torch.bfloat16, torch.float16) or not torch.backends.cuda.flash_sdp_enabled():
        return None
    return dtype if _flash_capable(query.device.index or 0) else None


@functools.lru_cache(maxsize=None)
def _flash_capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 0)  # FlashAttention-2: Ampere and newer


def _flash_varlen(qkv: tuple, index: VarlenIndex, dtype, call: _Call):
    b, h, length, d = qkv[0].shape
    q, k, v = (t.transpose(1, 2).reshape(b * length, h, d).to(dtype) for t in qkv)
    if index.key_index is not None:
        k, v = k.index_select(0, index.key_index), v.index_select(0, index.key_index)
    out = torch.ops.aten._flash_attention_forward(q, k, v, index.cu_q, index.cu_k, index.max_q, index.max_k,
                                                 call.dropout, call.causal, False, scale=call.scaling)[0]
    return out.view(b, length, h, d)


def _per_piece(qkv: tuple, segments: "Segments", call: _Call, readout_only: bool = False):
    """One SDPA call per piece of each row of ``segments.plan`` (no varlen kernel here)."""
    query, key, value = qkv
    plan, causal, masks = segments.plan, call.causal, segments.prefix_masks
    sdpa = functools.partial(F.scaled_dot_product_attention, dropout_p=call.dropout, scale=call.scaling)
    if readout_only:
        sdpa = _readout_query(sdpa, causal)
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
                                  attn_mask=_prefix_causal_mask(prefix, n, query.device, masks)))
                i += 1
        if i < len(sizes):  # padding: its outputs are never read and nothing attends to it
            parts.append(query.new_zeros(1, query.shape[1], sizes[-1], query.shape[3]))
        rows.append(torch.cat(parts, 2))
    return torch.cat(rows, 0).transpose(1, 2).contiguous()


def _readout_query(sdpa, causal: bool):
    """``sdpa`` computed at each piece's read-out query only: the last query sees every key of its piece
    (the whole prefix, the whole response), [CLS] too (bidirectional), so no mask is needed."""
    def attend(q, k, v, is_causal=False, attn_mask=None):
        n = q.shape[2]
        if causal:
            return torch.cat([q.new_zeros(*q.shape[:2], n - 1, q.shape[3]), sdpa(q[:, :, -1:], k, v)], 2)
        return torch.cat([sdpa(q[:, :, :1], k, v), q.new_zeros(*q.shape[:2], n - 1, q.shape[3])], 2)
    return attend


def _piece_sizes(row_plan, length: int, causal: bool) -> list[int]:
    """Lengths of the pieces one attention call each reads (queries), in row order, then the padding (if any)."""
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


def _varlen_index(plan: Plan, length: int, causal: bool, device) -> VarlenIndex:
    """Every piece (and each row's padding) is one query sequence; its keys are the same tokens, except
    a further response's, which are ``[its group's prefix | itself]``."""
    q_sizes, key_spans, gathered = [], [], False
    for b, row_plan in enumerate(plan):
        sizes = _piece_sizes(row_plan, length, causal)
        row, col, i = b * length, 0, 0
        for start, prefix, responses in row_plan:
            for j in range(1 + (len(responses) - 1 if causal else 0)):
                n = sizes[i]
                spans = [(row + col, n)] if j == 0 else [(row + start, prefix), (row + col, n)]
                gathered |= j > 0
                q_sizes.append(n)
                key_spans.append(spans)
                col, i = col + n, i + 1
        if i < len(sizes):  # padding attends to itself: outputs never read, no empty softmax rows
            q_sizes.append(sizes[i])
            key_spans.append([(row + col, sizes[i])])
    k_sizes = [sum(n for _, n in spans) for spans in key_spans]
    key_index = None
    if gathered:
        key_index = torch.cat([torch.arange(s, s + n) for spans in key_spans for s, n in spans]).to(device)
    cumsum = lambda sizes: torch.tensor([0, *sizes], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)  # noqa: E731
    return VarlenIndex(cu_q=cumsum(q_sizes), cu_k=cumsum(k_sizes), key_index=key_index,
                       max_q=max(q_sizes), max_k=max(k_sizes))


def _prefix_causal_mask(prefix: int, n: int, device, cache: dict) -> torch.Tensor:
    """``[n, prefix + n]``: every prefix key visible, own keys causally."""
    key = (prefix, n, str(device))
    if key not in cache:
        mask = torch.ones(n, prefix + n, dtype=torch.bool, device=device)
        mask[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        cache[key] = mask
    return cache[key]


# True while a forward runs on a segment plan. transformers builds the attention mask before the
# layers run -- for packed rows with restarting position ids an [L, L] packed-sequence mask (py-spy:
# 14-24 % of a small model's step on CPU, and L^2 bytes of memory) -- and segment attention never reads
# it. The mask interface sees neither the plan nor the model's keyword arguments, hence a context variable.
_PLAN_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("rmray_plan_active", default=False)


@contextlib.contextmanager
def plan_active():
    token = _PLAN_ACTIVE.set(True)
    try:
        yield
    finally:
        _PLAN_ACTIVE.reset(token)


def _mask(*args, **kwargs):
    """Padded batches get the same masks as SDPA; a forward on a segment plan gets none."""
    return None if _PLAN_ACTIVE.get() else sdpa_mask(*args, **kwargs)


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, _mask)


def enable(hf_model) -> bool:
    """Switch a transformers model to segment attention where it runs SDPA or eager attention."""
    if getattr(hf_model.config, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False  # flash / flex / custom kernels: leave the user's choice alone
    try:
        hf_model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError):
        return False
    return hf_model.config._attn_implementation == NAME
