"""Training on groups of K responses vs the same groups flattened into their K(K-1)/2 pairs.

    python benchmarks/group_training.py --model qwen2-6L-384 --repeats 3            # CPU
    python benchmarks/group_training.py --device cuda --model qwen2-24L-896 --groups 512 --repeats 3

Groups of 4 responses built from the shared hh-rlhf file: each row's chosen and rejected answers plus
the answers of the next two rows (off-topic for this prompt), rated 3, 2, 1, 0 -- 6 ordered pairs per
group. Three ways to train on the same groups, in the same micro-batches (``--batch-groups`` groups
per optimizer step), same model and weights, same ``max_tokens_per_batch`` per forward:

- ``groups``: one block per group, the prompt computed once (rmray's path for rated rows);
- ``pairs``: the flattened pairs, each pair sharing its prompt (rmray's pair path);
- ``pairs_padded``: the flattened pairs in TRL's padded layout (what a pairs-only trainer computes).

The figure of merit is pairs-equivalent per second: ordered pairs trained per second, the same pairs
in every path. Paths alternate within each repeat; medians are reported. Writes JSON to --out.
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
from train_vs_trl import HH, build_models  # noqa: E402

RATINGS = [3.0, 2.0, 1.0, 0.0]


def build_groups(tok, rows: list[dict], n_groups: int, max_length: int) -> list[dict]:
    """Token-id groups of 4; groups with a sequence over ``max_length`` are left out (never cut, which
    would break the shared prompt)."""
    from rmray.core.formats import BadRow, RatedGroup, split_implicit_prompt
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_group

    spec = ScoringSpec(max_length=max_length, truncation="drop", eos_token=tok.eos_token)
    split = []
    for r in rows:
        try:
            split.append(split_implicit_prompt(r["chosen"], r["rejected"]))
        except BadRow:  # a blank answer: the row is left out, as training skips it
            continue
    groups = []
    for i, (prompt, chosen, rejected) in enumerate(split):
        others = [split[(i + 1) % len(split)][1], split[(i + 2) % len(split)][2]]
        try:
            group = encode_group(tok, spec, RatedGroup(prompt, [chosen, rejected, *others], RATINGS))
        except BadRow:
            continue
        if len(group.ids) == 4:
            groups.append({"row_id": str(i), "group_ids": group.ids, "ratings": group.ratings})
        if len(groups) == n_groups:
            break
    return groups


def as_pairs(groups: list[dict]) -> dict:
    """The groups' ordered pairs as pair columns, group by group."""
    chosen, rejected = [], []
    for g in groups:
        ids, r = g["group_ids"], g["ratings"]
        for i in range(len(ids)):
            for j in range(len(ids)):
                if r[i] > r[j]:
                    chosen.append(ids[i])
                    rejected.append(ids[j])
    return {"row_id": [str(k) for k in range(len(chosen))], "chosen_ids": chosen, "rejected_ids": rejected,
            "margin": [0.0] * len(chosen)}


def train_once(model_dir: str, batches: list[dict], layout_kind: str, args) -> dict:
    """One pass over the micro-batches from fresh weights; the first micro-batch is a warm-up."""
    from rmray.config import load_config
    from rmray.core.model import RewardModel, load_hf_model
    from rmray.core.tokenizer import load_tokenizer
    from rmray.train.batches import Layout, to_chunks
    from rmray.train.compute import Compute
    from rmray.train.parallel import DDPStrategy

    tok = load_tokenizer(model_dir)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = load_config(None, ["learning_rate=1e-5", f"bf16={args.bf16}"])
    model = RewardModel(load_hf_model(model_dir, pad_token_id=tok.pad_token_id)).to(device).train()
    causal = model.readout == "last_token"
    layout = Layout(layout_kind if causal or layout_kind != "shared" else "packed", causal=causal, pad_token_id=tok.pad_token_id,
                    attention_ratio=6.0 * model.hf_model.config.hidden_size, max_tokens_per_batch=args.max_tokens,
                    segments=model.segments_ok and layout_kind != "padded")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    compute = Compute.for_run(model, model, DDPStrategy(), device, cfg.optimization)
    pairs = computed = 0
    start = None
    for k, batch in enumerate(batches):
        if k == 1:
            _sync(device)
            start = time.perf_counter()
        chunks = to_chunks(batch, layout)
        compute.forward_backward(chunks)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= 1:
            pairs += sum(c.num_pairs for c in chunks)
            computed += sum(c.computed_tokens for c in chunks)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"pairs_per_s": pairs / seconds, "seconds": seconds, "pairs": pairs, "computed_tokens": computed}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2-6L-384", help="qwen2-6L-384, qwen2-24L-896, qwen2-0.5b or minilm-l6")
    parser.add_argument("--groups", type=int, default=96, help="groups of 4 responses (6 pairs each)")
    parser.add_argument("--batch-groups", type=int, default=8, help="groups per optimizer step (x6 pairs)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384, help="max_tokens_per_batch of one forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", choices=["true", "false"], default=None, help="default: on for CUDA")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default="groups,pairs,pairs_padded", help="which of the three paths to run")
    parser.add_argument("--data", default=HH, help="the hh-rlhf JSON-lines file (gzip)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.bf16 = args.bf16 if args.bf16 is not None else str(args.device == "cuda").lower()
    torch.set_num_threads(args.threads)
    if not os.path.exists(args.data):
        sys.exit(f"needs the hh-rlhf file at {args.data}")
    with gzip.open(args.data, "rt") as f:
        rows = [json.loads(line) for line in f]
    from rmray.core.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = build_models(workdir, rows, [args.model])[args.model]
        groups = build_groups(load_tokenizer(model_dir), rows, args.groups, args.max_length)
        step = args.batch_groups
        group_batches = [{k: [g[k] for g in groups[i:i + step]] for k in ("row_id", "group_ids", "ratings")}
                         for i in range(0, len(groups), step)]
        pair_batches = [as_pairs(groups[i:i + step]) for i in range(0, len(groups), step)]
        paths = {"groups": (group_batches, "shared"), "pairs": (pair_batches, "shared"),
                 "pairs_padded": (pair_batches, "padded")}
        paths = {name: paths[name] for name in args.paths.split(",")}
        runs = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, (batches, kind) in paths.items():
                runs[name].append(train_once(model_dir, batches, kind, args))
                print(name, json.dumps(runs[name][-1]), flush=True)
    median = {name: statistics.median(r["pairs_per_s"] for r in rs) for name, rs in runs.items()}
    result = {"model": args.model, "device": args.device, "bf16": args.bf16, "groups": len(groups),
              "batch_groups": args.batch_groups, "max_tokens_per_batch": args.max_tokens,
              "median_pairs_per_s": median,
              **{f"groups_vs_{name}": median["groups"] / median[name] for name in median if name != "groups"},
              "computed_tokens": {name: rs[0]["computed_tokens"] for name, rs in runs.items()}, "runs": runs}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
