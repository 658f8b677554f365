"""The scheduling policy rmray gives a local Ray started for training (see rmray.ray_env)."""

import os
import subprocess
import sys
import threading

import pytest

from rmray.ray_env import _batch_policy_for_children, normal_policy_for_this_thread

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies only")
CHILD_POLICY = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]


def test_processes_started_for_training_inherit_batch_and_the_caller_is_restored():
    before = os.sched_getscheduler(0)
    with _batch_policy_for_children():
        child = int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout)
    assert child == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before
    assert int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout) == before


def test_opt_out_leaves_children_normal(monkeypatch):
    monkeypatch.setenv("RMRAY_RAY_BATCH_SCHED", "0")
    with _batch_policy_for_children():
        child = int(subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout)
    assert child == os.sched_getscheduler(0) != os.SCHED_BATCH


def test_training_thread_and_the_threads_it_starts_go_back_to_normal():
    seen = {}

    def worker():  # a thread of a batch-policy Ray worker, as the training function runs in
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        normal_policy_for_this_thread()
        seen["self"] = os.sched_getscheduler(0)
        inner = threading.Thread(target=lambda: seen.setdefault("child", os.sched_getscheduler(0)))
        inner.start()
        inner.join()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"self": os.SCHED_OTHER, "child": os.SCHED_OTHER}
