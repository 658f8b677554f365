"""``rmray score`` and ``rmray eval`` against a real S3 API (moto's server, authentication on): reading and
writing ``s3://`` as a user does -- the standard AWS variables, the commands in processes of their own --
and the mistakes a bucket can make, each one line before Ray starts."""

import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from rmray.testing import plain_transformers_scores

from ..conftest import user_env

PROMPT = "\n\nHuman: How do I keep basil fresh?\n\nAssistant:"
ANSWERS = [" Keep the stems in water, like cut flowers.", " Throw it away.", " Put it in the fridge, wrapped.", ""]


def _rmray(env: dict, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=user_env(RAY_ADDRESS="", **env))


def _put(s3, key: str, rows: list[dict]) -> str:
    s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    return f"s3://{s3['bucket']}/{key}"


def _keys(s3, prefix: str) -> list[str]:
    listed = s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def test_score_and_eval_read_and_write_a_bucket_with_the_rerun_rules(s3_server, rm_qwen, rm_minilm):
    s3 = s3_server
    items = _put(s3, "in/items.jsonl", [{"prompt": PROMPT, "response": a, "id": k} for k, a in enumerate(ANSWERS)])
    pairs = _put(s3, "in/pairs.jsonl", [{"id": f"p{k}", "prompt": PROMPT, "chosen": ANSWERS[0], "rejected": a}
                                        for k, a in enumerate(ANSWERS[1:])])
    out = f"s3://{s3['bucket']}/scored"
    done = _rmray(s3["env"], "score", rm_qwen, items, out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _keys(s3, "scored/") == ["scored/", "scored/_score_report.json", "scored/part-00000-items.parquet"] or \
        _keys(s3, "scored/") == ["scored/_score_report.json", "scored/part-00000-items.parquet"]  # never a .tmp object
    body = s3["client"].get_object(Bucket=s3["bucket"], Key="scored/part-00000-items.parquet")["Body"].read()
    rewards = pq.read_table(io.BytesIO(body)).column("reward").to_pylist()
    assert rewards == pytest.approx(plain_transformers_scores(rm_qwen, [PROMPT + a for a in ANSWERS]), abs=1e-4)
    stamp = s3["client"].head_object(Bucket=s3["bucket"], Key="scored/part-00000-items.parquet")["ETag"]

    again = _rmray(s3["env"], "score", rm_qwen, items, out)  # the same model: skipped, the object untouched
    assert again.returncode == 0 and "already scored" in again.stdout, again.stdout + again.stderr[-1000:]
    assert s3["client"].head_object(Bucket=s3["bucket"], Key="scored/part-00000-items.parquet")["ETag"] == stamp
    other = _rmray(s3["env"], "score", rm_minilm, items, out)  # another model's rewards are not left as if its own
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1 and "was scored differently" in lines[0], other.stderr[-1000:]

    evaluated = _rmray(s3["env"], "eval", rm_qwen, pairs, "--output", f"s3://{s3['bucket']}/eval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert {"eval/metrics.json", "eval/rewards.jsonl", "eval/report.html", "eval/calibration.png"} <= set(_keys(s3, "eval/"))
    lines = s3["client"].get_object(Bucket=s3["bucket"], Key="eval/rewards.jsonl")["Body"].read().decode().splitlines()
    written = {r["id"]: r for r in map(json.loads, lines)}
    assert sorted(written) == ["p0", "p1", "p2"]
    expected = plain_transformers_scores(rm_qwen, [PROMPT + a for a in ANSWERS])
    assert [written[f"p{k}"]["rejected"][0] for k in range(3)] == pytest.approx(expected[1:], abs=1e-4)


@pytest.mark.parametrize("case", ["missing bucket", "refused credentials", "silent endpoint", "missing file"])
def test_a_bucket_mistake_is_one_line_and_exit_2_before_ray(s3_server, rm_qwen, case, tmp_path):
    s3 = s3_server
    items = _put(s3, "in/one.jsonl", [{"prompt": PROMPT, "response": ANSWERS[0]}])
    env, local, pairs = dict(s3["env"]), tmp_path / "one.jsonl", tmp_path / "pairs.jsonl"
    local.write_text(json.dumps({"prompt": PROMPT, "response": ANSWERS[0]}) + "\n")
    pairs.write_text(json.dumps({"prompt": PROMPT, "chosen": ANSWERS[0], "rejected": ANSWERS[1]}) + "\n")
    train = ["train", f"model_name_or_path={rm_qwen}", f"train_data={pairs}", f"output_dir={tmp_path / 'run'}"]
    commands = {  # (environment change, [(command, expected words)])
        "missing bucket": ({}, [(["score", rm_qwen, str(local), "s3://no-such-bucket/out"], "bucket does not exist"),
                                (["eval", rm_qwen, "s3://no-such-bucket/p.jsonl"], "'no-such-bucket' does not exist"),
                                ([*train, "storage_path=s3://no-such-bucket/run"], "bucket does not exist")]),
        "refused credentials": ({"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"},
                                [(["score", rm_qwen, str(local), f"s3://{s3['bucket']}/out"], "credentials refused"),
                                 (["score", rm_qwen, items, str(tmp_path / "out")], "credentials refused"),
                                 ([*train, f"storage_path=s3://{s3['bucket']}/run"], "credentials refused")]),
        "silent endpoint": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
                            [(["score", rm_qwen, str(local), f"s3://{s3['bucket']}/out"], "endpoint does not answer"),
                             (["eval", rm_qwen, f"s3://{s3['bucket']}/in/p.jsonl"], "endpoint does not answer")]),
        "missing file": ({}, [(["eval", rm_qwen, f"s3://{s3['bucket']}/in/nothing.jsonl"], "no such file")]),
    }
    change, runs = commands[case]
    for args, words in runs:
        done = _rmray({**env, **change}, *args, timeout=60)  # refused before Ray: far within a minute
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], (args, done.stderr[-1500:])
        assert args[-1].split("?")[0].split("=", 1)[-1] in lines[0] or args[2] in lines[0]  # the line names the URI
