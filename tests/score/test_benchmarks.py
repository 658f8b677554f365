"""``rmray eval --benchmark`` end to end: rows in each benchmark's published format, every item scored as
the harnesses score a sequence classifier and written to ``rewards.jsonl``, the score from the benchmark's
own code (:mod:`tests.score.reference`) on those rewards."""

import json

import pytest

from rmray.core.benchmarks import BENCHMARKS

from .reference import (
    judgebench_compute_final_metrics,
    judgebench_decision,
    rewardbench2_harness,
    rewardbench_harness,
    rm_bench_compute_accuracy,
)


def _write_rewardbench_rows(path) -> list[dict]:
    """Rows in RewardBench's published format (``prompt, chosen, rejected, subset, id``), one empty answer."""
    rows = []
    for k, subset in enumerate(["alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "hep-python", "math-prm"]):
        for j in range(2):
            rows.append({"prompt": f"Question {k}.{j}: how do I keep basil fresh?", "subset": subset,
                         "chosen": "Keep the stems in water, like cut flowers." if j else "",
                         "rejected": f"I cannot help with that ({k}).", "id": 100 * k + j})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_rmray_eval_benchmark_scores_every_item_as_the_chat_template_renders_it(ray_cluster, rm_qwen_chat, tmp_path):
    """A chat model: each answer is scored as the harness renders (user prompt, assistant answer) with the
    model's chat template -- the reward plain transformers gives that text; every row in rewards.jsonl;
    the sections equal RewardBench's own code on those rewards."""
    from transformers import AutoTokenizer

    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig
    from rmray.testing import plain_transformers_scores

    rows = _write_rewardbench_rows(tmp_path / "rb.jsonl")
    metrics = evaluate(EvalConfig(model_dir=rm_qwen_chat, data=str(tmp_path / "rb.jsonl"), benchmark="rewardbench",
                                  output=str(tmp_path / "out")))
    written = {r["id"]: r for r in map(json.loads, open(tmp_path / "out" / "rewards.jsonl"))}
    assert sorted(written) == sorted(str(r["id"]) for r in rows)
    tokenizer = AutoTokenizer.from_pretrained(rm_qwen_chat)
    for row in rows[:4]:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                                {"role": "assistant", "content": row[side]}], tokenize=False)
                 for side in ("chosen", "rejected")]
        expected = plain_transformers_scores(rm_qwen_chat, texts, add_eos=False)
        got = written[str(row["id"])]
        assert [got["chosen"][0], got["rejected"][0]] == pytest.approx(expected, abs=1e-4), row["id"]
    subsets = [written[str(r["id"])]["subset"] for r in rows]
    accuracy, sections = rewardbench_harness(subsets, [written[str(r["id"])]["chosen"][0] for r in rows],
                                  [written[str(r["id"])]["rejected"][0] for r in rows])
    assert metrics["benchmark"]["sections"] == pytest.approx(sections, abs=1e-9)
    assert metrics["benchmark"]["score"] == pytest.approx(sum(sections.values()) / 4, abs=1e-9)
    assert json.load(open(tmp_path / "out" / "metrics.json"))["benchmark"]["name"] == "rewardbench"


def _published_rows() -> dict[str, list[dict]]:
    """A few rows of each benchmark in its exact published format (one empty answer in each)."""
    answers = ["The answer is 4.", "It is 5.", "", "Four, since 2 + 2 = 4.", "**4**", "I think 22."]
    rb2 = [{"id": str(i), "prompt": f"What is 2 + {i}?", "chosen": [answers[i % 6]], "rejected": answers[1:4],
            "num_correct": 1, "num_rejected": 3, "total_completions": 4, "models": ["a", "b", "c", "d"],
            "subset": subset, "additional_metadata": {}}
           for i, subset in enumerate(["Factuality", "Precise IF", "Math", "Safety", "Focus"])]
    rb2 += [{"id": f"{kind}:0", "prompt": "Name a prime.", "chosen": ["2", "3", "5"][:k], "rejected": ["4", "9"],
             "num_correct": k, "num_rejected": 2, "total_completions": k + 2, "models": ["m"] * (k + 2),
             "subset": "Ties", "additional_metadata": {}} for kind, k in (("ref", 1), ("tied", 3))]
    rm_bench = [{"id": i, "prompt": f"Explain {topic}.", "domain": domain,
                 "chosen": [f"{topic}: right.", f"{topic} is right, in detail.", f"**{topic}**: right."],
                 "rejected": [f"{topic}: wrong.", "", f"**{topic}**: wrong."]}
                for i, (topic, domain) in enumerate([("tea", "chat"), ("sums", "math"), ("loops", "code"),
                                                     ("knives", "safety-refuse"), ("fire", "safety-response")])]
    judgebench = [{"pair_id": f"p{i}", "original_id": i, "source": source, "question": f"Question {i}?",
                   "response_model": "gpt-4o-2024-05-13", "response_A": f"Answer A{i}", "response_B": "" if i == 2 else f"B{i}",
                   "label": "A>B" if i % 2 else "B>A"}
                  for i, source in enumerate(["mmlu-pro-law", "livebench-reasoning", "livebench-math", "livecodebench"])]
    return {"rewardbench2": rb2, "rm-bench": rm_bench, "judgebench": judgebench}


