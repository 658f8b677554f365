"""Training over the stream: the same pairs and metrics as the path that reads everything first, ranks in
step over files of uneven sizes, and a data error met mid-run stopping the run with its message and
nothing half-written. (A new driver resuming a streamed run: test_train_resilience.py.)"""

import json
import os

import pytest

from rmray.errors import UsageError
from tests.conftest import reference_config, write_parts


def consumed(output_dir: str, rank: int) -> list[dict]:
    with open(os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(output_dir: str) -> list[tuple]:
    from rmray.train.metrics_log import read_metrics

    return [(m["step"], m["loss"], m["accuracy"]) for m in read_metrics(output_dir) if "loss" in m and "event" not in m]


def test_a_streamed_run_trains_the_pairs_and_metrics_of_the_run_that_reads_everything_first(reference_run, tiny_qwen, tmp_path):
    """The run that reads everything first is one without a spare CPU: two 1-CPU workers on the 2-CPU
    cluster. Started early, their placement group would starve the tokenize tasks and the run would
    hang; here the data is prepared first, and the run must train. It also keeps the checkpoints best
    by a metric (evaluating and saving do not change what trains)."""
    import glob

    import ray._private.state

    from rmray.train.metrics_log import read_metrics
    from rmray.train.run import train

    streamed = reference_run["cfg"]
    assert streamed.data.stream_data  # the default
    whole = train(reference_config(tiny_qwen, str(tmp_path / "whole"), cpus_per_worker=1.0, log_consumed_pairs=True,
                                   eval_steps=2, metric_for_best_model="eval_loss", greater_is_better=True,
                                   save_total_limit=2))
    summary = whole.summary
    assert summary["workers_started_early"] is False
    assert summary["startup_s"]["data_ready"] < summary["startup_s"]["worker_entered"]
    assert summary["dist_backend"] == "gloo"  # Ray Train's group, kept as Ray Train made it
    # rmray's Ray defaults reach Ray Train's controller: no run on this test cluster started a preemption watcher
    actor_classes = {a["ActorClassName"] for a in ray._private.state.actors().values()}
    assert "TrainController" in actor_classes and "PreemptionWatcher" not in actor_classes
    for rank in range(2):
        assert ([r["row_ids"] for r in consumed(streamed.checkpoints.output_dir, rank)]
                == [r["row_ids"] for r in consumed(whole.output_dir, rank)])
    a, b = train_losses(streamed.checkpoints.output_dir), train_losses(whole.output_dir)
    assert [s for s, *_ in a] == list(range(1, 9)) and [s for s, *_ in b] == list(range(1, 9))
    assert [x for row in a for x in row] == pytest.approx([x for row in b for x in row], rel=1e-6)
    assert whole.summary["eval_accuracy"] == pytest.approx(reference_run["result"].summary["eval_accuracy"])
    assert whole.summary["eval_loss"] == pytest.approx(reference_run["result"].summary["eval_loss"], rel=1e-6)
    losses = {m["step"]: m["eval_loss"] for m in read_metrics(whole.output_dir) if "eval_loss" in m and "event" not in m}
    assert sorted(losses) == [2, 4, 6, 8]
    # The loss falls step by step, so "greater is better" keeps the two earliest: by the metric, not by
    # age -- and the latest too, which a restart resumes from.
    best_two = sorted(losses, key=losses.get, reverse=True)[:2]
    kept = sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob(os.path.join(whole.output_dir, "ray", "checkpoint-*")))
    assert kept == sorted({*best_two, 8}) and 6 not in kept, losses


def test_files_of_uneven_sizes_keep_the_ranks_in_step_and_every_row_trains_once(uneven_lora_run):
    cfg, rows, result = uneven_lora_run["cfg"], uneven_lora_run["rows"], uneven_lora_run["result"]
    logs = [consumed(cfg.checkpoints.output_dir, rank) for rank in range(2)]
    assert len(logs[0]) == len(logs[1]) == 13  # 50 rows per rank: windows of 12, 12, 12, 12, 2 rows
    trained = [i for log in logs for batch in log for i in batch["row_ids"]]
    assert len(trained) == len(set(trained)) == 100
    assert set(trained) == {r["id"] for r in rows[:100]}  # the order rule's cut: the last row waits
    assert result.summary["steps"] == 13
    with open(os.path.join(cfg.checkpoints.output_dir, "data_report.json")) as f:
        report = json.load(f)[0]
    assert (report["rows_read"], report["rows_kept"]) == (101, 101)  # counted as the rows passed


def test_a_bad_row_met_mid_stream_stops_the_run_naming_it_and_writes_no_model(ray_cluster, tiny_qwen, tmp_path):
    from rmray.core.demo_data import DEMO_SETS
    from rmray.train.run import train

    rows = DEMO_SETS["demo"]()[:80]
    rows[70] = {"prompt": "Q?", "chosen": "", "rejected": "no"}  # in the stream's third window
    write_parts(tmp_path / "data", rows, [80])
    cfg = reference_config(tiny_qwen, str(tmp_path / "run"), train_data=str(tmp_path / "data"), max_steps=-1,
                           eval_split_ratio=0, per_device_train_batch_size=4, length_group_window=4,
                           on_bad_row="error", save_steps=None)
    with pytest.raises(UsageError, match=r"part-0.jsonl:71.*chosen.*on_bad_row=skip"):
        train(cfg)
    assert not os.path.exists(os.path.join(cfg.checkpoints.output_dir, "final"))
