"""The scoring spec: the rules that turn text into a reward, saved beside the model.

A reward is only reproducible if every consumer builds the same token sequence: same chat template,
same EOS handling, same truncation and ``max_length``, same pad token, same read-out. Training writes
this spec into the model folder (``rmray_scoring.json``); evaluation, offline scoring and serving read
it from there instead of taking their own settings, so one text gets one reward everywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Literal

from .evaluation import sigmoid
from .files import write_json_atomic

SPEC_FILE = "rmray_scoring.json"
Truncation = Literal["truncate", "drop", "error"]
TRUNCATION_POLICIES = ("truncate", "drop", "error")

# Used only when asked for (chat_template: plain) and the tokenizer has none: one "role: content"
# line per message, so conversational data works with encoders such as MiniLM. An assistant turn ends
# with the EOS token (where the tokenizer has one): a rendered conversation then gets the same tokens
# as its messages wherever it arrives as one text (/classify, /get_reward), because its end is told
# apart from plain text, which gets the EOS appended.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
)


# Padded tokens per forward when scoring: rows are length-sorted and cut at this budget (serve, score, eval).
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass
class ScoringSpec:
    max_length: int = 1024
    """Longest token sequence scored; longer ones follow ``truncation``."""
    truncation: Truncation = "truncate"
    """``truncate``: cut the prompt from the left (latest turns kept), then the response's end;
    ``drop``: skip the pair (counted in the data report); ``error``: stop with the row named."""
    add_eos: bool = True
    """Append ``eos_token`` to non-conversational texts that lack it (TRL does the same)."""
    eos_token: str | None = None
    pad_token: str | None = None
    readout: Literal["last_token", "pooler"] = "last_token"
    """``last_token``: reward at the last position whose attention mask is 1 (causal LMs);
    ``pooler``: the encoder's own classification pooling over right-padded rows (BERT-style)."""
    uses_chat_template: bool = False
    """Whether conversational rows were rendered with the tokenizer's chat template (saved with it)."""
    reward_mean: float | None = None
    """Mean and std of eval-set rewards at the end of training, for optional normalization."""
    reward_std: float | None = None
    temperature: float | None = None
    """Preference temperature: P(a preferred to b) = sigmoid((r_a - r_b) / temperature), fitted on the eval
    split at the end of training (``rmray.core.calibration``). Raw rewards do not use it."""

    kind: Literal["reward", "process"] = "reward"
    """``reward``: one reward per response (sequence classification). ``process``: a process reward model
    (token classification, two classes), one reward per step (:mod:`rmray.core.steps`)."""
    step_separator: str = "\n"
    """A process model's step separator: tokenized after each step; a step's reward is read at its last token."""
    prm_aggregate: str = "min"
    """A process model's one reward per solution from its steps' rewards: ``min``, ``last``, ``mean``, ``prod``."""

    attributes: list[str] | None = None
    """Names of the model's outputs when it has one per attribute (``config.json``'s ``id2label`` too)."""
    attribute_weights: list[float] | None = None
    """The one reward of a per-attribute model: ``reward = sum_a attribute_weights[a] * output[a]``. A plain
    transformers user applies them to the logits; every rmray consumer returns that reward."""

    def __post_init__(self):
        if self.attributes and len(self.attribute_weights or []) != len(self.attributes):
            raise ValueError(f"scoring spec: {len(self.attributes)} attributes need as many attribute_weights, "
                             f"got {self.attribute_weights}")
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {self.truncation!r}")
        if self.prm_aggregate not in ("min", "last", "mean", "prod"):
            raise ValueError(f"prm_aggregate must be one of min, last, mean, prod; got {self.prm_aggregate!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")

    def weights_by_attribute(self) -> dict[str, float]:
        """Attribute name -> its weight in the one reward; empty for a one-reward model."""
        return dict(zip(self.attributes or [], self.attribute_weights or []))

    def normalize(self, rewards) -> list[float] | None:
        """Rewards standardized by the eval-set mean/std saved at training time; None without them."""
        if self.reward_mean is None or not self.reward_std:
            return None
        return [(r - self.reward_mean) / self.reward_std for r in rewards]

    def preference_probability(self, delta: float) -> float:
        """P(a preferred to b) for a reward difference r_a - r_b, calibrated when a temperature was fitted."""
        return sigmoid(delta / (self.temperature or 1.0))

    def save(self, directory: str) -> None:
        write_json_atomic(os.path.join(directory, SPEC_FILE), asdict(self))

    @classmethod
    def load(cls, directory: str) -> "ScoringSpec":
        path = os.path.join(directory, SPEC_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: {directory} is not an rmray reward model. Models trained by rmray carry "
                "their scoring rules in this file; re-export the model with rmray or score it with plain transformers."
            )
        with open(path) as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def check_model_dir(path: str) -> None:
    """A folder rmray saved (``config.json`` and the scoring spec), checked in a second before any
    model loads or Ray starts; the error names the folder and the fix."""
    from rmray.errors import UsageError

    if not os.path.isdir(path):
        raise UsageError(f"model folder {path} not found (fix: give a training run's final/ folder)")
    for name in ("config.json", SPEC_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise UsageError(f"{path} is not an rmray model: {name} is missing (fix: give a training run's "
                             "final/ folder, or export the model with rmray)")
