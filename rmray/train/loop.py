"""The per-worker training loop that Ray Train runs on every rank.

Shape: setup (model, optimizer, resume) -> for each epoch, for each micro-batch: train_step ->
every ``logging_steps`` log, every ``eval_steps`` evaluate, every ``save_steps`` checkpoint -> final
eval and export. Every rank calls ``ray.train.report`` together (it is a barrier); only rank 0 writes
files (metrics.jsonl, checkpoint contents, the final model).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import random
import resource
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rmray.config import TrainConfig
from rmray.core.cpu_bf16 import slow_bf16_warning
from rmray.core.export import save_reward_model
from rmray.core.loss import bradley_terry_loss, metrics_from_sums, preference_sums
from rmray.core.model import RewardModel, apply_lora, load_hf_model, load_tokenizer
from rmray.core.packing import on_device
from rmray.core.spec import ScoringSpec

from .batches import Layout, choose_layout, iter_pair_batches, padded_equivalent_tokens, to_chunks
from .health import Health
from .metrics_log import MetricsLog
from .parallel import make_strategy
from .schedule import build_scheduler
from .sinks import Sinks
from .state import (
    checkpoint_name,
    checkpoint_problem,
    load_model_weights,
    load_training_state,
    save_training_state,
    write_manifest,
)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already trained
    train_time_s: float = 0.0  # only the training loop: no start-up, eval or checkpointing
    pairs_seen: int = 0  # global, all ranks
    tokens_seen: int = 0
    computed_tokens: int = 0  # positions run by the model on this rank, padding included
    padded_tokens: int = 0  # what TRL's padded layout would have run on the same batches
    data_wait_s: float = 0.0  # time spent waiting for the next micro-batch from Ray Data (in train_time_s)
    first_step_at: float | None = None
    last_train_accuracy: float | None = None


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = TrainConfig(**loop_config["cfg"])
    started_at = loop_config["started_at"]
    startup = {"ray_ready": loop_config["ray_ready_s"], "worker_entered": time.time() - started_at}  # s since train()
    # Rebuilt here by the driver's own call rather than shipped: a pickled tokenizer would make every
    # process that relays the config import transformers (see run._train_worker).
    tokenizer = load_tokenizer(cfg.model_name_or_path, chat_template=cfg.chat_template,
                               trust_remote_code=cfg.trust_remote_code)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    use_bf16 = bool(cfg.bf16) if cfg.bf16 is not None else (device.type == "cuda" and torch.cuda.is_bf16_supported())

    strategy = make_strategy(cfg.fsdp)
    strategy.release_unused_group(world)
    model, raw_model = _build_model(cfg, tokenizer, strategy, use_bf16, device)
    startup["model_ready"] = time.time() - started_at
    # The model is built while the driver may still be tokenizing (see rmray.train.handoff); from here on
    # the run needs the data: this rank's train shard, the eval set, the schedule.
    data = ray.get(loop_config["handoff"].get.remote("data"))
    info, train_shard, eval_shard = data["info"], data["train"][rank], data.get("eval")
    spec, total_steps = ScoringSpec(**info["spec"]), info["total_steps"]
    startup["data_ready"] = info["data_ready_s"]
    # fused: one kernel per step instead of a loop over tensors (what transformers' Trainer uses too)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    sinks = Sinks(cfg.output_dir, [r for r in cfg.report_to if r != "none"], os.path.basename(
        os.path.normpath(cfg.output_dir)), loop_config["cfg"]) if rank == 0 else None
    log = MetricsLog(cfg.output_dir, enabled=rank == 0, sinks=sinks)
    state = LoopState()
    saved = _load_resume_state(cfg, loop_config["run_dir"], strategy, model, raw_model, optimizer, scheduler, log)
    if saved is not None:
        state.step, state.epoch, state.batches_in_epoch = saved["step"], saved["epoch"], saved["batches_in_epoch"]
        state.train_time_s, state.pairs_seen = saved.get("train_time_s", 0.0), saved.get("pairs_seen", 0)
        state.tokens_seen = saved.get("tokens_seen", 0)  # else tokens/s after a resume counts only the new steps
        log.write({"event": "resume", "step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch,
                   "from": saved["_from"]})
    slow_bf16 = slow_bf16_warning(device.type, use_bf16, cfg.dtype)
    if slow_bf16:
        log.write({"event": "warning", "step": state.step, "kind": "slow_bf16", "message": slow_bf16})
    health = Health.from_config(cfg)
    consumed = ConsumedLog(cfg.output_dir if cfg.log_consumed_pairs else None, rank, state.step)

    layout = Layout(kind=choose_layout(cfg.padding_free, cfg.share_prompt, raw_model.readout == "last_token"),
                    causal=raw_model.readout == "last_token", pad_token_id=tokenizer.pad_token_id,
                    pad_to_multiple_of=cfg.pad_to_multiple_of, row_tokens=cfg.pack_row_tokens,
                    attention_ratio=6.0 * raw_model.hf_model.config.get_text_config().hidden_size,
                    max_tokens_per_batch=cfg.max_tokens_per_batch,
                    segments=cfg.packed_attention == "segments" and raw_model.segments_ok)
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    window = torch.zeros(8, dtype=torch.float64, device=device)  # preference sums since the last log line
    window_start, window_pairs, window_tokens = time.perf_counter(), 0, 0
    last_eval: dict = {}
    saved_at = -1
    evaluated_at = -1  # step of the last eval: an epoch end right after an eval_steps eval does not redo it
    done = state.step >= total_steps
    stopped = False
    while not done:
        batches = iter_pair_batches(train_shard, batch_size=cfg.per_device_train_batch_size,
                                    group_by_length=cfg.group_by_length, window=cfg.length_group_window,
                                    seed=random.Random(f"{cfg.seed}-{state.epoch}-{rank}").randrange(2**31))
        micro, t0 = 0, time.perf_counter()
        for batch_index, batch in enumerate(_timed(batches, state, startup, started_at)):
            if batch_index < state.batches_in_epoch:  # resuming inside an epoch: skip what was trained
                consumed.write(state, batch_index, batch, "skipped")
                continue
            consumed.write(state, batch_index, batch, "trained")
            sync = (micro + 1) % cfg.gradient_accumulation_steps == 0
            chunks = to_chunks(batch, layout)
            sums, n_tokens = forward_backward(model, strategy, chunks, device, cfg, autocast, final_sync=sync)
            state.computed_tokens += sum(c.computed_tokens for c in chunks)
            state.padded_tokens += padded_equivalent_tokens(batch)
            window += sums
            window_pairs += len(batch["chosen_ids"]) * world
            window_tokens += n_tokens * world
            micro += 1
            state.batches_in_epoch = batch_index + 1
            if not sync:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.step in cfg.chaos_kill_at_step and rank == world - 1:
                _chaos_kill(cfg, loop_config["run_dir"], state.step)
            if state.first_step_at is None:
                state.first_step_at = startup["first_step"] = time.time() - started_at
            if state.step % cfg.logging_steps == 0 or state.step >= total_steps:
                state.train_time_s += _clock(device) - t0
                state.last_train_accuracy = _log_train(log, state, window, window_pairs, window_tokens, time.perf_counter() - window_start,
                           scheduler.get_last_lr()[0], strategy.grad_norm(grad_norm), world, device)
                state.pairs_seen += window_pairs
                state.tokens_seen += window_tokens
                window.zero_()
                window_pairs = window_tokens = 0
                window_start = t0 = time.perf_counter()
            if eval_shard is not None and cfg.eval_steps and state.step % cfg.eval_steps == 0:
                state.train_time_s += _clock(device) - t0
                last_eval = _evaluate(strategy.eval_model(model, raw_model), strategy, eval_shard, layout, cfg, device, autocast, rank, world)
                evaluated_at = state.step
                log.write({"step": state.step, "epoch": state.epoch, **last_eval})
                stopped = _after_eval(health, last_eval, state, log)
                t0 = window_start = time.perf_counter()
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                state.train_time_s += _clock(device) - t0
                _checkpoint(strategy, model, raw_model, tokenizer, spec, optimizer, scheduler, state, rank, last_eval, cfg)
                saved_at = state.step
                t0 = window_start = time.perf_counter()
            if state.step >= total_steps or stopped:
                break
        state.train_time_s += _clock(device) - t0
        optimizer.zero_grad(set_to_none=True)  # a partial accumulation at the epoch's end is not carried over
        done = state.step >= total_steps or stopped
        state.epoch += 1
        state.batches_in_epoch = 0
        if eval_shard is not None and evaluated_at != state.step:
            last_eval = _evaluate(strategy.eval_model(model, raw_model), strategy, eval_shard, layout, cfg, device, autocast, rank, world)
            evaluated_at = state.step
            log.write({"step": state.step, "epoch": state.epoch, **last_eval})
            stopped = _after_eval(health, last_eval, state, log)
            done = done or stopped
        if not done and saved_at != state.step:
            _checkpoint(strategy, model, raw_model, tokenizer, spec, optimizer, scheduler, state, rank, last_eval, cfg)
            saved_at = state.step
        window_start = time.perf_counter()
    state.pairs_seen += window_pairs
    state.tokens_seen += window_tokens
    _finish(strategy, model, raw_model, tokenizer, spec, cfg, state, last_eval, log, rank, layout, startup,
            started_early=info["workers_started_early"])
    log.close()


def _clock(device) -> float:
    """perf_counter once the GPU has run what was queued: a step's time is its kernels', not their launch's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _timed(batches, state: LoopState, startup: dict, started_at: float):
    """Yield from ``batches``, adding the wait for each one to ``state.data_wait_s`` and noting when the
    first arrived: a run whose steps wait on data shows it here, not as slow compute."""
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        state.data_wait_s += time.perf_counter() - t0
        startup.setdefault("first_batch", time.time() - started_at)
        yield batch


