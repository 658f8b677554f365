"""Preference-row formats: detect them, validate rows, split implicit prompts.

Four shapes are accepted, the first three named as in TRL's docs:

- ``standard``:  ``{"prompt": str, "chosen": str, "rejected": str}``
- ``implicit``:  ``{"chosen": str, "rejected": str}`` -- whole texts; the prompt is their longest
  common prefix, cut back to a clean boundary (the end of the last ``Assistant:``-style turn marker,
  else a whitespace boundary) so no word is split between prompt and response.
- ``conversational``: message lists ``[{"role", "content"}, ...]`` in ``chosen``/``rejected``, with an
  optional ``prompt`` message list (explicit); without it the shared leading messages are the prompt.
- ``rated``: ``{"prompt", "responses": [...], "ratings": [...]}`` (higher is better) or ``"ranking"``
  (rank per response, 1 = best), responses as text or message lists (UltraFeedback, Nectar): one
  group of K responses (:func:`read_group`), trained with the prompt computed once. ``ratings`` may
  instead map attribute names to one number per response (HelpSteer2 grouped by prompt) for a model
  with per-attribute heads.

Any shape may carry a float ``margin`` column. A row that cannot be used raises :class:`BadRow` with a
machine-readable ``reason`` so the data layer can count and sample skipped rows instead of crashing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Union

Format = Literal["standard", "implicit", "conversational", "rated"]
FORMATS: tuple[str, ...] = ("standard", "implicit", "conversational", "rated")
Messages = list[dict[str, str]]
Text = Union[str, Messages]

# Every reason a row can be skipped for; the data report counts rows by these names.
BAD_ROW_REASONS = (
    "missing_field",
    "non_string_field",
    "empty_field",
    "malformed_messages",
    "identical_chosen_rejected",
    "bad_margin",
    "too_long",
    "bad_json",  # a JSON line that is not an object (data.preferences)
    "too_few_responses",  # rated: fewer than 2 responses
    "bad_rating",  # rated: a rating or rank that is not a finite number, or not one per response
    "all_tied",  # rated: every response rated the same
    "empty_step",  # stepwise: a step with no text (rmray.core.steps)
    "bad_step_labels",  # stepwise: labels not true/false, or not one per step
)

# A turn marker such as "\n\nAssistant:" or "\nGPT:" -- the hh-rlhf and ShareGPT-style dialogue markers.
_TURN_MARKER = re.compile(r"(?:^|\n)[A-Za-z][A-Za-z _-]{0,30}:")


class BadRow(ValueError):
    """A row that cannot become a preference pair; ``reason`` is one of :data:`BAD_ROW_REASONS`."""

    def __init__(self, reason: str, field: str | None, message: str):
        super().__init__(message)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class PreferencePair:
    """One validated pair. ``prompt`` is text or messages; responses match its type."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float = 0.0

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


def detect_format(row: dict[str, Any]) -> Format:
    """Pick one row's format (each row is decided on its own); ``data_format`` in the config overrides this."""
    if not _absent(row.get("responses")):
        return "rated"
    if "chosen" not in row or "rejected" not in row:
        raise ValueError(
            f"cannot detect the preference format: the data has columns {sorted(row)}, but a preference "
            "dataset needs 'chosen' and 'rejected' (and optionally 'prompt' and 'margin'), or 'responses' with "
            "'ratings' or 'ranking'."
        )
    if isinstance(row["chosen"], (list, tuple)) or hasattr(row["chosen"], "tolist"):
        return "conversational"
    return "standard" if "prompt" in row and row["prompt"] is not None else "implicit"


