"""The cluster around training: cluster.yaml passes Ray's own validation, and a real two-node `ray start`
cluster on loopback runs `ray job submit -- python jobs/train.py ...` as one node trains it."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import yaml

from rmray.testing import plain_transformers_scores

from ..conftest import ROOT, free_port, user_env


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


def _ray_start(ray_bin: str, args: list[str], log, env: dict) -> subprocess.Popen:
    """``ray start --block ...`` in its own session: stopped by signalling its group, never a machine-wide
    ``ray stop``. Two logical CPUs per node: a 0.5-CPU worker leaves a read task room, as on a real node."""
    return subprocess.Popen([ray_bin, "start", "--block", "--num-cpus=2", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen], grace_s: float = 2) -> None:
    """SIGTERM to every node's process group at once, SIGKILL to what is left after ``grace_s``: a node
    that lost its head waits a minute for it to come back, and this cluster (its own temp folders, no
    state kept) is thrown away."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _dashboard(dash: int, path: str):
    """The head's dashboard API (what ``ray job`` and ``ray status`` ask), or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dash}{path}", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _alive_nodes(dash: int) -> int:
    nodes = (_dashboard(dash, "/api/v0/nodes?limit=10") or {}).get("data", {}).get("result", {}).get("result", [])
    return sum(n.get("state") == "ALIVE" for n in nodes)


def _as_overrides(cfg) -> list[str]:
    """The keys where ``cfg`` differs from the defaults, as a job's ``key=value`` arguments (JSON is YAML)."""

    from rmray.config import TrainConfig

    defaults = TrainConfig().flat()
    return [f"{key}={json.dumps(value)}" for key, value in cfg.flat().items() if value != defaults[key]]


@pytest.mark.timeout(600)
def test_a_job_on_a_two_node_ray_start_cluster_trains_what_one_node_trains(reference_run, tiny_qwen, tmp_path):
    """`ray start` a head and a second node (two raylets), `ray job submit` jobs/train.py with
    one worker per node (STRICT_SPREAD): the same pairs on each rank at each step as the one-node reference
    run, so the same metrics to float rounding (training's order is a function of the data and the seed,
    not of where the workers run), and a model that loads."""
    from rmray.core.scoring import Scorer
    from rmray.train.metrics_log import read_metrics

    from ..conftest import consumed, reference_config

    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port, dash, agent = free_port(), free_port(), free_port()
    env = user_env(RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    # Ray's socket paths must stay under 107 bytes; each raylet its own folder, as on two machines (a
    # shared one lets one node's runtime-env agent delete the job's working directory under the other).
    temp_dirs = [tempfile.mkdtemp(prefix="rj", dir="/tmp") for _ in range(2)]
    log = open(tmp_path / "cluster.log", "w")
    nodes = [_ray_start(ray_bin, ["--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                                  f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp_dirs[0]}"], log, env)]
    two = reference_config(tiny_qwen, str(tmp_path / "two"), placement_strategy="STRICT_SPREAD", log_consumed_pairs=True)
    try:
        deadline = time.time() + 120
        while _dashboard(dash, "/api/jobs/") is None and time.time() < deadline:  # the job server is up
            assert nodes[0].poll() is None, (tmp_path / "cluster.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _dashboard(dash, "/api/jobs/") is not None, "the head's job server did not answer within 120 s"
        nodes.append(_ray_start(ray_bin, [f"--address=127.0.0.1:{port}", f"--temp-dir={temp_dirs[1]}"], log, env))
        while _alive_nodes(dash) < 2 and time.time() < deadline + 60:  # both raylets in before the job asks
            assert nodes[1].poll() is None, (tmp_path / "cluster.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _alive_nodes(dash) >= 2, "the second raylet did not join within 180 s"
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ROOT, "--",
             sys.executable, "jobs/train.py", *_as_overrides(two)],
            capture_output=True, text=True, env=env, timeout=480)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
    finally:
        _stop(nodes)
        log.close()
        for folder in temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
    for rank in (0, 1):  # the pairs each rank trained at each step, row by row
        trained = [(x["step"], x["row_ids"]) for x in consumed(two.checkpoints.output_dir, rank) if x["kind"] == "trained"]
        reference = [(x["step"], x["row_ids"]) for x in consumed(reference_run["cfg"].checkpoints.output_dir, rank)
                     if x["kind"] == "trained"]
        assert len(trained) == 8 and trained == reference, rank
    one_node = reference_run["result"].summary
    two_nodes = next(r for r in read_metrics(two.checkpoints.output_dir) if r.get("event") == "summary")
    assert two_nodes["steps"] == one_node["steps"] == 8
    assert two_nodes["train_pairs"] == one_node["train_pairs"]
    assert two_nodes["eval_accuracy"] == one_node["eval_accuracy"]
    assert two_nodes["eval_loss"] == pytest.approx(one_node["eval_loss"], abs=1e-4)
    assert two_nodes["eval_loss"] < 0.6 and one_node["eval_loss"] < 0.6  # both trained (0.69 untrained)
    final = os.path.join(two.checkpoints.output_dir, "final")  # a whole model, scoring as plain transformers does
    reward = Scorer.load(final).score(["How do I keep basil fresh?"], [" Keep it in water."])
    assert reward == pytest.approx(plain_transformers_scores(final, ["How do I keep basil fresh? Keep it in water."]),
                                   abs=1e-4)