class ConsumedLog:
    """Per-rank JSON lines of the row ids each micro-batch held, tagged with the step the worker started
    from: an audit that a resumed epoch trains no pair twice and skips none."""

    def __init__(self, output_dir: str | None, rank: int, start_step: int):
        self.path = os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl") if output_dir else None
        self.start_step = start_step
        self.attempt = uuid.uuid4().hex[:12]  # two restarts from the same step are two attempts
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def write(self, state, batch_index: int, batch: dict, kind: str) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"attempt": self.attempt, "started_at_step": self.start_step, "epoch": state.epoch, "batch": batch_index,
                                    "step": state.step, "kind": kind,
                                    "row_ids": [str(r) for r in batch["row_id"]]}) + "\n")


def _chaos_kill(cfg: TrainConfig, run_dir: str | None, step: int) -> None:
    """SIGKILL this worker once per listed step (a marker file remembers the steps already killed at);
    with ``chaos_damage_checkpoint``, that step's checkpoint weights are cut in half first."""
    marker = os.path.join(cfg.output_dir, ".chaos_killed")
    done = open(marker).read().split() if os.path.exists(marker) else []
    if str(step) in done:  # the restarted worker passes this step
        return
    with open(marker, "a") as f:
        f.write(f"{step}\n")
    damaged = cfg.chaos_damage_checkpoint
    if damaged is not None and run_dir:
        for weights in glob.glob(os.path.join(run_dir, f"checkpoint-{damaged:06d}*", "*.safetensors")):
            os.truncate(weights, os.path.getsize(weights) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def _after_eval(health: Health, last_eval: dict, state: "LoopState", log) -> bool:
    """Warnings into metrics.jsonl (the driver prints them as they come); True to stop early."""
    warnings, stop = health.observe(last_eval, state.last_train_accuracy)
    for warning in warnings:
        log.write({"event": "warning", "step": state.step, **warning})
    if stop:
        log.write({"event": "early_stop", "step": state.step, "metric": health.metric, "best": health.best,
                   "patience": health.patience})
    return stop


def _load_resume_state(cfg: TrainConfig, run_dir: str | None, strategy, model, raw_model, optimizer, scheduler, log) -> dict | None:
    """Load the newest whole checkpoint: Ray's latest after a failure (older ones in the run folder if it
    is damaged), else ``resume_from_checkpoint``. A partial or corrupt checkpoint is skipped with a
    warning, never loaded."""
    checkpoint = ray.train.get_checkpoint()
    # The run folder first, newest step first: a worker killed right after a report can die before Ray's
    # controller registered that checkpoint (measured: a kill one step after a checkpoint restarted from
    # scratch). Ray's own latest comes next (it differs when storage is remote).
    on_disk = sorted(glob.glob(os.path.join(run_dir, "checkpoint-*")), reverse=True) if run_dir else []
    options: list = on_disk + ([checkpoint] if checkpoint is not None else [])
    if checkpoint is None and not on_disk and cfg.resume_from_checkpoint:
        uri = "://" in cfg.resume_from_checkpoint  # downloaded by Ray's Checkpoint, then checked like a folder
        options.append(ray.train.Checkpoint(cfg.resume_from_checkpoint) if uri else cfg.resume_from_checkpoint)
    problems = []
    for option in options:
        context = option.as_directory() if hasattr(option, "as_directory") else contextlib.nullcontext(option)
        with context as directory:
            problem = checkpoint_problem(directory)
            if problem:
                problems.append(f"{directory}: {problem}")
                log.write({"event": "warning", "kind": "bad_checkpoint",
                           "message": f"skipping checkpoint {directory}: {problem}"})
                continue
            load_model_weights(raw_model.model, directory, lambda sd: strategy.load_model_state(model, raw_model, sd))
            saved, optimizer_state = load_training_state(directory, scheduler=scheduler)
            strategy.load_optimizer_state(model, optimizer, optimizer_state)
            saved["_from"] = str(directory)
            return saved
    if cfg.resume_from_checkpoint and checkpoint is None and not on_disk:
        raise ValueError(f"resume_from_checkpoint={cfg.resume_from_checkpoint!r} is not a whole rmray checkpoint: "
                         f"{problems[0] if problems else 'not found'}")
    return None


def _build_model(cfg: TrainConfig, tokenizer, strategy, use_bf16: bool, device):
    hf = load_hf_model(cfg.model_name_or_path, pad_token_id=tokenizer.pad_token_id,
                       trust_remote_code=cfg.trust_remote_code, disable_dropout=cfg.disable_dropout,
                       dtype=cfg.dtype)
    if len(tokenizer) > hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(len(tokenizer))
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.use_peft:
        if cfg.gradient_checkpointing:
            hf.enable_input_require_grads()
        hf = apply_lora(hf, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=cfg.lora_target_modules if cfg.lora_target_modules != ["all-linear"] else "all-linear",
                        modules_to_save=cfg.lora_modules_to_save)
    # from_pretrained returns a model in eval mode: left so, gradient checkpointing (which acts only in
    # training mode) and dropout would be silently off until the first evaluation switched modes.
    raw = RewardModel(hf, last_layer_readout_only=cfg.last_layer_readout_only).train()
    # DDP or FSDP around the whole reward path, so the custom read-out syncs gradients too.
    return strategy.wrap(raw, use_bf16, device), raw


def forward_backward(model, strategy, chunks, device, cfg: TrainConfig, autocast, final_sync: bool) -> tuple[torch.Tensor, int]:
    """Loss and gradients of one micro-batch, chunk by chunk; each chunk's loss is weighted by its
    share of the pairs, so the summed gradient is the micro-batch's mean-loss gradient. Under FSDP the
    ranks' chunk counts are padded to the same number with zero-weight chunks (forwards are collectives)."""
    total = sum(c.num_pairs for c in chunks)
    # Summed where the rewards are: a .cpu() per chunk would make the host wait for every GPU step.
    sums, tokens = torch.zeros(8, dtype=torch.float64, device=device), 0
    weighted = strategy.equalize(chunks)
    for k, (chunk, weight) in enumerate(weighted):
        last = k == len(weighted) - 1
        with strategy.no_sync(model) if not (last and final_sync) else contextlib.nullcontext():
            with autocast():
                rewards = model(**on_device(chunk.inputs, device)).float()
            chosen, rejected = rewards.chunk(2)
            loss = bradley_terry_loss(chosen, rejected, chunk.margin.to(device), cfg.center_rewards_coefficient)
            (loss * (weight * chunk.num_pairs / total) / cfg.gradient_accumulation_steps).backward()
        if weight:
            sums += preference_sums(chosen, rejected, loss.detach() * chunk.num_pairs)
            tokens += chunk.real_tokens
    return sums, tokens


@torch.no_grad()
def _evaluate(model, strategy, eval_shard, layout: Layout, cfg: TrainConfig, device, autocast, rank: int, world: int) -> dict:
    """Every rank reads the whole (small, unsplit) eval set and scores every world-th batch; the sums
    are all-reduced, so eval metrics are identical whatever the number of workers. Under FSDP every
    rank runs every batch (each forward is a collective) and nothing is reduced."""
    model.eval()
    sums = torch.zeros(8, dtype=torch.float64)
    all_batches = strategy.every_rank_evaluates_all()
    for i, batch in enumerate(eval_shard.iter_batches(batch_size=cfg.per_device_eval_batch_size, batch_format="numpy")):
        if i % world != rank and not all_batches:
            continue
        for chunk in to_chunks(batch, layout):
            with autocast():
                rewards = model(**on_device(chunk.inputs, device)).float()
            chosen, rejected = rewards.chunk(2)
            loss = bradley_terry_loss(chosen, rejected, chunk.margin.to(device), cfg.center_rewards_coefficient)
            sums += preference_sums(chosen.cpu(), rejected.cpu(), loss.cpu() * chunk.num_pairs)
    model.train()
    sums = sums if all_batches else _all_reduce(sums, device)
    return {f"eval_{k}": v for k, v in metrics_from_sums(sums).items()}


def _all_reduce(sums: torch.Tensor, device) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        reduced = sums.to(device)
        dist.all_reduce(reduced)  # a sync point: every rank must get here the same number of times
        return reduced.cpu()
    return sums.cpu()


def _log_train(log, state, window, pairs, tokens, seconds, lr, grad_norm, world, device) -> float:
    metrics = metrics_from_sums(_all_reduce(window.clone(), device))
    metrics.pop("pairs", None)
    log.write({"step": state.step, "epoch": state.epoch, **metrics, "learning_rate": lr, "grad_norm": grad_norm,
               "pairs_per_s": pairs / max(seconds, 1e-9), "tokens_per_s": tokens / max(seconds, 1e-9)})
    return metrics["accuracy"]


def _checkpoint(strategy, model, raw_model, tokenizer, spec, optimizer, scheduler, state: LoopState, rank: int,
                eval_metrics: dict, cfg: TrainConfig):
    metrics = {"step": state.step, "epoch": state.epoch, **eval_metrics}
    if cfg.metric_for_best_model and cfg.metric_for_best_model not in metrics:  # no eval yet: ranks last
        metrics[cfg.metric_for_best_model] = -math.inf if cfg.best_is_greater else math.inf
    # Every rank calls these: under FSDP they are gathers (DDP: the live model saves itself, state_dict()).
    model_state = strategy.model_state(model, raw_model)
    optimizer_state = strategy.optimizer_state(model, optimizer)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "checkpoint")
        save_reward_model(raw_model, tokenizer, spec, ckpt, merge_lora=False, state_dict=model_state)
        save_training_state(ckpt, optimizer_state=optimizer_state, scheduler=scheduler, step=state.step, epoch=state.epoch,
                            batches_in_epoch=state.batches_in_epoch,
                            extra={"train_time_s": state.train_time_s, "pairs_seen": state.pairs_seen,
                                   "tokens_seen": state.tokens_seen})
        write_manifest(ckpt)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt),
                         checkpoint_dir_name=checkpoint_name(cfg, state.step))


