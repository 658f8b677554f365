"""How a run starts: the workers come up while the data is tokenized when a CPU is left for the
tokenizer, one after the other when not (a deadlock otherwise; a run without a spare CPU trains in
test_stream_training.py), and bad data fails clearly either way."""

import json
import threading

import pytest

from rmray.config import TrainConfig
from rmray.train.metrics_log import read_metrics

from ..conftest import free_cpus_soon

pytestmark = pytest.mark.ray


def pairs_file(path, n: int) -> str:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Q{i}: say hi", "chosen": f" hello {i}", "rejected": " go away"}) + "\n")
    return str(path)


def config(tiny_qwen, tmp_path, **overrides) -> TrainConfig:
    base = dict(model_name_or_path=tiny_qwen, train_data=pairs_file(tmp_path / "d.jsonl", 32), eval_split_ratio=0,
                max_length=64, per_device_train_batch_size=8, max_steps=2, logging_steps=1, report_to=[],
                output_dir=str(tmp_path / "out"))
    return TrainConfig(**base | overrides)


def test_workers_start_early_only_when_a_node_keeps_a_cpu_for_data_tasks(ray_cluster, tiny_qwen, tmp_path):
    from rmray.train.run import _room_for_data_tasks, _start_workers_early

    assert free_cpus_soon(ray_cluster) == 2  # the session cluster, idle
    shape = lambda workers, cpus: _start_workers_early(config(tiny_qwen, tmp_path, num_workers=workers,  # noqa: E731
                                                              cpus_per_worker=cpus))
    assert shape(2, 0.5) and shape(1, 1.0)  # a whole CPU is left for a read or map task
    assert not shape(2, 1.0) and not shape(1, 2.0) and not shape(1, 1.5)

    # CPUs held by work that is ending (here a placement group removed 1 s later) are waited for,
    # briefly: the early start is not lost to Ray's asynchronous release.
    from ray.util.placement_group import placement_group, remove_placement_group

    held, removed = placement_group([{"CPU": 1.5}]), []
    release = threading.Timer(1.0, lambda: removed.append(remove_placement_group(held)))
    try:
        ray_cluster.get(held.ready(), timeout=30)
        cfg = config(tiny_qwen, tmp_path, num_workers=2, cpus_per_worker=0.5)
        assert not _start_workers_early(cfg, settle_s=0)
        release.start()
        assert _start_workers_early(cfg)
    finally:  # a failed assert must not leave 1.5 of the cluster's 2 CPUs held for every later test
        release.cancel()
        if release.is_alive():
            release.join()
        if not removed:
            remove_placement_group(held)

    def node(cpus, gpus=0):
        return {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}

    # Two 1-CPU nodes: one worker per node leaves 0.5 CPU on each, less than a read task takes
    # (the 2-node test hung here once, in Ray Data's read, before this rule looked per node).
    assert not _room_for_data_tasks(cfg, [node(1), node(1)], available_cpus=2)
    assert _room_for_data_tasks(cfg, [node(1), node(2)], available_cpus=3)  # the 2-CPU node keeps one
    gpu = config(tiny_qwen, tmp_path, num_workers=4, cpus_per_worker=4, use_gpu=True)
    # GPU workers never land on the CPU-only head, so its CPUs stay free for Ray Data.
    assert _room_for_data_tasks(gpu, [node(4), node(16, gpus=4)], available_cpus=20)
    assert not _room_for_data_tasks(gpu, [node(16, gpus=4)], available_cpus=16)


def test_bad_data_while_workers_start_fails_clearly_and_frees_the_cluster(ray_cluster, tiny_qwen, tmp_path):
    from rmray.train.run import _start_workers_early, train

    bad = tmp_path / "bad.jsonl"
    # Readable, with the right columns (checked before Ray), but no row is a usable pair.
    bad.write_text("".join(json.dumps({"chosen": f"same {i}", "rejected": f"same {i}"}) + "\n" for i in range(4)))
    cfg = config(tiny_qwen, tmp_path, train_data=str(bad), num_workers=2, cpus_per_worker=0.5)
    assert _start_workers_early(cfg)  # the trainer is already starting when the data turns out bad
    with pytest.raises(ValueError, match="all 4 rows were skipped"):  # the driver's own error, not Ray's wrapper
        train(cfg)
    assert not read_metrics(cfg.checkpoints.output_dir)  # no step was taken, nothing half-written
    # The driver let the trainer wind down before raising: no fit() is left running in this process.
    assert not [t for t in threading.enumerate() if t.name == "rmray-fit"]
    assert free_cpus_soon(ray_cluster) == 2


def test_a_model_that_does_not_load_fails_clearly_after_the_workers_started(ray_cluster, tiny_qwen, tmp_path):
    """The tokenizer loads in a thread while Ray starts (run._model_facts); its error still reaches the
    caller as itself, and the trainer that was already starting is wound down."""
    from rmray.train.run import _start_workers_early, train

    cfg = config(tiny_qwen, tmp_path, model_name_or_path="pkg:rmray_no_such_model_package", num_workers=2,
                 cpus_per_worker=0.5)
    assert _start_workers_early(cfg)
    with pytest.raises(ValueError, match="'rmray_no_such_model_package' is not installed"):
        train(cfg)
    assert not read_metrics(cfg.checkpoints.output_dir)
    assert not [t for t in threading.enumerate() if t.name in ("rmray-fit", "rmray-model-facts")]
    assert free_cpus_soon(ray_cluster) == 2
