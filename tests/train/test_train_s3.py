"""Training against a real S3 API (moto's server, authentication on) as a user runs it: ``rmray train`` in
processes of their own, configured by the standard AWS variables, with its data, eval data and
``storage_path`` in the bucket -- stopped with Ctrl-C, a cut-short checkpoint upload left behind, started
again by a new driver, its model and records copied to the bucket at the end; then an edited data object
refused by a driver on another machine (another ``output_dir``), before Ray."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rmray.train.metrics_log import read_metrics

from ..conftest import user_env
from .test_train_resilience import effective_batches

ROWS, STEPS = 128, 32  # 16 steps an epoch of 8 rows: 2 epochs


def _rmray(env: dict, args: list[str], **kwargs):
    return subprocess.Popen([sys.executable, "-m", "rmray.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=user_env(RAY_ADDRESS="", **env), **kwargs)


def _keys(s3, prefix: str) -> dict[str, int]:
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _put(s3, key: str, text: str) -> str:
    s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body=text.encode())
    return f"s3://{s3['bucket']}/{key}"


def _whole_checkpoints(s3, prefix: str) -> list[int]:
    keys = _keys(s3, prefix)
    return sorted(int(k.split("checkpoint-")[1][:6]) for k in keys if k.endswith("/rmray_checkpoint.json")
                  and "/checkpoint-" in k)


@pytest.mark.timeout(900)
def test_train_from_and_into_a_bucket_stopped_with_ctrl_c_and_resumed_by_a_new_driver(s3_server, tiny_qwen, tmp_path):
    from rmray.core.demo_data import DEMO_SETS

    s3, bucket = s3_server, s3_server["bucket"]
    rows = [dict(r, id=f"p{i}") for i, r in enumerate(DEMO_SETS["demo"]()[:ROWS + 32])]
    train_text = "".join(json.dumps(r) + "\n" for r in rows[:ROWS])
    train_uri = _put(s3, "data/train.jsonl", train_text)
    eval_uri = _put(s3, "data/eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows[ROWS:]))
    storage = f"s3://{bucket}/runs/r"
    args = ["train", f"model_name_or_path={tiny_qwen}", f"train_data={train_uri}", f"eval_data={eval_uri}",
            "eval_split_ratio=0", f"storage_path={storage}", f"output_dir={tmp_path / 'out'}", f"max_steps={STEPS}",
            "save_steps=4", "save_total_limit=2", "num_workers=1", "per_device_train_batch_size=8",
            "max_length=96", "learning_rate=1e-3", "log_consumed_pairs=true"]

    first = _rmray(s3["env"], args)
    deadline = time.time() + 300
    while not _whole_checkpoints(s3, "runs/r/ray/"):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = first.communicate(timeout=180)
    assert first.returncode == 130, err[-3000:]
    assert "rmray: interrupted" in err and "Traceback" not in err, err[-3000:]

    # What an upload cut short leaves: a newer checkpoint whose manifest arrived and its weights did not.
    newest = _whole_checkpoints(s3, "runs/r/ray/")[-1]
    assert newest < STEPS
    for name in ("rmray_checkpoint.json", "config.json"):
        s3["client"].copy_object(Bucket=bucket, Key=f"runs/r/ray/checkpoint-000999/{name}",
                                 CopySource={"Bucket": bucket, "Key": f"runs/r/ray/checkpoint-{newest:06d}/{name}"})

    second = _rmray(s3["env"], args)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    metrics = read_metrics(str(tmp_path / "out"))
    assert [m["step"] for m in metrics if m.get("event") == "resume"] == [newest]
    partial = f"s3://{bucket}/runs/r/ray/checkpoint-000999"
    assert any(m.get("kind") == "bad_checkpoint" and partial in m["message"] and "model.safetensors missing" in m["message"]
               for m in metrics), [m for m in metrics if m.get("event") == "warning"]
    assert partial in out  # the driver says so as it happens

    # Every step trained once in the model: 32 steps x 8 rows, 2 epochs of 128 rows, each row twice.
    trained = [row for batch in effective_batches(str(tmp_path / "out"), 0) for row in batch]
    assert collections.Counter(trained) == {r["id"]: 2 for r in rows[:ROWS]}
    summary = next(m for m in metrics if m.get("event") == "summary")  # counted across the stop, once
    assert summary["steps"] == STEPS and summary["train_pairs"] == STEPS * 8

    # The model and its records in the bucket, the model whole by its manifest, as local final/ has it.
    keys = _keys(s3, "runs/r/")
    for name in ("final/model.safetensors", "final/config.json", "final/rmray_scoring.json", "final/rmray_checkpoint.json",
                 "README.md", "metrics.jsonl", "data_report.json", "run_identity.json"):
        assert f"runs/r/{name}" in keys, name
    manifest = json.loads(s3["client"].get_object(Bucket=bucket, Key="runs/r/final/rmray_checkpoint.json")["Body"].read())
    assert manifest["files"] and all(keys[f"runs/r/final/{rel}"] == meta["bytes"] for rel, meta in manifest["files"].items())
    body = s3["client"].get_object(Bucket=bucket, Key="runs/r/final/model.safetensors")["Body"].read()
    with open(tmp_path / "out" / "final" / "model.safetensors", "rb") as f:
        assert body == f.read()

    # A label fix in the data object (same size), then a driver on another machine resumes into the bucket:
    # refused by the identity recorded beside the checkpoints, one line, exit 2, before Ray.
    fixed = rows[:ROWS]
    fixed[5] = dict(fixed[5], chosen=fixed[5]["rejected"], rejected=fixed[5]["chosen"])
    edited = "".join(json.dumps(r) + "\n" for r in fixed)
    assert len(edited) == len(train_text) and edited != train_text
    _put(s3, "data/train.jsonl", edited)
    other = _rmray(s3["env"], [a if not a.startswith("output_dir=") else f"output_dir={tmp_path / 'elsewhere'}" for a in args])
    out, err = other.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1 and "train_data_fingerprint" in lines[0], err[-2000:]
    assert "starting Ray" not in out
    assert not os.path.exists(tmp_path / "elsewhere" / "final")
