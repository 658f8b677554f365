"""What rmray needs to know about a model's architecture, in one place.

Every answer is read from the model's own structure -- its head's name, its embeddings, its layer
classes, its ``_no_split_modules`` -- so any ``AutoModelForSequenceClassification`` trains and scores.
The layer shapes listed here also get the read-out last layer (:mod:`rmray.core.last_layer`); a model
whose last layer is of another shape computes it in full. To support a new architecture's fast path,
add its layer class to the shape its forward has (and its body to ``last_layer`` if the shape is new),
then run ``tests/core/test_last_layer.py``.

Example: a Qwen2 reward model -> ``readout="last_token"``, ``heads=["score"]``, ``position_offset=0``,
``last_layer_shape="pre_norm"``, ``blocks={"Qwen2DecoderLayer"}``; a RoBERTa one -> ``"pooler"``,
``["classifier"]``, ``padding_idx + 1``, ``"post_norm"``, ``{"RobertaLayer", ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Layer forwards checked against transformers' source (core/last_layer.py computes them at read-out rows):
# pre-norm decoder layers: x + attn(norm(x)), then x + mlp(norm(x));
# post-norm encoder layers: norm(x + dense(attn(x))), then norm(x + mlp(x)).
LAYER_SHAPES = {
    "pre_norm": {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MistralDecoderLayer"},
    "post_norm": {"BertLayer", "RobertaLayer"},
}


@dataclass(frozen=True)
class Architecture:
    readout: str
    """``last_token`` (decoders, a ``score`` head) or ``pooler`` (encoders, a ``classifier`` head on [CLS])."""
    heads: list[str]
    """The reward head's module names: freshly initialised, always trained in full (LoRA too)."""
    position_offset: int
    """Where position ids start: RoBERTa-family embeddings number them from ``padding_idx + 1``."""
    last_layer: nn.Module | None
    """The backbone's last transformer layer when its forward is a known shape, else None."""
    last_layer_shape: str | None
    """Its shape in ``LAYER_SHAPES``."""
    blocks: frozenset[str]
    """Transformer block classes (``_no_split_modules``): FSDP's units."""


def describe(hf_model: nn.Module) -> Architecture:
    """The architecture facts of a transformers sequence-classification model (unwrapped)."""
    heads = [n for n in ("score", "classifier") if isinstance(getattr(hf_model, n, None), nn.Module)]
    if not heads:
        raise ValueError(f"{type(hf_model).__name__} has no 'score' or 'classifier' head; "
                         "is it a sequence-classification model?")
    layer = _last_layer(hf_model)
    shape = next((s for s, names in LAYER_SHAPES.items() if layer is not None and type(layer).__name__ in names), None)
    if shape == "post_norm" and (layer.is_decoder or layer.add_cross_attention):
        shape = None  # an encoder layer used as a decoder: cross-attention the read-out body does not run
    return Architecture(readout="last_token" if hasattr(hf_model, "score") else "pooler", heads=heads,
                        position_offset=_position_offset(hf_model), last_layer=layer if shape else None,
                        last_layer_shape=shape, blocks=frozenset(getattr(hf_model, "_no_split_modules", None) or []))


def _last_layer(hf_model: nn.Module) -> nn.Module | None:
    backbone = getattr(hf_model, hf_model.base_model_prefix, None)
    layers = getattr(backbone, "layers", None)  # decoders
    if layers is None:
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)  # BERT-style encoders
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    return layers[-1]


def _position_offset(hf_model: nn.Module) -> int:
    """RoBERTa-family embeddings (XLM-R, CamemBERT, MPNet, ...) number positions from ``padding_idx + 1``
    when they derive them from the input ids, as they do for padded rows; packed rows pass 0-based ids
    per sequence, which must be shifted the same way."""
    backbone = getattr(hf_model, hf_model.base_model_prefix, None)
    embeddings = getattr(backbone, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return padding_idx + 1 if hasattr(embeddings, "create_position_ids_from_input_ids") and padding_idx is not None else 0
