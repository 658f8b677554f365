"""Which checkpoint a (re)started worker loads, and loading it.

The order of preference: this run's folder, newest step first (a worker killed right after a report
can die before Ray's controller registered that checkpoint; measured: a kill one step after a
checkpoint restarted from scratch) -- on an object store, its listing, as a new driver finds it --
then Ray's own latest, then ``resume_from_checkpoint``. A partial or corrupt checkpoint (an upload cut
short leaves some of its objects, in any order) is skipped with a warning naming it, never loaded.
"""

from __future__ import annotations

import contextlib
import glob
import os

import ray.train

from rmray.data.position import count

from .checkpoint import checkpoint_problem, load_checkpoint
from .schedule import build_scheduler


def _options(cfg, run_dir: str | None) -> tuple[list, bool]:
    """The checkpoints to try, newest first, and whether they are only the user's ``resume_from_checkpoint``."""
    checkpoint = ray.train.get_checkpoint()
    on_disk = sorted(glob.glob(os.path.join(run_dir, "checkpoint-*")), reverse=True) if run_dir else _listed(cfg)
    options: list = on_disk + ([checkpoint] if checkpoint is not None else [])
    if options or not cfg.fault_tolerance.resume_from_checkpoint:
        return options, False
    uri = "://" in cfg.fault_tolerance.resume_from_checkpoint  # downloaded by Ray's Checkpoint, then checked like a folder
    return [ray.train.Checkpoint(cfg.fault_tolerance.resume_from_checkpoint) if uri else cfg.fault_tolerance.resume_from_checkpoint], True


def _listed(cfg) -> list:
    """The checkpoints of an object-store ``storage_path``, newest first, as Ray ``Checkpoint``s."""
    storage = cfg.fault_tolerance.storage_path
    if not storage or "://" not in storage:
        return []
    import pyarrow.fs

    root = storage.rstrip("/") + "/ray"
    fs, path = pyarrow.fs.FileSystem.from_uri(root)
    listed = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    names = sorted((os.path.basename(i.path) for i in listed if i.type == pyarrow.fs.FileType.Directory
                    and os.path.basename(i.path).startswith("checkpoint-")), reverse=True)
    return [ray.train.Checkpoint(f"{root}/{name}") for name in names]


def load_resume_state(cfg, run_dir: str | None, compute, optimizer_and_scheduler: tuple, log) -> dict | None:
    """Load the newest whole checkpoint into ``compute``'s model and the optimizer/scheduler; return its
    saved loop state (with ``_from``, the folder it came from), or None to start fresh."""
    optimizer, scheduler = optimizer_and_scheduler
    options, from_user = _options(cfg, run_dir)
    problems = []
    for option in options:
        context = option.as_directory() if hasattr(option, "as_directory") else contextlib.nullcontext(option)
        with context as directory:
            where = _name(option, directory)
            problem = checkpoint_problem(directory)
            if problem:
                problems.append(f"{where}: {problem}")
                log.write({"event": "warning", "kind": "bad_checkpoint", "message": f"skipping checkpoint {where}: {problem}"})
                continue
            saved = load_checkpoint(directory, compute=compute, optimizer=optimizer, scheduler=scheduler)
            saved["_from"] = where
            return saved
    if from_user:
        raise ValueError(f"resume_from_checkpoint={cfg.fault_tolerance.resume_from_checkpoint!r} is not a whole rmray checkpoint: "
                         f"{problems[0] if problems else 'not found'}")
    return None


def _name(option, directory: str) -> str:
    """Where a checkpoint is as its user knows it: a URI for a downloaded one, else its folder."""
    filesystem = getattr(option, "filesystem", None)
    if filesystem is not None and filesystem.type_name != "local":
        return f"{filesystem.type_name}://{option.path}"
    return str(directory)


def restore_position(run, saved: dict) -> None:
    """Put a checkpoint's position and counters into ``run`` (a ``WorkerRun``). Written by another number
    of workers, its epoch continues on the rows it had not trained (:mod:`rmray.data.position`), over the
    schedule it started: the driver kept the global batch (``rmray.train.identity``), so the steps left
    are the steps it had left."""
    s = run.state
    s.step, s.epoch, s.batches_in_epoch = saved["step"], saved["epoch"], saved["batches_in_epoch"]
    s.train_time_s, s.pairs_seen = saved.get("train_time_s", 0.0), saved.get("pairs_seen", 0)
    s.tokens_seen = saved.get("tokens_seen", 0)  # else tokens/s after a resume counts only the new steps
    s.excluded = saved.get("excluded", [])
    world = saved.get("world", run.world)
    if world != run.world:
        if s.batches_in_epoch and "trained_rows" not in saved:
            raise ValueError(f"checkpoint {saved['_from']} was written by {world} workers without the record of the "
                             f"rows it trained, so {run.world} workers cannot continue its epoch exactly; "
                             f"resume it with num_workers={world}")
        s.excluded, s.batches_in_epoch = saved.get("trained_rows", []), 0
        if saved.get("total_steps") and saved["total_steps"] != run.total_steps:
            run.total_steps = saved["total_steps"]
            run.scheduler = build_scheduler(run.optimizer, run.cfg.optimization, run.total_steps)
            run.scheduler.load_state_dict(saved["scheduler"])
    moved = {"rows_trained_in_epoch": count(s.excluded)} if world != run.world else {}
    run.log.write({"event": "resume", "step": s.step, "epoch": s.epoch, "batches_in_epoch": s.batches_in_epoch,
                   "from": saved["_from"], "workers": world, **moved})
