"""The Serve app over real HTTP on loopback: every endpoint and protocol gives the reward plain transformers
gives, for single models, ensembles and per-attribute models."""

import json
import math

import pytest

from rmray.serve.client import HandleRewardClient, RewardClient
from rmray.testing import plain_transformers_scores

from .conftest import PROMPT, RESPONSES, TOKEN, post


def test_a_per_attribute_model_serves_each_attribute_and_their_weighted_reward(served):
    port = served["port"]
    outputs = plain_transformers_scores(served["attr"], [PROMPT + r for r in RESPONSES[:3]], all_outputs=True)
    assert all(len(o) == 2 for o in outputs)
    items = [{"prompt": PROMPT, "response": r} for r in RESPONSES[:3]]
    status, body, _ = post(port, "/attr/score", {"items": items})
    assert status == 200, body
    assert body["attributes"]["helpfulness"] == pytest.approx([o[0] for o in outputs], abs=1e-4)
    assert body["attributes"]["verbosity"] == pytest.approx([o[1] for o in outputs], abs=1e-4)
    assert body["rewards"] == pytest.approx([0.75 * h - 0.25 * v for h, v in outputs], abs=1e-4)
    status, group, _ = post(port, "/attr/score_group", {"prompt": PROMPT, "responses": RESPONSES[:3]})
    assert status == 200 and group["attributes"]["verbosity"] == pytest.approx([o[1] for o in outputs], abs=1e-4)
    status, reward, _ = post(port, "/attr/get_reward", {"query": [PROMPT + RESPONSES[0]], "prompts": [PROMPT]})
    assert status == 200 and reward["rewards"] == pytest.approx(body["rewards"][:1], abs=1e-4)  # OpenRLHF: the one reward


def test_score_equals_plain_transformers_and_normalizes(served):
    port = served["port"]
    expected = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES])
    status, body, _ = post(port, "/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES],
                                            "normalize": True})
    assert status == 200, body
    assert body["rewards"][:3] == pytest.approx(expected[:3], abs=1e-4)
    assert body["truncated"] == [False, False, False, True]  # 300 words > max_length 256: cut and flagged
    assert body["normalized_rewards"] == pytest.approx([(r - 0.5) / 2.0 for r in body["rewards"]], abs=1e-6)
    status, single, _ = post(port, "/score", {"prompt": PROMPT, "response": RESPONSES[0]})
    assert status == 200 and single["rewards"][0] == pytest.approx(expected[0], abs=1e-4)
    assert "normalized_rewards" not in single


def test_score_group_equals_per_item_scores(served):
    port = served["port"]
    _, items, _ = post(port, "/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES]})
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": RESPONSES})
    assert status == 200, group
    assert group["rewards"] == pytest.approx(items["rewards"], abs=1e-4)
    assert group["truncated"] == items["truncated"]
    assert "preferences" not in group  # only when asked


def test_score_group_preferences_use_each_models_temperature(served):
    """P(i preferred to j) = sigmoid((r_i - r_j) / T): T = 0.5 saved in the main model's contract; the
    ensemble's models have none (T = 1), and their probabilities are averaged, not their rewards."""
    port = served["port"]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": RESPONSES[:3], "preferences": True})
    assert status == 200, group
    r = group["rewards"]
    assert group["preferences"] == [[pytest.approx(sigmoid((r[i] - r[j]) / 0.5), abs=1e-6) for j in range(3)]
                                    for i in range(3)]
    status, ens, _ = post(port, "/ens/score_group", {"prompt": PROMPT, "responses": RESPONSES[:2], "preferences": True})
    assert status == 200, ens
    q, m = ens["per_model"]["qwen"], ens["per_model"]["minilm"]
    want = (sigmoid(q[0] - q[1]) + sigmoid(m[0] - m[1])) / 2
    assert ens["preferences"][0][1] == pytest.approx(want, abs=1e-6)
    assert ens["preferences"][1][0] == pytest.approx(1 - want, abs=1e-6)


def test_openrlhf_and_vllm_protocols(served):
    port = served["port"]
    texts = [PROMPT + r for r in RESPONSES[:3]]
    expected = plain_transformers_scores(served["qwen"], texts)
    status, new, _ = post(port, "/get_reward", {"query": texts, "prompts": [PROMPT] * 3, "labels": [None] * 3})
    assert status == 200 and new["rewards"] == pytest.approx(expected, abs=1e-4) and new["scores"] == new["rewards"]
    status, old, _ = post(port, "/get_reward", {"query": texts})  # OpenRLHF before 0.6 sent only query
    assert status == 200 and old["rewards"] == pytest.approx(expected, abs=1e-4)
    assert post(port, "/get_reward", {"query": []})[1]["rewards"] == []  # an empty shard is not an error
    status, out, _ = post(port, "/classify", {"model": "qwen-normed", "input": texts[-1], "activation": False})
    assert status == 200 and out["data"][-1]["probs"][-1] == pytest.approx(expected[-1], abs=1e-4)  # verl's read
    status, out, _ = post(port, "/classify", {"input": texts, "activation": True})
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["data"][0]["probs"][0] == pytest.approx(1 / (1 + 2.718281828 ** -expected[0]), abs=1e-4)


def test_trl_reward_function_over_http_and_handle(served):
    from ray import serve

    expected = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES[:2]])
    http = RewardClient(f"http://127.0.0.1:{served['port']}", token=TOKEN)
    assert http(prompts=[PROMPT] * 2, completions=RESPONSES[:2], completion_ids=None) == pytest.approx(expected,
                                                                                                       abs=1e-4)
    handle = HandleRewardClient(serve.get_app_handle("main"))
    assert handle([PROMPT] * 2, RESPONSES[:2]) == pytest.approx(expected, abs=1e-4)
    assert http.__name__ == "rmray_reward"  # TRL names the reward column after it
    # Conversational TRL data: prompt messages + completion messages, rendered by the chat template.
    from rmray.core.scoring import Scorer

    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "how are you?"}]]
    completions = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "fine"}]]
    offline = Scorer.load(served["qwen"]).score(prompts, completions)
    assert http(prompts, completions) == pytest.approx(offline, abs=1e-4)
    assert handle(prompts, completions) == pytest.approx(offline, abs=1e-4)


