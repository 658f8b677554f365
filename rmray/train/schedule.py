"""Learning-rate schedule: linear warmup, then linear decay, cosine decay, or constant."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR

from rmray.config import OptimizationConfig


def warmup_steps(opt: OptimizationConfig, total_steps: int) -> int:
    return opt.warmup_steps if opt.warmup_steps > 0 else math.ceil(opt.warmup_ratio * total_steps)


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps (same curves as transformers)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(optimizer, opt: OptimizationConfig, total_steps: int) -> LambdaLR:
    """The schedule the ``optimization`` section names, over ``total_steps`` optimizer steps."""
    warmup = warmup_steps(opt, total_steps)
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup=warmup, total=total_steps, kind=opt.lr_scheduler_type))
