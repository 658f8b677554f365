"""A saved process reward model scores each step as plain transformers does on TRL's tokens: one
solution at a time, unpadded, the softmax's class 1 at each labelled position."""

import pytest
import torch

from rmray.core.step_scoring import StepScorer
from rmray.testing import build_tiny_prm

from .test_steps import ROWS, trl_tokenize_row

SOLUTIONS = [(r["prompt"], r["completions"]) for r in ROWS] + [
    ([{"role": "user", "content": "What is 2 + 2?"}], ["2 + 2 = 4.", "The answer is 4."]),
]


def _plain(model_dir: str, prompt, steps) -> list[float]:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    if not isinstance(prompt, str):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    row = {"prompt": prompt, "completions": steps, "labels": [True] * len(steps)}
    tokens = trl_tokenize_row()(row, tokenizer, "\n", None, None, None, False, False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens["input_ids"]])).logits[0]
    return [torch.softmax(logits[i], -1)[1].item() for i, label in enumerate(tokens["labels"]) if label != -100]


def test_step_rewards_equal_plain_transformers_on_trls_tokens(rm_qwen_chat, tmp_path):
    prm = build_tiny_prm(rm_qwen_chat, str(tmp_path / "prm"))
    scorer = StepScorer.load(prm)
    got = scorer.score_steps([p for p, _ in SOLUTIONS], [s for _, s in SOLUTIONS])  # one padded batch
    for (prompt, steps), rewards in zip(SOLUTIONS, got):
        assert len(rewards) == len(steps)
        assert rewards == pytest.approx(_plain(prm, prompt, steps), abs=1e-5)
    assert scorer.reward(got[0]) == min(got[0])  # the default prm_aggregate


def test_a_reward_model_is_not_loaded_as_a_process_model(rm_qwen):
    with pytest.raises(ValueError, match="not a process reward model"):
        StepScorer.load(rm_qwen)
