"""Training that survives a killed worker, resumes from a checkpoint path or (in a new driver process)
from a run folder, refuses damaged checkpoints, stops early, and warns about reward collapse -- on a
real 2-worker TorchTrainer."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from rmray.config import TrainConfig
from rmray.testing import plain_transformers_scores
from rmray.train.metrics_log import read_metrics

from ..conftest import consumed, reference_config, user_env


def events(output_dir, kind):
    return [r for r in read_metrics(output_dir) if r.get("event") == kind]


def train_in_a_new_driver(cfg: TrainConfig, ray_cluster) -> None:
    """``train(cfg)`` in another Python process that joins the running cluster, as a resubmitted job does."""
    script = ("import json, sys; from rmray.config import TrainConfig; from rmray.train.run import train; "
              "train(TrainConfig(**json.loads(sys.argv[1])))")
    env = user_env(RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(cfg))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.timeout(900)
def test_resume_from_path_or_by_a_new_driver_and_damaged_checkpoint_is_refused(reference_run, ray_cluster, tiny_qwen,
                                                                               tmp_path):
    import shutil

    from rmray.train.run import train

    first, store = reference_run["cfg"], reference_run["store"]
    assert glob.glob(os.path.join(first.checkpoints.output_dir, "runs", "events.out.tfevents.*"))  # TensorBoard sink
    assert not os.path.exists(os.path.join(first.checkpoints.output_dir, "ray"))  # checkpoints went to the URI
    kept = sorted(os.path.basename(k) for k in glob.glob(os.path.join(store, "ray", "checkpoint-*")))
    assert kept == ["checkpoint-000006", "checkpoint-000008"]  # save_total_limit=2 of 2, 4, 6, 8
    assert os.path.exists(store / "final" / "model.safetensors") and os.path.exists(store / "metrics.jsonl")
    ckpt = os.path.join(store, "ray", "checkpoint-000006")
    resumed = reference_config(tiny_qwen, str(tmp_path / "resumed"), resume_from_checkpoint=f"file://{ckpt}")
    result = train(resumed)
    assert [r["step"] for r in events(resumed.checkpoints.output_dir, "resume")] == [6]
    assert result.summary["steps"] == 8

    # A run folder whose newest checkpoint was cut short, resumed by a new driver process: the cut one
    # is skipped with a warning, the older one loaded, and each rank trains exactly the pairs the first
    # (undisturbed) run trained after it -- the same pairs at the same positions.
    crashed = tmp_path / "crashed"
    for step in ("000006", "000008"):
        shutil.copytree(os.path.join(store, "ray", f"checkpoint-{step}"), crashed / "ray" / f"checkpoint-{step}")
    cut = glob.glob(str(crashed / "ray" / "checkpoint-000008" / "*.safetensors"))[0]
    with open(cut, "r+b") as f:
        f.truncate(100)
    train_in_a_new_driver(reference_config(tiny_qwen, str(crashed), log_consumed_pairs=True), ray_cluster)
    assert [r["step"] for r in events(crashed, "resume")] == [6]
    assert any(w["kind"] == "bad_checkpoint" and "checkpoint-000008" in w["message"]
               for w in events(crashed, "warning"))
    assert os.path.exists(crashed / "final" / "model.safetensors")
    for rank in (0, 1):
        reference = [x for x in consumed(first.checkpoints.output_dir, rank) if x["kind"] == "trained"]
        log = consumed(str(crashed), rank)
        assert {x["started_at_step"] for x in log} == {6}
        assert [x["row_ids"] for x in log if x["kind"] == "skipped"] == [x["row_ids"] for x in reference[:6]]
        assert [x["row_ids"] for x in log if x["kind"] == "trained"] == [x["row_ids"] for x in reference[6:]]
        assert len(reference) == 8

    damaged = tmp_path / "damaged" / "checkpoint-000008"
    shutil.copytree(os.path.join(store, "ray", "checkpoint-000008"), damaged)
    weights = glob.glob(os.path.join(damaged, "*.safetensors"))[0]
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match="not a whole rmray checkpoint"):
        train(reference_config(tiny_qwen, str(tmp_path / "refused"), resume_from_checkpoint=str(damaged)))
    # refused on the driver (sizes; workers check checksums too), before any Ray Train run folder exists
    assert not os.path.exists(os.path.join(tmp_path, "refused", "final"))
    assert not os.path.exists(os.path.join(tmp_path, "refused", "ray"))


@pytest.mark.extended
def test_early_stopping_and_reward_collapse_warning(ray_cluster, tiny_qwen, tmp_path):
    from rmray.train.run import train

    # A zeroed reward head and a learning rate too small to move it: every response scores ~0.
    flat = tmp_path / "flat"
    import shutil

    shutil.copytree(tiny_qwen, flat)
    path = os.path.join(flat, "model.safetensors")
    tensors = load_file(path)
    tensors["score.weight"] = tensors["score.weight"] * 0
    save_file(tensors, path, metadata={"format": "pt"})
    cfg = reference_config(str(flat), str(tmp_path / "stop"), learning_rate=1e-9, max_steps=40, eval_steps=2,
                           save_steps=None, early_stopping_patience=2, early_stopping_threshold=1e-3)
    result = train(cfg)
    warnings = events(cfg.checkpoints.output_dir, "warning")
    assert any(w["kind"] == "reward_collapse" for w in warnings)
    stop = events(cfg.checkpoints.output_dir, "early_stop")
    assert len(stop) == 1 and stop[0]["step"] == 6  # evals at 2 (best), 4 and 6 without improvement
    assert result.summary["steps"] == 6
    evals = [r for r in read_metrics(cfg.checkpoints.output_dir) if "eval_accuracy" in r and "event" not in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    json.dumps(warnings)  # records are plain JSON


def effective_batches(output_dir: str, rank: int) -> list[list[str]]:
    """The micro-batches whose gradients are in the final model: each attempt (a worker start) keeps what
    the attempts before it trained up to the step it resumed from, then adds its own."""
    with open(os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    kept: list[tuple[int, list[str]]] = []
    attempts = list(dict.fromkeys(x["attempt"] for x in lines))
    for attempt in attempts:
        mine = [x for x in lines if x["attempt"] == attempt]
        start = mine[0]["started_at_step"]
        kept = [(step, rows) for step, rows in kept if step < start]
        kept += [(x["step"], x["row_ids"]) for x in mine if x["kind"] == "trained"]
    return [rows for _, rows in kept]


@pytest.mark.timeout(900)
def test_kills_and_a_damaged_checkpoint_in_one_run_still_finish_with_the_undisturbed_pairs(reference_run, tiny_qwen,
                                                                                          tmp_path):
    """Kill after checkpoint 2, kill again two steps after checkpoint 4 (so Ray's checkpoint manager has
    registered it) with 4's weights cut in half: the run rolls back to 2 twice, re-reaches 4 (a second
    checkpoint of step 4, beside the damaged one, which pruning later deletes), and ends with final/ and
    a summary -- training exactly the pairs an undisturbed run trains."""
    from rmray.core.scoring import Scorer
    from rmray.train.run import train

    cfg = reference_config(tiny_qwen, str(tmp_path / "chaos"), chaos_kill_at_step=[3, 6], chaos_damage_checkpoint=4,
                           max_failures=2, save_total_limit=3, log_consumed_pairs=True)
    result = train(cfg)
    with open(os.path.join(cfg.checkpoints.output_dir, ".chaos_killed")) as f:
        assert f.read().split() == ["3", "6"]  # both kills happened
    assert [r["step"] for r in events(cfg.checkpoints.output_dir, "resume")] == [2, 2]
    assert any(w["kind"] == "bad_checkpoint" and "checkpoint-000004" in w["message"]
               for w in events(cfg.checkpoints.output_dir, "warning"))
    assert result.summary["steps"] == 8 and len(events(cfg.checkpoints.output_dir, "summary")) == 1
    assert os.path.exists(os.path.join(result.final_model_dir, "model.safetensors"))
    # Every checkpoint Ray's manager still lists is on disk and whole: a re-reached step written into
    # the damaged checkpoint's folder was deleted with it when pruning dropped the old one, leaving a
    # listed checkpoint without files (a new driver refuses such a run folder as corrupted).
    snapshot, = glob.glob(os.path.join(cfg.checkpoints.output_dir, "**", "checkpoint_manager_snapshot.json"), recursive=True)
    with open(snapshot) as f:
        listed = [r["checkpoint_dir_name"] for r in json.load(f)["checkpoint_results"]]
    assert len(listed) == 3
    for name in listed:
        assert os.path.exists(os.path.join(os.path.dirname(snapshot), name, "rmray_checkpoint.json")), name

    # the restarted workers logged every step from the one after the checkpoint on, and the model scores
    train_steps = [r["step"] for r in read_metrics(cfg.checkpoints.output_dir) if "loss" in r and "event" not in r]
    assert train_steps[-6:] == [3, 4, 5, 6, 7, 8]
    reward = Scorer.load(result.final_model_dir).score(["Q:"], [" A."])  # a whole model, as plain transformers reads it
    assert reward == pytest.approx(plain_transformers_scores(result.final_model_dir, ["Q: A."]), abs=1e-4)

    reference = reference_run["result"]
    # the same pairs, so the same tokens: counted across the resumes, not only since the last one
    assert result.summary["train_tokens"] == reference.summary["train_tokens"]
    assert result.summary["train_pairs"] == reference.summary["train_pairs"]
    for rank in (0, 1):
        got, want = effective_batches(cfg.checkpoints.output_dir, rank), effective_batches(reference.output_dir, rank)
        assert got == want and len(want) == 8
        rows = [row for batch in got for row in batch]
        assert len(rows) == len(set(rows)) == 8 * 8  # 8 steps x 8 pairs, none trained twice in the model
