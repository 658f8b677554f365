"""One item set through every consumer of the scoring contract: one reward per item.

Every endpoint (``/score``, ``/score_group``, ``/get_reward`` with and without ``prompts``, ``/classify``),
``rmray score`` and ``rmray eval`` (its ``rewards.jsonl``; in tests/score/test_contract_offline.py, on the
cluster before the served apps take its CPUs) must give each item the reward plain transformers gives the
item's documented rendering -- for one model and for an ensemble. Extend ``_http`` here, or the offline
module, whenever a consumer is added.

The documented rendering (docs/serving.md): a text prompt + text response is ``prompt + response`` with
the EOS appended; an item with a message prompt is the chat template's rendering of the prompt's
messages followed by the response as the assistant's turn (a text response becomes one assistant
message), with no EOS appended.
"""


import pytest
from transformers import AutoTokenizer

from rmray.testing import plain_transformers_scores

from .conftest import PROMPT, post

QUESTION = "How do I make my tomato plants produce more fruit?"
ITEMS = [  # (prompt, response): plain text, empty response, message prompt + text, messages both
    (PROMPT, " Water deeply, feed with potassium, and pinch off suckers."),
    (PROMPT, ""),
    ([{"role": "user", "content": QUESTION}], "Plant them in full sun."),
    ([{"role": "user", "content": QUESTION}], [{"role": "assistant", "content": "No idea."}]),
]


def _rendered(tokenizer, prompt, response) -> tuple[str, str, bool]:
    """(prompt text, whole text, EOS appended) as the docs define them, with the tokenizer's own template."""
    if isinstance(prompt, str):
        return prompt, prompt + response, True
    reply = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    whole = tokenizer.apply_chat_template(prompt + reply, tokenize=False)
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), whole, False


def _reference(model_dir: str) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rewards = []
    for prompt, response in ITEMS:
        _, whole, eos = _rendered(tokenizer, prompt, response)
        rewards += plain_transformers_scores(model_dir, [whole], add_eos=eos)
    return rewards


def _http(port: int, prefix: str, model_dir: str) -> dict[str, list[float]]:
    """Each endpoint's reward per item."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [_rendered(tokenizer, p, r) for p, r in ITEMS]
    items = [{"prompt": p, "response": r} for p, r in ITEMS]
    answers = {}
    status, body, _ = post(port, f"{prefix}/score", {"items": items})
    assert status == 200, body
    answers["/score"] = body["rewards"]
    answers["/score_group"] = []
    for p, r in ITEMS:
        status, body, _ = post(port, f"{prefix}/score_group", {"prompt": p, "responses": [r]})
        assert status == 200, body
        answers["/score_group"] += body["rewards"]
    status, body, _ = post(port, f"{prefix}/get_reward", {"query": [w for _, w, _ in texts]})
    assert status == 200, body
    answers["/get_reward"] = body["rewards"]
    status, body, _ = post(port, f"{prefix}/get_reward", {"query": [w for _, w, _ in texts],
                                                          "prompts": [p for p, _, _ in texts]})
    assert status == 200, body
    answers["/get_reward with prompts"] = body["rewards"]
    status, body, _ = post(port, f"{prefix}/classify", {"model": "rm", "input": [w for _, w, _ in texts]})
    assert status == 200, body
    answers["/classify"] = [d["probs"][0] for d in body["data"]]
    return answers


def _assert_one_reward(answers: dict[str, list[float]], expected: list[float]) -> None:
    for consumer, rewards in answers.items():
        assert rewards == pytest.approx(expected, abs=1e-4), consumer


def test_every_consumer_gives_one_reward_per_item_for_one_model(served):
    """ChatML (Qwen2's template and turn tokens): the OpenRLHF shape with ``prompts`` must not append an EOS
    to the rendered conversation, and ``rmray score`` must score a message prompt with a text response and
    an empty response as the server does."""
    model = served["chat"]
    expected = _reference(model)
    _assert_one_reward(_http(served["port"], "/chat", model), expected)


def test_every_consumer_gives_one_reward_per_item_for_an_ensemble(served):
    """Two models on saved scales (mean 0.5, std 2.0) and (mean 8.0, std 0.5), the same weights: the
    reward is the mean of the standardized rewards in every consumer, offline as online (the raw mean
    would rank differently). Their tokenizer has rmray's plain template."""
    normed = served["qwen"]
    raw = _reference(normed)
    expected = [((r - 0.5) / 2.0 + (r - 8.0) / 0.5) / 2 for r in raw]
    assert max(abs(e - r) for e, r in zip(expected, raw)) > 1  # the rule matters for these numbers
    _assert_one_reward(_http(served["port"], "/ensn", normed), expected)


def test_classify_on_a_plain_template_conversation_equals_score_on_its_messages(served):
    """rmray's ``plain`` template ends an assistant turn with the EOS, so its rendered text is told from
    plain text: no second EOS is appended to it (that EOS moves the reward by about 0.14 here)."""
    tokenizer = AutoTokenizer.from_pretrained(served["qwen"])
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Full sun, deep water."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered.endswith(tokenizer.eos_token + "\n")
    status, classified, _ = post(served["port"], "/classify", {"model": "rm", "input": [rendered]})
    assert status == 200, classified
    status, scored, _ = post(served["port"], "/score", {"prompt": messages[:1], "response": messages[1:]})
    assert status == 200, scored
    expected = plain_transformers_scores(served["qwen"], [rendered], add_eos=False)[0]
    assert classified["data"][0]["probs"][0] == pytest.approx(expected, abs=1e-4)
    assert scored["rewards"][0] == pytest.approx(expected, abs=1e-4)
