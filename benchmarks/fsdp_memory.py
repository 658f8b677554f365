"""Peak memory per worker, DDP vs FSDP (``fsdp=full_shard``), on the same model and batches.

A CPU stand-in for the GPU question "does it fit": full fine-tuning holds 16 bytes per parameter
(fp32 weights, gradients, two Adam moments); DDP keeps all of it on every rank, FSDP 1/N of it plus
one gathered block at a time. Each run is ``rmray.train.run.train`` on a fresh local Ray with 2
workers; the number is the rank-0 worker's peak RSS during training (the summary's
``peak_rss_mb_rank0``, taken before the final save gathers the full model).

    scripts/in-loopback-ns .venv/bin/python benchmarks/fsdp_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder


def build_model(workdir: str, layers: int, hidden: int) -> str:
    from rmray.core.demo_data import demo_pairs
    from rmray.testing import build_tiny_causal_rm

    texts = [p["prompt"] + p["chosen"] for p in demo_pairs()] + [p["prompt"] + p["rejected"] for p in demo_pairs()]
    return build_tiny_causal_rm(os.path.join(workdir, "model"), texts, num_layers=layers, hidden=hidden,
                                heads=hidden // 64, vocab_size=4000)


def run_one(model: str, fsdp: str, out: str) -> dict:
    from rmray.config import TrainConfig
    from rmray.train.run import train

    cfg = TrainConfig(model_name_or_path=model, train_data="demo", output_dir=out, max_length=64, eval_split_ratio=0,
                      per_device_train_batch_size=2, max_steps=3, num_workers=2, cpus_per_worker=0.5, report_to=[],
                      logging_steps=1, fsdp=fsdp)
    return train(cfg).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/fsdp_memory.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:  # child: one run in its own process and Ray
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_one(args.model, args.one, os.path.join(tmp, "run"))))
        return

    import torch
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as work:
        model = build_model(work, args.layers, args.hidden)
        with safe_open(os.path.join(model, "model.safetensors"), "pt") as f:
            params = sum(f.get_tensor(k).numel() for k in f.keys())
        results = {"params": params, "layers": args.layers, "hidden": args.hidden, "workers": 2,
                   "torch": torch.__version__, "runs": {}}
        for name, fsdp in (("ddp", ""), ("fsdp_full_shard", "full_shard"), ("fsdp_shard_grad_op", "shard_grad_op")):
            child = subprocess.run([sys.executable, __file__, "--one", fsdp, "--model", model],
                                   capture_output=True, text=True, check=True)
            summary = json.loads(next(line[7:] for line in child.stdout.splitlines() if line.startswith("RESULT ")))
            results["runs"][name] = {"peak_rss_mb_rank0": summary["peak_rss_mb_rank0"],
                                     "train_pairs_per_s": summary["train_pairs_per_s"], "loss": summary.get("loss")}
            print(name, results["runs"][name], flush=True)
    state_mb = params * 16 / 2**20
    results["full_training_state_mb"] = state_mb
    print(f"{params / 1e6:.0f}M params: weights+grads+Adam = {state_mb:.0f} MB per DDP rank, {state_mb / 2:.0f} MB per FSDP rank")
    write_results(args.out, results, indent=1)


if __name__ == "__main__":
    main()
