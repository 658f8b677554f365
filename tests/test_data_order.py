"""What each rank trains on is a pure function of (data, seed): the eval split does not depend on row
order or Ray's blocks, and a run resumed by a new driver process trains exactly the pairs the first
driver had not trained -- checked by the consumed-pairs record of each rank, against an undisturbed run."""

import json
import os
import subprocess
import sys

import pytest

from rmray.config import TrainConfig


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Q{i}: pick a colour", "chosen": f" blue {i % 7}", "rejected": f" no {i % 5}"}
            for i in range(n)]


def write(path, items) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in items)
    return str(path)


def eval_ids(cfg: TrainConfig) -> tuple[set, list]:
    from rmray.train.run import _model_facts, _prepare_data

    os.makedirs(cfg.output_dir, exist_ok=True)
    data = _prepare_data(cfg, *_model_facts(cfg))
    return {r["row_id"] for r in data.datasets["eval"].take_all()}, [r["row_id"] for r in data.datasets["train"].take_all()]


def test_the_eval_split_is_a_function_of_the_rows_not_of_their_order(ray_cluster, tiny_qwen, tmp_path):
    items = rows(120)
    one_file = write(tmp_path / "all.jsonl", items)
    folder = tmp_path / "parts"
    folder.mkdir()
    shuffled = items[::-1]
    for k in range(3):  # the same rows, reversed, over three files: other blocks, other order
        write(folder / f"part-{k}.jsonl", shuffled[k * 40:(k + 1) * 40])
    common = dict(model_name_or_path=tiny_qwen, max_length=64, eval_split_ratio=0.2)
    eval_a, train_a = eval_ids(TrainConfig(train_data=one_file, output_dir=str(tmp_path / "a"), **common))
    eval_b, train_b = eval_ids(TrainConfig(train_data=str(folder), output_dir=str(tmp_path / "b"), **common))
    assert eval_a == eval_b
    assert 10 <= len(eval_a) <= 40  # ~24 of 120 at 0.2
    assert not eval_a & set(train_a) and len(eval_a) + len(train_a) == 120
    # the train set keeps the source's order (one file: the file's order)
    assert train_a == [r["id"] for r in items if r["id"] not in eval_a]
    assert sorted(train_b) == sorted(train_a)


def consumed(output_dir: str, rank: int) -> list[dict]:
    with open(os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.timeout(900)
def test_a_new_driver_resumes_exactly_the_pairs_not_yet_trained(ray_cluster, tiny_qwen, tmp_path):
    from rmray.train.run import train

    data = write(tmp_path / "pairs.jsonl", rows(96))
    common = dict(model_name_or_path=tiny_qwen, train_data=data, max_length=64, per_device_train_batch_size=4,
                  num_workers=2, cpus_per_worker=0.5, eval_split_ratio=0.1, max_steps=8, save_steps=4,
                  logging_steps=2, learning_rate=1e-3, log_consumed_pairs=True, report_to=[])
    interrupted = TrainConfig(output_dir=str(tmp_path / "run"), chaos_kill_at_step=5, max_failures=0, **common)
    with pytest.raises(Exception):
        train(interrupted)  # a worker dies at step 5, no retries: the run stops after checkpoint 4
    assert not os.path.exists(os.path.join(interrupted.output_dir, "final"))

    # The same config (chaos off: the kill already happened) in a new driver process joining the cluster.
    resumed = TrainConfig(output_dir=str(tmp_path / "run"), **common)
    script = ("import json, sys; from rmray.config import TrainConfig; from rmray.train.run import train; "
              "train(TrainConfig(**json.loads(sys.argv[1])))")
    import dataclasses

    address = ray_cluster.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_ADDRESS=address)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(resumed))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.exists(os.path.join(resumed.output_dir, "final", "model.safetensors"))

    undisturbed = TrainConfig(output_dir=str(tmp_path / "reference"), **common)
    train(undisturbed)
    for rank in (0, 1):
        log = consumed(resumed.output_dir, rank)
        first = [x for x in log if x["started_at_step"] == 0 and x["kind"] == "trained"]
        second = [x for x in log if x["started_at_step"] == 4]
        assert first and second
        skipped = [x["row_ids"] for x in second if x["kind"] == "skipped"]
        before = [x["row_ids"] for x in first if x["step"] < 4]
        assert skipped == before  # the new driver found the same pairs at the same positions
        effective = before + [x["row_ids"] for x in second if x["kind"] == "trained"]
        reference = [x["row_ids"] for x in consumed(undisturbed.output_dir, rank) if x["kind"] == "trained"]
        assert effective == reference and len(reference) == 8
