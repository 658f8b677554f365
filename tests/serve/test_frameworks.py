"""The RL frameworks' own client code against a live rmray server over loopback HTTP: verl's reward loop
(``/classify``), OpenRLHF's remote reward model (``/get_reward``) and TRL's ``GRPOTrainer`` with
:class:`RewardClient` (``/score``). The frameworks are installed ``--no-deps`` (Makefile); each test
imports only the piece that makes the call."""

import asyncio
import os

import numpy as np
import pytest
import torch

from rmray.serve.client import RewardClient
from rmray.testing import build_tiny_policy, plain_transformers_scores

from ..conftest import ROOT
from .conftest import PROMPT, RESPONSES, post

CHATS = [
    ([{"role": "user", "content": "How do I keep basil fresh?"}], "Trim the stems and keep it in water."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Best way to learn to juggle?"},
      {"role": "assistant", "content": "Start with two balls."}, {"role": "user", "content": "And then?"}],
     "Add a third ball once two feel easy."),
    ([{"role": "user", "content": "Say nothing."}], ""),  # a policy that emitted EOS first
]


def _verl_batch(tokenizer, chat: list, response: str):
    """One rollout as verl's agent loop hands it to the reward loop: the prompt's messages, the response
    ids (EOS included, right-padded) and the attention mask over prompt + response."""
    from verl import DataProto

    response_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    prompt_len, pad = 7, 3
    responses = torch.tensor([response_ids + [tokenizer.pad_token_id] * pad])
    mask = torch.tensor([[1] * (prompt_len + len(response_ids)) + [0] * pad])
    raw_prompt = np.empty(1, dtype=object)
    raw_prompt[0] = chat
    return DataProto.from_dict(tensors={"responses": responses, "attention_mask": mask},
                               non_tensors={"raw_prompt": raw_prompt})


def test_verl_reward_loop_scores_as_score_and_plain_transformers(apps):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    tokenizer = AutoTokenizer.from_pretrained(apps["chat"])
    # verl's __init__ builds reward managers from a whole trainer config; the two methods that make the
    # call (_preprocess_reward_inputs, compute_score_disrm) read only these attributes.
    worker = RewardLoopWorker.__new__(RewardLoopWorker)
    worker.input_tokenizer = worker.reward_model_tokenizer = tokenizer
    worker.reward_router_address = f"127.0.0.1:{apps['port']}/chat"
    worker.config = OmegaConf.create({"reward": {"reward_model": {"model_path": apps["chat"],
                                                                  "rollout": {"name": "vllm"}}}})
    for chat, response in CHATS:
        verl_score = asyncio.run(worker.compute_score_disrm(_verl_batch(tokenizer, chat, response)))["reward_score"]
        status, body, _ = post(apps["port"], "/chat/score",
                               {"prompt": chat, "response": [{"role": "assistant", "content": response}]}, token=None)
        assert status == 200, body
        rendered = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": response}], tokenize=False)
        plain = plain_transformers_scores(apps["chat"], [rendered], add_eos=False)[0]
        assert verl_score == pytest.approx(body["rewards"][0], abs=1e-4), chat
        assert verl_score == pytest.approx(plain, abs=1e-4), chat


def test_vllm_pooling_fields_are_accepted_and_honoured(apps):
    from transformers import AutoTokenizer

    port, tokenizer = apps["port"], AutoTokenizer.from_pretrained(apps["chat"])
    chat, response = CHATS[1]
    text = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    base = {"model": "/any/path/verl/sends", "priority": 3}
    as_text = post(port, "/chat/classify", {**base, "input": text, "add_special_tokens": False}, token=None)
    as_ids = post(port, "/chat/classify", {**base, "input": ids}, token=None)
    batch = post(port, "/chat/classify", {**base, "input": [ids, ids[:20]]}, token=None)
    assert as_text[0] == as_ids[0] == batch[0] == 200, (as_text, as_ids, batch)
    reward = plain_transformers_scores(apps["chat"], [text], add_eos=False)[0]
    assert as_text[1]["data"][0]["probs"][0] == pytest.approx(reward, abs=1e-4)
    assert as_ids[1]["data"][0]["probs"][0] == pytest.approx(reward, abs=1e-4)
    assert batch[1]["data"][0]["probs"][0] == pytest.approx(reward, abs=1e-4)
    assert as_text[1]["model"] == base["model"]  # the name is echoed, not checked
    # truncate_prompt_tokens keeps the last k tokens, as vLLM does
    status, cut, _ = post(port, "/chat/classify", {"input": ids, "truncate_prompt_tokens": 10}, token=None)
    assert status == 200
    last10 = _forward(apps["chat"], ids[-10:])
    assert cut["data"][0]["probs"][0] == pytest.approx(last10, abs=1e-4)
    status, out, _ = post(port, "/chat/classify", {"input": [len(tokenizer) + 5]}, token=None)
    assert status == 422 and "vocabulary" in out["detail"]


def _forward(model_dir: str, ids: list[int]) -> float:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_openrlhf_remote_reward_model(apps):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor([f"http://127.0.0.1:{apps['port']}/plain/get_reward"])
    queries = [PROMPT + r for r in RESPONSES[:3]]
    shards = asyncio.run(executor._fetch_rewards_via_http(queries, [PROMPT] * 3, [None] * 3))
    rewards = [r for shard in shards for r in shard["rewards"]]
    assert rewards == pytest.approx(plain_transformers_scores(apps["plain"], queries), abs=1e-4)