def normalize_row(row: dict[str, Any], fmt: Format, empty_responses: bool = False) -> PreferencePair:
    """Validate one raw row and return it as a pair; raise :class:`BadRow` naming the field.

    ``empty_responses``: an empty chosen or rejected answer is part of the pair (evaluation scores what it
    is given -- a benchmark's empty answer is an answer) instead of a bad row (training: it teaches nothing)."""
    margin = _read_margin(row)
    if fmt == "conversational":
        pair = _normalize_conversational(row, margin, empty_responses)
    else:
        chosen = _read_text(row, "chosen", allow_empty=empty_responses and fmt == "standard")
        rejected = _read_text(row, "rejected", allow_empty=empty_responses and fmt == "standard")
        if fmt == "standard":
            prompt = _read_text(row, "prompt", allow_empty=True)
            pair = PreferencePair(prompt, chosen, rejected, margin)
        elif fmt == "implicit":
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
            pair = PreferencePair(prompt, chosen, rejected, margin)
        elif fmt == "rated":
            raise BadRow("missing_field", "chosen", "a rated row (responses + ratings) holds a group, not one pair: "
                         "training takes it whole; rmray eval and rmray score take pairs and responses")
        else:
            raise ValueError(f"unknown data_format {fmt!r}; choose one of {FORMATS} or 'auto'")
    if pair.chosen == pair.rejected:
        raise BadRow("identical_chosen_rejected", "chosen", "chosen and rejected are identical")
    return pair


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two whole texts into (prompt, chosen response, rejected response).

    The prompt is the longest common prefix cut back so it ends at a turn marker
    (``...\\n\\nAssistant:``) when one is inside it, else at a whitespace boundary, so a shared first
    word of both answers stays in the responses.
    """
    if chosen == rejected:
        raise BadRow("identical_chosen_rejected", "chosen", "chosen and rejected are identical")
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    common = chosen[:n]
    markers = list(_TURN_MARKER.finditer(common))
    if markers:
        cut = markers[-1].end()
    else:
        cut = max(common.rfind(" "), common.rfind("\n"), common.rfind("\t"))
        cut = 0 if cut < 0 else cut
    if n == len(chosen) or n == len(rejected):
        # One text is a prefix of the other: keep at least the last boundary before it as response.
        cut = min(cut, n)
    prompt, c, r = chosen[:cut], chosen[cut:], rejected[cut:]
    if not c.strip() or not r.strip():
        raise BadRow("empty_field", "chosen" if not c.strip() else "rejected",
                     "after removing the shared prompt, a response is empty")
    return prompt, c, r


def _read_text(row: dict[str, Any], field: str, allow_empty: bool = False) -> str:
    if field not in row or row[field] is None:
        raise BadRow("missing_field", field, f"field {field!r} is missing")
    value = row[field]
    if not isinstance(value, str):
        raise BadRow("non_string_field", field, f"field {field!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRow("empty_field", field, f"field {field!r} is empty")
    return value


def _read_margin(row: dict[str, Any]) -> float:
    if "margin" not in row or row["margin"] is None:
        return 0.0
    try:
        margin = float(row["margin"])
    except (TypeError, ValueError):
        raise BadRow("bad_margin", "margin", f"margin must be a number, got {row['margin']!r}") from None
    if not math.isfinite(margin):
        raise BadRow("bad_margin", "margin", f"margin must be finite, got {margin}")
    return margin


def _read_messages(row: dict[str, Any], field: str, required: bool = True) -> Messages | None:
    if field not in row or row[field] is None:
        if required:
            raise BadRow("missing_field", field, f"field {field!r} is missing")
        return None
    value = row[field]
    if hasattr(value, "tolist"):  # numpy object arrays from Arrow list columns
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise BadRow("malformed_messages", field,
                     f"field {field!r} must be a list of {{'role', 'content'}} messages, got {type(value).__name__}")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow("malformed_messages", field,
                         f"{field}[{i}] must be a dict with string 'role' and 'content', got {m!r:.80}")
        messages.append({"role": m["role"], "content": m["content"]})
    if required and not messages:
        raise BadRow("empty_field", field, f"field {field!r} has no messages")
    return messages


def _normalize_conversational(row: dict[str, Any], margin: float, empty_responses: bool = False) -> PreferencePair:
    chosen = _read_messages(row, "chosen")
    rejected = _read_messages(row, "rejected")
    prompt = _read_messages(row, "prompt", required=False)
    if prompt is None:  # implicit: the shared leading messages are the prompt
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for field, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or not (empty_responses or any(m["content"].strip() for m in msgs)):
            raise BadRow("empty_field", field, f"field {field!r} has no non-empty response message")
    return PreferencePair(prompt, chosen, rejected, margin)


# --- Rated and ranked groups: one prompt, K responses ------------------------------------------------

class RatedGroup(NamedTuple):
    """One prompt's responses and their ratings (higher is better)."""

    prompt: Text
    responses: list[Text]
    ratings: list[float]
    attributes: list[list[float]] | None = None  # [response][attribute] for per-attribute heads


