"""Writing a reward model folder atomically: config + safetensors + tokenizer + scoring spec.

Everything is written into a temporary sibling folder and renamed into place, so a crash mid-write
never leaves a half model where a consumer would load it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from torch import nn

from .model import RewardModel
from .spec import ScoringSpec


def save_reward_model(model: nn.Module, tokenizer, spec: ScoringSpec, out_dir: str, state_dict: dict | None = None) -> str:
    """Save a plain transformers model to ``out_dir`` (LoRA merged into the weights when present).

    ``model`` may be a :class:`~rmray.core.model.RewardModel`, a DDP wrapper, a PEFT model or a plain
    transformers model. Merging happens on the live model (call this once training is over).
    ``state_dict`` replaces the live weights, e.g. the full tensors gathered from FSDP shards.
    """
    inner = _inner(model)
    if hasattr(inner, "merge_and_unload"):
        inner = inner.merge_and_unload()
    return _atomic_write(out_dir, lambda tmp: _write_model(inner, tokenizer, spec, tmp, state_dict))


def save_unmerged(model: nn.Module, tokenizer, spec: ScoringSpec, out_dir: str, state_dict: dict | None = None) -> str:
    """Save what training goes on from: a LoRA model's adapter (and head), else the full weights --
    a checkpoint, where merging would end the adapters' training."""
    inner = _inner(model)
    if hasattr(inner, "merge_and_unload"):
        return save_adapter(inner, tokenizer, spec, out_dir)
    return _atomic_write(out_dir, lambda tmp: _write_model(inner, tokenizer, spec, tmp, state_dict))


def _inner(model: nn.Module) -> nn.Module:
    from .step_model import StepModel

    inner = getattr(model, "module", model)  # DDP
    return inner.model if isinstance(inner, (RewardModel, StepModel)) else inner


def save_adapter(peft_model: nn.Module, tokenizer, spec: ScoringSpec, out_dir: str) -> str:
    """Save the LoRA adapter with the fully trained reward head (``modules_to_save``)."""
    return _atomic_write(out_dir, lambda tmp: _write_model(peft_model, tokenizer, spec, tmp))


def _write_model(model, tokenizer, spec: ScoringSpec, directory: str, state_dict: dict | None = None) -> None:
    model.save_pretrained(directory, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(directory)
    spec.save(directory)


def _readable_like_a_plain_folder(directory: str) -> None:
    """``mkdtemp`` makes the folder 700, so a model other users (a serving account, a shared cluster)
    should load would be private to its writer; give it what ``mkdir``/``open`` would under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _atomic_write(out_dir: str, write) -> str:
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        write(tmp)
        _readable_like_a_plain_folder(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
