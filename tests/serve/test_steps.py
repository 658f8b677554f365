"""A process reward model served: ``/score_steps`` gives each step the reward plain transformers gives it
on TRL's tokens; ``/score``, OpenRLHF's ``/get_reward`` (through OpenRLHF's own client code) and rmray's
``RewardClient`` (TRL's ``reward_funcs``) get the steps' aggregate for a response split at the separator;
what a process model cannot answer is a 422 that says what to send instead."""

import asyncio

import pytest

from rmray.serve.client import RewardClient

from ..core.test_step_scoring import _plain
from .conftest import post

QUESTION = "What is 12 * 3 + 4?"
STEPS = ["12 * 3 = 36.", "36 + 4 = 41.", "The answer is 41."]


def test_score_steps_equals_plain_transformers_per_step_and_aggregates_by_min(apps):
    port, prm = apps["port"], apps["prm"]
    status, one, _ = post(port, "/prm/score_steps", {"prompt": QUESTION, "steps": STEPS}, token=None)
    assert status == 200, one
    expected = _plain(prm, QUESTION, STEPS)
    assert one["step_rewards"][0] == pytest.approx(expected, abs=1e-4)
    assert one["rewards"][0] == pytest.approx(min(expected), abs=1e-4) and one["truncated"] == [False]
    messages = [{"role": "user", "content": QUESTION}]
    status, many, _ = post(port, "/prm/score_steps", {"items": [{"prompt": QUESTION, "steps": STEPS[:1]},
                                                                {"prompt": messages, "steps": STEPS}]}, token=None)
    assert status == 200, many
    assert many["step_rewards"][0] == pytest.approx(_plain(prm, QUESTION, STEPS[:1]), abs=1e-4)
    assert many["step_rewards"][1] == pytest.approx(_plain(prm, messages, STEPS), abs=1e-4)


def test_one_reward_endpoints_split_the_response_at_the_separator(apps):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    port, prm = apps["port"], apps["prm"]
    response = "\n".join(STEPS) + "\n"
    expected = min(_plain(prm, QUESTION, STEPS))
    status, out, _ = post(port, "/prm/score", {"prompt": QUESTION, "response": response}, token=None)
    assert status == 200 and out["rewards"] == pytest.approx([expected], abs=1e-4), out
    executor = SingleTurnAgentExecutor([f"http://127.0.0.1:{port}/prm/get_reward"])
    shards = asyncio.run(executor._fetch_rewards_via_http([QUESTION + response], [QUESTION], [None]))
    assert [r for shard in shards for r in shard["rewards"]] == pytest.approx([expected], abs=1e-4)
    client = RewardClient(f"http://127.0.0.1:{port}/prm")
    assert client([QUESTION], [response]) == pytest.approx([expected], abs=1e-4)


def test_what_a_process_model_cannot_answer_says_what_to_send(apps):
    port = apps["port"]
    status, out, _ = post(port, "/prm/get_reward", {"query": [QUESTION + "\n".join(STEPS)]}, token=None)
    assert status == 422 and "prompts" in out["detail"], out
    status, out, _ = post(port, "/prm/classify", {"input": [QUESTION]}, token=None)
    assert status == 422 and "/score_steps" in out["detail"], out
    status, out, _ = post(port, "/plain/score_steps", {"prompt": QUESTION, "steps": STEPS}, token=None)
    assert status == 422 and "process reward model" in out["detail"], out
    status, out, _ = post(port, "/prm/score_steps", {"prompt": QUESTION, "steps": []}, token=None)
    assert status == 422, out
