"""The per-worker training recipe that Ray Train runs on every rank.

Read top to bottom, as ``train_loop_per_worker`` does: ``setup`` (model, data, optimizer, resume) ->
``train`` (epochs of micro-batches; every ``logging_steps`` a log line, every ``eval_steps`` an
evaluation, every ``save_steps`` a checkpoint) -> ``finish`` (summary and the exported model). Every
rank calls ``ray.train.report`` together (it is a barrier); only rank 0 writes files (metrics.jsonl,
checkpoint contents, the final model). The run's state lives on one ``WorkerRun`` object, so helpers
take no long argument lists; the forward itself is ``compute.Compute``, shared with evaluation.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rmray.config import TrainConfig
from rmray.core.calibration import fit_temperature
from rmray.core.cpu_bf16 import slow_bf16_warning
from rmray.core.evaluation import preference_metrics
from rmray.core.export import save_reward_model, save_unmerged
from rmray.core.spec import ScoringSpec
from rmray.core.tokenizer import load_tokenizer
from rmray.data.position import RankPosition, trained_set
from rmray.data.stream import StreamError, eval_batches, rank_windows, stop_stream, write_data_report

from .attempt import attempt_id
from .batches import (
    Layout,
    choose_layout,
    iter_pair_batches,
)
from .bench_eval import BenchmarkEval
from .best import BestCheckpoint
from .build import build_model
from .checkpoint import checkpoint_name, save_checkpoint
from .compute import Compute, all_reduce, wants_bf16
from .diagnostics import ConsumedLog, chaos_kill
from .health import Health
from .metrics_log import MetricsLog
from .parallel import make_strategy
from .resume import load_resume_state, restore_position
from .schedule import build_scheduler
from .sinks import Sinks
from .state import LoopState
from .step_compute import StepCompute
from .summary import run_summary


def train_loop_per_worker(loop_config: dict) -> None:
    run = WorkerRun(loop_config)
    run.setup()
    try:
        run.train()
    except StreamError:  # every rank meets a data error at the same window; the driver raises its message
        return
    run.finish()


@dataclass
class Window:
    """Preference sums, pairs and tokens since the last log line (all ranks), and when it began."""

    sums: torch.Tensor
    pairs: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)


class WorkerRun:
    """One rank's training run: built by ``setup``, driven by ``train``, closed by ``finish``."""

    def __init__(self, loop_config: dict):
        self.loop_config = loop_config
        self.cfg = TrainConfig(**loop_config["cfg"])
        self.started_at = loop_config["started_at"]
        self.run_dir = loop_config["run_dir"]
        # seconds since train() on the driver
        self.startup = {"ray_ready": loop_config["ray_ready_s"], "worker_entered": time.time() - self.started_at}
        self.state = LoopState()
        self.last_eval: dict = {}
        self.eval_margins: list[float] = []  # r_chosen - r_rejected of this rank's share of the last eval
        self.saved_at = self.evaluated_at = -1  # an epoch end right after a step's eval or save does not redo it
        self.stopped = False

    # --- setup ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.manual_seed(cfg.optimization.seed)
        self._setup_model()
        self._setup_data()
        # fused: one kernel per step instead of a loop over tensors (what transformers' Trainer uses too)
        self.optimizer = torch.optim.AdamW([p for p in self.compute.model.parameters() if p.requires_grad],
                                           lr=cfg.optimization.learning_rate, weight_decay=cfg.optimization.weight_decay, fused=True)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimization, self.total_steps)
        self.log = self._open_log()
        self._resume()
        self.health = Health.from_config(cfg.checkpoints)
        self.best = BestCheckpoint(cfg.checkpoints.best_metric, cfg.checkpoints.best_is_greater)
        self.consumed = ConsumedLog(cfg.checkpoints.output_dir if cfg.debug.log_consumed_pairs else None, self.rank, self.state.step)
        self.window = Window(torch.zeros(8, dtype=torch.float64, device=self.compute.device))

    def _setup_model(self) -> None:
        cfg = self.cfg
        # Rebuilt here by the driver's own call rather than shipped: a pickled tokenizer would make every
        # process that relays the config import transformers (see run._train_worker).
        self.tokenizer = load_tokenizer(cfg.model.model_name_or_path, chat_template=cfg.model.chat_template,
                                        trust_remote_code=cfg.model.trust_remote_code)
        device = ray.train.torch.get_device()
        strategy = make_strategy(cfg.speed.fsdp)
        model, raw = build_model(cfg, self.tokenizer, strategy, wants_bf16(cfg.optimization, device), device)
        kind = StepCompute if cfg.data.data_format == "stepwise" else Compute  # a process or a reward model
        self.compute = kind.for_run(model, raw, strategy, device, cfg.optimization)
        self.layout = Layout(kind=choose_layout(cfg.speed.padding_free, cfg.speed.share_prompt, raw.readout == "last_token"),
                             causal=raw.readout == "last_token", pad_token_id=self.tokenizer.pad_token_id,
                             pad_to_multiple_of=cfg.speed.pad_to_multiple_of, row_tokens=cfg.speed.pack_row_tokens,
                             attention_ratio=6.0 * raw.hf_model.config.get_text_config().hidden_size,
                             max_tokens_per_batch=cfg.speed.max_tokens_per_batch,
                             segments=cfg.speed.packed_attention == "segments" and raw.segments_ok)
        self.startup["model_ready"] = time.time() - self.started_at

    def _setup_data(self) -> None:
        # The model is built while the driver may still be preparing the data (see rmray.train.handoff);
        # from here on the run needs it: the stream of this rank's rows, and the schedule.
        data = ray.get(self.loop_config["handoff"].get.remote("data"))
        self.info, self.stream = data["info"], data["stream"]
        self.spec, self.total_steps = ScoringSpec(**self.info["spec"]), self.info["total_steps"]
        benchmarks = self.info.get("benchmarks")
        self.bench = BenchmarkEval(benchmarks, self.tokenizer, self.spec, self.rank, self.world,
                                   self.compute.strategy.every_rank_evaluates_all()) if benchmarks else None
        self.has_eval = self.info["has_eval"] or self.bench is not None  # eval rows, benchmarks, or both
        self.startup["data_ready"] = self.info["data_ready_s"]
        self.attempt = attempt_id(self.rank)  # names this attempt's passes over the stream

    def _open_log(self) -> MetricsLog:
        cfg, rank0 = self.cfg, self.rank == 0
        name = os.path.basename(os.path.normpath(cfg.checkpoints.output_dir))
        sinks = Sinks(cfg.checkpoints.output_dir, [r for r in cfg.checkpoints.report_to if r != "none"], name, self.loop_config["cfg"]) if rank0 else None
        return MetricsLog(cfg.checkpoints.output_dir, enabled=rank0, sinks=sinks)

    def _resume(self) -> None:
        saved = load_resume_state(self.cfg, self.run_dir, self.compute, (self.optimizer, self.scheduler), self.log)
        if saved is not None:
            restore_position(self, saved)
        slow_bf16 = slow_bf16_warning(self.compute.device.type, self.compute.use_bf16, self.cfg.model.dtype)
        if slow_bf16:
            self.log.write({"event": "warning", "step": self.state.step, "kind": "slow_bf16", "message": slow_bf16})

    # --- train ---------------------------------------------------------------------------------------

    def train(self) -> None:
        while not self._done():
            self._train_epoch()
            self._end_epoch()

    def _done(self) -> bool:
        """``max_steps``, else the epochs: a streamed schedule's step count is an estimate, the epochs are not."""
        s, cfg = self.state, self.cfg
        return self.stopped or (s.step >= cfg.optimization.max_steps if cfg.optimization.max_steps > 0 else s.epoch >= cfg.optimization.num_train_epochs)

    def _train_epoch(self) -> None:
        cfg, s = self.cfg, self.state
        skip = s.batches_in_epoch // cfg.speed.length_group_window  # a window holds length_group_window micro-batches
        self.position = RankPosition()
        windows = self.position.follow(rank_windows(self.stream, f"{self.attempt}/{s.epoch}", self.rank, skip, s.excluded))
        batches = iter_pair_batches(windows, batch_size=cfg.optimization.per_device_train_batch_size, first_window=skip,
                                    group_by_length=cfg.speed.group_by_length,
                                    seed=random.Random(f"{cfg.optimization.seed}-{s.epoch}-{self.rank}").randrange(2**31))
        # a resumed epoch made progress before; a fresh one that makes none would repeat forever
        micro, self._t0, self._epoch_steps = 0, time.perf_counter(), s.batches_in_epoch
        for batch_index, batch in enumerate(self._timed(batches), start=skip * cfg.speed.length_group_window):
            self.position.took_batch(batch)
            if batch_index < s.batches_in_epoch:  # resuming inside an epoch: skip what was trained
                self.consumed.write(s, batch_index, batch, "skipped")
                continue
            self.consumed.write(s, batch_index, batch, "trained")
            micro += 1
            sync = micro % cfg.optimization.gradient_accumulation_steps == 0
            self._micro_batch(batch, sync)
            s.batches_in_epoch = batch_index + 1
            if sync:
                self._epoch_steps += 1
                self._optimizer_step()
                self._after_step()
                if self._done():
                    break

    def _micro_batch(self, batch: dict, sync: bool) -> None:
        chunks, padded = self.compute.chunks(batch, self.layout)
        sums, n_tokens = self.compute.forward_backward(chunks, self.cfg.optimization.gradient_accumulation_steps, final_sync=sync)
        self.state.computed_tokens += sum(c.computed_tokens for c in chunks)
        self.state.padded_tokens += padded
        self.window.sums += sums
        self.window.pairs += sum(c.num_pairs for c in chunks) * self.world
        self.window.tokens += n_tokens * self.world

    def _optimizer_step(self) -> None:
        cfg, s = self.cfg, self.state
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.compute.model.parameters(), cfg.optimization.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        if s.step in cfg.debug.chaos_kill_at_step and self.rank == self.world - 1:
            chaos_kill(cfg, self.run_dir, s.step)
        if s.first_step_at is None:
            s.first_step_at = self.startup["first_step"] = time.time() - self.started_at

    def _after_step(self) -> None:
        cfg, step = self.cfg, self.state.step
        if step % cfg.checkpoints.logging_steps == 0 or step >= self.total_steps:
            self._log_train()
        if self.has_eval and cfg.checkpoints.eval_steps and step % cfg.checkpoints.eval_steps == 0:
            self.evaluate()
        if cfg.checkpoints.save_steps and step % cfg.checkpoints.save_steps == 0:
            self.save_checkpoint()

    def _end_epoch(self) -> None:
        if self._epoch_steps == 0 and not self.state.excluded:  # the rest of a resumed epoch may hold no step
            stop_stream(self.stream, f"an epoch gave no optimizer step: each of the {self.world} workers "
                                "got fewer micro-batches than gradient_accumulation_steps; use more data, fewer "
                                "workers, or a smaller batch size / accumulation")
        with self._paused():
            self.optimizer.zero_grad(set_to_none=True)  # a partial accumulation at the epoch's end is not carried over
            self.state.epoch += 1
            self.state.batches_in_epoch, self.state.excluded = 0, []
        if self.has_eval and self.evaluated_at != self.state.step:
            self.evaluate()
        if not self._done() and self.saved_at != self.state.step:
            self.save_checkpoint()

    @contextlib.contextmanager
    def _paused(self):
        """Logging, evaluation and checkpoints are neither training time nor part of a pairs/s window."""
        if self.compute.device.type == "cuda":  # a step's time is its kernels', not their launch's
            torch.cuda.synchronize(self.compute.device)
        self.state.train_time_s += time.perf_counter() - self._t0
        yield
        self._t0 = self.window.start = time.perf_counter()

    def _timed(self, batches):
        """Yield from ``batches``, adding the wait for each one to ``data_wait_s`` and noting when the
        first arrived: a run whose steps wait on data shows it here, not as slow compute."""
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.state.data_wait_s += time.perf_counter() - t0
            self.startup.setdefault("first_batch", time.time() - self.started_at)
            yield batch

    def _log_train(self) -> None:
        s, w = self.state, self.window
        with self._paused():
            seconds = max(time.perf_counter() - w.start, 1e-9)
            metrics = self.compute.summarize(all_reduce(w.sums.clone(), self.compute.device))
            metrics.pop("pairs", None)
            self.log.write({"step": s.step, "epoch": s.epoch, **metrics, "learning_rate": self.scheduler.get_last_lr()[0],
                            "grad_norm": self.compute.strategy.grad_norm(self._grad_norm),
                            "pairs_per_s": w.pairs / seconds, "tokens_per_s": w.tokens / seconds})
            s.last_train_accuracy = metrics["accuracy"]
            s.pairs_seen, s.tokens_seen = s.pairs_seen + w.pairs, s.tokens_seen + w.tokens
            w.sums.zero_()
            w.pairs = w.tokens = 0

    # --- evaluate ------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> None:
        """Every rank scores its share of the eval rows (row i is rank i % world's, ``rmray.data.stream``);
        the sums are all-reduced, so eval metrics are identical whatever the number of workers. Under FSDP
        every rank runs every row (each forward is a collective) and nothing is reduced."""
        compute, cfg = self.compute, self.cfg
        with self._paused():
            model = compute.strategy.eval_model(compute.model, compute.raw)
            model.eval()
            self.last_eval = self._evaluate_pairs(model) if self.info["has_eval"] else {}
            if self.bench is not None:  # bench/<name>/<section>, the same on every rank
                self.last_eval.update(self.bench.evaluate(compute, model, self.layout, cfg.optimization.per_device_eval_batch_size))
            model.train()
            self.evaluated_at = self.state.step
            self.log.write({"step": self.state.step, "epoch": self.state.epoch, **self.last_eval})
            self._after_eval()

    def _evaluate_pairs(self, model) -> dict:
        compute, all_batches = self.compute, self.compute.strategy.every_rank_evaluates_all()
        sums, self.eval_margins = torch.zeros(8, dtype=torch.float64), []
        for batch in eval_batches(self.stream, self.rank, self.cfg.optimization.per_device_eval_batch_size, all_batches):
            batch_sums, margins = compute.eval_sums(batch, self.layout, model)
            sums += batch_sums
            self.eval_margins += margins
        sums = sums if all_batches else all_reduce(sums, compute.device)
        return {f"eval_{k}": v for k, v in compute.summarize(sums).items()}

    def _after_eval(self) -> None:
        """Warnings into metrics.jsonl (the driver prints them as they come); early stopping."""
        warnings, stop = self.health.observe(self.last_eval, self.state.last_train_accuracy)
        for warning in warnings:
            self.log.write({"event": "warning", "step": self.state.step, **warning})
        if stop and not any(w["kind"] == "nonfinite_loss" for w in warnings):  # that warning says why already
            self.log.write({"event": "early_stop", "step": self.state.step, "metric": self.health.metric,
                            "best": self.health.best, "patience": self.health.patience})
        self.stopped = self.stopped or stop

    # --- checkpoint and finish -----------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        cfg, s, compute = self.cfg, self.state, self.compute
        metrics = {"step": s.step, "epoch": s.epoch, **self.last_eval}
        ranked = cfg.checkpoints.metric_for_best_model or cfg.checkpoints.load_best_model_at_end
        if ranked and cfg.checkpoints.best_metric not in metrics:  # no eval yet: ranks last
            metrics[cfg.checkpoints.best_metric] = -math.inf if cfg.checkpoints.best_is_greater else math.inf
        with self._paused():
            # Every rank calls these: under FSDP they are gathers (DDP: the live model saves itself).
            model_state = compute.strategy.model_state(compute.model, compute.raw)
            optimizer_state = compute.strategy.optimizer_state(compute.model, self.optimizer)
            trained = self._trained_rows()
            self.saved_at = s.step
            if self.rank != 0:
                self.best.saw(metrics, s.step, None)
                ray.train.report(metrics, checkpoint=None)
                return
            write_data_report(self.stream, cfg.checkpoints.output_dir)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = os.path.join(tmp, "checkpoint")
                position = {"step": s.step, "epoch": s.epoch, "batches_in_epoch": s.batches_in_epoch,
                            "train_time_s": s.train_time_s, "pairs_seen": s.pairs_seen + self.window.pairs,
                            "tokens_seen": s.tokens_seen + self.window.tokens,  # with the steps not yet logged
                            "world": self.world, "total_steps": self.total_steps, "excluded": s.excluded,
                            "trained_rows": trained}
                save_checkpoint(ckpt, compute=compute, tokenizer=self.tokenizer, spec=self.spec, model_state=model_state,
                                optimizer_state=optimizer_state, scheduler=self.scheduler, position=position)
                name = checkpoint_name(cfg, s.step)
                self.best.saw(metrics, s.step, name)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt), checkpoint_dir_name=name)

    def _trained_rows(self) -> list:
        """The ordinal ranges this epoch has trained (every rank's share of the current window gathered; a
        collective every rank joins), for a resume on another number of workers."""
        if not self.state.batches_in_epoch:
            return []
        shares = [self.position.share()]
        if self.world > 1:
            shares = [None] * self.world
            dist.all_gather_object(shares, self.position.share())
        return trained_set(self.state.excluded, shares)

    def finish(self) -> None:
        """The summary line, the final model (merged; LoRA adapters beside it), and the last report."""
        cfg, compute = self.cfg, self.compute
        self.state.pairs_seen += self.window.pairs
        self.state.tokens_seen += self.window.tokens
        if cfg.checkpoints.load_best_model_at_end and self.has_eval:
            self._load_best()
        self._calibrate()
        summary = run_summary(self)
        model_state = compute.strategy.model_state(compute.model, compute.raw)  # FSDP: a gather every rank joins
        if self.rank == 0:
            spec = self.spec
            if "eval_reward_mean" in self.last_eval:  # saved for optional reward normalization at serving time
                spec.reward_mean, spec.reward_std = self.last_eval["eval_reward_mean"], self.last_eval["eval_reward_std"]
            if cfg.lora.use_peft:
                save_unmerged(compute.raw, self.tokenizer, spec, os.path.join(cfg.checkpoints.output_dir, "adapter"))
            save_reward_model(compute.raw, self.tokenizer, spec, os.path.join(cfg.checkpoints.output_dir, "final"), model_state)
            self.log.write(summary)
        ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                          and not (isinstance(v, float) and math.isnan(v))}, checkpoint=None)
        self.log.close()

    def _load_best(self) -> None:
        """``final/`` from the best checkpoint when it beat the last step's model (evaluated now if it was not)."""
        if self.evaluated_at != self.state.step:
            self.evaluate()
        root = (self.cfg.fault_tolerance.storage_path or self.cfg.checkpoints.output_dir).rstrip("/") + "/ray"
        step = self.best.restore_if_better(self.last_eval, self.compute, self.run_dir, root)
        if step is not None:
            self.log.write({"event": "best_model", "step": self.state.step, "from_step": step,
                            "metric": self.best.metric, "value": self.best.value})
            self.evaluate()  # the metrics, calibration and normalization final/ records are the best model's

    def _calibrate(self) -> None:
        """Fit the preference temperature on the last evaluation's pairs (every rank's share; a gather
        every rank joins) into the scoring contract, and log the eval split's ECE before and after."""
        margins = self.eval_margins
        if not self.compute.strategy.every_rank_evaluates_all() and dist.is_available() and dist.is_initialized():
            shares = [None] * self.world
            dist.all_gather_object(shares, margins)
            margins = [m for share in shares for m in share]
        if not margins:
            return
        self.spec.temperature = fit_temperature(margins)
        fitted = preference_metrics(margins, [0.0] * len(margins), temperature=self.spec.temperature)
        self.last_eval.update(eval_temperature=self.spec.temperature, eval_ece=fitted["ece"],
                              eval_calibrated_ece=fitted["calibrated_ece"])
