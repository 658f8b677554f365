"""Training checkpoints without pickle: save and load, one beside the other.

Layout of one checkpoint folder::

    config.json, model.safetensors (or adapter_model.safetensors for LoRA), tokenizer files,
    rmray_scoring.json        -- a loadable reward model, as in final/
    optimizer.safetensors     -- every optimizer state tensor, keyed "<param index>.<name>"
    trainer_state.json        -- step, epoch, batches done in the epoch, optimizer hyper-params, scheduler, RNG
    rmray_checkpoint.json     -- sizes and SHA-256 of the files above, written last

:func:`save_checkpoint` writes exactly what :func:`load_checkpoint` reads; every other function here is
one half of that pair (the model, the optimizer and scheduler, the manifest), kept public for the
tests that damage one file at a time.
"""

from __future__ import annotations

import glob
import json
import os

import torch
from safetensors.torch import load_file, save_file

from rmray.core.export import save_unmerged
from rmray.core.files import write_json_atomic

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
MANIFEST = "rmray_checkpoint.json"
POSITION_KEYS = ("step", "epoch", "batches_in_epoch")  # where a resume starts


def save_checkpoint(directory: str, *, compute, tokenizer, spec, model_state: dict, optimizer_state: dict,
                    scheduler, position: dict) -> None:
    """Rank 0 writes the gathered ``model_state``/``optimizer_state`` (every rank joined the gathers under
    FSDP), the scheduler and ``position`` into ``directory``, the manifest last."""
    save_unmerged(compute.raw, tokenizer, spec, directory, state_dict=model_state)
    save_training_state(directory, optimizer_state=optimizer_state, scheduler=scheduler, position=position)
    write_manifest(directory)


def load_checkpoint(directory: str, *, compute, optimizer, scheduler) -> dict:
    """The inverse of :func:`save_checkpoint`: weights into ``compute``'s (possibly sharded) model, the
    optimizer and scheduler state, torch's RNG; returns the saved position and counters.
    ``directory`` must have passed :func:`checkpoint_problem`."""
    strategy, model, raw = compute.strategy, compute.model, compute.raw
    load_model_weights(raw.model, directory, lambda sd: strategy.load_model_state(model, raw, sd))
    saved, optimizer_state = load_training_state(directory, scheduler=scheduler)
    strategy.load_optimizer_state(model, optimizer, optimizer_state)
    return saved


def save_training_state(directory: str, *, optimizer_state: dict, scheduler, position: dict) -> None:
    """``optimizer_state``: ``optimizer.state_dict()``, or the full (unsharded) one under FSDP.
    ``position``: ``step``, ``epoch`` and ``batches_in_epoch`` (where a resume starts), and any counters
    the run carries on (``pairs_seen``, ...); written as they are into ``trainer_state.json``."""
    missing = set(POSITION_KEYS) - set(position)
    if missing:
        raise ValueError(f"position lacks {sorted(missing)}: a resume could not find its place")
    osd = optimizer_state
    tensors, scalars = {}, {}
    for index, param_state in osd["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, os.path.join(directory, OPTIMIZER_FILE))
    state = {
        **position, "param_groups": osd["param_groups"], "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),  # LambdaLR keeps its functions out: lr_lambdas is [None]
        "torch_rng": torch.get_rng_state().tolist(),
    }
    write_json_atomic(os.path.join(directory, TRAINER_STATE), state, indent=None)


def load_training_state(directory: str, *, scheduler) -> tuple[dict, dict]:
    """(trainer state, optimizer state dict to load); the scheduler and torch RNG are restored here."""
    with open(os.path.join(directory, TRAINER_STATE)) as f:
        state = json.load(f)
    tensors = load_file(os.path.join(directory, OPTIMIZER_FILE))
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(state["optimizer_scalars"].items()):
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state, {"state": per_param, "param_groups": state["param_groups"]}


def load_model_weights(model, directory: str, load_state=None) -> None:
    """Load checkpoint weights into a live (possibly PEFT-wrapped) model, strictly.

    ``load_state(state_dict) -> (missing, unexpected)`` replaces ``model.load_state_dict`` where the
    live parameters are sharded (FSDP)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(os.path.join(directory, "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint {directory}: unexpected adapter keys {result.unexpected_keys[:5]}")
        return
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    files = [f for f in files if os.path.basename(f) != OPTIMIZER_FILE]
    if not files:
        raise FileNotFoundError(f"checkpoint {directory} has no model weights (*.safetensors)")
    state = {}
    for path in files:
        state.update(load_file(path))
    if load_state is None:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    else:
        missing, unexpected = load_state(state)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")



def write_manifest(directory: str) -> None:
    """Sizes and SHA-256 of every file, written last: a checkpoint without it, or whose files differ
    from it, was cut short (a crash mid-copy, a full disk) and is never loaded."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    write_json_atomic(os.path.join(directory, MANIFEST), {"files": files}, indent=1)


def checkpoint_problem(directory: str, checksums: bool = True) -> str | None:
    """None when the checkpoint is whole; otherwise what is wrong with it. ``checksums=False``: names,
    sizes and the manifest only (milliseconds, where hashing a 7B model's files takes most of a minute)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return f"{MANIFEST} missing (the checkpoint was not finished)"
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError) as err:
        return f"{MANIFEST} unreadable: {err}"
    for rel, meta in files.items():
        full = os.path.join(directory, rel)
        if not os.path.exists(full):
            return f"{rel} missing"
        if os.path.getsize(full) != meta["bytes"]:
            return f"{rel} has {os.path.getsize(full)} bytes, expected {meta['bytes']}"
        if checksums and _sha256(full) != meta["sha256"]:
            return f"{rel} content differs from its checksum"
    return None


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_name(cfg, step: int) -> str:
    """``checkpoint-NNNNNN``, or ``checkpoint-NNNNNN-K`` when a checkpoint of that step already exists.

    A run that rolled back over a damaged checkpoint re-reaches its step: reusing the name would write
    into the folder Ray's checkpoint manager still lists as the old one, and pruning one of the two
    deletes the other's files (the run then died at its end on "Path not found"). Newest-first order
    by name still holds: ``-1`` sorts after the bare name, and any later step after both."""
    root = (cfg.fault_tolerance.storage_path or cfg.checkpoints.output_dir).rstrip("/") + "/ray"
    base = f"checkpoint-{step:06d}"
    if "://" in root:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(root)
        exists = lambda name: filesystem.get_file_info(f"{path}/{name}").type != pyarrow.fs.FileType.NotFound  # noqa: E731
    else:
        exists = lambda name: os.path.exists(os.path.join(os.path.abspath(root), name))  # noqa: E731
    name, k = base, 1
    while exists(name):
        name, k = f"{base}-{k}", k + 1
    return name
