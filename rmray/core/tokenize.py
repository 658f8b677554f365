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

from .formats import BadRow, PreferencePair, Text
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
    turn tokens, hence no extra special tokens); plain text is concatenated.
    """
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
    if isinstance(prompt, list):
        raise BadRow("malformed_messages", "prompt", "prompt is a message list but the responses are plain text")
    return prompt, prompt + response, True


def encode(tokenizer, spec: ScoringSpec, prompt: Text, response: Text) -> Encoded:
    """Tokenize one prompt + response and apply the spec's EOS and truncation rules."""
    prompt_text, full, add_special = render(tokenizer, prompt, response)
    # Encoders pool at [CLS], so they need their special tokens even around a chat-rendered text.
    add_special = add_special or spec.readout == "pooler"
    appended_eos = False
    if not isinstance(response, list) and spec.add_eos and spec.eos_token and not full.endswith(spec.eos_token):
        full += spec.eos_token
        appended_eos = True
    enc = tokenizer(full, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if len(ids) <= spec.max_length:
        return Encoded(ids, False)
    if spec.truncation == "drop":
        raise BadRow("too_long", None, f"{len(ids)} tokens > max_length={spec.max_length}")
    if spec.truncation == "error":
        raise ValueError(
            f"a text has {len(ids)} tokens, more than max_length={spec.max_length}. Raise max_length, or set "
            "truncation=truncate (cut the prompt from the left) or truncation=drop (skip and count such pairs)."
        )
    return Encoded(_truncate(ids, offsets, len(prompt_text), spec.max_length, appended_eos), True)


def encode_pair(tokenizer, spec: ScoringSpec, pair: PreferencePair) -> EncodedPair:
    chosen = encode(tokenizer, spec, pair.prompt, pair.chosen)
    rejected = encode(tokenizer, spec, pair.prompt, pair.rejected)
    if chosen.ids == rejected.ids:
        # Truncation can make two different answers identical (OpenRLHF #1311); such a pair teaches nothing.
        raise BadRow("identical_chosen_rejected", "chosen", "chosen and rejected tokenize to the same ids")
    return EncodedPair(chosen.ids, rejected.ids, pair.margin, chosen.truncated or rejected.truncated)


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
