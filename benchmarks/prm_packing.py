"""Process reward model training forwards: step-labelled tokens per second, packed against padded.

    python benchmarks/prm_packing.py [--batches 12] [--batch-size 16] [--hidden 256] [--layers 4]

Solutions of uneven length (the generated arithmetic set, each padded out with 0 to 15 checking steps,
as reasoning traces vary) go through forward + backward of a two-label Qwen2 token classifier, a
micro-batch at a time: right-padded (TRL's ``PRMTrainer`` layout), and packed (each solution its own
attention block, several per row: ``rmray.core.steps.pack_steps``). Both compute the same loss and
gradients (tests/core/test_step_packing.py). Reported: real tokens and labelled steps per second, and
the positions each layout computes. Results JSON in ``benchmarks/results/prm_packing.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

from rmray.core.collate import pad_sequences  # noqa: E402
from rmray.core.demo_data import demo_steps  # noqa: E402
from rmray.core.packing import PackRule  # noqa: E402
from rmray.core.steps import IGNORE, pack_steps, read_steps, step_loss, tokenize_steps  # noqa: E402


def solutions(n: int, seed: int) -> list[dict]:
    """Generated solutions with 0 to 15 extra checking steps each (labelled like the step they check)."""
    rng = random.Random(seed)
    rows = []
    for row in demo_steps(n, seed=seed):
        extra = rng.randint(0, 15)
        steps = row["completions"][:2] + [f"Check {k}: the partial sum still reads as above." for k in range(extra)]
        labels = row["labels"][:2] + [row["labels"][1]] * extra
        rows.append({**row, "completions": steps + row["completions"][2:], "labels": labels + row["labels"][2:]})
    return rows


def build(hidden: int, layers: int, folder: str):
    from transformers import AutoModelForTokenClassification, Qwen2Config

    from rmray.testing import build_bpe_tokenizer

    texts = [" ".join(r["completions"]) + r["prompt"] for r in solutions(200, seed=9)]
    tokenizer = build_bpe_tokenizer(texts, 2000, "<|pad|>", False)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return AutoModelForTokenClassification.from_config(config).train(), tokenizer


def padded_step(model, items, pad_id) -> int:
    ids, mask = pad_sequences([t.input_ids for t in items], pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits
    rows = [b for b, t in enumerate(items) for label in t.labels if label != IGNORE]
    cols = [p for t in items for p, label in enumerate(t.labels) if label != IGNORE]
    labels = [label for t in items for label in t.labels if label != IGNORE]
    step_loss(logits, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels)).backward()
    return ids.numel()


def packed_step(model, items, rule) -> int:
    packed = pack_steps(items, rule)
    step_loss(model(**packed.inputs).logits, packed.rows, packed.cols, packed.labels).backward()
    return packed.inputs["input_ids"].numel()


def measure(run, batches) -> dict:
    times, computed = [], 0
    run(batches[0])  # warm-up
    for batch in batches:
        start = time.perf_counter()
        computed += run(batch)
        times.append(time.perf_counter() - start)
    real = sum(len(t.input_ids) for batch in batches for t in batch)
    steps = sum(1 for batch in batches for t in batch for label in t.labels if label != IGNORE)
    seconds = sum(times)
    return {"seconds": seconds, "median_batch_s": statistics.median(times), "real_tokens_per_s": real / seconds,
            "steps_per_s": steps / seconds, "computed_positions": computed, "real_tokens": real}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "prm_packing.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = build(args.hidden, args.layers, folder)
    rows = solutions(args.batches * args.batch_size, seed=1)
    items = [tokenize_steps(tokenizer, read_steps(r), "\n", 4096) for r in rows]
    batches = [items[k:k + args.batch_size] for k in range(0, len(items), args.batch_size)]
    rule = PackRule(pad_token_id=tokenizer.pad_token_id, causal=True, attention_ratio=6.0 * args.hidden)
    padded = measure(lambda b: padded_step(model, b, tokenizer.pad_token_id), batches)
    packed = measure(lambda b: packed_step(model, b, rule), batches)
    results = {"model": {"hidden": args.hidden, "layers": args.layers}, "batch_size": args.batch_size,
               "batches": args.batches, "padded": padded, "packed": packed,
               "speedup_steps_per_s": packed["steps_per_s"] / padded["steps_per_s"]}
    write_results(args.results, results)
    for name, r in (("padded", padded), ("packed", packed)):
        print(f"{name}: {r['steps_per_s']:.0f} labelled steps/s, {r['real_tokens_per_s']:.0f} real tokens/s, "
              f"{r['computed_positions'] / r['real_tokens']:.2f} positions per real token")
    print(f"packed / padded: {results['speedup_steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
