"""A process reward model for training: a two-label token classifier behind the interface the training
loop, its parallel strategies and its checkpoints read (``hf_model``, ``readout``, ``segments_ok``).

The step logits come from the model's own token-classification head at every position; the loss reads
them at the labelled positions only (:func:`rmray.core.steps.step_loss`). Packed rows carry the 4D
block mask of :mod:`rmray.core.packing`, so no solution attends to another.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForTokenClassification, PreTrainedModel

from .architecture import describe
from .model import _unwrap
from .tokenizer import resolve_model_path

LABELS = {0: "wrong", 1: "correct"}


class StepModel(nn.Module):
    """``forward(input_ids, attention_mask, position_ids) -> logits [rows, length, 2]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        arch = describe(self.hf_model)
        self.readout, self.position_offset = arch.readout, arch.position_offset
        self.segments_ok = False  # packed with the dense block mask; segment attention reads one position a sequence
        self.last_layer_readout_used = False
        self.attribute_weights = None

    @property
    def hf_model(self) -> PreTrainedModel:
        return _unwrap(self.model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {}
        if position_ids is not None:  # packed rows: positions restart in every solution's block
            extra["position_ids"] = position_ids + self.position_offset
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()


def load_step_model(name_or_path: str, *, pad_token_id: int | None = None, disable_dropout: bool = True,
                    **load_options) -> PreTrainedModel:
    """A two-label token classifier on a base model (a reward model's head is replaced by a fresh one);
    safetensors only, remote code off unless asked."""
    dtype = load_options.pop("dtype", torch.float32)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(name_or_path), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
        dtype=dtype, use_safetensors=True, ignore_mismatched_sizes=True, **({"trust_remote_code": False} | load_options))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if disable_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model
