"""The forward (and backward) of one micro-batch: what training, evaluation and the benchmarks share.

A chunk's rewards are read as ``[G, K]`` groups (``Chunk.group_rewards``) and given to the run's
``[G, K]`` loss (``rmray.core.loss``): a pair is the K = 2 case of the group losses, not a second code
path. The metrics are over the groups' ordered pairs (``ordered_pairs``), the pair metrics as before.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from rmray.core.loss import (
    LOSS_MEAN_OVER,
    attribute_mse,
    group_loss,
    length_correlation,
    metrics_from_sums,
    ordered_pairs,
    preference_sums,
)
from rmray.core.packing import on_device

from .batches import batch_groups, chunks_of, padded_equivalent_tokens


@dataclass
class Compute:
    """Everything a forward needs besides the data, built once per worker."""

    model: torch.nn.Module  # the strategy-wrapped reward model (DDP or FSDP)
    raw: torch.nn.Module  # the RewardModel inside it
    strategy: object  # rmray.train.parallel: DDPStrategy or FSDPStrategy
    device: torch.device
    use_bf16: bool
    loss: Callable  # a [G, K] loss with the centering coefficient bound
    per_pair: bool = True  # the loss is a mean over pairs (else over groups): how chunks are weighted
    attribute_loss_weight: float = 0.0  # > 0 on a per-attribute model: its regression joins the loss
    rating_margin: float = 0.0  # rated rows: pairs' margins are this times their rating difference
    length_penalty: float = 0.0  # > 0 with debias_length: weight of |corr(reward, length)| * std(reward)

    @classmethod
    def for_run(cls, model, raw, strategy, device, opt) -> "Compute":
        """From the ``optimization`` section (:class:`rmray.config.OptimizationConfig`), the one it reads."""
        loss = functools.partial(group_loss(opt.loss), center_rewards_coefficient=opt.center_rewards_coefficient)
        return cls(model, raw, strategy, device, wants_bf16(opt, device), loss, LOSS_MEAN_OVER[opt.loss] == "pairs",
                   opt.attribute_loss_weight if opt.attributes else 0.0, opt.rating_margin,
                   opt.debias_length_weight if opt.debias_length else 0.0)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def score_chunk(self, chunk, model=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Better and worse rewards of the chunk's ordered pairs (a pair's chosen and rejected) and the
        chunk's loss (float32, on the device)."""
        rewards, mask, outputs = self._forward(chunk, model)
        per_attribute = outputs is not None
        ratings = chunk.ratings.to(self.device)
        margins = self._margins(chunk, ratings)
        loss = self.loss(rewards=rewards, ratings=ratings, mask=mask, margins=margins)
        if per_attribute and self.attribute_loss_weight and chunk.targets is not None:
            loss = loss + self.attribute_loss_weight * attribute_mse(chunk.group_rewards(outputs)[0],
                                                                      chunk.targets.to(self.device))
        if self.length_penalty and chunk.lengths is not None and torch.is_grad_enabled():  # training only: eval
            loss = loss + self.length_penalty * length_correlation(rewards, chunk.lengths, mask).abs()  # loss stays BT
        return (*ordered_pairs(rewards, ratings, mask), loss)

    def group_rewards(self, chunk, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's rewards ``[G, K]`` and the mask of responses present (benchmarks read them as they are)."""
        rewards, mask, _ = self._forward(chunk, model)
        return rewards, mask

    def _forward(self, chunk, model=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rewards ``[G, K]``, mask, and a per-attribute model's outputs ``[N, A]`` (None for one reward)."""
        per_attribute = self.raw.attribute_weights is not None
        with self.autocast():
            flat = (model or self.model)(**on_device(chunk.inputs, self.device), per_attribute=per_attribute).float()
        outputs = flat if per_attribute else None
        if per_attribute:  # the one reward is the weighted sum, as every consumer computes it
            flat = self.raw.combine(flat)
        rewards, mask = chunk.group_rewards(flat)
        return rewards, mask, outputs

    def forward_backward(self, chunks: list, accumulation: int = 1, final_sync: bool = True) -> tuple[torch.Tensor, int]:
        """Loss and gradients of one micro-batch, chunk by chunk; each chunk's loss is weighted by its
        share of what the loss averages over (pairs or groups), so the summed gradient is the
        micro-batch's mean-loss gradient. Under FSDP the ranks' chunk counts are padded to the same
        number with zero-weight chunks (forwards are collectives). Returns the batch's preference sums
        and its real token count."""
        total = sum(self._units(c) for c in chunks)
        # Summed where the rewards are: a .cpu() per chunk would make the host wait for every GPU step.
        sums, tokens = torch.zeros(8, dtype=torch.float64, device=self.device), 0
        weighted = self.strategy.equalize(chunks)
        for k, (chunk, weight) in enumerate(weighted):
            last = k == len(weighted) - 1
            with self.strategy.no_sync(self.model) if not (last and final_sync) else contextlib.nullcontext():
                chosen, rejected, loss = self.score_chunk(chunk)
                (loss * (weight * self._units(chunk) / total) / accumulation).backward()
            if weight:
                sums += preference_sums(chosen, rejected, loss.detach() * chunk.num_pairs)
                tokens += chunk.real_tokens
        return sums, tokens

    def chunks(self, batch: dict, layout) -> tuple[list, int]:
        """A micro-batch's forward chunks, and what TRL's padded layout would compute for it."""
        rows = batch_groups(batch)
        return chunks_of(rows, layout), padded_equivalent_tokens(rows)

    def eval_sums(self, batch: dict, layout, model) -> tuple[torch.Tensor, list[float]]:
        """An eval batch's preference sums and its pairs' margins (r_chosen - r_rejected, for calibration)."""
        sums, margins = torch.zeros(8, dtype=torch.float64), []
        for chunk in chunks_of(batch_groups(batch), layout):
            chosen, rejected, loss = (t.cpu() for t in self.score_chunk(chunk, model))
            sums += preference_sums(chosen, rejected, loss * chunk.num_pairs)
            margins += (chosen - rejected).tolist()
        return sums, margins

    summarize = staticmethod(metrics_from_sums)

    def _margins(self, chunk, ratings: torch.Tensor) -> torch.Tensor | None:
        """The data's pair margins, plus ``rating_margin * (r_i - r_j)`` on rated rows' pairs."""
        margins = None if chunk.margins is None else chunk.margins.to(self.device)
        if not self.rating_margin or not bool(chunk.grouped.any()):
            return margins
        scaled = self.rating_margin * (ratings.unsqueeze(2) - ratings.unsqueeze(1))
        scaled = scaled * chunk.grouped.to(self.device).view(-1, 1, 1)
        return scaled if margins is None else margins + scaled

    def _units(self, chunk) -> int:
        return chunk.num_pairs if self.per_pair else chunk.num_groups


def wants_bf16(opt, device) -> bool:
    """bf16 autocast: as the ``optimization`` section says, else on where the device supports it (CUDA with bf16)."""
    return bool(opt.bf16) if opt.bf16 is not None else (device.type == "cuda" and torch.cuda.is_bf16_supported())


def all_reduce(sums: torch.Tensor, device) -> torch.Tensor:
    """Sum across ranks (a sync point: every rank must get here the same number of times)."""
    if dist.is_available() and dist.is_initialized():
        reduced = sums.to(device)
        dist.all_reduce(reduced)
        return reduced.cpu()
    return sums.cpu()
