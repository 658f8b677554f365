"""FSDP2 on gloo: a sharded run, killed and resumed from its own (gathered) checkpoint, ends at the
same weights as the DDP reference run -- on a real 2-worker TorchTrainer.

Both runs read the same pairs in the same order (training's order is a function of the data and the
seed), so they must agree to float rounding; the sharded one also cuts each micro-batch into several
forward chunks, not always as many on both ranks.
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from rmray.config import TrainConfig
from rmray.train.metrics_log import read_metrics

from ..conftest import reference_config


def test_fsdp_run_with_a_kill_matches_ddp(reference_run, tiny_qwen, tmp_path):
    from rmray.core.demo_data import demo_pairs
    from rmray.core.scoring import Scorer
    from rmray.train.run import train

    ddp = reference_run["result"]
    fsdp_cfg = reference_config(tiny_qwen, str(tmp_path / "fsdp"), fsdp="full_shard auto_wrap", chaos_kill_at_step=3,
                                max_failures=1, max_tokens_per_batch=150)
    fsdp = train(fsdp_cfg)

    assert os.path.exists(os.path.join(fsdp_cfg.checkpoints.output_dir, ".chaos_killed"))  # the kill really happened
    resumes = [r for r in read_metrics(fsdp_cfg.checkpoints.output_dir) if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [2]  # re-sharded from the full checkpoint of step 2
    assert fsdp.summary["steps"] == ddp.summary["steps"] == 8

    a = load_file(os.path.join(ddp.final_model_dir, "model.safetensors"))
    b = load_file(os.path.join(fsdp.final_model_dir, "model.safetensors"))
    assert a.keys() == b.keys() and all(not k.startswith("model.model.") for k in b)  # plain HF names
    initial = load_file(os.path.join(tiny_qwen, "model.safetensors"))
    moved = max(float((a[k] - initial[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training changed the weights, so agreeing below means something
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5, msg=key)
    assert fsdp.summary["eval_accuracy"] == ddp.summary["eval_accuracy"]
    assert fsdp.summary["eval_loss"] == pytest.approx(ddp.summary["eval_loss"], rel=1e-4)

    pairs = demo_pairs(4, seed=3)
    texts = [p["prompt"] + p["chosen"] for p in pairs]
    expected = Scorer.load(ddp.final_model_dir).score(texts, [""] * 4)
    assert Scorer.load(fsdp.final_model_dir).score(texts, [""] * 4) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_fsdp_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="fsdp.*full_shard"):
        TrainConfig(fsdp="zero3")
    with pytest.raises(ValueError, match="LoRA.*DDP"):
        TrainConfig(fsdp="full_shard", use_peft=True)