def test_ensemble_returns_mean_and_disagreement(served):
    port = served["port"]
    status, body, _ = post(port, "/ens/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:2]]})
    assert status == 200, body
    qwen = plain_transformers_scores(served["raw_qwen"], [PROMPT + r for r in RESPONSES[:2]])
    minilm = plain_transformers_scores(served["minilm"], [PROMPT + r for r in RESPONSES[:2]])
    assert body["per_model"]["qwen"] == pytest.approx(qwen, abs=1e-4)
    assert body["per_model"]["minilm"] == pytest.approx(minilm, abs=1e-4)
    assert body["rewards"] == pytest.approx([(a + b) / 2 for a, b in zip(qwen, minilm)], abs=1e-4)
    assert body["reward_std"] == pytest.approx([abs(a - b) / 2 for a, b in zip(qwen, minilm)], abs=1e-4)


def test_ensemble_of_saved_scales_combines_standardized_rewards(served):
    port = served["port"]
    raw = plain_transformers_scores(served["qwen"], [PROMPT + r for r in RESPONSES[:2]])
    status, body, _ = post(port, "/ensn/score", {"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:2]]})
    assert status == 200, body
    a = [(r - 0.5) / 2.0 for r in raw]
    b = [(r - 8.0) / 0.5 for r in raw]
    assert body["combined"] == "normalized"
    assert body["rewards"] == pytest.approx([(x + y) / 2 for x, y in zip(a, b)], abs=1e-4)
    assert body["reward_std"] == pytest.approx([abs(x - y) / 2 for x, y in zip(a, b)], abs=1e-4)
    assert body["per_model"]["b"] == pytest.approx(raw, abs=1e-4)  # raw rewards stay available
    status, plain, _ = post(port, "/ens/score", {"prompt": PROMPT, "response": RESPONSES[0]})
    assert plain["combined"] == "raw"  # these models carry no saved scale


def test_empty_response_is_scored_as_the_prompt(served):
    port = served["port"]
    expected = plain_transformers_scores(served["qwen"], [PROMPT])[0]  # prompt + EOS
    status, body, _ = post(port, "/score", {"prompt": PROMPT, "response": ""})
    assert status == 200 and body["rewards"][0] == pytest.approx(expected, abs=1e-4)
    status, group, _ = post(port, "/score_group", {"prompt": PROMPT, "responses": ["", RESPONSES[0]]})
    assert status == 200 and group["rewards"][0] == pytest.approx(expected, abs=1e-4)
    status, out, _ = post(port, "/score_group", {"prompt": "", "responses": ["x", ""]})
    assert status == 422 and "responses[1]" in json.dumps(out)
