"""Start or join Ray with quiet, safe defaults shared by training, scoring and serving."""

from __future__ import annotations

import contextlib
import logging
import os

# Set before Ray starts so its actors inherit them. Each is a default the user can override.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no phoning home (and no DNS timeouts offline)
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # worker prints would appear twice
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's bars spam non-TTY logs; rmray prints its own progress
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "300",  # a resource deadlock fails in minutes, not hangs
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_DEDUP_LOGS": "1",
    # Two Ray Train extras rmray does not use, each a source of wake-ups beside the training threads:
    # Prometheus gauges per worker, and an actor per run that only logs node drains. Off: fewer
    # processes and wake-ups beside the step, and one process fewer to start (BENCHMARKS.md).
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def verbose() -> bool:
    """``RMRAY_VERBOSE=1`` forwards Ray's worker logs and INFO lines; off by default."""
    return os.environ.get("RMRAY_VERBOSE", "0") not in ("", "0", "false")


def joins_cluster(address: str | None) -> bool:
    """Joining a running cluster (``auto``, ``ray://``, an address, or ``RAY_ADDRESS``), not starting one."""
    if address == "local":
        return False
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join ``address`` (``auto`` or ``ray://...``), the cluster of ``ray job submit`` (RAY_ADDRESS), or
    start a local one. A no-op when Ray is already initialised (tests, notebooks). Ray's processes keep
    the scheduling policy and niceness Ray gives them: rmray changes no OS priorities."""
    quiet_env()
    import ray

    if ray.is_initialized():
        return
    joins = joins_cluster(address)
    kwargs.setdefault("log_to_driver", verbose())
    if joins:  # remote workers get the quiet settings through the job's runtime env
        kwargs.setdefault("runtime_env", {"env_vars": {k: os.environ[k] for k in QUIET_ENV}})
    # A local Ray's workers inherit this process's environment; a job-level runtime env would keep
    # them from using the pre-started worker processes (each task and actor would boot a new one).
    ray.init(address=address, logging_level=logging.INFO if verbose() else logging.WARNING, **kwargs)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "application ready" chatter
        data_logger = logging.getLogger("ray.data")
        data_logger.setLevel(logging.WARNING)
        for handler in data_logger.handlers:  # rmray prints its own progress; this notice is noise
            handler.addFilter(lambda record: "Progress bars disabled" not in record.getMessage())


@contextlib.contextmanager
def without_no_cpu_warning():
    """Drop Ray Data's "no available CPUs ... will hang" warning inside, for callers that reserved a
    CPU for the data tasks themselves. Ray Data prints it from a snapshot of free CPUs taken when a
    dataset executes; right after a task ends Ray frees its CPU asynchronously, so the snapshot can read
    0 while the reserved CPU is about to be free again -- a warning of a hang that cannot happen."""
    data_logger = logging.getLogger("ray.data.dataset")

    def keep(record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()

    data_logger.addFilter(keep)
    try:
        yield
    finally:
        data_logger.removeFilter(keep)

