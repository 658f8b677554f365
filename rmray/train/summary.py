"""The summary line a training run ends with (``metrics.jsonl``'s ``summary`` event, the model card's source)."""

from __future__ import annotations

import resource

import torch
import torch.distributed as dist


def run_summary(run) -> dict:
    """What the run did and how fast, its start-up by phase, the layout that ran and the last evaluation
    (``run``: the rank's ``WorkerRun``)."""
    s, raw = run.state, run.compute.raw
    return {
        "event": "summary", "steps": s.step, "epochs": s.epoch, "train_pairs": s.pairs_seen,
        "train_tokens": s.tokens_seen, "train_runtime_s": s.train_time_s,
        "train_pairs_per_s": s.pairs_seen / max(s.train_time_s, 1e-9),
        "train_tokens_per_s": s.tokens_seen / max(s.train_time_s, 1e-9),
        "time_to_first_step_s": s.first_step_at, "data_wait_s": s.data_wait_s,
        "workers_started_early": run.info["workers_started_early"],
        "startup_s": {k: round(v, 2) for k, v in run.startup.items()},
        "layout": run.layout.kind,
        "packed_attention": "segments" if run.layout.segments else "dense",
        "last_layer_readout_only": raw.last_layer_readout_used,  # what ran, not what was asked
        "computed_tokens_rank0": s.computed_tokens, "padded_equivalent_tokens_rank0": s.padded_tokens,
        "torch_threads": torch.get_num_threads(), "device": str(run.compute.device),
        "dist_backend": dist.get_backend() if dist.is_initialized() else None,
        "peak_rss_mb_rank0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mem_mb_rank0": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "loss": run.cfg.optimization.loss,
        **run.last_eval,
    }
