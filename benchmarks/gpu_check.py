"""The GPU path, checked where the CPU test suite cannot see it. Run on a CUDA machine:

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json [--hh PATH] [--minilm-config DIR]

1. fp32 exactness on CUDA: packed and shared-prefix rewards and gradients against the padded forward
   (the tests' 1e-4 relative), Qwen2 and Llama (pad = EOS) and MiniLM, on the tests' edge-case pairs.
2. bf16 autocast: the varlen flash path (counted, so it is known to have run) against padded bf16 SDPA,
   both measured against the fp32 padded forward -- its error must be of bf16's size, not a bug's.
3. Group scoring (one prompt x 16 responses) through the varlen path against each response alone.
4. One training step of real hh-rlhf micro-batches (8 pairs) per attention kernel: padded SDPA, packed
   with a dense block mask, segments per piece (SDPA), segments in one varlen flash call per layer.
5. Ray Train on the GPU: FSDP2 (NCCL all-gathers even with one rank), bf16, a checkpoint on disk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

from benchmarks.train_vs_trl import HH, build_models  # noqa: E402
from rmray.core import attention  # noqa: E402
from rmray.core.collate import pad_sequences  # noqa: E402
from rmray.core.model import RewardModel, load_hf_model  # noqa: E402
from rmray.core.packing import pack_groups, pair_groups, pair_readout_order  # noqa: E402
from rmray.core.tokenizer import load_tokenizer  # noqa: E402
from rmray.testing import build_tiny_causal_rm  # noqa: E402
from tests.core.test_packing import edge_case_pairs, rewards_and_grads  # noqa: E402

DEV = torch.device("cuda")
FLASH_CALLS = [0]


def _sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def _count_flash():
    """Count varlen flash calls, so every bf16 result below is known to come from that kernel."""
    inner = attention._flash_varlen

    def counted(*args, **kwargs):
        FLASH_CALLS[0] += 1
        return inner(*args, **kwargs)
    attention._flash_varlen = counted


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def worst_grad(grads: dict, ref: dict) -> float:
    return max(rel(grads[n], ref[n]) for n in ref if ref[n].norm() > 1e-8)


def compare(path: str, causal: bool, share: bool, bf16: bool) -> dict:
    """Packed (segment plan) vs padded, rewards and gradients, on the tests' edge-case pairs."""
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).to(DEV)
    chosen, rejected = edge_case_pairs(tok)
    n = len(chosen)
    def padded(half: bool):
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=half):
            return model(*(t.to(DEV) for t in pad_sequences(chosen + rejected, tok.pad_token_id))).float()

    def packed():
        pb = pack_groups(pair_groups(chosen, rejected, share), row_tokens=0, pad_token_id=tok.pad_token_id,
                         causal=causal, dense_mask=False)
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(pb.input_ids.to(DEV), None, pb.position_ids.to(DEV), pb.readout_row.to(DEV),
                        pb.readout_col.to(DEV), segments=pb.plan).float()
        return out[pair_readout_order(n, share).to(DEV)] if causal else out

    ref32, ref32_grads = rewards_and_grads(model, lambda: padded(False))
    before = FLASH_CALLS[0]
    out, grads = rewards_and_grads(model, packed)
    result = {"flash_varlen_calls": FLASH_CALLS[0] - before, "rewards_rel": rel(out, ref32),
              "worst_grad_rel": worst_grad(grads, ref32_grads)}
    if not bf16:
        result["ok"] = result["flash_varlen_calls"] == 0 and result["rewards_rel"] <= 1e-4 and result["worst_grad_rel"] <= 1e-4
        return result
    pad16, pad16_grads = rewards_and_grads(model, lambda: padded(True))
    result.update(padded_bf16_rewards_rel=rel(pad16, ref32), padded_bf16_worst_grad_rel=worst_grad(pad16_grads, ref32_grads))
    # Against fp32, the varlen path's error must be of plain bf16 SDPA's size; a wrong mask is off by O(1).
    result["ok"] = (result["flash_varlen_calls"] > 0 and
                    result["rewards_rel"] <= max(3 * result["padded_bf16_rewards_rel"], 2e-2) and
                    result["worst_grad_rel"] <= max(3 * result["padded_bf16_worst_grad_rel"], 5e-2))
    return result