def _answers(name: str, row: dict) -> tuple[str, list[str], list[str]]:
    """(prompt, right answers, wrong answers) of a published row, read the way its harness reads it."""
    if name == "judgebench":
        a, b = row["response_A"], row["response_B"]
        return row["question"], [a if row["label"] == "A>B" else b], [b if row["label"] == "A>B" else a]
    return row["prompt"], row["chosen"], row["rejected"]


def _reference(name: str, rows: list[dict], written: dict) -> tuple[float, dict]:
    """The benchmark's own code on the rewards rmray wrote: (score, sections)."""
    if name == "rewardbench2":
        sections = rewardbench2_harness([written[r["id"]] for r in rows])
        return sum(sections.values()) / len(sections), sections
    if name == "rm-bench":
        out = rm_bench_compute_accuracy([{"domain": r["domain"], "score_chosen": written[str(r["id"])]["chosen"],
                                          "score_rejected": written[str(r["id"])]["rejected"]} for r in rows])
        return out["total_avg_acc"], {d: out[d] for d in ("chat", "math", "code", "safety")}
    pairs = []
    for r in rows:
        right, wrong = written[r["pair_id"]]["chosen"][0], written[r["pair_id"]]["rejected"][0]
        a, b = (right, wrong) if r["label"] == "A>B" else (wrong, right)
        pairs.append({**r, "judgments": [{"decision": judgebench_decision(a, b)}, {"decision": judgebench_decision(b, a)}]})
    sections = {p: judgebench_compute_final_metrics(pairs, True, lambda x, p=p: x["source"].startswith(p)) / 100
                for p in ("mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench")}
    return judgebench_compute_final_metrics(pairs, True) / 100, sections


def test_each_benchmark_in_its_published_format_scores_every_item_as_rmray_score_does(ray_cluster, rm_qwen, tmp_path):
    """A model without a chat template: each answer is scored as prompt + answer text -- the reward
    ``rmray score`` gives the same prompt and response; every item is in rewards.jsonl; the score and sections
    equal the benchmark's own code on those rewards. RM-Bench is read from one JSON document, as published."""
    from rmray.score.evaluate import evaluate
    from rmray.score.offline import score_dataset
    from rmray.score.settings import EvalConfig, ScoreConfig

    published, written, wanted = _published_rows(), {}, []
    for name, rows in published.items():
        path = tmp_path / ("total_dataset.json" if name == "rm-bench" else f"{name}.jsonl")
        path.write_text(json.dumps(rows) if name == "rm-bench" else "".join(json.dumps(r) + "\n" for r in rows))
        metrics = evaluate(EvalConfig(model_dir=rm_qwen, data=str(path), benchmark=name, output=str(tmp_path / name)))
        written[name] = {r["id"]: r for r in map(json.loads, open(tmp_path / name / "rewards.jsonl"))}
        id_field = BENCHMARKS[name].id_field
        assert sorted(written[name]) == sorted(str(r[id_field]) for r in rows), name
        score, sections = _reference(name, rows, written[name])
        assert metrics["benchmark"]["sections"] == pytest.approx(sections, abs=1e-9), name
        assert metrics["benchmark"]["score"] == pytest.approx(score, abs=1e-9), name
        for row in rows:
            prompt, right, wrong = _answers(name, row)
            got = written[name][str(row[id_field])]
            wanted += [(prompt, answer, reward) for answer, reward in zip(right + wrong, got["chosen"] + got["rejected"])]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a, _ in wanted))
    score_dataset(ScoreConfig(model_dirs=[rm_qwen], input=str(tmp_path / "items.jsonl"), output=str(tmp_path / "scored")))
    import pyarrow.parquet as pq

    scored = pq.read_table(tmp_path / "scored").column("reward").to_pylist()
    assert scored == pytest.approx([reward for _, _, reward in wanted], abs=1e-4)
    assert BENCHMARKS["rm-bench"].score(list(written["rm-bench"].values()))["hard_acc"] is not None


def test_a_file_not_in_the_benchmarks_format_and_an_unknown_name_are_one_line_before_ray(rm_qwen, tmp_path, capsys,
                                                                                          no_ray):
    from rmray import cli

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"}) + "\n")
    for args, expected in ((["--benchmark", "rewardbench"], "not in rewardbench's row format: no column 'subset'"),
                           (["--benchmark", "judgebench"], "not in judgebench's row format: no column 'question'"),
                           (["--benchmark", "rewardbench3"], "known: rewardbench, rewardbench2, rm-bench, judgebench")):
        code = cli.main(["eval", rm_qwen, str(tmp_path / "pairs.jsonl"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)
