"""What defines a training run, saved beside its checkpoints, so a rerun resumes only its own run.

Rerunning into an ``output_dir`` whose run was interrupted resumes from its last checkpoint. With
another model, other data or another schedule that would silently make one model out of two runs;
the rerun is refused instead, in a second and before Ray starts, naming the keys that differ.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

from rmray.config_fields import fields_of
from rmray.core.files import write_json_atomic
from rmray.errors import UsageError

TRAINER_STATE = "trainer_state.json"  # rmray.train.checkpoint's, named here without importing torch before Ray

IDENTITY_FILE = "run_identity.json"
# Keys that change which pairs are trained on, in what order, with which loss and schedule. Speed and
# logging settings (batching layout, eval/save cadence, Ray resources) may change across a resume.
RUN_KEYS = (
    "model_name_or_path", "chat_template", "train_data", "eval_data", "eval_split_ratio", "data_format",
    "max_train_samples", "max_length", "truncation", "add_eos", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_workers", "learning_rate", "weight_decay", "lr_scheduler_type",
    "warmup_ratio", "warmup_steps", "num_train_epochs", "max_steps", "max_grad_norm", "seed",
    "loss", "attributes", "attribute_weights", "attribute_loss_weight", "rating_margin",
    "center_rewards_coefficient", "debias_length", "debias_length_weight", "use_peft",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "step_separator",
)


def run_identity(cfg) -> dict:
    """The run-defining settings, and for local data files a fingerprint of their contents."""
    values = cfg.flat()
    identity = {key: values[key] for key in RUN_KEYS if key in values}
    for key in ("train_data", "eval_data"):
        if values.get(key):
            identity[f"{key}_fingerprint"] = _data_fingerprint(values[key])
    return identity


def check_or_record(cfg, run_dir: str | None):
    """Refuse to resume another run's checkpoints; record this run's identity when it starts fresh. Returns
    ``cfg``, with ``gradient_accumulation_steps`` set to keep the run's global batch when only the number
    of workers changed (:func:`_other_world`).

    ``resume_other_run=true`` continues anyway (and records the new identity)."""
    mine = json.loads(json.dumps(run_identity(cfg)))  # as it reads back from JSON (tuples -> lists)
    resuming = _has_checkpoints(cfg, run_dir)
    saved = _read_identity(cfg) if resuming else None
    if saved is not None and saved.get("num_workers", cfg.ray.num_workers) != cfg.ray.num_workers:
        _check_rows_recorded(run_dir)  # what cannot carry over is refused even with resume_other_run
    if saved is not None and not cfg.fault_tolerance.resume_other_run:
        # a key added to RUN_KEYS after that run started counts as its default there
        defaults = {name: f.default for name, f in fields_of(type(cfg)).items() if f.default is not dataclasses.MISSING}
        saved = {**{k: defaults[k] for k in RUN_KEYS if k not in saved and k in defaults}, **saved}
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ and set(differ) <= set(WORLD_KEYS):
            cfg = _other_world(cfg, saved, run_dir)
            mine, differ = json.loads(json.dumps(run_identity(cfg))), []
        if differ:
            shown = "; ".join(f"{k}: {saved.get(k)!r} there, {mine.get(k)!r} now" for k in differ[:6])
            raise UsageError(f"{cfg.checkpoints.output_dir} holds checkpoints of another run ({shown}) (fix: another "
                             "output_dir, overwrite_output_dir=true to start over, or resume_other_run=true to "
                             "continue that run with these settings)")
    _write_identity(cfg, mine)
    return cfg


def _read_identity(cfg) -> dict | None:
    """The recorded identity: beside the checkpoints on an object store (a new driver on another machine
    finds it there), else in ``output_dir``."""
    storage = cfg.fault_tolerance.storage_path
    if storage and "://" in storage:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(storage.rstrip("/"))
        if fs.get_file_info(f"{root}/{IDENTITY_FILE}").type != pyarrow.fs.FileType.NotFound:
            with fs.open_input_stream(f"{root}/{IDENTITY_FILE}") as f:
                return json.loads(f.read())
    path = os.path.join(cfg.checkpoints.output_dir, IDENTITY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_identity(cfg, identity: dict) -> None:
    os.makedirs(cfg.checkpoints.output_dir, exist_ok=True)
    write_json_atomic(os.path.join(cfg.checkpoints.output_dir, IDENTITY_FILE), identity)
    storage = cfg.fault_tolerance.storage_path
    if storage and "://" in storage:  # one PUT: the object appears whole
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(storage.rstrip("/"))
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{IDENTITY_FILE}") as f:
            f.write(json.dumps(identity, indent=2).encode())


WORLD_KEYS = ("num_workers", "gradient_accumulation_steps")


def _other_world(cfg, saved: dict, run_dir: str | None):
    """A run resumed on another number of workers continues exactly when its global batch (workers x
    accumulation x per-device batch) stays: each step then trains as many rows, and the schedule's steps
    are the same steps. The accumulation is derived when only ``num_workers`` changed; a global batch that
    the new number of workers cannot make is refused (``resume_other_run=true`` continues with another)."""
    before_workers, before_accumulation = saved["num_workers"], saved["gradient_accumulation_steps"]
    workers, accumulation = cfg.ray.num_workers, cfg.optimization.gradient_accumulation_steps
    global_batch = before_workers * before_accumulation
    if workers * accumulation != global_batch:
        if accumulation != before_accumulation or global_batch % workers:
            raise UsageError(
                f"{cfg.checkpoints.output_dir} was trained with num_workers={before_workers} x gradient_accumulation_steps="
                f"{before_accumulation}; num_workers={workers} x gradient_accumulation_steps={accumulation} changes the "
                f"global batch (fix: a num_workers that divides {global_batch}, with gradient_accumulation_steps as it was: "
                f"rmray derives it; or resume_other_run=true to continue with this global batch)")
        accumulation = global_batch // workers
        cfg = dataclasses.replace(cfg, gradient_accumulation_steps=accumulation)
    print(f"resuming a {before_workers}-worker run on {workers} workers: gradient_accumulation_steps "
          f"{accumulation} keeps its global batch; its epoch continues on the rows it has not trained", flush=True)
    return cfg


def _check_rows_recorded(run_dir: str | None) -> None:
    """A checkpoint written before checkpoints recorded their trained rows cannot continue its epoch on
    another number of workers: refused here, before Ray (a URI ``storage_path`` is checked by the workers)."""
    newest = sorted(glob.glob(os.path.join(run_dir, "checkpoint-*", TRAINER_STATE)))[-1:] if run_dir else []
    for path in newest:
        with open(path) as f:
            state = json.load(f)
        if state.get("batches_in_epoch") and "trained_rows" not in state:
            raise UsageError(f"{os.path.dirname(path)} does not record the rows its epoch trained, so another number "
                             f"of workers cannot continue it exactly (fix: num_workers={state.get('world', 'as before')})")


def _has_checkpoints(cfg, run_dir: str | None) -> bool:
    """Whether the run's storage holds checkpoints: its local run folder, or a URI ``storage_path`` listed."""
    if run_dir is not None:
        return bool(glob.glob(os.path.join(run_dir, "checkpoint-*")))
    storage = cfg.fault_tolerance.storage_path
    if not storage or "://" not in storage:
        return False
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage.rstrip("/") + "/ray")
    listed = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return any(os.path.basename(info.path).startswith("checkpoint-") for info in listed)


def _data_fingerprint(source: str) -> str | None:
    """A digest of the files behind ``source``: every byte of a local file (SHA-256 streamed once, so an edit
    that keeps the size -- a label fix swapping chosen and rejected -- is seen), an object's size and
    modification time for a URI (an object store rewrites both with every upload); None for hub ids."""
    from rmray.data.source import open_source

    files = open_source(source).files()
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        if "://" in path:
            digest.update(_object_stamp(path).encode())
            continue
        digest.update(f"{os.path.basename(path)}:{os.path.getsize(path)}".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _object_stamp(uri: str) -> str:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    return f"{uri}:{info.size}:{info.mtime_ns}"
