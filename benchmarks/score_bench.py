"""Offline scoring: `rmray score` (Ray Data actor pool -> Parquet) vs a plain batched loop in one
process over the same texts, and scaling with actors.

    scripts/in-loopback-ns .venv/bin/python benchmarks/score_bench.py --texts 2048
Results: benchmarks/results/score_bench.json; summarized in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder
from serve_bench import load_items  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "score_bench.json"))
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmray.core.scoring import Scorer
    from rmray.ray_env import init_ray
    from rmray.score.offline import ScoreConfig, score_dataset
    from rmray.testing import as_rmray_model, build_tiny_causal_rm

    items, rows = load_items(args.texts)
    work = tempfile.mkdtemp(prefix="rmray-score-bench-")
    base = build_tiny_causal_rm(os.path.join(work, "base"), [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                                arch="qwen2", num_layers=6, hidden=384, heads=6, vocab_size=8000)
    model_dir = as_rmray_model(base, os.path.join(work, "rm"), max_length=args.max_length)
    data = os.path.join(work, "texts.jsonl")
    with open(data, "w") as f:
        for i, (p, r) in enumerate(items):
            f.write(json.dumps({"id": i, "prompt": p, "response": r}) + "\n")

    torch.set_num_threads(2)
    results = {"texts": len(items), "model": "qwen2-6L-384 (random init)", "max_length": args.max_length}

    # 1. rmray's Scorer in one process: global length sort, token-budget batches.
    start = time.perf_counter()
    scorer = Scorer.load(model_dir)
    scorer.score_ids([scorer.encode(p, r) for p, r in items], batch_size=32)
    results["plain_sorted_loop_texts_per_s"] = len(items) / (time.perf_counter() - start)

    # 2. The loop most people write: transformers, input order, batches of 32 padded to their longest.
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(items), 32):
            texts = [p + r + tok.eos_token for p, r in items[i:i + 32]]
            enc = tok(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
            model(**enc)
    results["plain_transformers_loop_texts_per_s"] = len(items) / (time.perf_counter() - start)

    init_ray("local", num_cpus=2, include_dashboard=False)
    for actors, threads, cpus in ((1, 2, 1.0), (2, 1, 0.5)):
        out = os.path.join(work, f"out-{actors}")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        score_dataset(ScoreConfig(model_dirs=[model_dir], input=data, output=out, concurrency=actors,
                                  torch_threads=threads, num_cpus=cpus, batch_size=512))
        results[f"ray_data_{actors}_actor_texts_per_s"] = len(items) / (time.perf_counter() - start)
    best_ray = max(results["ray_data_1_actor_texts_per_s"], results["ray_data_2_actor_texts_per_s"])
    results["ray_vs_plain_sorted"] = best_ray / results["plain_sorted_loop_texts_per_s"]
    results["ray_vs_plain_transformers"] = best_ray / results["plain_transformers_loop_texts_per_s"]
    write_results(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