def group_scoring(path: str) -> dict:
    tok = load_tokenizer(path)
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).to(DEV).eval()
    prompt = tok("\n\nHuman: Write a haiku about rain.\n\nAssistant:")["input_ids"]
    responses = [tok(f" rain number {i} falls" + " softly" * i + tok.eos_token)["input_ids"] for i in range(16)]
    before = FLASH_CALLS[0]
    with torch.no_grad():
        alone32 = model(*(t.to(DEV) for t in pad_sequences([prompt + r for r in responses], tok.pad_token_id)))
        pb = pack_groups([(prompt, responses)], row_tokens=0, pad_token_id=tok.pad_token_id, causal=True, dense_mask=False)
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            grouped = model(pb.input_ids.to(DEV), None, pb.position_ids.to(DEV), pb.readout_row.to(DEV),
                            pb.readout_col.to(DEV), segments=pb.plan)
            alone16 = model(*(t.to(DEV) for t in pad_sequences([prompt + r for r in responses], tok.pad_token_id)))
    out = {"flash_varlen_calls": FLASH_CALLS[0] - before, "grouped_bf16_rel": rel(grouped, alone32),
           "alone_bf16_rel": rel(alone16, alone32)}
    out["ok"] = out["flash_varlen_calls"] > 0 and out["grouped_bf16_rel"] <= max(3 * out["alone_bf16_rel"], 2e-2)
    return out


def step_times(path: str, hh_rows: list[dict], steps: int = 20) -> dict:
    """ms per training step (fwd + bwd + AdamW) on the same 8-pair micro-batches, per layout/kernel."""
    from rmray.config import TrainConfig
    from rmray.core.formats import BadRow, normalize_row
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_pair
    from rmray.train.batches import Layout, batch_groups, choose_layout, padded_equivalent_tokens, to_chunks
    from rmray.train.compute import Compute
    from rmray.train.parallel import DDPStrategy

    tok = load_tokenizer(path)
    spec = ScoringSpec(max_length=512, eos_token=tok.eos_token)
    pairs = []
    for row in hh_rows:
        try:
            pairs.append(encode_pair(tok, spec, normalize_row(row, "implicit")))
        except BadRow:  # a blank answer: the pipeline skips these too
            continue
        if len(pairs) == 8 * steps:
            break
    batches = [{"chosen_ids": [p.chosen_ids for p in pairs[i:i + 8]], "rejected_ids": [p.rejected_ids for p in pairs[i:i + 8]],
                "margin": [0.0] * 8} for i in range(0, len(pairs), 8)]
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).to(DEV)
    hidden = model.hf_model.config.hidden_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    compute = Compute.for_run(model, model, DDPStrategy(), DEV, TrainConfig(bf16=True).optimization)
    # (packed, segment attention, varlen flash allowed); without varlen, segments run one SDPA call per piece
    variants = {"padded_sdpa": (False, False, True), "packed_dense_mask": (True, False, True),
                "segments_per_piece_sdpa": (True, True, False), "segments_flash_varlen": (True, True, True)}
    flash_dtype = attention.flash_dtype
    result = {"padded_equivalent_tokens": sum(padded_equivalent_tokens(batch_groups(b)) for b in batches)}
    for name, (packed, segments, flash) in variants.items():
        layout = Layout(choose_layout(packed, packed, True), causal=True, pad_token_id=tok.pad_token_id, attention_ratio=6.0 * hidden,
                        segments=segments)
        chunked = [to_chunks(b, layout) for b in batches]
        computed = sum(c.computed_tokens for cs in chunked for c in cs)
        attention.flash_dtype = flash_dtype if flash else (lambda query: None)
        before = FLASH_CALLS[0]
        for warm in (True, False):
            _sync()
            t0 = time.perf_counter()
            for chunks in chunked[:3] if warm else chunked:
                compute.forward_backward(chunks)
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync()
        attention.flash_dtype = flash_dtype
        assert DEV.type != "cuda" or (FLASH_CALLS[0] > before) == (segments and flash), name
        result[name] = {"ms_per_step": 1000 * (time.perf_counter() - t0) / len(chunked), "computed_tokens": computed}
    return result


