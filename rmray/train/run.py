"""Driver side of training: data pipeline, schedule, TorchTrainer, final report.

``train(cfg)`` is the one function the CLI and ``jobs/train.py`` call. The trainer is started
before the data is ready whenever that is safe (``_start_workers_early``): Ray Train's controller
and workers come up and load the model while the driver sets up the stream of rows
(:mod:`rmray.data.stream`), which reaches them through :mod:`rmray.train.handoff`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import time
from dataclasses import dataclass

from rmray.config import TrainConfig
from rmray.core.report import DataReport
from rmray.data.readable import stepwise_source
from rmray.errors import UsageError
from rmray.ray_env import init_ray, verbose, without_no_cpu_warning

from .data_plan import PreparedData, prepare_data, save_json
from .identity import check_or_record
from .metrics_log import read_metrics
from .preflight import check_before_ray
from .progress import InBackground, follow_progress

RUN_NAME = "ray"  # <output_dir>/ray/: Ray Train's run state and checkpoints


@dataclass
class TrainResult:
    output_dir: str
    final_model_dir: str
    summary: dict


def train(cfg: TrainConfig) -> TrainResult:
    started_at = time.time()
    cfg = dataclasses.replace(cfg, output_dir=os.path.abspath(cfg.checkpoints.output_dir))
    if cfg.data.data_format == "auto" and stepwise_source(cfg.data.train_data):  # a process reward model's rows
        cfg = dataclasses.replace(cfg, data_format="stepwise")
    check_before_ray(cfg)
    _prepare_output_dir(cfg)
    cfg = check_or_record(cfg, _local_run_dir(cfg))
    _check_resume_path(cfg)
    # Tokenizer and read-out need no Ray: they load (about 3 s of torch/transformers imports on 2 cores)
    # while ray.init waits on the processes it starts.
    model_facts = InBackground(lambda: _model_facts(cfg), name="rmray-model-facts")
    print(f"starting Ray ({cfg.ray.ray_address or os.environ.get('RAY_ADDRESS') or 'local'})...", flush=True)
    init_ray(cfg.ray.ray_address)
    ray_ready = time.time() - started_at

    from .handoff import DataHandoff

    handoff = DataHandoff.remote()
    trainer = _build_trainer(cfg, handoff, started_at, ray_ready)
    early = _start_workers_early(cfg)
    running = InBackground(trainer.fit) if early else None
    try:
        # The early start left a CPU for the data tasks (_room_for_data_tasks): Ray Data's hang warning is false.
        with without_no_cpu_warning() if early else contextlib.nullcontext():
            data = prepare_data(cfg, *model_facts.result(), stream=cfg.data.stream_data and early)
        payload = _worker_data(cfg, data, early, started_at)
    except BaseException as e:
        handoff.put.remote({"error": f"{type(e).__name__}: {e}"})
        if running is not None and isinstance(e, Exception):
            running.join(timeout=120)  # the ranks stop when they ask for the data: leave no workers behind
        raise
    handoff.put.remote({"data": payload})
    running = running or InBackground(trainer.fit)
    follow_progress(running, os.path.join(cfg.checkpoints.output_dir, "metrics.jsonl"), data.total_steps)
    reports = _final_reports(cfg, data)
    summary = next((m for m in reversed(read_metrics(cfg.checkpoints.output_dir)) if m.get("event") == "summary"), {})
    final_dir = os.path.join(cfg.checkpoints.output_dir, "final")
    if summary:
        from rmray.report.model_card import write_model_card

        write_model_card(cfg.checkpoints.output_dir, cfg.flat(), summary, reports)
    if _is_uri(cfg.fault_tolerance.storage_path) and summary:
        _upload_outputs(cfg.checkpoints.output_dir, cfg.fault_tolerance.storage_path.rstrip("/"))
    _print_summary(summary, final_dir)
    return TrainResult(cfg.checkpoints.output_dir, final_dir, summary)


def _start_workers_early(cfg: TrainConfig, settle_s: float = 3.0) -> bool:
    """Ray frees the CPUs of finished work (a previous run's placement group, Ray Data's actors)
    asynchronously, so right after such work the free CPUs read low for a second or two. Where the
    cluster's totals leave room, wait up to ``settle_s`` for them rather than lose the early start."""
    import ray

    nodes = ray.nodes()
    if not _room_for_data_tasks(cfg, nodes, ray.cluster_resources().get("CPU", 0.0)):
        return False
    deadline = time.monotonic() + settle_s
    while not _room_for_data_tasks(cfg, nodes, ray.available_resources().get("CPU", 0.0)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def _room_for_data_tasks(cfg: TrainConfig, nodes: list[dict], available_cpus: float) -> bool:
    """Whether the trainer may start while the data is prepared: only if, wherever Ray places the
    workers, some node keeps the CPU one Ray Data task asks for (1 for reads and plain maps,
    ``tokenize_num_cpus`` for tokenizing). Otherwise the workers' placement group could hold every
    CPU those tasks wait for -- a deadlock -- so data and trainer run one after the other.

    ``nodes`` as ``ray.nodes()`` returns them; the worst case puts as many workers on a node as fit."""
    need = max(1.0, cfg.ray.tokenize_num_cpus)
    if available_cpus - cfg.ray.num_workers * cfg.ray.cpus_per_worker < need:
        return False
    for node in nodes:
        if not node.get("Alive", True):
            continue
        cpus, gpus = node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)
        fit = cfg.ray.num_workers
        if cfg.ray.cpus_per_worker > 0:
            fit = min(fit, int(cpus // cfg.ray.cpus_per_worker))
        if cfg.ray.use_gpu:
            fit = min(fit, int(gpus))
        if cpus - fit * cfg.ray.cpus_per_worker >= need:
            return True
    return False


def _build_trainer(cfg: TrainConfig, handoff, started_at: float, ray_ready: float):
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = cfg.fault_tolerance.storage_path if _is_uri(cfg.fault_tolerance.storage_path) else os.path.abspath(cfg.fault_tolerance.storage_path or cfg.checkpoints.output_dir)
    return TorchTrainer(
        _train_worker,
        # Plain data and an actor handle only: every process that relays this (the controller too) unpickles it.
        train_loop_config={"cfg": dataclasses.asdict(cfg), "handoff": handoff, "started_at": started_at,
                           "ray_ready_s": ray_ready,
                           "run_dir": _local_run_dir(cfg)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, placement_strategy=cfg.ray.placement_strategy,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker} | ({"GPU": 1} if cfg.ray.use_gpu else {})),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=storage, checkpoint_config=_checkpoint_config(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.fault_tolerance.max_failures),
            logging_config=ray.train.LoggingConfig(
                log_level=os.environ.get("RMRAY_TRAIN_LOG_LEVEL", "INFO" if verbose() else "WARNING"))),
    )


