"""What each rank trains on is a pure function of (data, seed): the eval split does not depend on row
order or Ray's blocks. (That a run resumed by a new driver process trains exactly the pairs not yet
trained is checked in test_train_resilience.py, on the run folder it resumes.)"""

import json
import os

from rmray.config import TrainConfig


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Q{i}: pick a colour", "chosen": f" blue {i % 7}", "rejected": f" no {i % 5}"}
            for i in range(n)]


def write(path, items) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in items)
    return str(path)


def eval_ids(cfg: TrainConfig) -> tuple[set, list]:
    """The eval rows and the train rows in order, as one worker reads them from the run's stream."""
    from rmray.data.stream import eval_batches, rank_windows
    from rmray.train.data_plan import prepare_data
    from rmray.train.run import _model_facts

    os.makedirs(cfg.checkpoints.output_dir, exist_ok=True)
    data = prepare_data(cfg, *_model_facts(cfg), stream=True)
    evals = [i for batch in eval_batches(data.stream, 0, 16) for i in batch["row_id"]]
    train = [i for window in rank_windows(data.stream, "a/0", 0) for i in window["row_id"]]
    return set(evals), train


def test_the_eval_split_is_a_function_of_the_rows_not_of_their_order(ray_cluster, tiny_qwen, tmp_path):
    items = rows(120)
    one_file = write(tmp_path / "all.jsonl", items)
    folder = tmp_path / "parts"
    folder.mkdir()
    shuffled = items[::-1]
    for k in range(3):  # the same rows, reversed, over three files: other blocks, other order
        write(folder / f"part-{k}.jsonl", shuffled[k * 40:(k + 1) * 40])
    common = dict(model_name_or_path=tiny_qwen, max_length=64, eval_split_ratio=0.2, num_workers=1)
    eval_a, train_a = eval_ids(TrainConfig(train_data=one_file, output_dir=str(tmp_path / "a"), **common))
    eval_b, train_b = eval_ids(TrainConfig(train_data=str(folder), output_dir=str(tmp_path / "b"), **common))
    assert eval_a == eval_b
    assert 10 <= len(eval_a) <= 40  # ~24 of 120 at 0.2
    assert not eval_a & set(train_a) and len(eval_a) + len(train_a) == 120
    # the train set keeps the source's order (one file: the file's order)
    assert train_a == [r["id"] for r in items if r["id"] not in eval_a]
    assert sorted(train_b) == sorted(train_a)
