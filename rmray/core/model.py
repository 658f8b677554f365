"""Reward-model loading, the reward read-out, LoRA, and saving.

The read-out is the reason this module exists. transformers' ``*ForSequenceClassification`` pools
causal LMs at "the rightmost token that is not the pad id"; when pad == eos (Llama-3, or any tokenizer
given ``pad_token = eos_token``) the EOS the text ends with is mistaken for padding and the reward is
read one token early (TRL #2758). :class:`RewardModel` instead runs the backbone and reads the score
head at the last position whose attention mask is 1, with position ids from the mask, so neither pad
ids, padding side nor batch composition can move a score.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from . import attention, last_layer
from .architecture import describe
from .tokenizer import resolve_model_path


def load_hf_model(name_or_path: str, *, pad_token_id: int | None = None, attributes=None,
                  disable_dropout: bool = True, **load_options) -> PreTrainedModel:
    """A sequence-classification model with one output, or one per attribute (named in ``id2label``).
    A base model with another head size gets a fresh head of the right size. ``load_options`` go to
    ``from_pretrained`` (``dtype``, ``trust_remote_code``); safetensors only, remote code off by default."""
    dtype = load_options.pop("dtype", torch.float32)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    labels = list(attributes or [])
    extra = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(name_or_path), num_labels=max(len(labels), 1), dtype=dtype, use_safetensors=True,
        ignore_mismatched_sizes=bool(labels), **({"trust_remote_code": False} | load_options | extra),
    )
    if model.config.num_labels != max(len(labels), 1):
        want = f"{len(labels)} (one per attribute)" if labels else "exactly 1"
        raise ValueError(f"{name_or_path} has num_labels={model.config.num_labels}; this reward model needs {want}")
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if disable_dropout:  # TRL's default: dropout makes chosen and rejected see different networks
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def readout_kind(model: nn.Module) -> str:
    """``last_token`` for decoder models with a ``score`` head, ``pooler`` for encoders (BERT-style)."""
    return describe(_unwrap(model)).readout


def apply_lora(model: PreTrainedModel, lora, task: str = "SEQ_CLS"):
    """Wrap in a PEFT LoRA model (``lora``: a ``peft.LoraConfig``) with the reward head fully trained and saved.

    ``task_type`` (``SEQ_CLS``; a process model's ``TOKEN_CLS``) and the head in ``modules_to_save`` are set
    here, not left to the user:
    a LoRA reward model whose random head is frozen or not saved is the most reported RM LoRA bug
    (TRL #297/#578, OpenRLHF #873).
    """
    import dataclasses

    from peft import TaskType, get_peft_model

    heads = describe(_unwrap(model)).heads
    config = dataclasses.replace(lora, task_type=getattr(TaskType, task),
                                 modules_to_save=sorted(set(heads) | set(lora.modules_to_save or [])))
    peft_model = get_peft_model(model, config)  # adapters in float32 even on a bf16/fp16 base (autocast_adapter_dtype)
    if any(p.dtype != torch.float32 for p in peft_model.parameters()):
        _float32_heads(peft_model, config.modules_to_save)
    return peft_model


def _float32_heads(peft_model: nn.Module, names) -> None:
    """Train the full-weight modules (reward head) in float32 on a half-precision base: bf16 weights
    lose updates smaller than 1/256 of their size. Their inputs are cast up on the way in."""
    def to_float32(module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for name, module in peft_model.named_modules():
        if name.rsplit(".", 1)[-1] in names and hasattr(module, "modules_to_save"):
            module.modules_to_save.float()
            module.register_forward_pre_hook(to_float32)


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / RewardModel / PEFT wrappers (PEFT layers stay injected in it)."""
    model = getattr(model, "module", model)  # DDP
    if isinstance(model, RewardModel):
        model = model.model
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


class RewardModel(nn.Module):
    """``forward(input_ids, attention_mask) -> rewards [N]``; wraps a HF (or PEFT) seq-cls model with one
    output, or one per attribute combined by ``attribute_weights``.

    This is the module DDP wraps, so gradient sync covers the custom read-out path.
    """

    def __init__(self, model: nn.Module, *, last_layer_readout_only: bool = True, attribute_weights=None):
        super().__init__()
        self.model = model
        # A per-attribute model's one reward: the weighted sum of its outputs (ScoringSpec.attribute_weights).
        self.attribute_weights = None if attribute_weights is None else torch.tensor(attribute_weights, dtype=torch.float32)
        arch = describe(self.hf_model)
        self.readout, self.position_offset = arch.readout, arch.position_offset
        # Segment attention where the model runs SDPA/eager (identical to SDPA without a plan).
        self.segments_ok = attention.enable(self.hf_model)
        # Packed forwards with a segment plan compute the last layer at read-out positions only.
        self.last_layer_readout_only = last_layer_readout_only and self.segments_ok and last_layer.enable(self.hf_model)
        self.last_layer_readout_used = False  # whether a forward took that path (the run summary reports it)

    @property
    def hf_model(self) -> PreTrainedModel:
        return _unwrap(self.model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, *, readout_row: torch.Tensor | None = None,
                readout_col: torch.Tensor | None = None, segments: list | None = None,
                per_attribute: bool = False) -> torch.Tensor:
        """Padded rows (2D mask) -> one reward per row; packed rows from
        :func:`rmray.core.packing.pack_groups` (its 4D mask, or its segment ``plan`` as ``segments``)
        -> one reward per read-out position. A per-attribute model returns its one reward ``[N]``, or
        with ``per_attribute`` every output ``[N, A]``."""
        if segments is not None:
            if not self.segments_ok:
                raise ValueError(f"segment attention is not available for {type(self.hf_model).__name__} "
                                 f"(attn_implementation={self.hf_model.config._attn_implementation!r}); "
                                 f"use packed_attention=dense")
            plan = attention.Segments(segments, readout=(readout_row, readout_col) if self.last_layer_readout_only else None)
            with attention.plan_active():  # no [L, L] mask: segment attention reads the plan
                rewards = self._forward_packed(input_ids, None, position_ids, (readout_row, readout_col),
                                               {attention.KWARG: plan})
            if plan.calls == 0:  # the rows were attended as one sequence each: wrong, so never returned
                raise RuntimeError(f"{type(self.hf_model).__name__} did not pass the segment plan to its attention "
                                   "(a transformers version whose model drops attention keyword arguments); "
                                   "use packed_attention=dense")
        elif attention_mask.dim() == 4:
            rewards = self._forward_packed(input_ids, attention_mask, position_ids, (readout_row, readout_col))
        else:
            rewards = self._forward_padded(input_ids, attention_mask)
        return self._reward(rewards, per_attribute).clone()  # not a view: FSDP2 hooks it for the backward all-gather

    def _reward(self, logits: torch.Tensor, per_attribute: bool) -> torch.Tensor:
        """Head outputs ``[N, A]`` -> the reward ``[N]`` (A = 1: the output itself), or all of them."""
        if self.attribute_weights is None:
            return logits.squeeze(-1)
        return logits if per_attribute else self.combine(logits)

    def combine(self, outputs: torch.Tensor) -> torch.Tensor:
        """A per-attribute model's outputs ``[N, A]`` -> its one reward ``[N]``: the one rule every
        consumer (training, scoring, serving) applies."""
        return outputs @ self.attribute_weights.to(outputs.device, outputs.dtype)

    def _forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.hf_model
        if self.readout == "pooler":
            # Encoders pool at position 0 ([CLS]) with absolute positions: our collator right-pads;
            # a left-padded caller's rows are moved to the front first, so the side cannot matter.
            if not bool(attention_mask[:, 0].all()):
                input_ids, attention_mask = _left_align(input_ids, attention_mask)
            return base(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        backbone = getattr(base, base.base_model_prefix)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = _last_real_index(attention_mask)
        plan = attention.Segments(None, readout=(rows, last)) if self.last_layer_readout_only else None
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
            **({attention.KWARG: plan} if plan else {}),
        ).last_hidden_state
        self.last_layer_readout_used |= bool(plan and plan.readout_calls)
        pooled = hidden[0] if plan and plan.readout_calls else hidden[rows, last]
        return base.score(pooled).float()

    def _forward_packed(self, input_ids, mask4d, position_ids, readout: tuple, kwargs=None) -> torch.Tensor:
        """``readout``: (rows, columns) of the positions whose hidden states the head reads."""
        base = self.hf_model
        backbone = getattr(base, base.base_model_prefix)
        # Extra keyword arguments reach every attention call (and are kept for checkpoint recomputation).
        kwargs = dict(kwargs or {}) | ({"use_cache": False} if self.readout == "last_token" else {})
        if self.position_offset:
            position_ids = position_ids + self.position_offset
        hidden = backbone(input_ids=input_ids, attention_mask=mask4d, position_ids=position_ids, **kwargs).last_hidden_state
        plan = kwargs.get(attention.KWARG)
        # The read-out last layer returns the picked rows already, as one row [1, N, H].
        used = plan is not None and plan.readout_calls > 0
        self.last_layer_readout_used |= used
        picked = hidden[0] if used else hidden[readout]  # [N, H]
        if self.readout == "last_token":
            return base.score(picked).float()
        # Encoder heads read position 0 of a sequence: hand them each picked [CLS] state as a length-1 row.
        x = picked.unsqueeze(1)
        pooler = getattr(backbone, "pooler", None)
        if pooler is not None:  # BERT-style: pooler(dense + tanh) -> dropout -> classifier
            return base.classifier(base.dropout(pooler(x)) if hasattr(base, "dropout") else pooler(x)).float()
        return base.classifier(x).float()  # RoBERTa-style heads take features[:, 0]


def _last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for left- or right-padded rows."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front (turn left padding into right padding)."""
    order = torch.argsort(1 - attention_mask.long(), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)
