"""The cluster around training: cluster.yaml passes Ray's own validation, and a real `ray start --head`
on loopback runs `ray job submit -- python jobs/train.py ...` whose model then loads."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    prepared = prepare_config(config)  # what `ray up` does: fill defaults, then validate against Ray's schema
    validate_config(prepared)
    assert prepared["head_node_type"] == "head" and prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # dashboard reachable only through `ray dashboard` (SSH)
    assert any("pip install -q -e /home/ubuntu/rmray" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/rmray"] == "."
    bad = dict(config, head_node_type="cpu_head")  # names a node type that does not exist
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_start_and_job_submit_train(tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port, dash, agent = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out = tmp_path / "job-out"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            probe = subprocess.run([ray_bin, "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                                   capture_output=True, env=env)
            if probe.returncode == 0:
                break
            time.sleep(2)
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ROOT, "--",
             sys.executable, "jobs/train.py", "jobs/configs/demo.yaml", "max_steps=4", f"output_dir={out}",
             "overwrite_output_dir=true", "max_train_samples=96", "cpus_per_worker=0.5"],
            capture_output=True, text=True, env=env, timeout=480)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # the head this test started, not a machine-wide `ray stop`
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
    from rmray.core.scoring import Scorer

    scorer = Scorer.load(str(out / "final"))
    assert len(scorer.score(["How do I keep basil fresh?"], [" Keep it in water."])) == 1