def ray_fsdp_run(path: str, hh_path: str, work: str) -> dict:
    from rmray.config import load_config
    from rmray.ray_env import init_ray
    from rmray.train.run import train

    data = os.path.join(work, "pairs.jsonl")
    with gzip.open(hh_path, "rt") as f, open(data, "w") as out:
        for i, line in enumerate(f):
            if i < 128:
                out.write(line)
    init_ray("local", num_cpus=4, include_dashboard=False)
    out_dir = os.path.join(work, "run")
    cfg = load_config(None, [f"model_name_or_path={path}", f"train_data={data}", "eval_split_ratio=0.25",
                             f"output_dir={out_dir}", "per_device_train_batch_size=8", "num_train_epochs=1",
                             f"use_gpu={str(DEV.type == 'cuda').lower()}", "num_workers=1", "cpus_per_worker=2", "fsdp=full_shard", "bf16=true",
                             "save_steps=6", "logging_steps=4"])
    summary = train(cfg).summary
    final = os.path.join(out_dir, "final")
    return {"summary": {k: summary.get(k) for k in ("steps", "train_pairs_per_s", "device", "dist_backend", "layout",
                                                    "packed_attention", "peak_gpu_mem_mb_rank0", "eval_accuracy",
                                                    "time_to_first_step_s")},
            "final_files": sorted(os.listdir(final)) if os.path.isdir(final) else None,
            "ok": summary.get("dist_backend") == "nccl" and summary.get("device", "").startswith("cuda")
            and os.path.exists(os.path.join(final, "model.safetensors"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--hh", default=HH)
    parser.add_argument("--minilm-config", help="MiniLM config + tokenizer folder (random weights) without the package")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (no flash kernel there)")
    parser.add_argument("--steps", type=int, default=20, help="timed 8-pair training steps per kernel")
    parser.add_argument("--step-models", default="qwen2-6L-384,qwen2-24L-896")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: exact,bf16,group,steps,ray")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    global DEV
    DEV = torch.device(args.device)
    _count_flash()
    with gzip.open(args.hh, "rt") as f:
        hh_rows = [json.loads(line) for line in f]
    import transformers
    report = {"env": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}}
    if DEV.type == "cuda":
        report["env"].update(gpu=torch.cuda.get_device_properties(0).name, capability=list(torch.cuda.get_device_capability(0)),
                             bf16=torch.cuda.is_bf16_supported(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    print(json.dumps(report["env"]), flush=True)
    with tempfile.TemporaryDirectory() as work:
        texts = [r["chosen"] for r in hh_rows[:300]] + [r["rejected"] for r in hh_rows[:300]]
        models = {"qwen2": build_tiny_causal_rm(os.path.join(work, "qwen2"), texts, arch="qwen2"),
                  "llama_pad_is_eos": build_tiny_causal_rm(os.path.join(work, "llama"), texts, arch="llama", pad_token=None),
                  **build_models(work, hh_rows, ["qwen2-6L-384", "qwen2-24L-896", "minilm-l6"], args.minilm_config)}
        sections = {
            "exact": lambda: {f"{m}/{'shared' if s else 'packed'}": compare(models[m], m != "minilm-l6", s, False)
                              for m in ("qwen2", "llama_pad_is_eos", "minilm-l6") for s in ((True, False) if m != "minilm-l6" else (False,))},
            "bf16": lambda: {f"{m}/{'shared' if s else 'packed'}": compare(models[m], m != "minilm-l6", s, True)
                             for m in ("qwen2", "llama_pad_is_eos", "qwen2-6L-384", "minilm-l6")
                             for s in ((True, False) if m != "minilm-l6" else (False,))},
            "group": lambda: group_scoring(models["qwen2-6L-384"]),
            "steps": lambda: {m: step_times(models[m], hh_rows, args.steps) for m in args.step_models.split(",")},
            "ray": lambda: ray_fsdp_run(models["qwen2-6L-384"], args.hh, work),
        }
        for name, run in sections.items():
            if name in skip:
                continue
            t0 = time.perf_counter()
            try:
                report[name] = run()
            except Exception:
                report[name] = {"error": traceback.format_exc()[-3000:]}
            print(f"== {name} ({time.perf_counter() - t0:.0f}s)\n{json.dumps(report[name], indent=1)}", flush=True)
    write_results(args.out, report)


if __name__ == "__main__":
    main()
