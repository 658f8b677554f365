"""What rmray.ray_env sets up around a local Ray: the scheduling policy for training, quiet logs."""

import os
import subprocess
import sys
import threading

import pytest

from rmray.ray_env import _batch_policy_for_children, training_thread_priority

linux_policies = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies only")
CHILD_POLICY = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]


@linux_policies
def test_processes_started_for_training_inherit_batch_and_the_caller_is_restored():
    before = os.sched_getscheduler(0)
    with _batch_policy_for_children():
        child = int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout)
    assert child == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before
    assert int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout) == before


@linux_policies
def test_opt_out_leaves_children_normal(monkeypatch):
    monkeypatch.setenv("RMRAY_RAY_BATCH_SCHED", "0")
    with _batch_policy_for_children():
        child = int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout)
    assert child == os.sched_getscheduler(0) != os.SCHED_BATCH


def _in_thread(fn):
    """Run ``fn`` on a fresh thread (policy and niceness are per thread on Linux) and return its result."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()))
    t.start()
    t.join()
    return out["r"]


def _may_raise_priority() -> bool:
    def probe():
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 5)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
            return True
        except PermissionError:
            return False
    return _in_thread(probe)


@linux_policies
def test_training_threads_leave_rays_batch_policy_and_niceness_where_permitted():
    """Ray starts its workers at niceness 15, so the training threads lose every contest for a core to
    the raylet, the GCS and Ray Data; at 0 they share as a plain process would."""
    permitted = _may_raise_priority()

    def worker():  # as the training function runs in a Ray worker: niceness 15, batch policy
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 15)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        applied = training_thread_priority("normal")
        child = _in_thread(lambda: (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), os.sched_getscheduler(0)))
        return applied, os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(0), child

    applied, nice, policy, (child_nice, child_policy) = _in_thread(worker)
    assert policy == child_policy == os.SCHED_OTHER  # torch's threads, started later, inherit it
    if permitted:
        assert (applied, nice, child_nice) == ("normal", 0, 0)
    else:  # an unprivileged container: the niceness stays, and the summary says so
        assert (applied, nice, child_nice) == ("normal, niceness 15", 15, 15)


@linux_policies
def test_realtime_training_threads_or_a_named_fallback():
    def worker():
        applied = training_thread_priority("realtime")
        child = _in_thread(lambda: os.sched_getscheduler(0))
        return applied, os.sched_getscheduler(0), child

    applied, policy, child = _in_thread(worker)
    if applied == "realtime":  # root with CAP_SYS_NICE, as on this project's machines
        assert policy == child == os.SCHED_FIFO
    else:
        assert "realtime refused" in applied and "CAP_SYS_NICE" in applied
        assert policy == child == os.SCHED_OTHER


def test_an_unknown_thread_priority_is_named():
    from rmray.config import load_config

    with pytest.raises(ValueError, match="train_thread_priority.*'fast' is not one of"):
        load_config(None, ["train_thread_priority=fast"])


def test_ray_datas_false_hang_warning_is_dropped_only_inside():
    """The early start reserves a CPU for the data tasks, so Ray Data's "will hang" snapshot is wrong
    there; everywhere else it must still reach the user. The text is read from the installed Ray, so
    a Ray upgrade that rewords it fails here instead of letting the warning through unnoticed."""
    import inspect
    import logging

    import ray.data.dataset as ray_dataset

    from rmray.ray_env import without_no_cpu_warning

    source = inspect.getsource(ray_dataset)
    assert '"Warning: The Ray cluster currently does not have any "\n' in source
    logger = logging.getLogger("ray.data.dataset")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        message = "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang"
        with without_no_cpu_warning():
            logger.warning(message)
            logger.warning("another Ray Data warning")
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["another Ray Data warning", message]
