"""``rmray train``'s arguments: a YAML file, overrides alone, and what a wrong path says (no Ray)."""

import pytest

from rmray import cli


def _loaded(monkeypatch):
    """Stop at the config: record what ``train`` would have been given."""
    import rmray.train.run

    got = []
    monkeypatch.setattr(rmray.train.run, "train", got.append)
    return got


def test_overrides_alone_need_no_yaml(monkeypatch, tmp_path):
    got = _loaded(monkeypatch)
    assert cli.main(["train", "model_name_or_path=m", f"train_data={tmp_path}/p.jsonl", "max_steps=3"]) == 0
    assert (got[0].model.model_name_or_path, got[0].optimization.max_steps) == ("m", 3)


def test_a_yaml_and_overrides(monkeypatch, tmp_path):
    got = _loaded(monkeypatch)
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_data: d.jsonl\nmax_steps: 7\n")
    assert cli.main(["train", str(path), "max_steps=9"]) == 0
    assert (got[0].data.train_data, got[0].optimization.max_steps) == ("d.jsonl", 9)


def test_a_missing_config_file_is_named_without_a_traceback(monkeypatch, capsys):
    got = _loaded(monkeypatch)
    assert cli.main(["train", "no-such.yaml", "max_steps=3"]) == 2
    assert "config file 'no-such.yaml' not found" in capsys.readouterr().err and not got


def test_an_unknown_override_key_is_refused_before_training(monkeypatch, tmp_path, capsys):
    """Named as typed (not blamed on the YAML file), one line, exit code 2."""
    got = _loaded(monkeypatch)
    assert cli.main(["train", "model_name_or_path=m", "max_stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rmray: error: override 'max_stepz=3': unknown config key 'max_stepz'; did you mean 'max_steps'?"
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\n")
    assert cli.main(["train", str(path), "learning_rat=1e-3"]) == 2
    assert "override 'learning_rat=1e-3'" in capsys.readouterr().err
    assert not got


def test_training_mistakes_are_one_line_before_ray(tmp_path, capsys, no_ray):
    """Missing data, a model folder that is not one, an absent metric sink: one line in a second, no
    Ray started (train() runs for real here; each check is before ray.init)."""
    import importlib.util

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cases = {
        "train_data=": ([f"train_data={tmp_path}/missing.jsonl"], "missing.jsonl: file not found"),
        "train_data=*": ([f"train_data={tmp_path}/nothing-*.jsonl"], "no file matches"),
        "eval_data=": ([f"train_data={data}", f"eval_data={tmp_path}/gone.parquet"], "gone.parquet: file not found"),
        "model": ([f"train_data={data}", f"model_name_or_path={tmp_path}"], "has no config.json"),
        "model missing": ([f"train_data={data}", f"model_name_or_path={tmp_path}/nope"], "nope: not found"),
        "mlflow": ([f"train_data={data}", "report_to=[mlflow]"], "report_to=mlflow: the mlflow package"),
    }
    if importlib.util.find_spec("mlflow") is not None:
        del cases["mlflow"]  # installed here: nothing to refuse
    for name, (overrides, expected) in cases.items():
        code = cli.main(["train", *overrides, f"output_dir={tmp_path}/out", "max_steps=1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0] and err[0].startswith("rmray: error:"), (name, err)


def test_score_mistakes_are_one_line_before_ray(tmp_path, capsys, no_ray):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "rmray_scoring.json").write_text("{}")
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    cases = {
        "no model": ([str(tmp_path / "nope"), str(tmp_path / "rows.jsonl")], "model folder"),
        "not a model": ([str(tmp_path), str(tmp_path / "rows.jsonl")], "config.json is missing"),
        "no input": ([str(model), str(tmp_path / "gone.jsonl")], "gone.jsonl: file not found"),
        "no match": ([str(model), str(tmp_path / "x-*.parquet")], "no file matches"),
        "top-k 0": ([str(model), str(tmp_path / "rows.jsonl"), "--top-k", "0"], "--top-k must be at least 1, got 0"),
    }
    for name, (args, expected) in cases.items():
        code = cli.main(["score", *args, str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (name, err)


def test_score_text_prints_rewards_without_progress_bars(rm_qwen):
    """A fresh process, as a user runs it: one line per reward, no 'Loading weights' bar from transformers."""
    import subprocess
    import sys

    from .conftest import user_env

    run = subprocess.run([sys.executable, "-m", "rmray.cli", "score-text", rm_qwen, "--prompt", "Q: 2+2?\nA:",
                          "--response", " 4"], capture_output=True, text=True, timeout=120, env=user_env())
    assert run.returncode == 0, run.stderr
    assert "rewards from" in run.stdout and "'Q: 2+2?\\nA:' -> ' 4'" in run.stdout
    assert "Loading weights" not in run.stderr + run.stdout, run.stderr


def test_serve_autoscaling_mistakes_are_one_line_before_ray(rm_qwen, capsys, no_ray):
    cases = {("--replicas", "3", "--max-replicas", "2"): "max_replicas (2) is below replicas (3)",
             ("--max-replicas", "2", "--target-ongoing-requests", "0"): "target_ongoing_requests must be above 0"}
    for args, expected in cases.items():
        code = cli.main(["serve", rm_qwen, *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)
    # The delays are Serve-config settings (a Serve config file's args), checked when the settings are made.
    from rmray.serve.settings import ServeSettings

    with pytest.raises(ValueError, match="upscale_delay_s must be 0 or more seconds, got -1"):
        ServeSettings(model_dirs=[rm_qwen], max_replicas=2, upscale_delay_s=-1)
