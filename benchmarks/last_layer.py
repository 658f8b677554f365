"""The read-out last layer (``last_layer_readout_only``) on and off, in one process, alternating.

Two measurements on the first 256 hh-rlhf pairs at max_length 512, bf16 autocast, 2 torch threads:
- training: forward + backward of rmray's packed, prefix-shared micro-batches (batch 8), no optimizer;
- scoring: ``Scorer.score_ids`` over the pairs' chosen and rejected texts (padded, length-sorted batches).
  Encoders score padded rows through the full model either way, so MiniLM's scoring pair is a control:
  the two sides run the same code, and their gap is this measurement's own noise.
Prints seconds per pass (training) and sequences/s (scoring), one line per model, and writes JSON.

    .venv/bin/python benchmarks/last_layer.py --rounds 4 --out benchmarks/results/last_layer.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder
from train_vs_trl import HH, build_models, kept_by_trl  # noqa: E402


def measure(model_dir: str, rows: list[dict], rounds: int, batches: int) -> dict:
    from rmray.core.batching import length_grouped_batches
    from rmray.core.formats import normalize_row
    from rmray.core.model import RewardModel, load_hf_model
    from rmray.core.scoring import Scorer
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_pair
    from rmray.core.tokenizer import load_tokenizer
    from rmray.train.batches import Layout, choose_layout, to_chunks

    tok = load_tokenizer(model_dir)
    spec = ScoringSpec(max_length=512, eos_token=tok.eos_token)
    pairs = [encode_pair(tok, spec, normalize_row(r, "implicit")) for r in rows]
    models = {}
    for on in (True, False):
        torch.manual_seed(0)
        models[on] = RewardModel(load_hf_model(model_dir, pad_token_id=tok.pad_token_id), last_layer_readout_only=on)
    causal = models[True].readout == "last_token"
    layout = Layout(choose_layout(True, True, causal), causal=causal, pad_token_id=tok.pad_token_id,
                    attention_ratio=6.0 * models[True].hf_model.config.hidden_size, segments=True)
    lengths = [len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    chunks = []
    for idx in length_grouped_batches(lengths, 8, seed=0)[:batches]:
        batch = {"chosen_ids": [pairs[i].chosen_ids for i in idx], "rejected_ids": [pairs[i].rejected_ids for i in idx],
                 "margin": [0.0] * len(idx)}
        chunks += to_chunks(batch, layout)
    sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]

    def train_pass(model) -> float:
        start = time.perf_counter()
        for chunk in chunks:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rewards = model(**chunk.inputs)
            rewards.float().sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def score_pass(model) -> float:
        scorer = Scorer(model.eval(), tok, spec)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            scorer.score_ids(sequences)
        model.train()
        return len(sequences) / (time.perf_counter() - start)

    for on in (True, False):  # warm-up: first-call allocations
        train_pass(models[on])
    train = {True: [], False: []}
    score = {True: [], False: []}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):  # either side first in half the rounds
            train[on].append(train_pass(models[on]))
            score[on].append(score_pass(models[on]))
    med = {k: {on: statistics.median(v[on]) for on in v} for k, v in (("train", train), ("score", score))}
    return {
        "train_s_per_pass": {"on": train[True], "off": train[False]},
        "score_seqs_per_s": {"on": score[True], "off": score[False]},
        "train_speedup": med["train"][False] / med["train"][True],
        "score_speedup": med["score"][True] / med["score"][False],
        "train_on_ahead": sum(a < b for a, b in zip(train[True], train[False])),
        "score_on_ahead": sum(a > b for a, b in zip(score[True], score[False])),
        "rounds": rounds, "micro_batches": len(chunks), "computed_tokens": sum(c.computed_tokens for c in chunks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12, help="micro-batches of 8 pairs per training pass")
    parser.add_argument("--models", default="qwen2-6L-384,minilm-l6")
    parser.add_argument("--hh", default=HH)
    parser.add_argument("--out", default="benchmarks/results/last_layer.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with gzip.open(args.hh, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {"args": vars(args), "models": {}}
    with tempfile.TemporaryDirectory() as work:
        models = build_models(work, hh_rows, args.models.split(","))
        for name in args.models.split(","):
            r = measure(models[name], kept_by_trl(models[name], hh_rows, 256, 512), args.rounds, args.batches)
            results["models"][name] = r
            print(f"{name}: train pass {statistics.median(r['train_s_per_pass']['off']):.2f} -> "
                  f"{statistics.median(r['train_s_per_pass']['on']):.2f} s ({r['train_speedup']:.2f}x, on ahead "
                  f"{r['train_on_ahead']}/{args.rounds}); scoring {statistics.median(r['score_seqs_per_s']['off']):.1f} -> "
                  f"{statistics.median(r['score_seqs_per_s']['on']):.1f} seqs/s ({r['score_speedup']:.2f}x, on ahead "
                  f"{r['score_on_ahead']}/{args.rounds})", flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
