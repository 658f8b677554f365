"""Start or join Ray with quiet, safe defaults shared by training, scoring and serving."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

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
    # Prometheus gauges per worker, and an actor per run that only logs node drains. Off: +5-7 % per
    # step on 2 cores in paired runs, and an earlier first step (BENCHMARKS.md, stop 16).
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def verbose() -> bool:
    """``RMRAY_VERBOSE=1`` forwards Ray's worker logs and INFO lines; off by default."""
    return os.environ.get("RMRAY_VERBOSE", "0") not in ("", "0", "false")


def _joins_cluster(address: str | None) -> bool:
    if address == "local":
        return False
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None = None, *, batch_scheduling: bool = False, **kwargs) -> None:
    """Join ``address`` (``auto`` or ``ray://...``), the cluster of ``ray job submit`` (RAY_ADDRESS), or
    start a local one. A no-op when Ray is already initialised (tests, notebooks).

    ``batch_scheduling`` (training): a local Ray's processes start under ``SCHED_BATCH`` -- see
    :func:`_batch_policy_for_children`."""
    quiet_env()
    import ray

    if ray.is_initialized():
        return
    joins = _joins_cluster(address)
    kwargs.setdefault("log_to_driver", verbose())
    if joins:  # remote workers get the quiet settings through the job's runtime env
        kwargs.setdefault("runtime_env", {"env_vars": {k: os.environ[k] for k in QUIET_ENV}})
    # A local Ray's workers inherit this process's environment; a job-level runtime env would keep
    # them from using the pre-started worker processes (each task and actor would boot a new one).
    with _batch_policy_for_children() if batch_scheduling and not joins else contextlib.nullcontext():
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
def _batch_policy_for_children():
    """Processes started inside (GCS, raylet, and every worker the raylet forks) inherit ``SCHED_BATCH``.

    Each Ray process wakes about 100 times a second (Ray core's 10 ms signal check, gRPC timers). On a
    node whose cores the training threads keep busy, every such wake-up of a normal task preempts a
    compute thread, and the other threads of the op then wait at its barrier: measured on 2 cores, the
    two torch threads of a Ray Train worker were preempted 600-800 times a second each (a plain loop:
    8-42). Batch tasks do not preempt on wake-up -- they run at the next tick -- which halves that and
    costs Ray at most a tick of latency. The training threads go back to the normal
    policy (:func:`training_thread_priority`). ``RMRAY_RAY_BATCH_SCHED=0`` turns this off."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or os.environ.get("RMRAY_RAY_BATCH_SCHED", "1") in ("0", "false"):
        yield
        return
    try:
        old, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, policy, os.sched_param(0))  # this thread: the one ray.init spawns from
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, old, param)


def training_thread_priority(priority: str = "normal") -> str:
    """Put the calling thread -- and the threads it starts later: torch's OpenMP pool -- ahead of Ray's own
    processes: on a node whose cores the step fills, each wake-up of theirs that preempts a compute
    thread stalls the other threads at the op's barrier.

    ``normal``: back from ``SCHED_BATCH`` to the normal policy, and from Ray's worker niceness (15) to 0
    where the process may raise its priority (root with CAP_SYS_NICE; otherwise the niceness stays).
    ``realtime``: ``SCHED_FIFO`` priority 1 -- no normal process preempts these threads; the kernel's RT
    throttling still leaves the others 5 % of each core. For nodes with no more training threads than
    cores; needs CAP_SYS_NICE, falls back to ``normal`` without it. Returns what was applied."""
    if not hasattr(os, "SCHED_BATCH"):
        return "unchanged (no Linux scheduling policies)"
    if priority == "realtime":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "realtime"
        except OSError as e:
            refused = e.strerror
        return f"{training_thread_priority('normal')} (realtime refused: {refused}; needs CAP_SYS_NICE)"
    try:  # a sandbox's seccomp filter may refuse any of these: training then runs as Ray started it
        if os.sched_getscheduler(0) == os.SCHED_BATCH:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)  # per thread on Linux
    except OSError as e:
        return f"unchanged ({e.strerror})"
    if nice > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except OSError:
            return f"normal, niceness {nice}"
    return "normal"


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

