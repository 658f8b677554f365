"""Score (prompt, response) texts with a saved reward model, under the model's own scoring spec.

Used by training's final report, evaluation, offline scoring and serving alike, so all of them
build the same tokens and read the same position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .collate import pad_sequences
from .formats import Text
from .model import RewardModel, load_hf_model, load_tokenizer
from .spec import ScoringSpec
from .tokenize import encode


@dataclass
class Scorer:
    model: RewardModel
    tokenizer: object
    spec: ScoringSpec

    @classmethod
    def load(cls, model_dir: str, *, trust_remote_code: bool = False) -> "Scorer":
        """Load a folder written by rmray (plain transformers model + ``rmray_scoring.json``)."""
        spec = ScoringSpec.load(model_dir)
        tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        hf = load_hf_model(model_dir, pad_token_id=tokenizer.pad_token_id, trust_remote_code=trust_remote_code)
        return cls(RewardModel(hf).eval(), tokenizer, spec)

    def encode(self, prompt: Text, response: Text) -> list[int]:
        return encode(self.tokenizer, self.spec, prompt, response).ids

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
        """Rewards for token id lists, batched by length (sorted) and returned in input order."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        rewards = [0.0] * len(sequences)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = pad_sequences([sequences[i] for i in idx], self.tokenizer.pad_token_id)
            out = self.model(ids.to(device), mask.to(device)).tolist()
            for i, r in zip(idx, out):
                rewards[i] = r
        return rewards

    def score(self, prompts: Sequence[Text], responses: Sequence[Text], batch_size: int = 32) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)], batch_size)
