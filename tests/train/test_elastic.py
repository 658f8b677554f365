"""A run checkpointed on N workers and resumed on M != N continues its epoch exactly: every row of the
epoch trained once, none twice, the global batch and the schedule kept -- on real TorchTrainers, 2
workers -> 1 (DDP) -> 2 (FSDP), so a resumed remainder is resumed again on another number.

The checkpoints chosen fall inside a length-grouped window, where the rows a rank has taken are not a
prefix of anything: the record must be the rows themselves."""

import collections
import json
import os
import shutil

import pytest

from rmray.train.metrics_log import read_metrics

from ..conftest import reference_config
from .test_train_resilience import effective_batches

ROWS, EVAL_ROWS = 96, 32


def _resume_events(output_dir: str) -> list[tuple[int, int]]:
    return [(r["step"], r["workers"]) for r in read_metrics(output_dir) if r.get("event") == "resume"]


def _trained(output_dir: str, ranks: int, before_step: int | None = None) -> list[str]:
    """The rows whose gradients reached the model of ``output_dir``'s run, up to ``before_step``."""
    rows = []
    for rank in range(ranks):
        with open(os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl")) as f:
            lines = [json.loads(line) for line in f]
        if before_step is None:
            rows += [row for batch in effective_batches(output_dir, rank) for row in batch]
        else:
            rows += [row for x in lines if x["kind"] == "trained" and x["step"] < before_step for row in x["row_ids"]]
    return rows


def _continue(source: str, step: int, target) -> None:
    """What a preempted job leaves for the next one: the run's identity and its checkpoint of ``step``."""
    os.makedirs(target / "ray")
    shutil.copy(os.path.join(source, "run_identity.json"), target / "run_identity.json")
    shutil.copytree(os.path.join(source, "ray", f"checkpoint-{step:06d}"), target / "ray" / f"checkpoint-{step:06d}")


@pytest.mark.timeout(900)
def test_a_two_worker_checkpoint_resumes_on_one_and_a_one_worker_checkpoint_on_two(ray_cluster, tiny_qwen, tmp_path,
                                                                                 capsys):
    from rmray.core.demo_data import DEMO_SETS
    from rmray.train.run import train

    rows = [dict(r, id=f"p{i}") for i, r in enumerate(DEMO_SETS["demo"]()[:ROWS + EVAL_ROWS])]
    for name, part in (("train.jsonl", rows[:ROWS]), ("eval.jsonl", rows[ROWS:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))

    def config(name: str, **overrides):
        # 96 rows, 4 per micro-batch, windows of 3 micro-batches a rank: on 2 workers 12 steps, the
        # checkpoint of step 2 two micro-batches into the first window of 12 rows a rank
        return reference_config(tiny_qwen, str(tmp_path / name), train_data=str(tmp_path / "train.jsonl"),
                                eval_data=str(tmp_path / "eval.jsonl"), eval_split_ratio=0, max_eval_samples=None,
                                max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4, length_group_window=3,
                                save_steps=2, save_total_limit=None, log_consumed_pairs=True, **overrides)

    undisturbed = train(config("two"))
    assert undisturbed.summary["steps"] == 12

    # 2 workers -> 1: the accumulation doubles (the global batch of 8 rows stays), the epoch's other 80
    # rows train in the 10 steps left; its step-4 checkpoint is 4 micro-batches into windows of 3.
    _continue(undisturbed.output_dir, 2, tmp_path / "one")
    capsys.readouterr()
    one = train(config("one", num_workers=1))
    assert "resuming a 2-worker run on 1 workers: gradient_accumulation_steps 2" in capsys.readouterr().out
    assert _resume_events(one.output_dir) == [(2, 2)]
    assert one.summary["steps"] == 12

    # 1 worker -> 2, sharded, as first configured (accumulation 1): the rest of the rest.
    _continue(one.output_dir, 4, tmp_path / "again")
    again = train(config("again", fsdp="full_shard auto_wrap"))
    assert _resume_events(again.output_dir) == [(4, 1)]
    assert again.summary["steps"] == 12

    trained = (_trained(undisturbed.output_dir, 2, before_step=2) + _trained(one.output_dir, 1, before_step=4)
               + _trained(again.output_dir, 2))
    counts = collections.Counter(trained)
    assert sorted(counts) == sorted(r["id"] for r in rows[:ROWS])  # every row of the epoch ...
    assert [row for row, n in counts.items() if n > 1] == []  # ... once
    assert sorted(_trained(undisturbed.output_dir, 2)) == sorted(counts)

    # The same rows and schedule in other batches: the final eval within noise of the undisturbed run.
    for resumed in (one, again):
        assert resumed.summary["eval_accuracy"] == pytest.approx(undisturbed.summary["eval_accuracy"], abs=0.1)
        assert resumed.summary["eval_loss"] == pytest.approx(undisturbed.summary["eval_loss"], abs=0.05)
    rates = {m["step"]: m["learning_rate"] for m in read_metrics(undisturbed.output_dir) if "learning_rate" in m}
    for resumed in (one, again):
        got = {m["step"]: m["learning_rate"] for m in read_metrics(resumed.output_dir) if "learning_rate" in m}
        assert got and all(got[step] == pytest.approx(rates[step]) for step in got)


def test_another_number_of_workers_keeps_the_global_batch_or_is_refused_before_ray(tmp_path, no_ray):
    """1 worker resumes a 2-worker run with the accumulation doubled; 3 workers cannot make a global batch of
    2 micro-batches, nor can an explicitly changed accumulation that changes it; a checkpoint that does not
    record the rows its epoch trained cannot continue on another number. One line each, before Ray."""
    from rmray.config import TrainConfig
    from rmray.errors import UsageError
    from rmray.train.identity import check_or_record
    from rmray.train.run import train

    out = str(tmp_path / "run")
    base = dict(train_data="demo", output_dir=out, max_steps=40)
    run_dir = os.path.join(out, "ray")
    check_or_record(TrainConfig(**base), run_dir)
    os.makedirs(os.path.join(run_dir, "checkpoint-000010"))
    assert check_or_record(TrainConfig(**base, num_workers=1), run_dir).optimization.gradient_accumulation_steps == 2
    assert check_or_record(TrainConfig(**base, num_workers=2), run_dir).optimization.gradient_accumulation_steps == 1
    for overrides in ({"num_workers": 3}, {"num_workers": 1, "gradient_accumulation_steps": 3}):
        with pytest.raises(UsageError) as err:
            train(TrainConfig(**base, **overrides))
        message = str(err.value)
        assert "num_workers=2 x gradient_accumulation_steps=1" in message and "\n" not in message, message
    with open(os.path.join(run_dir, "checkpoint-000010", "trainer_state.json"), "w") as f:
        json.dump({"step": 10, "epoch": 0, "batches_in_epoch": 10, "world": 2}, f)
    for overrides in ({}, {"resume_other_run": True}):
        with pytest.raises(UsageError, match="does not record the rows its epoch trained.*num_workers=2"):
            train(TrainConfig(**base, num_workers=1, **overrides))
