"""The model one rank trains, built from the config: one place for what a run does to a loaded model."""

from __future__ import annotations

from rmray.config import TrainConfig
from rmray.core.model import RewardModel, apply_lora, load_hf_model
from rmray.core.step_model import StepModel, load_step_model


def build_model(cfg: TrainConfig, tokenizer, strategy, use_bf16: bool, device):
    """``(model, raw)``: the reward model as configured (dtype, gradient checkpointing, LoRA), wrapped by
    the strategy (DDP or FSDP) for training, and the unwrapped ``RewardModel`` for saving and reading."""
    process = cfg.data.data_format == "stepwise"  # a process reward model: a two-label token classifier
    options = dict(pad_token_id=tokenizer.pad_token_id, trust_remote_code=cfg.model.trust_remote_code,
                   disable_dropout=cfg.optimization.disable_dropout, dtype=cfg.model.dtype)
    hf = (load_step_model(cfg.model.model_name_or_path, **options) if process else
          load_hf_model(cfg.model.model_name_or_path, attributes=cfg.optimization.attributes, **options))
    if len(tokenizer) > hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(len(tokenizer))
    if cfg.speed.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.use_peft:
        if cfg.speed.gradient_checkpointing:
            hf.enable_input_require_grads()
        from peft import LoraConfig

        targets = cfg.lora.lora_target_modules if cfg.lora.lora_target_modules != ["all-linear"] else "all-linear"
        hf = apply_lora(hf, LoraConfig(r=cfg.lora.lora_r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=cfg.lora.lora_dropout,
                                       target_modules=targets, modules_to_save=cfg.lora.lora_modules_to_save),
                        task="TOKEN_CLS" if process else "SEQ_CLS")
    # from_pretrained returns a model in eval mode: left so, gradient checkpointing (which acts only in
    # training mode) and dropout would be silently off until the first evaluation switched modes.
    raw = StepModel(hf).train() if process else RewardModel(
        hf, last_layer_readout_only=cfg.speed.last_layer_readout_only, attribute_weights=cfg.optimization.reward_weights).train()
    # DDP or FSDP around the whole reward path, so the custom read-out syncs gradients too.
    return strategy.wrap(raw, use_bf16, device), raw
