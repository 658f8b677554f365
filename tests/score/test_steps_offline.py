"""A process reward model offline: ``rmray score`` writes each solution's step rewards and their
aggregate, ``rmray eval`` on stepwise rows reports step accuracy and the first-error metrics -- every
step reward as plain transformers gives it on TRL's tokens; bad rows named by reason, never dropped."""

import json
import os

import pyarrow.parquet as pq
import pytest

from ..core.test_step_scoring import _plain

QUESTION = "What is 12 * 3 + 4?"
SOLUTIONS = [["12 * 3 = 36.", "36 + 4 = 40."], ["12 * 3 = 36.", "36 + 4 = 40.", "The answer is 40."], ["It is 41."]]


@pytest.fixture(scope="module")
def prm(rm_qwen_chat, tmp_path_factory):
    from rmray.testing import build_tiny_prm

    return build_tiny_prm(rm_qwen_chat, str(tmp_path_factory.mktemp("prm") / "final"))


def test_score_writes_step_rewards_for_step_lists_and_split_texts(ray_cluster, prm, tmp_path):
    from rmray.score.offline import ScoreConfig, score_dataset

    rows = [{"prompt": QUESTION, "steps": SOLUTIONS[0]}, {"prompt": QUESTION, "steps": "\n".join(SOLUTIONS[1])},
            {"prompt": QUESTION, "steps": ["ok", ""]}, {"prompt": [{"role": "user", "content": QUESTION}], "steps": SOLUTIONS[2]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_dataset(ScoreConfig(model_dirs=[prm], input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"),
                              response_field="steps"))
    table = pq.read_table(os.path.join(tmp_path / "out", "part-00000-in.parquet")).to_pylist()
    assert len(table) == 4  # the bad row kept, with its error
    for k, solution in ((0, SOLUTIONS[0]), (1, SOLUTIONS[1])):
        expected = _plain(prm, QUESTION, solution)
        assert table[k]["step_rewards"] == pytest.approx(expected, abs=1e-4)
        assert table[k]["reward"] == pytest.approx(min(expected), abs=1e-4) and table[k]["score_error"] is None
    assert table[2]["reward"] is None and "empty" in table[2]["score_error"]
    assert table[3]["step_rewards"] == pytest.approx(_plain(prm, rows[3]["prompt"], SOLUTIONS[2]), abs=1e-4)


def test_eval_reports_step_and_first_error_metrics_from_plain_transformers_rewards(ray_cluster, prm, tmp_path):
    from rmray.score.evaluate import EvalConfig, evaluate

    labels = [[True, False], [True, False, False], [True]]
    rows = [{"id": f"s{k}", "prompt": QUESTION, "completions": s, "labels": y} for k, (s, y) in enumerate(zip(SOLUTIONS, labels))]
    rows.append({"id": "bad", "prompt": QUESTION, "completions": ["a", "b"], "labels": [True]})
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate(EvalConfig(model_dir=prm, data=str(tmp_path / "steps.jsonl"), output=str(tmp_path / "eval")))
    written = [json.loads(line) for line in open(tmp_path / "eval" / "rewards.jsonl")]
    by_id = {x["id"]: x for x in written}
    assert set(by_id) == {"s0", "s1", "s2", "bad"} and "bad_step_labels" in by_id["bad"]["error"]
    rewards = [_plain(prm, QUESTION, s) for s in SOLUTIONS]
    for k in range(3):
        assert by_id[f"s{k}"]["step_rewards"] == pytest.approx(rewards[k], abs=1e-4)
    # the metrics, counted here from plain transformers' rewards (a step predicted right at >= 0.5)
    steps = [(r >= 0.5, y) for rs, ys in zip(rewards, labels) for r, y in zip(rs, ys)]
    assert metrics["step_accuracy"] == pytest.approx(sum(p == y for p, y in steps) / len(steps))
    firsts = [(next((i for i, r in enumerate(rs) if r < 0.5), -1), next((i for i, y in enumerate(ys) if not y), -1))
              for rs, ys in zip(rewards, labels)]
    wrong = [p == y for p, y in firsts if y >= 0]
    right = [p == y for p, y in firsts if y < 0]
    assert metrics["erroneous_accuracy"] == pytest.approx(sum(wrong) / len(wrong))
    assert metrics["correct_accuracy"] == pytest.approx(sum(right) / len(right))
    assert metrics["bad_rows"] == 1 and json.load(open(tmp_path / "eval" / "metrics.json"))["steps"] == 6
