"""What rmray.ray_env sets up around a local Ray: quiet logs, and nothing of the OS scheduling."""

import os
import subprocess
import sys

import pytest

CHILD_POLICY = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]


def test_training_leaves_os_priorities_alone():
    """rmray changes no scheduling policy or niceness of the user's processes: this process's, and a
    child's started after Ray came up, are what they were before."""
    from rmray.config import load_config

    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))

    child = subprocess.run(CHILD_POLICY, capture_output=True, text=True, check=True).stdout
    assert int(child) == before[0] and (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before
    with pytest.raises(ValueError, match="unknown config key 'train_thread_priority'"):
        load_config(None, ["train_thread_priority=realtime"])


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
