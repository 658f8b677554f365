"""The scoring contract: which items can be scored, how each becomes tokens, how models' rewards combine.

Every consumer calls these functions -- the Serve routes (``/score``, ``/score_group``, ``/get_reward``,
``/classify``), ``rmray score``, ``rmray eval`` and ``rmray score-text`` -- so one item gets one reward
wherever it is scored. Two copies of such a rule drift apart silently; that is how a reward changes
between the server and the batch job. The token rules themselves (EOS, truncation, chat rendering) are
:mod:`rmray.core.tokenize`, under the model's saved :class:`~rmray.core.spec.ScoringSpec`.

Worked example of an ensemble: two models score one item 1.0 and 9.0, their saved eval-set statistics
are (mean 0.5, std 2.0) and (mean 8.0, std 0.5). ``normalized`` standardizes each reward first:
(1.0 - 0.5) / 2.0 = 0.25 and (9.0 - 8.0) / 0.5 = 2.0, so the reward is their mean 1.125 and
``reward_std`` (population std) 0.875. ``raw`` averages 1.0 and 9.0: 5.0, std 4.0 -- the second model's
scale decides.
"""

from __future__ import annotations

from typing import Sequence

from .evaluation import ensemble
from .formats import BadRow, Text
from .spec import ScoringSpec
from .tokenize import Encoded, encode, encode_text

ENSEMBLE_RULES = ("normalized", "raw")


def check_item(prompt, response, prompt_field: str = "prompt", response_field: str = "response") -> None:
    """Raise :class:`BadRow` naming the field when an item cannot be scored.

    A text is a string or a list of ``{role, content}`` messages; a missing prompt is ``""``. An empty
    response is scored (a policy that emitted EOS first made a legitimate, if poor, sample); only an
    item with nothing at all to score is refused."""
    if response is None:
        raise BadRow("missing_field", response_field, "missing")
    for value, field in ((prompt, prompt_field), (response, response_field)):
        if value is None or isinstance(value, str):
            continue
        if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                           for m in value)):
            raise BadRow("non_string_field", field,
                         f"expected text or a list of {{role, content}} messages, got {type(value).__name__}")
    if _empty(prompt) and _empty(response):
        raise BadRow("empty_field", response_field, "prompt and response are both empty: there is nothing to score")


def _empty(text) -> bool:
    return not text or (isinstance(text, list) and all(not m.get("content") for m in text))


def encode_item(tokenizer, spec: ScoringSpec, prompt, response) -> Encoded:
    """One (prompt, response) item's tokens: the rule of :func:`rmray.core.tokenize.encode` (a message
    prompt with a text response is a conversation ending in the assistant's turn)."""
    check_item(prompt, response)
    return encode(tokenizer, spec, prompt or "", response)


def encode_query(tokenizer, spec: ScoringSpec, query: str, prompt: str | None = None) -> Encoded:
    """A whole text as OpenRLHF sends it (``query`` = prompt + response, already rendered).

    The text is tokenized whole, exactly as ``/classify`` tokenizes it, so a chat-rendered query gets no
    EOS appended with or without its prompt. The prompt, where it is a proper prefix of the query, only
    says which characters lose their beginning first when the text is too long (as in training)."""
    prefix = bool(prompt) and query.startswith(prompt) and len(query) > len(prompt)
    return encode_text(tokenizer, spec, query, prompt_chars=len(prompt) if prefix else None)


def process_item(tokenizer, spec: ScoringSpec, prompt: Text, response: Text):
    """A process model's tokens for one (prompt, response) item: the response split into steps at the
    model's separator (a message response: its contents, joined), then :func:`rmray.core.steps.tokenize_steps`.
    The one reward of the item is its steps' rewards aggregated by ``prm_aggregate``."""
    from .steps import StepRow, split_response, tokenize_steps

    text = response if isinstance(response, str) else spec.step_separator.join(m.get("content") or "" for m in response)
    return tokenize_steps(tokenizer, StepRow(prompt, split_response(text, spec.step_separator), None),
                          spec.step_separator, spec.max_length)


def response_length(tokenizer, response) -> int:
    """A response's length in the model's tokens: its text (a message list: its contents) tokenized alone,
    without special tokens. The length every length-bias figure (``rmray eval``) counts in."""
    text = response if isinstance(response, str) else "".join(m.get("content") or "" for m in response)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def ensemble_rule(specs: Sequence[ScoringSpec], requested: str = "normalized") -> str:
    """The rule an ensemble combines by: ``normalized`` when asked and every model carries its eval-set
    mean/std, else ``raw``. Every consumer states the rule it used."""
    if requested not in ENSEMBLE_RULES:
        raise ValueError(f"ensemble={requested!r} is not one of {list(ENSEMBLE_RULES)}")
    if requested == "normalized" and all(s.reward_std for s in specs):
        return "normalized"
    return "raw"


def combine(names: Sequence[str], specs: Sequence[ScoringSpec], per_model: Sequence[Sequence[float]],
            rule: str) -> dict:
    """One reward per item from one or several models (see the module's worked example).

    Models on different scales (one around 0, one around 8) make the raw mean a weighted vote and the raw
    std their scale gap; standardized, ``reward_std`` measures disagreement. Returns ``{"rewards"}`` for
    one model; for an ensemble also ``reward_std``, ``combined`` (the rule) and each model's raw
    ``per_model`` rewards."""
    if len(per_model) == 1:
        return {"rewards": list(per_model[0])}
    values = [s.normalize(r) for s, r in zip(specs, per_model)] if rule == "normalized" else per_model
    mean, std = ensemble(values)
    return {"rewards": mean, "reward_std": std, "combined": rule,
            "per_model": {n: list(r) for n, r in zip(names, per_model)}}


def split_attributes(names: Sequence[str], specs: Sequence[ScoringSpec],
                     per_model: Sequence[Sequence]) -> tuple[list[list[float]], dict[str, list[float]]]:
    """Each model's rewards, and the per-attribute scores of the models that have attribute heads
    (their values are ``[reward, output_1, ..., output_A]``), named by attribute, or ``model/attribute``
    in an ensemble."""
    rewards, attributes = [], {}
    for name, spec, values in zip(names, specs, per_model):
        labels = spec.attributes or []
        if not labels:
            rewards.append(list(values))
            continue
        rewards.append([v[0] for v in values])
        for a, label in enumerate(labels):
            attributes[label if len(specs) == 1 else f"{name}/{label}"] = [v[1 + a] for v in values]
    return rewards, attributes


def preference_matrix(specs: Sequence[ScoringSpec], per_model: Sequence[Sequence[float]]) -> list[list[float]]:
    """P(i preferred to j) for every pair of a group, each model's own calibration averaged."""
    n = len(per_model[0])
    return [[sum(s.preference_probability(r[i] - r[j]) for s, r in zip(specs, per_model)) / len(specs)
             for j in range(n)] for i in range(n)]
