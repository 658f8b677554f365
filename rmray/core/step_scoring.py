"""Score solutions step by step with a saved process reward model, under the model's own scoring spec.

The counterpart of :mod:`rmray.core.scoring` for ``kind: process`` models: every consumer (serving,
``rmray score``, ``rmray eval``) builds a solution's tokens with :func:`rmray.core.steps.tokenize_steps`
and reads each step's P(correct) at the same position, so one solution gets one list of step rewards
everywhere. Batches are length-sorted, right-padded and cut by a token budget, as reward scoring does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .collate import pad_sequences
from .formats import Text
from .scoring import resolve_precision
from .spec import DEFAULT_MAX_BATCH_TOKENS, ScoringSpec
from .steps import StepRow, StepTokens, aggregate, step_probabilities, tokenize_steps
from .tokenizer import load_tokenizer


@dataclass
class StepScorer:
    model: torch.nn.Module  # an AutoModelForTokenClassification with two labels
    tokenizer: object
    spec: ScoringSpec
    precision: str = "float32"

    @classmethod
    def load(cls, model_dir: str, *, trust_remote_code: bool = False, device: str | None = None,
             precision: str = "auto") -> "StepScorer":
        """Load a process reward model folder (plain transformers token classifier + ``rmray_scoring.json``)."""
        from transformers import AutoModelForTokenClassification

        spec = ScoringSpec.load(model_dir)
        if spec.kind != "process":
            raise ValueError(f"{model_dir} is a {spec.kind} model, not a process reward model: score it with Scorer")
        tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForTokenClassification.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                                                use_safetensors=True).eval()
        if device:
            model.to(device)
        return cls(model, tokenizer, spec, resolve_precision(precision, device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: Text, steps: Sequence[str]) -> StepTokens:
        """A solution's tokens and step positions; ``BadRow`` ``too_long`` when its steps exceed ``max_length``."""
        return tokenize_steps(self.tokenizer, StepRow(prompt, list(steps), None), self.spec.step_separator,
                              self.spec.max_length)

    def reward(self, step_rewards: Sequence[float]) -> float:
        """The solution's one reward, by the model's ``prm_aggregate``."""
        return aggregate(step_rewards, self.spec.prm_aggregate)

    @torch.no_grad()
    def score_tokens(self, items: Sequence[StepTokens], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> list[list[float]]:
        """Each item's step rewards, in input order."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
        out: list[list[float]] = [[] for _ in items]
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * len(items[order[end]].input_ids) <= max_batch_tokens:
                end += 1
            idx = order[start:end]
            ids, mask = pad_sequences([items[i].input_ids for i in idx], self.tokenizer.pad_token_id)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, i in enumerate(idx):
                out[i] = step_probabilities(logits[row], items[i].positions)
            start = end
        return out

    def score_steps(self, prompts: Sequence[Text], solutions: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(solutions):
            raise ValueError(f"got {len(prompts)} prompts but {len(solutions)} solutions")
        return self.score_tokens([self.encode(p, s) for p, s in zip(prompts, solutions)])