def read_group(row: dict[str, Any], weights: dict[str, float] | None = None) -> RatedGroup:
    """A ``rated`` row's prompt, responses and ratings (higher is better; a ranking is negated), checked.
    Ratings given per attribute (``{"helpfulness": [...], ...}``) need the run's attribute ``weights``: the
    response's rating is then their weighted sum, and ``attributes`` holds them one by one."""
    responses = _read_responses(row)
    per_attribute = read_attribute_ratings(row, list(weights or {}), len(responses))
    if per_attribute is not None:
        ratings = [sum(w * v for w, v in zip(weights.values(), values)) for values in per_attribute]
    else:
        ratings = _read_ratings(row, len(responses))
    if isinstance(responses[0], list) and not isinstance(row.get("prompt"), str):
        prompt = _read_messages(row, "prompt", required=False) or []
    else:  # a text prompt (chat responses may take one too: it becomes the user turn)
        prompt = _read_text_or_empty(row, "prompt")
    if len(set(ratings)) == 1:
        raise BadRow("all_tied", "ratings", "every response is rated the same: no pair to learn from")
    return RatedGroup(prompt, responses, ratings, per_attribute)


def read_attribute_ratings(row: dict[str, Any], attributes: list[str], n: int) -> list[list[float]] | None:
    """``[response][attribute]`` ratings of a row whose ``ratings`` is a mapping of attribute -> one
    number per response (HelpSteer2's shape, grouped by prompt); None when its ratings are one list."""
    value = row.get("ratings")
    if not isinstance(value, dict):
        return None
    if not attributes:
        raise BadRow("bad_rating", "ratings", f"ratings per attribute ({', '.join(map(str, value))}) need the run's "
                     "attributes: set attributes=[...] (and attribute_weights) in the config")
    columns = []
    for name in attributes:
        if _absent(value.get(name)):
            raise BadRow("bad_rating", f"ratings.{name}", f"ratings has no {name!r} (the run's attributes: {attributes})")
        columns.append(_read_ratings({"ratings": value[name]}, n, f"ratings.{name}"))
    return [list(values) for values in zip(*columns)]


def _read_responses(row: dict[str, Any]) -> list[Text]:
    value = row.get("responses")
    value = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        got = f"{len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        raise BadRow("too_few_responses", "responses", f"'responses' must list at least 2 responses, got {got}")
    if all(isinstance(r, str) for r in value):
        for i, r in enumerate(value):
            if not r.strip():
                raise BadRow("empty_field", f"responses[{i}]", f"responses[{i}] is empty")
        return list(value)
    return [_read_messages({f"responses[{i}]": r}, f"responses[{i}]") for i, r in enumerate(value)]  # message lists


def _read_ratings(row: dict[str, Any], n: int, where: str | None = None) -> list[float]:
    field_name = "ratings" if not _absent(row.get("ratings")) else "ranking"
    where = where or field_name
    value = row.get(field_name)
    value = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise BadRow("bad_rating", where, f"{where!r} must give one number per response ({n}), got {value!r:.80}")
    numbers = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadRow("bad_rating", where, f"{where}[{i}] must be a finite number, got {v!r:.40}")
        numbers.append(float(v) if field_name == "ratings" else -float(v))  # rank 1 is the best
    return numbers


def _absent(value) -> bool:
    """None, or the NaN a table reader puts where a row has no value for another row's list column."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _read_text_or_empty(row: dict[str, Any], field: str) -> str:
    if row.get(field) is None:
        return ""
    return _read_text(row, field, allow_empty=True)
