"""Text -> token ids under the scoring spec, with truncation that never silently drops a pair.

Each (prompt, response) is tokenized as one whole string -- exactly what TRL and plain transformers
tokenize -- and the prompt/response boundary is found from the character offsets. Tokenizing the two
parts separately would change the ids at the seam and break parity with every other consumer.

Truncation (``truncate``) cuts prompt tokens from the left, just after any leading special tokens
(``[CLS]``/BOS), so the latest turns survive; if the response alone is still too long, its end is cut,
keeping trailing special tokens and the EOS the reward is read at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .formats import BadRow, PreferencePair, RatedGroup, Text
from .spec import ScoringSpec


@dataclass
class Encoded:
    ids: list[int]
    truncated: bool


@dataclass
class EncodedPair:
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float
    truncated: bool


def render(tokenizer, prompt: Text, response: Text) -> tuple[str, str, bool]:
    """Return (prompt_text, full_text, add_special_tokens) for one prompt + response.

    Conversational turns are rendered with the tokenizer's chat template (which already holds BOS and
    turn tokens, hence no extra special tokens); plain text is concatenated. A message-list prompt with
    a plain-text response is a conversation whose last turn is the assistant's: the same item scores the
    same whether its response arrives as text or as one assistant message.
    """
    if isinstance(prompt, list) and isinstance(response, str):
        response = [{"role": "assistant", "content": response}]  # a chat prompt's reply is the assistant's turn
    if isinstance(response, list):
        if tokenizer.chat_template is None:
            raise ValueError(
                "conversational rows need a chat template, but the tokenizer has none. Set "
                "chat_template=<file.jinja> or chat_template=plain (rmray's 'role: content' template)."
            )
        prompt_msgs = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        full = tokenizer.apply_chat_template(prompt_msgs + response, tokenize=False)
        prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False) if prompt_msgs else ""
        if not full.startswith(prompt_text):  # templates that rewrite earlier turns: share what matches
            prompt_text = _common_prefix(prompt_text, full)
        return prompt_text, full, False
    return prompt, prompt + response, True


def encode(tokenizer, spec: ScoringSpec, prompt: Text, response: Text) -> Encoded:
    """Tokenize one prompt + response and apply the spec's EOS and truncation rules."""
    prompt_text, full, plain = render(tokenizer, prompt, response)  # plain text: special tokens and EOS
    # Encoders pool at [CLS], so they need their special tokens even around a chat-rendered text.
    add_special = plain or spec.readout == "pooler"
    return _fit(tokenizer, spec, _Text(full, len(prompt_text), add_special, plain), spec.max_length)


def encode_text(tokenizer, spec: ScoringSpec, text: str, *, add_special_tokens: bool = True,
                max_length: int | None = None, prompt_chars: int | None = None) -> Encoded:
    """Tokenize one whole text as it is given (vLLM's ``/classify`` input, OpenRLHF's ``query``).

    A text the model's chat template rendered (it ends with the template's end of an assistant turn) is
    tokenized as that conversation is by :func:`encode`: no EOS appended, special tokens only for
    encoders. Any other text follows the plain-text rule: EOS appended, and no second BOS where the text
    already starts with one. ``prompt_chars``: the first characters that are the prompt (OpenRLHF's
    ``prompts``), which lose their beginning first when the text is too long, then the rest its end --
    the rule of :func:`encode`. Without it the whole text counts as prompt: its beginning goes, the end
    (the response, where the reward is read) stays.
    """
    limit = min(max_length or spec.max_length, spec.max_length)
    rendered = is_rendered_chat(tokenizer, text)
    if rendered:
        add_special_tokens = spec.readout == "pooler"  # as encode() tokenizes a rendered conversation
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        add_special_tokens = False  # the text carries its BOS; adding one would score another sequence
    chars = len(text) if prompt_chars is None else prompt_chars
    return _fit(tokenizer, spec, _Text(text, chars, add_special_tokens, not rendered), limit)


class _Text(NamedTuple):
    """A text to tokenize, and how."""

    text: str
    prompt_chars: int  # the first characters that are prompt: they lose their beginning first when cut
    add_special: bool  # the tokenizer's special tokens (BOS, [CLS]) added around it
    plain: bool  # not rendered by a chat template: the spec's EOS is appended


def _fit(tokenizer, spec: ScoringSpec, piece: _Text, limit: int) -> Encoded:
    """Tokenize ``piece.text`` (EOS appended to plain text under the spec) and cut it to ``limit``
    tokens: the prompt characters lose their beginning first, then the rest its end."""
    text, prompt_chars, add_special, plain = piece
    appended_eos = False
    if plain and spec.add_eos and spec.eos_token and not text.endswith(spec.eos_token):
        text += spec.eos_token
        appended_eos = True
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if len(ids) <= limit:
        return Encoded(ids, False)
    _refuse_long(spec, len(ids), limit)
    return Encoded(_truncate(ids, offsets, prompt_chars, limit, appended_eos), True)


