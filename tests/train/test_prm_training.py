"""A process reward model trained on a real 2-worker TorchTrainer from the demo config: the stepwise demo
set found as such, the model saved as a two-label token classifier under ``kind: process``, and on
held-out generated solutions its step accuracy at least 0.9 -- its step rewards plain transformers' on
TRL's tokens."""

import json
import os

import pytest

from ..conftest import ROOT
from ..core.test_step_scoring import _plain


@pytest.mark.timeout(900)
def test_the_demo_process_model_learns_held_out_steps(ray_cluster, tmp_path):
    from rmray.config import load_config
    from rmray.core.demo_data import demo_steps
    from rmray.core.spec import ScoringSpec
    from rmray.core.step_scoring import StepScorer
    from rmray.core.steps import step_metrics
    from rmray.train.metrics_log import read_metrics
    from rmray.train.run import train

    cfg = load_config(os.path.join(ROOT, "jobs/configs/demo-steps.yaml"), [f"output_dir={tmp_path / 'run'}"])
    result = train(cfg)
    spec = ScoringSpec.load(result.final_model_dir)
    assert (spec.kind, spec.step_separator, spec.prm_aggregate) == ("process", "\n", "min")
    config = json.load(open(os.path.join(result.final_model_dir, "config.json")))
    assert config["architectures"] == ["BertForTokenClassification"] and len(config["id2label"]) == 2
    logged = [m for m in read_metrics(result.output_dir) if "eval_step_f1" in m]
    assert logged and logged[-1]["eval_accuracy"] >= 0.9, logged[-1]

    # Solutions the run never saw: generated apart from it, less any identical to a training row. Numbers
    # from 1 to 4 make 64 problems, every correct solution among the training rows: what is left are
    # solutions with a planted slip -- steps to find wrong, and the steps before the slip to find right.
    seen = {(r["prompt"], tuple(r["completions"])) for r in demo_steps()}
    held_out = [r for r in demo_steps(600, seed=12345) if (r["prompt"], tuple(r["completions"])) not in seen]
    assert len(held_out) >= 100
    # Scored by the model's own scorer (``rmray eval`` gives the same step rewards: test_steps_offline.py)
    scorer = StepScorer.load(result.final_model_dir)
    rewards = scorer.score_steps([r["prompt"] for r in held_out], [r["completions"] for r in held_out])
    metrics = step_metrics(rewards, [r["labels"] for r in held_out])
    assert metrics["step_accuracy"] >= 0.9 and metrics["erroneous_accuracy"] >= 0.9, metrics
    for row, got in list(zip(held_out, rewards))[:3]:  # the saved model in plain transformers, on TRL's tokens
        assert got == pytest.approx(_plain(result.final_model_dir, row["prompt"], row["completions"]), abs=1e-4)
