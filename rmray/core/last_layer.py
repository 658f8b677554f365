"""The last transformer layer computed only at the positions a reward is read from.

A reward model reads one position per sequence: the last token (causal LMs) or ``[CLS]`` (encoders).
Every layer but the last must run at every position -- the next layer's keys and values need them --
but the last layer's output is read at those positions alone. A plain forward still runs that
layer's MLP (and, in BERT, its attention output projection) over the whole sequence and throws the
result away: about ``1 / num_layers`` of the model's cost for nothing. Here the last layer runs its
self-attention as usual (keys and values over every position) and everything after it -- residual
adds, norms, MLP -- on the read-out rows only. Same rewards, same gradients.

The layer's ``forward`` is replaced on the instance (the state dict, PEFT, DDP and FSDP see the same
module) by one that takes this path when the segment plan carries read-out positions and behaves as
the original otherwise. It returns the read-out rows as one ``[1, N, H]`` row; the backbone's final
norm (or BERT's pooler) is per position, so it applies unchanged. Only layer classes whose forward is
known are patched; any other model computes its last layer in full, as before.
"""

from __future__ import annotations

import types
import warnings

import transformers
from packaging.version import Version
from torch import nn

from .architecture import describe
from .attention import KWARG, READOUT_ONLY

# transformers releases whose layer forwards the read-out bodies were checked against, [low, high): the
# exactness tests (tests/core/test_last_layer.py) ran on 5.17 (H200) and 5.25 (CPU). pyproject.toml caps
# transformers below ``high``; an install outside the range runs the last layer in full (same rewards).
VERIFIED_TRANSFORMERS = ("5.17", "5.26")


def transformers_verified(version: str) -> bool:
    ok = Version(VERIFIED_TRANSFORMERS[0]) <= Version(version) < Version(VERIFIED_TRANSFORMERS[1])
    if not ok:
        warnings.warn(f"rmray's read-out last layer is verified on transformers {VERIFIED_TRANSFORMERS[0]} to "
                      f"<{VERIFIED_TRANSFORMERS[1]}; with {version} the last layer runs in full (the same rewards, "
                      "about 1/num_layers more compute)", stacklevel=3)
    return ok


def enable(hf_model: nn.Module) -> bool:
    """Give the last layer the read-out path (inert until a plan carries read-out positions);
    False where the layer is not a known shape, or transformers is outside the verified range."""
    if not transformers_verified(transformers.__version__):
        return False
    arch = describe(hf_model)
    layer = arch.last_layer
    if layer is None:
        return False
    if "_rmray_readout" not in vars(layer):
        layer._rmray_readout = {"pre_norm": _pre_norm, "post_norm": _post_norm}[arch.last_layer_shape]
        layer.forward = types.MethodType(_forward, layer)  # a bound method: deepcopy rebinds it to the copy
    return True


def _forward(layer, hidden_states, *args, **kwargs):
    segments = kwargs.get(KWARG)
    if segments is None or segments.readout is None:
        return type(layer).forward(layer, hidden_states, *args, **kwargs)
    out = layer._rmray_readout(layer, hidden_states, segments.readout, args, kwargs)
    segments.readout_calls += 1
    return out.unsqueeze(0)


def _pre_norm(layer, hidden, readout: tuple, args, kwargs):
    rows, cols = readout  # the read-out positions: row and column indices into hidden
    if args:  # transformers' decoders pass everything after hidden_states by keyword
        raise TypeError(f"{type(layer).__name__}: unexpected positional arguments for the read-out path")
    attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **kwargs, **{READOUT_ONLY: True})
    x = hidden[rows, cols] + attended[rows, cols]
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _post_norm(layer, hidden, readout: tuple, args, kwargs):
    rows, cols = readout
    # BertEncoder passes (attention_mask, encoder_hidden_states) positionally; the latter is None
    # without cross-attention, which architecture.describe requires.
    kwargs = dict(kwargs)
    mask = args[0] if args else kwargs.pop("attention_mask", None)
    for name in ("encoder_hidden_states", "encoder_attention_mask"):
        kwargs.pop(name, None)
    attention = layer.attention
    context, _ = attention.self(hidden, attention_mask=mask, **kwargs, **{READOUT_ONLY: True})
    x = attention.output(context[rows, cols], hidden[rows, cols])
    return layer.feed_forward_chunk(x)
