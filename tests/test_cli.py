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
    assert (got[0].model_name_or_path, got[0].max_steps) == ("m", 3)


def test_a_yaml_and_overrides(monkeypatch, tmp_path):
    got = _loaded(monkeypatch)
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_data: d.jsonl\nmax_steps: 7\n")
    assert cli.main(["train", str(path), "max_steps=9"]) == 0
    assert (got[0].train_data, got[0].max_steps) == ("d.jsonl", 9)


def test_a_missing_config_file_is_named_without_a_traceback(monkeypatch, capsys):
    got = _loaded(monkeypatch)
    assert cli.main(["train", "no-such.yaml", "max_steps=3"]) == 2
    assert "config file 'no-such.yaml' not found" in capsys.readouterr().err and not got


def test_an_unknown_override_key_is_refused_before_training(monkeypatch):
    got = _loaded(monkeypatch)
    with pytest.raises(ValueError, match="unknown config key 'max_stepz'"):
        cli.main(["train", "model_name_or_path=m", "max_stepz=3"])
    assert not got