def keep_end(ids: list[int], spec: ScoringSpec, max_length: int | None = None) -> Encoded:
    """Token ids given as they are (no special tokens added); too long, the last ``max_length`` kept."""
    limit = min(max_length or spec.max_length, spec.max_length)
    if len(ids) <= limit:
        return Encoded(list(ids), False)
    _refuse_long(spec, len(ids), limit)
    return Encoded(list(ids[-limit:]), True)


def is_rendered_chat(tokenizer, text: str) -> bool:
    """Whether ``text`` ends as the tokenizer's chat template ends an assistant turn (``<|im_end|>\\n``
    for ChatML), trailing whitespace aside: a generated reply stops at ``<|im_end|>`` without the newline
    the template writes after it. Templates whose turn end is only whitespace cannot be told from plain
    text: False (rmray's own ``plain`` template ends an assistant turn with the EOS token for this reason)."""
    end = _assistant_turn_end(tokenizer)
    return bool(end) and text.rstrip().endswith(end.rstrip())


def _assistant_turn_end(tokenizer) -> str | None:
    cached = getattr(tokenizer, "_rmray_turn_end", False)
    if cached is not False:
        return cached
    end = None
    if getattr(tokenizer, "chat_template", None):
        sentinel = "rmray-sentinel-7f3a"
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": "u"}, {"role": "assistant", "content": sentinel}], tokenize=False)
            tail = rendered[rendered.rindex(sentinel) + len(sentinel):]
            end = tail if tail.strip() else None
        except Exception:  # noqa: BLE001 - a template that cannot render this turn: no detection
            end = None
    tokenizer._rmray_turn_end = end
    return end


def _refuse_long(spec: ScoringSpec, n: int, limit: int) -> None:
    if spec.truncation == "drop":
        raise BadRow("too_long", None, f"{n} tokens > max_length={limit}")
    if spec.truncation == "error":
        raise ValueError(
            f"a text has {n} tokens, more than max_length={limit}. Raise max_length, or set "
            "truncation=truncate (cut the prompt from the left) or truncation=drop (skip and count such pairs)."
        )


def encode_pair(tokenizer, spec: ScoringSpec, pair: PreferencePair) -> EncodedPair:
    chosen = encode(tokenizer, spec, pair.prompt, pair.chosen)
    rejected = encode(tokenizer, spec, pair.prompt, pair.rejected)
    if chosen.ids == rejected.ids:
        # Truncation can make two different answers identical (OpenRLHF #1311); such a pair teaches nothing.
        raise BadRow("identical_chosen_rejected", "chosen", "chosen and rejected tokenize to the same ids")
    return EncodedPair(chosen.ids, rejected.ids, pair.margin, chosen.truncated or rejected.truncated)


@dataclass
class EncodedGroup:
    ids: list[list[int]]  # one full sequence per distinct response
    ratings: list[float]  # higher is better
    truncated: bool
    attribute_ratings: list[list[float]] | None = None  # [response][attribute], for per-attribute heads


def encode_group(tokenizer, spec: ScoringSpec, group: RatedGroup) -> EncodedGroup:
    """A rated group's responses, each tokenized with the prompt exactly as :func:`encode` does.
    Responses that come out as the same ids (repeated texts, or texts cut to the same tokens) are one
    response rated the mean of their ratings: copies of one sequence rated apart teach nothing."""
    merged: dict[tuple[int, ...], list[int]] = {}  # ids -> the responses that tokenize to them
    truncated = False
    for k, response in enumerate(group.responses):
        enc = encode(tokenizer, spec, group.prompt, response)
        truncated = truncated or enc.truncated
        merged.setdefault(tuple(enc.ids), []).append(k)

    def mean(values: list, members: list[int]):
        return sum(values[k] for k in members) / len(members)

    means = [mean(group.ratings, members) for members in merged.values()]
    if len(set(means)) < 2:
        raise BadRow("all_tied", "responses", "the responses rated differently tokenize to the same ids: no pair to learn from")
    attributes = None
    if group.attributes is not None:
        columns = list(zip(*group.attributes))
        attributes = [[mean(column, members) for column in columns] for members in merged.values()]
    return EncodedGroup([list(ids) for ids in merged], means, truncated, attributes)


def _truncate(ids: list[int], offsets: list, prompt_chars: int, max_length: int, keep_last: bool) -> list[int]:
    n = len(ids)
    # Leading/trailing special tokens added by the tokenizer's template have empty (0, 0) offsets.
    head = 0
    while head < n and tuple(offsets[head]) == (0, 0):
        head += 1
    tail = n
    while tail > head and tuple(offsets[tail - 1]) == (0, 0):
        tail -= 1
    if keep_last and tail > head:  # the EOS we appended: the reward is read there, keep it
        tail -= 1
    prompt_end = head
    while prompt_end < tail and offsets[prompt_end][1] <= prompt_chars:
        prompt_end += 1
    fixed = head + (n - tail)
    if fixed >= max_length:
        raise ValueError(f"max_length={max_length} leaves no room for text after {fixed} special tokens")
    excess = n - max_length
    cut_prompt = min(excess, prompt_end - head)
    body = ids[head + cut_prompt:tail]
    budget = max_length - fixed
    return ids[:head] + body[:budget] + ids[tail:]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
