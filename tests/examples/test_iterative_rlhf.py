"""examples/iterative_rlhf.py as written, with TRL's own ``GRPOTrainer`` and a tiny policy: GRPO scored by
model A, ``rmray train`` fine-tunes A on new pairs, ``/admin/models`` swaps the result in, GRPO goes on --
no failed reward call, and the reward calls name A's version, then the retrained model's."""

import importlib.util
import json
import os

import pytest

from ..conftest import ROOT, free_port

ADMIN = "iterative-admin"


@pytest.mark.extended
@pytest.mark.timeout(900)
def test_the_iterative_rlhf_example_swaps_a_retrained_model_into_a_running_grpo_loop(ray_cluster, rm_qwen, tmp_path):
    from ray import serve

    from rmray.core.demo_data import demo_pairs
    from rmray.core.fingerprint import model_fingerprint
    from rmray.serve.app import build_app
    from rmray.serve.settings import ServeSettings
    from rmray.serve.versions import forget_registry
    from rmray.testing import build_tiny_policy

    pairs = tmp_path / "round1.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in demo_pairs(48)))
    policy = build_tiny_policy(str(tmp_path / "policy"), rm_qwen)
    spec = importlib.util.spec_from_file_location("iterative_rlhf", os.path.join(ROOT, "examples", "iterative_rlhf.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeSettings(model_dirs=[rm_qwen], num_cpus=0.1, ingress_num_cpus=0.05, admin_token=ADMIN)),
              name="iterative", route_prefix="/")
    try:
        trainer, versions, swapped = example.main([
            "--url", f"http://127.0.0.1:{port}", "--admin-token", ADMIN, "--policy", policy, "--rm-base", rm_qwen,
            "--pairs", str(pairs), "--steps-per-round", "1", "--output-dir", str(tmp_path / "out"), "--cpu",
            "--num-generations", "2", "--max-completion-length", "4",
            "--train", "max_steps=2", "num_workers=1", "cpus_per_worker=0.5", "per_device_train_batch_size=8",
            "max_length=64", "eval_split_ratio=0", "save_steps=null", "report_to=[]"])
    finally:
        serve.shutdown()
        forget_registry("iterative")
    retrained = str(tmp_path / "out" / "rm-round1" / "final")
    assert trainer.state.global_step == 2
    assert swapped == [model_fingerprint(retrained)[:12]]
    assert versions[0] == model_fingerprint(rm_qwen)[:12] and versions[-1] == swapped[0]
    assert set(versions) == {versions[0], swapped[0]}  # every reward call answered, by one of the two
    written = [json.loads(line) for line in open(tmp_path / "out" / "versions.jsonl")]
    assert [w["model_version"] for w in written] == versions
