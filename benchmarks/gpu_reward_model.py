"""A real-size reward model on one GPU, every measurement in one call:

    python benchmarks/gpu_reward_model.py --hh PATH/hh-rlhf-harmless-dev.jsonl.gz --out DIR [--budget-s 520]

1. The card's bf16 matmul rate (8192^3), the ceiling MFU is read against.
2. Training, Qwen2-0.5B's shape (real-size vocab, random init): rmray through Ray Train (1 worker,
   ``use_gpu=true``) vs TRL ``RewardTrainer`` on the same pairs, batch and ``max_length``, bf16 on both
   sides -- full fine-tune, then LoRA r=16 all-linear with gradient checkpointing. Pairs/s, peak GPU
   memory and MFU: model FLOPs of the tokens a pair needs (prompt once + both answers; 6 x non-embedding
   parameters per token for a full fine-tune, 4 x for LoRA, whose frozen weights get no weight gradient;
   attention and recomputation not counted) / time / the measured matmul rate.
3. Serving: ``rmray serve`` of the 0.5B model on the GPU, 32 clients x 8 texts against the offline
   ceiling of the same scorer; one prompt x 16 responses as a group vs 16 independent texts.
4. LoRA + gradient checkpointing on a 7B model (Llama-2-7B's shape, random init, bf16 base): peak GPU
   memory of rmray's own model path (load -> checkpointing -> LoRA -> reward read-out -> step) at 1,024
   and 4,096 tokens per micro-batch.
5. With time left: the training comparison again (a second run of each side).

Sections run in that order and the JSON is rewritten after each, so a run cut short keeps what it
measured. Every training run is its own process (train_vs_trl.measure).
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

from benchmarks import train_vs_trl  # noqa: E402

T0 = time.perf_counter()
# The script is written for a GPU; on a CPU it runs end to end at toy sizes (--model qwen2-2L-64 --tiny),
# so a device call is never the first run of its code.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if DEV == "cuda" else 0.0


def _reset_peak():
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(n: int) -> float:
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync()
    return 10 * 2 * n**3 / (time.perf_counter() - start) / 1e12


def needed_tokens(model_dir: str, rows: list[dict], max_length: int) -> int:
    """Tokens a pair needs: the shared prompt once, then each answer (rmray's shared-prefix layout)."""
    from rmray.core.formats import normalize_row
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_pair
    from rmray.core.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    spec = ScoringSpec(max_length=max_length, eos_token=tok.eos_token)
    total = 0
    for row in rows:
        pair = encode_pair(tok, spec, normalize_row(row, "implicit"))
        a, b = pair.chosen_ids, pair.rejected_ids
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += len(a) + len(b) - common
    return total


def train_runs(model_dir: str, data: str, args, lora: bool, tflops: float, flops_per_token: float,
               tokens: int, pairs: int) -> dict:
    run_args = argparse.Namespace(batch_size=args.batch_size, max_length=args.max_length, bf16=True,
                                  threads=args.threads, device=DEV, lora=lora, set=[])
    out = {}
    for kind in ("trl", "rmray"):
        start = time.perf_counter()
        try:
            result = train_vs_trl.measure(kind, model_dir, data, run_args)
        except subprocess.CalledProcessError as e:  # keep the other side's numbers and this side's reason
            out[kind] = {"error": (e.stderr or "")[-4000:]}
            print(f"[{'lora' if lora else 'full'}] {kind} failed:\n{out[kind]['error']}", flush=True)
            continue
        pps = result["pairs_per_s"]
        out[kind] = {"pairs_per_s": pps, "wall_s": time.perf_counter() - start,
                     "peak_gpu_mem_mb": result.get("peak_gpu_mem_mb") or result.get("peak_gpu_mem_mb_rank0"),
                     "mfu": flops_per_token * tokens * pps / pairs / (tflops * 1e12),
                     **({"time_to_first_step_s": result.get("time_to_first_step_s"), "layout": result.get("layout"),
                         "packed_attention": result.get("packed_attention"), "device": result.get("device")}
                        if kind == "rmray" else {})}
        print(f"[{'lora' if lora else 'full'}] {kind}: {pps:.1f} pairs/s, MFU {out[kind]['mfu']:.1%}, "
              f"peak {out[kind]['peak_gpu_mem_mb'] or 0:.0f} MB ({out[kind]['wall_s']:.0f} s)", flush=True)
    if "error" not in out["rmray"] and "error" not in out["trl"]:
        out["speedup"] = out["rmray"]["pairs_per_s"] / out["trl"]["pairs_per_s"]
    return out


def usable(row: dict) -> bool:
    from rmray.core.formats import BadRow, normalize_row

    try:
        normalize_row(row, "implicit")
    except BadRow:
        return False
    return True


def lora_7b_memory(rows: list[dict], tokenizer_dir: str, tiny: bool) -> dict:
    """Peak memory of rmray's LoRA path on a 7B-shaped model: the calls ``train.build.build_model`` makes,
    on a model built on the GPU (writing and re-reading 13 GB of random weights would only cost time)."""
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from rmray.config import load_config
    from rmray.core.formats import normalize_row
    from rmray.core.model import RewardModel, apply_lora
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_pair
    from rmray.core.tokenizer import load_tokenizer
    from rmray.train.batches import Layout, choose_layout, to_chunks
    from rmray.train.compute import Compute
    from rmray.train.parallel import DDPStrategy

    hidden, layers = (64, 2) if tiny else (4096, 32)
    config = LlamaConfig(vocab_size=32_000, hidden_size=hidden, intermediate_size=hidden * 11_008 // 4096,
                         num_hidden_layers=layers, num_attention_heads=32 if not tiny else 4,
                         num_key_value_heads=32 if not tiny else 4, num_labels=1, pad_token_id=0)
    _reset_peak()
    with torch.device(DEV):
        hf = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf.enable_input_require_grads()
    hf = apply_lora(hf, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model = RewardModel(hf).to(DEV)
    weights_mb = torch.cuda.memory_allocated() / 2**20 if DEV == "cuda" else 0.0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    tok = load_tokenizer(tokenizer_dir)
    spec = ScoringSpec(max_length=1024, eos_token=tok.eos_token)
    pairs = [encode_pair(tok, spec, normalize_row(r, "implicit")) for r in rows if usable(r)][:400]
    cfg = load_config(None, ["learning_rate=1e-5", "bf16=true"])
    layout = Layout(choose_layout(True, True, True), causal=True, pad_token_id=0, attention_ratio=6.0 * hidden, segments=model.segments_ok)
    compute = Compute.for_run(model, model, DDPStrategy(), torch.device(DEV), cfg.optimization)
    result = {"params_b": sum(p.numel() for p in model.parameters()) / 1e9, "trainable_m": trainable / 1e6,
              "weights_mb": weights_mb}
    for budget in (1024, 4096):
        idx, used = [], 0
        for i, p in enumerate(pairs):  # real pairs until the micro-batch holds ~budget tokens
            n = len(p.chosen_ids) + len(p.rejected_ids)
            if used + n > budget:
                continue
            idx.append(i)
            used += n
        batch = {"chosen_ids": [pairs[i].chosen_ids for i in idx], "rejected_ids": [pairs[i].rejected_ids for i in idx],
                 "margin": [0.0] * len(idx)}
        _reset_peak()
        for _ in range(2):
            compute.forward_backward(to_chunks(batch, layout))
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync()
        result[f"peak_mb_{budget}_tokens"] = _peak_mb()
        result[f"pairs_{budget}_tokens"] = len(idx)
        print(f"[7b lora] {budget} tokens ({len(idx)} pairs): peak {result[f'peak_mb_{budget}_tokens']:.0f} MB", flush=True)
    del model, hf, opt
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return result


def serving(model_dir: str, hh: str, args) -> dict:
    """rmray serve on the GPU: 32 clients x 8 texts vs the offline ceiling; group vs independent."""
    from benchmarks import serve_bench
    from rmray.core.scoring import Scorer
    from rmray.ray_env import init_ray
    from rmray.serve.run import start as serve_start
    from rmray.serve.settings import ServeSettings
    from rmray.testing import as_rmray_model

    serve_bench.HH = hh
    items, rows = serve_bench.load_items(args.serve_texts)
    rm = as_rmray_model(model_dir, os.path.join(os.path.dirname(model_dir), "rm-served"), max_length=args.max_length)
    scorer = Scorer.load(rm, device=DEV)
    serve_bench.offline(scorer, items[:64], 64)
    ceiling = statistics.median(serve_bench.offline(scorer, items, 64) for _ in range(3))
    del scorer
    gpu = DEV == "cuda"
    init_ray("local", num_cpus=8 if gpu else 2, include_dashboard=False)
    serve_start(ServeSettings(model_dirs=[rm], port=8011, num_cpus=2 if gpu else 0.5, num_gpus=1 if gpu else 0,
                              torch_threads=4 if gpu else 1, ingress_num_cpus=1 if gpu else 0.5, max_batch_size=64,
                              batch_wait_timeout_s=0.005))
    url = "http://127.0.0.1:8011"
    serve_bench.http_load(url, items[:256], 32, 8)
    runs = [serve_bench.http_load(url, items, 32, 8) for _ in range(3)]
    served = statistics.median(r["texts_per_s"] for r in runs)
    import requests

    groups = serve_bench.groups_of(items, rows, 16, 16)
    times = {"group": [], "independent": []}
    for rep in range(4):
        for name in times:
            start = time.perf_counter()
            for prompt, responses in groups:
                if name == "group":
                    requests.post(url + "/score_group", json={"prompt": prompt, "responses": responses}, timeout=300)
                else:
                    requests.post(url + "/score", json={"items": [{"prompt": prompt, "response": r} for r in responses]},
                                  timeout=300)
            if rep:  # the first round warms both up
                times[name].append(time.perf_counter() - start)
    from ray import serve

    serve.shutdown()
    result = {"texts": len(items), "offline_texts_per_s": ceiling, "served_texts_per_s": served,
              "served_vs_offline": served / ceiling, "runs": runs,
              "group_1x16_s": statistics.median(times["group"]), "independent_16_s": statistics.median(times["independent"])}
    result["group_speedup"] = result["independent_16_s"] / result["group_1x16_s"]
    print(f"[serve] {served:.0f} texts/s served vs {ceiling:.0f} offline ({result['served_vs_offline']:.2f}); "
          f"group 1x16 {result['group_speedup']:.2f}x faster than 16 independent", flush=True)
    return result


def section(results: dict, name: str, out: str, budget_s: float, need_s: float, fn):
    left = budget_s - (time.perf_counter() - T0)
    if left < need_s:
        results[name] = {"skipped": f"{left:.0f} s left, needs ~{need_s:.0f} s"}
        print(f"[{name}] skipped: {results[name]['skipped']}", flush=True)
        return
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - one section failing must not lose the others' numbers
        import traceback

        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    results["elapsed_s"] = time.perf_counter() - T0
    write_results(os.path.join(out, "gpu_reward_model.json"), results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hh", default=train_vs_trl.HH)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--serve-texts", type=int, default=2048)
    parser.add_argument("--budget-s", type=float, default=520, help="skip sections that would not finish by then")
    parser.add_argument("--model", default="qwen2-0.5b", help="a train_vs_trl model name (a small one to try the script)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, to try the script on a CPU")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    skip = set(args.skip.split(","))
    results = {"args": vars(args), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "none (cpu)"}
    results["bf16_matmul_tflops"] = tflops = matmul_tflops(512 if args.tiny else 8192)
    print(f"[gpu] {results['gpu']}: bf16 matmul {tflops:.0f} TFLOP/s", flush=True)
    with gzip.open(args.hh, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    work = tempfile.mkdtemp(prefix="rmray-gpu-")
    model_dir = train_vs_trl.build_models(work, hh_rows, [args.model])[args.model]
    rows = train_vs_trl.kept_by_trl(model_dir, hh_rows, args.pairs, args.max_length)
    data = os.path.join(work, "pairs.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    params = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["x"]).load_file(
        os.path.join(model_dir, "model.safetensors")).values())
    non_embedding = params - config.vocab_size * config.hidden_size
    tokens = needed_tokens(model_dir, rows, args.max_length)
    results.update(pairs=len(rows), needed_tokens=tokens, params=params, non_embedding_params=non_embedding)
    print(f"[data] {len(rows)} pairs, {tokens} needed tokens; {params / 1e6:.0f} M params "
          f"({non_embedding / 1e6:.0f} M non-embedding)", flush=True)
    jobs = [("full", 150, lambda: train_runs(model_dir, data, args, False, tflops, 6 * non_embedding, tokens, len(rows))),
            ("lora", 150, lambda: train_runs(model_dir, data, args, True, tflops, 4 * non_embedding, tokens, len(rows))),
            ("serving", 100, lambda: serving(model_dir, args.hh, args)),
            ("lora_7b_memory", 60, lambda: lora_7b_memory(hh_rows, model_dir, args.tiny)),
            ("full_repeat", 150, lambda: train_runs(model_dir, data, args, False, tflops, 6 * non_embedding, tokens, len(rows)))]
    for name, need, fn in jobs:
        if name not in skip:
            section(results, name, args.out, args.budget_s, need, fn)
    print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=1, default=str), flush=True)


if __name__ == "__main__":
    main()