def test_get_reward_without_a_matching_prompt_keeps_the_end(apps):
    """Documented rule: no prompt (or one that is not a prefix) -> the whole query + EOS, its last
    max_length (256) tokens scored. The response, at the end, survives."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(apps["plain"])
    query = PROMPT * 40 + RESPONSES[0]
    ids = tokenizer(query + tokenizer.eos_token)["input_ids"]
    assert len(ids) > 256
    expected = _forward(apps["plain"], ids[-256:])
    for body in ({"query": [query]}, {"query": [query], "prompts": ["not a prefix"]}):
        status, out, _ = post(apps["port"], "/plain/get_reward", body, token=None)
        assert status == 200 and out["rewards"][0] == pytest.approx(expected, abs=1e-4), body


class _RecordingClient(RewardClient):
    """RewardClient as TRL calls it, keeping what it was asked and what it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.seen += list(zip(prompts, completions, rewards))
        return rewards


def _grpo(policy: str, rows: list[dict], client, out_dir: str, eos_bias: float):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=4, num_generations=2, max_steps=2,
                        max_completion_length=6, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                        logging_steps=1, seed=0, dataloader_num_workers=0,
                        generation_kwargs={"sequence_bias": [[[tokenizer.eos_token_id], eos_bias]]})
    trainer = GRPOTrainer(model=policy, reward_funcs=[client], args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    trainer.train()
    return trainer


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_grpo_trainer_with_reward_client(apps, tmp_path, conversational):
    """Two GRPO steps; the policy's EOS is biased so some completions are empty, which /score must take."""
    policy = build_tiny_policy(str(tmp_path / "policy"), apps["chat"])
    questions = ["How do I keep basil fresh?", "Best way to learn to juggle?"]
    rows = [{"prompt": [{"role": "user", "content": q}] if conversational else f"Question: {q}\nAnswer:"}
            for q in questions * 4]
    client = _RecordingClient(f"http://127.0.0.1:{apps['port']}/chat", retries=0)
    trainer = _grpo(policy, rows, client, str(tmp_path / "grpo"), eos_bias=7.5)
    assert trainer.state.global_step == 2
    completions = [c[0]["content"] if conversational else c for _, c, _ in client.seen]
    assert len(client.seen) == 8 and "" in completions and any(completions), completions
    # An empty completion is scored as its prompt alone, as /score scores it.
    prompt, completion, reward = next(s for s in client.seen if (s[1][0]["content"] if conversational else s[1]) == "")
    status, body, _ = post(apps["port"], "/chat/score", {"prompt": prompt, "response": completion}, token=None)
    assert status == 200 and reward == pytest.approx(body["rewards"][0], abs=1e-5)
    if not conversational:
        assert reward == pytest.approx(plain_transformers_scores(apps["chat"], [prompt])[0], abs=1e-4)
    assert os.path.isdir(tmp_path / "grpo")


EXAMPLES = os.path.join(ROOT, "examples")


def test_verl_custom_reward_function_example(apps):
    """examples/verl_reward.py loaded by verl's own loader, called as verl's reward manager calls it."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": os.path.join(EXAMPLES, "verl_reward.py"), "name": "compute_score",
        "reward_kwargs": {"url": f"http://127.0.0.1:{apps['port']}/chat"}}}})
    compute_score = get_custom_reward_fn(config)
    chat, response = CHATS[0]
    parquet_like = np.empty(len(chat), dtype=object)  # how a message list comes back from Parquet
    parquet_like[:] = chat
    for extra_info, prompt in (({"prompt": parquet_like}, chat), ({"question": PROMPT}, PROMPT)):
        score = compute_score(data_source="hh", solution_str=response, ground_truth=None, extra_info=extra_info)
        status, body, _ = post(apps["port"], "/chat/score", {"prompt": prompt, "response": response}, token=None)
        assert status == 200 and score == pytest.approx(body["rewards"][0], abs=1e-6)


def test_trl_grpo_example_runs_as_written(apps, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("trl_grpo", os.path.join(EXAMPLES, "trl_grpo.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    policy = build_tiny_policy(str(tmp_path / "policy"), apps["chat"])
    trainer = example.main(["--url", f"http://127.0.0.1:{apps['port']}/chat", "--policy", policy, "--cpu",
                            "--max-steps", "1", "--num-generations", "2", "--max-completion-length", "4",
                            "--output-dir", str(tmp_path / "grpo"), "--conversational"])
    assert trainer.state.global_step == 1


def _openrlhf_parser():
    """OpenRLHF 0.11 builds its parser inside ``train_ppo_ray.py``'s ``__main__`` block, beside imports of
    vLLM and DeepSpeed: run exactly those lines of its source, nothing else."""
    import argparse
    import datetime
    import importlib.util
    import textwrap

    source = open(importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin).read().splitlines()
    start = next(i for i, line in enumerate(source) if line.strip() == "parser = argparse.ArgumentParser()")
    end = next(i for i, line in enumerate(source) if line.strip().startswith("args = parser.parse_args()"))
    scope = {"argparse": argparse, "os": os, "datetime": datetime.datetime}
    exec(textwrap.dedent("\n".join(source[start:end])), scope)
    return scope["parser"]


def test_openrlhf_command_in_examples_parses_with_openrlhfs_parser():
    import shlex

    text = open(os.path.join(EXAMPLES, "openrlhf.md")).read()
    command = text[text.index("python -m openrlhf.cli.train_ppo_ray"):]
    command = command[:command.index("```")].replace("\\\n", " ")
    argv = shlex.split(command)[3:]
    args = _openrlhf_parser().parse_args(argv)
    assert getattr(args, "reward.remote_url") == "http://127.0.0.1:8000/get_reward"
    with pytest.raises(SystemExit):  # the flag older docs (and rmray's README) named
        _openrlhf_parser().parse_args(["--remote_rm_url", "http://127.0.0.1:8000/get_reward"])