def _worker_data(cfg: TrainConfig, data: PreparedData, early: bool, started_at: float) -> dict:
    """What every rank takes from the handoff: the stream of its rows (``RowStream``: the order rule,
    equal rows per rank in every window, its share of the eval rows) and the schedule. The stream is
    rmray's rather than Ray Train's ``datasets=`` + ``streaming_split``: that split hands blocks to
    whichever rank asks first, so which rank trains which pair would depend on timing and a resumed
    run could not skip exactly what was trained; and it calls the training function only once the
    data exists, while here the workers load the model while the first rows tokenize."""
    from rmray.core.benchmarks import benchmark_sources

    from .bench_eval import read_benchmarks

    return {"stream": data.stream, "info": {
        "spec": dataclasses.asdict(data.spec), "total_steps": data.total_steps, "has_eval": data.has_eval,
        "benchmarks": read_benchmarks(benchmark_sources(cfg.data.eval_benchmarks)),
        "data_ready_s": time.time() - started_at, "workers_started_early": early}}


def _final_reports(cfg: TrainConfig, data: PreparedData) -> list[dict]:
    """The data reports, saved; a data error the stream met (a bad row under ``on_bad_row=error``, no row
    kept) is raised here, after every rank stopped at it."""
    import ray

    status = ray.get(data.stream.data_report.remote())
    if status["error"]:
        raise UsageError(f"{cfg.data.train_data}: {status['error']}")
    if data.reports:
        return [r.to_dict() for r in data.reports]
    reports = status["reports"]
    for report in reports:
        print(DataReport(**report).format() + ("" if status["complete"] else " (rows read so far)"), flush=True)
    save_json(os.path.join(cfg.checkpoints.output_dir, "data_report.json"), reports)
    return reports


def _model_facts(cfg: TrainConfig) -> tuple:
    """The tokenizer and the read-out kind (torch and transformers imported on the way)."""
    from rmray.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.model_name_or_path, chat_template=cfg.model.chat_template,
                               trust_remote_code=cfg.model.trust_remote_code)
    return tokenizer, _readout(cfg)


def _train_worker(loop_config: dict) -> None:
    """What the trainer ships to its workers. Ray pickles a function by reference, so every process that
    receives it imports its module -- the controller too, which never runs it. ``rmray.train.loop``
    imports torch, transformers and peft (about 2 s per process on 2 busy cores, on the path to the
    first step), so the trainer holds this function of a light module and the loop is imported only
    where it runs."""
    from .loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def _checkpoint_config(cfg: TrainConfig):
    import ray.train

    if cfg.checkpoints.metric_for_best_model is None and not cfg.checkpoints.load_best_model_at_end:
        return ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints.save_total_limit)
    return ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints.save_total_limit,
                                      checkpoint_score_attribute=cfg.checkpoints.best_metric,
                                      checkpoint_score_order="max" if cfg.checkpoints.best_is_greater else "min")