def _finish(strategy, model, raw_model, tokenizer, spec: ScoringSpec, cfg: TrainConfig, state: LoopState, last_eval: dict,
            log, rank, layout: Layout, startup: dict, started_early: bool):
    summary = {
        "event": "summary", "steps": state.step, "epochs": state.epoch, "train_pairs": state.pairs_seen,
        "train_tokens": state.tokens_seen, "train_runtime_s": state.train_time_s,
        "train_pairs_per_s": state.pairs_seen / max(state.train_time_s, 1e-9),
        "train_tokens_per_s": state.tokens_seen / max(state.train_time_s, 1e-9),
        "time_to_first_step_s": state.first_step_at, "data_wait_s": state.data_wait_s,
        "workers_started_early": started_early,
        "startup_s": {k: round(v, 2) for k, v in startup.items()},
        "layout": layout.kind,
        "packed_attention": "segments" if layout.segments else "dense",
        "last_layer_readout_only": raw_model.last_layer_readout_used,  # what ran, not what was asked
        "computed_tokens_rank0": state.computed_tokens, "padded_equivalent_tokens_rank0": state.padded_tokens,
        "torch_threads": torch.get_num_threads(), "device": str(ray.train.torch.get_device()),
        "dist_backend": dist.get_backend() if dist.is_initialized() else None,
        "peak_rss_mb_rank0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mem_mb_rank0": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        **last_eval,
    }
    model_state = strategy.model_state(model, raw_model)  # FSDP: a gather every rank joins
    if rank == 0:
        if "eval_reward_mean" in last_eval:  # saved for optional reward normalization at serving time
            spec.reward_mean, spec.reward_std = last_eval["eval_reward_mean"], last_eval["eval_reward_std"]
        if cfg.use_peft:
            save_reward_model(raw_model, tokenizer, spec, os.path.join(cfg.output_dir, "adapter"), merge_lora=False)
        save_reward_model(raw_model, tokenizer, spec, os.path.join(cfg.output_dir, "final"), merge_lora=True,
                          state_dict=model_state)
        log.write(summary)
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and not (isinstance(v, float) and math.isnan(v))}, checkpoint=None)
