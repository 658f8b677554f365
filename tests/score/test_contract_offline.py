"""The scoring contract's offline consumers (``rmray score``'s reward column, ``rmray eval``'s
``rewards.jsonl``) give each item of tests/serve/test_contract.py's item set the reward plain transformers
gives its documented rendering -- for one model (ChatML: a message prompt with a text response, an empty
response) and for an ensemble on two saved scales, combined by standardized rewards as the server
combines them. Run on the session cluster, before the served apps hold its CPUs."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from rmray.core.spec import PLAIN_CHAT_TEMPLATE, ScoringSpec

from ..serve.conftest import PROMPT
from ..serve.test_contract import ITEMS, _reference


def _offline(model_dirs: list[str], folder) -> dict[str, list[float]]:
    from rmray.score.evaluate import EvalConfig, evaluate
    from rmray.score.offline import ScoreConfig, score_dataset

    folder.mkdir()
    inputs = folder / "items.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in ITEMS))
    score_dataset(ScoreConfig(model_dirs=model_dirs, input=str(inputs), output=str(folder / "scored")))
    table = pq.read_table(folder / "scored" / "part-00000-items.parquet")
    assert table.column("score_error").to_pylist() == [None] * len(ITEMS)
    # The eval rows: items 0/1 as a pair of texts, items 2/3 as a conversational pair (item 2's text
    # response as the assistant message it is scored as).
    reply = [{"role": "assistant", "content": ITEMS[2][1]}]
    pairs = [{"id": "text", "prompt": PROMPT, "chosen": ITEMS[0][1], "rejected": ITEMS[1][1]},
             {"id": "chat", "prompt": ITEMS[2][0], "chosen": reply, "rejected": ITEMS[3][1]}]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs))
    evaluate(EvalConfig(model_dir=model_dirs[0], models=model_dirs[1:], data=str(folder / "pairs.jsonl"),
                        output=str(folder / "eval")))
    by_id = {row["id"]: row for row in map(json.loads, (folder / "eval" / "rewards.jsonl").read_text().splitlines())}
    evaluated = by_id["text"]["chosen"] + by_id["text"]["rejected"] + by_id["chat"]["chosen"] + by_id["chat"]["rejected"]
    return {"rmray score": table.column("reward").to_pylist(), "rmray eval": evaluated}


def test_offline_consumers_give_one_reward_per_item_for_one_model(ray_cluster, rm_qwen_chat, tmp_path):
    expected = _reference(rm_qwen_chat)
    for consumer, rewards in _offline([rm_qwen_chat], tmp_path / "one").items():
        assert rewards == pytest.approx(expected, abs=1e-4), consumer


def test_offline_consumers_give_one_reward_per_item_for_an_ensemble(ray_cluster, rm_qwen, tmp_path):
    from rmray.core.tokenizer import load_tokenizer

    normed = str(shutil.copytree(rm_qwen, tmp_path / "qwen-normed"))
    tokenizer = load_tokenizer(normed)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.save_pretrained(normed)
    spec = ScoringSpec.load(normed)
    spec.reward_mean, spec.reward_std = 0.5, 2.0
    spec.save(normed)
    scaled = str(shutil.copytree(normed, tmp_path / "qwen-scaled"))
    spec.reward_mean, spec.reward_std = 8.0, 0.5
    spec.save(scaled)
    raw = _reference(normed)
    expected = [((r - 0.5) / 2.0 + (r - 8.0) / 0.5) / 2 for r in raw]
    assert max(abs(e - r) for e, r in zip(expected, raw)) > 1  # the rule matters for these numbers
    for consumer, rewards in _offline([normed, scaled], tmp_path / "ens").items():
        assert rewards == pytest.approx(expected, abs=1e-4), consumer
