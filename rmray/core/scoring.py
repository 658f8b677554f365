"""Score (prompt, response) texts with a saved reward model, under the model's own scoring spec.

Used by training's final report, evaluation, offline scoring and serving alike, so all of them
build the same tokens and read the same position.

Batches are cut by a token budget over length-sorted sequences, so one long text never pads a batch
of short ones. Groups (one prompt, N responses -- GRPO's shape) go through the shared-prefix packing
of :mod:`rmray.core.packing` on causal models: the prompt is computed once, which is exact for causal
attention. Encoders see the whole sequence bidirectionally, so for them a group is N plain sequences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from .collate import pad_sequences
from .contract import encode_item
from .formats import Text
from .model import RewardModel, load_hf_model
from .packing import PackRule, model_inputs, on_device, pack_for_model, split_shared_prefix
from .spec import DEFAULT_MAX_BATCH_TOKENS, ScoringSpec
from .tokenize import Encoded
from .tokenizer import load_tokenizer

PAD_SLACK = 1.25  # padded tokens allowed per real token in one forward


PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class Scorer:
    model: RewardModel
    tokenizer: object
    spec: ScoringSpec
    precision: str = "float32"
    """``bfloat16``: forwards under bf16 autocast (weights stay float32), as training ran on a GPU."""

    @classmethod
    def load(cls, model_dir: str, *, trust_remote_code: bool = False, device: str | None = None,
             precision: str = "auto") -> "Scorer":
        """Load a folder written by rmray (plain transformers model + ``rmray_scoring.json``).

        ``precision="auto"`` scores in bf16 autocast on a GPU that has bf16 (float32 matmuls left an H200
        idle: serving reached 0.47 of its ceiling there) and in float32 on CPUs, where bf16 is emulated
        on most of them; ``float32`` or ``bfloat16`` force one."""
        precision = resolve_precision(precision, device)
        spec = ScoringSpec.load(model_dir)
        tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        hf = load_hf_model(model_dir, pad_token_id=tokenizer.pad_token_id, attributes=spec.attributes,
                           trust_remote_code=trust_remote_code)
        model = RewardModel(hf, attribute_weights=spec.attribute_weights).eval()
        if device:
            model.to(device)
        return cls(model, tokenizer, spec, precision)

    def _forward(self, per_attribute: bool = False, **inputs) -> list:
        """Rewards, or with ``per_attribute`` (a per-attribute model) ``[reward, output_1, ..., output_A]``
        per sequence: the reward is computed from the outputs as :class:`RewardModel` computes it."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            if not per_attribute:
                return self.model(**inputs).float().tolist()
            outputs = self.model(**inputs, per_attribute=True).float()
        reward = self.model.combine(outputs)
        return torch.cat([reward.unsqueeze(-1), outputs], dim=-1).tolist()

    @property
    def attributes(self) -> list[str] | None:
        return self.spec.attributes

    @property
    def causal(self) -> bool:
        return self.spec.readout == "last_token"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: Text, response: Text) -> list[int]:
        """An item's ids under the scoring contract (:func:`rmray.core.contract.encode_item`)."""
        return encode_item(self.tokenizer, self.spec, prompt, response).ids

    def encode_full(self, prompt: Text, response: Text) -> Encoded:
        """Ids plus whether truncation cut the text (serving flags it back to the caller)."""
        return encode_item(self.tokenizer, self.spec, prompt, response)

    def normalize(self, rewards: Sequence[float]) -> list[float] | None:
        return self.spec.normalize(rewards)

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 64,
                  max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, pad_slack: float | None = PAD_SLACK,
                  per_attribute: bool = False) -> list:
        """Rewards for token id lists in input order; batches of length-sorted rows whose padded size
        stays within ``max_batch_tokens`` (and at most ``batch_size`` rows). ``per_attribute``: see
        :meth:`_forward`."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        rewards = [0.0] * len(sequences)
        start = 0
        while start < len(order):
            end, real = start + 1, len(sequences[order[start]])  # sorted ascending: the last row sets the width
            while end < len(order) and end - start < batch_size:
                width = len(sequences[order[end]])
                padded = (end - start + 1) * width
                # Cut at the token budget, and where padding would exceed a quarter of the batch: a few
                # small forwards cost less than one padded to its longest row (online batches mix lengths).
                if padded > max_batch_tokens or (pad_slack and padded > pad_slack * (real + width) + 64):
                    break
                real += width
                end += 1
            idx = order[start:end]
            ids, mask = pad_sequences([sequences[i] for i in idx], self.tokenizer.pad_token_id)
            out = self._forward(per_attribute, input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            for i, r in zip(idx, out):
                rewards[i] = r
            start = end
        return rewards

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], batch_size: int = 64) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)], batch_size)

    @torch.no_grad()
    def score_id_groups(self, groups: Sequence[Sequence[Sequence[int]]],
                        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, per_attribute: bool = False) -> list[list]:
        """Rewards for groups of full token sequences that share a prompt, one list per group.

        The shared prefix is taken on token ids (longest common prefix of every sequence in the group),
        so the packed forward computes exactly the tokens each plain forward would.
        """
        if not self.causal:
            flat = [seq for group in groups for seq in group]
            rewards = iter(self.score_ids(flat, max_batch_tokens=max_batch_tokens, per_attribute=per_attribute))
            return [[next(rewards) for _ in group] for group in groups]
        packed_groups = [split_shared_prefix(group) for group in groups]
        results: list[list[float]] = [[] for _ in groups]
        # A cached-prefix variant (prompt K/V once, responses as a padded batch) measured 2.7x slower than
        # this on CPU (benchmarks/serve_bench.py groups): one packed row per group it is.
        for chunk in _chunks_by_tokens(packed_groups, max_batch_tokens):
            sub = [packed_groups[g] for g in chunk]
            segments = self.model.segments_ok
            rule = PackRule(pad_token_id=self.tokenizer.pad_token_id, causal=True, segments=segments,
                            attention_ratio=6 * self.model.hf_model.config.hidden_size)
            batch = pack_for_model(sub, rule)
            out = self._forward(per_attribute, **on_device(model_inputs(batch, segments), self.device))
            pos = 0
            for g, (_, responses) in zip(chunk, sub):
                results[g] = out[pos:pos + len(responses)]
                pos += len(responses)
        return results

    def score_group(self, prompt: Text, responses: Sequence[Text]) -> list[float]:
        return self.score_id_groups([[self.encode(prompt, r) for r in responses]])[0]


def resolve_precision(precision: str, device: str | None) -> str:
    """``auto``: bf16 autocast on a GPU that has bf16, float32 elsewhere; ``float32``/``bfloat16`` as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    cuda = str(device or "cpu").startswith("cuda")
    return "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"


def model_name(model_dir: str) -> str:
    """Short name of a model folder for responses and columns: the run's name for ``<run>/final``."""
    path = os.path.normpath(os.path.abspath(model_dir))
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base in ("final", "adapter") else base


def _chunks_by_tokens(groups: Sequence[tuple[list[int], list[list[int]]]], budget: int) -> list[list[int]]:
    """Group indices in consecutive chunks of at most ``budget`` packed tokens (a lone big group is
    its own chunk)."""
    chunks: list[list[int]] = []
    used = 0
    for g, (prefix, responses) in enumerate(groups):
        size = len(prefix) + sum(len(r) for r in responses)
        if chunks and used + size <= budget:
            chunks[-1].append(g)
            used += size
        else:
            chunks.append([g])
            used = size
    return chunks
