"""``eval_benchmarks`` during training and ``load_best_model_at_end``: real 2-worker runs."""

import json
import os

import pytest
from safetensors.torch import load_file

from rmray.train.metrics_log import read_metrics

from ..conftest import reference_config

pytestmark = pytest.mark.ray


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_benchmarks_are_scored_at_each_eval_and_final_is_the_best_checkpoint_by_one(ray_cluster, tiny_qwen, tmp_path):
    """JudgeBench items whose label prefers the demo's *rejected* answers: learning the demo's preferences
    makes the model worse on them step by step, so the checkpoint best by ``bench/judgebench/score`` is an
    early one and ``final/`` must be its weights, not the last step's. A RewardBench file of an odd number
    of items checks the ranks' shares are gathered whole; both benchmarks' logged values at the end equal
    ``rmray eval --benchmark`` on ``final/``."""
    from rmray.core.demo_data import demo_pairs
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig
    from rmray.train.run import train

    pairs = demo_pairs(seed=7)
    judge = _write(tmp_path / "judge.jsonl", [
        {"pair_id": f"j{i}", "original_id": i, "source": "livebench-math", "question": p["prompt"],
         "response_model": "demo", "response_A": p["chosen"], "response_B": p["rejected"], "label": "B>A"}
        for i, p in enumerate(pairs[:23])])
    reward = _write(tmp_path / "rb.jsonl", [
        {"id": i, "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
         "subset": "alpacaeval-easy" if i % 2 else "math-prm"} for i, p in enumerate(pairs[23:40])])
    out = str(tmp_path / "run")
    result = train(reference_config(tiny_qwen, out, eval_benchmarks=[f"judgebench={judge}", f"rewardbench={reward}"],
                                    learning_rate=1e-4, eval_steps=2, save_steps=2, metric_for_best_model="bench/judgebench/score",
                                    load_best_model_at_end=True, save_total_limit=2))
    records = read_metrics(out)
    restored = next(k for k, r in enumerate(records) if r.get("event") == "best_model")
    evals = {r["step"]: r for r in records[:restored] if "bench/judgebench/score" in r and "event" not in r}
    assert sorted(evals) == [2, 4, 6, 8]
    assert all("bench/rewardbench/Chat" in r and "bench/rewardbench/Reasoning" in r for r in evals.values())
    scores = [(evals[s]["bench/judgebench/score"], s) for s in (2, 4, 6, 8)]
    best_step = min(s for v, s in scores if v == max(v for v, _ in scores))
    assert best_step < 8, f"the swapped items did not get worse with training: {scores}"
    event = records[restored]
    assert event["from_step"] == best_step and event["value"] == max(v for v, _ in scores)

    checkpoint = load_file(os.path.join(out, "ray", f"checkpoint-{best_step:06d}", "model.safetensors"))
    final = load_file(os.path.join(result.final_model_dir, "model.safetensors"))
    assert checkpoint.keys() == final.keys() and all((checkpoint[k] == final[k]).all() for k in final)

    summary = result.summary
    assert summary["bench/judgebench/score"] == evals[best_step]["bench/judgebench/score"]
    for name, data in (("judgebench", judge), ("rewardbench", reward)):
        offline = evaluate(EvalConfig(model_dir=result.final_model_dir, data=data, benchmark=name))["benchmark"]
        logged = {k.split("/")[2]: v for k, v in summary.items() if k.startswith(f"bench/{name}/")}
        assert logged == pytest.approx({"score": offline["score"], **offline["sections"]} if offline["score"] is not None
                                       else offline["sections"], abs=1e-9), name


def test_a_metric_naming_a_benchmark_not_scored_is_refused_before_ray(tiny_qwen, tmp_path, capsys, no_ray):
    from rmray import cli

    code = cli.main(["train", f"model_name_or_path={tiny_qwen}", f"output_dir={tmp_path}",
                     "metric_for_best_model=bench/rm-bench/hard_acc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "eval_benchmarks does not score" in err[0], err
    code = cli.main(["train", f"model_name_or_path={tiny_qwen}", f"output_dir={tmp_path}", "eval_benchmarks=[rewardbench3]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "known: rewardbench, rewardbench2, rm-bench, judgebench" in err[0], err
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}])
    code = cli.main(["train", f"model_name_or_path={tiny_qwen}", f"output_dir={tmp_path}",
                     f"eval_benchmarks=[judgebench={pairs}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not in judgebench's row format: no column 'question'" in err[0], err