def _readout(cfg: TrainConfig) -> str:
    """Build the architecture on the meta device (no weights) to learn its read-out kind."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rmray.core.model import readout_kind
    from rmray.core.tokenizer import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.model_name_or_path), num_labels=1,
                                        trust_remote_code=cfg.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    return readout_kind(model)


def _prepare_output_dir(cfg: TrainConfig) -> None:
    final = os.path.join(cfg.checkpoints.output_dir, "final")
    if os.path.exists(final):
        if not cfg.checkpoints.overwrite_output_dir:
            raise UsageError(
                f"{final} already holds a trained model (fix: another output_dir, or overwrite_output_dir=true "
                "to replace it; its checkpoints and metrics.jsonl are removed)"
            )
        for name in ("final", "adapter", RUN_NAME, "metrics.jsonl", "data_report.json", "README.md", "plots", "runs", "consumed", ".chaos_killed", "run_identity.json"):
            path = os.path.join(cfg.checkpoints.output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else (os.path.exists(path) and os.remove(path))
    os.makedirs(cfg.checkpoints.output_dir, exist_ok=True)


def _check_resume_path(cfg: TrainConfig) -> None:
    """A local ``resume_from_checkpoint`` that is missing or cut short fails here, in a second, not after
    Ray Train has started its workers (most of a minute on 2 cores) only for them to refuse it. Sizes
    only; the workers still verify checksums before loading. The run folder's own checkpoints take
    precedence over the path (``resume.load_resume_state``), so with any there this check stands aside."""
    path, run_dir = cfg.fault_tolerance.resume_from_checkpoint, _local_run_dir(cfg)
    if not path or _is_uri(path) or run_dir is None or glob.glob(os.path.join(run_dir, "checkpoint-*")):
        return
    from .checkpoint import checkpoint_problem

    problem = "not found" if not os.path.isdir(path) else checkpoint_problem(path, checksums=False)
    if problem:
        raise UsageError(f"resume_from_checkpoint={path!r} is not a whole rmray checkpoint: {path}: {problem} "
                         "(fix: point it at a checkpoint-NNNNNN folder whose rmray_checkpoint.json is present)")


def _local_run_dir(cfg: TrainConfig) -> str | None:
    """Ray Train's run folder (checkpoints) when storage is local; None on remote storage."""
    if _is_uri(cfg.fault_tolerance.storage_path):
        return None
    return os.path.join(os.path.abspath(cfg.fault_tolerance.storage_path or cfg.checkpoints.output_dir), RUN_NAME)


def _is_uri(path: str | None) -> bool:
    return bool(path) and "://" in path


def _upload_outputs(output_dir: str, uri: str) -> None:
    """Copy the model and its records next to the checkpoints. Object stores have no atomic folder rename,
    so ``final/`` and ``adapter/`` get a manifest (every file's size and SHA-256, what a checkpoint has)
    uploaded after all their files: a reader that finds it finds the whole model. ``metrics.jsonl`` goes
    last of all, so its presence says the whole upload is done."""
    import pyarrow.fs

    from .checkpoint import MANIFEST, write_manifest

    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    for name in ("final", "adapter", "plots", "README.md", "data_report.json", "metrics.jsonl"):
        source = os.path.join(output_dir, name)
        if os.path.isdir(source):
            if name in ("final", "adapter"):
                write_manifest(source)
            files = sorted(os.path.relpath(os.path.join(d, f), source) for d, _, names in os.walk(source) for f in names)
            for rel in sorted(files, key=lambda rel: rel == MANIFEST):  # the manifest last
                _upload(filesystem, os.path.join(source, rel), f"{root}/{name}/{rel}")
        elif os.path.exists(source):
            _upload(filesystem, source, f"{root}/{name}")
    print(f"outputs copied to {uri}", flush=True)


def _upload(filesystem, local: str, remote: str) -> None:
    """One object, whole: it appears in the bucket when its upload completes."""
    filesystem.create_dir(os.path.dirname(remote), recursive=True)
    with open(local, "rb") as source, filesystem.open_output_stream(remote) as target:
        shutil.copyfileobj(source, target, length=8 << 20)


def _print_summary(summary: dict, final_dir: str) -> None:
    if not summary:
        print(f"training finished; model in {final_dir}")
        return
    parts = [f"{summary.get('steps')} steps", f"{summary.get('train_pairs_per_s', 0):.1f} pairs/s"]
    if summary.get("eval_accuracy") is not None:
        parts.append(f"eval accuracy {summary['eval_accuracy']:.3f}")
        parts.append(f"eval loss {summary['eval_loss']:.4f}")
    startup = summary.get("startup_s") or {}
    if "first_step" in startup:  # where the wait before training went
        parts.append(f"first step at {startup['first_step']:.1f}s (Ray {startup['ray_ready']:.1f}s, data ready "
                     f"{startup['data_ready']:.1f}s, model ready {startup['model_ready']:.1f}s)")
    print("done: " + ", ".join(parts) + f"\nmodel: {final_dir}", flush=True)
