"""A rerun into an unfinished run's folder resumes only that run (no Ray: refused before it starts)."""

import json
import os

import pytest

from rmray.config import TrainConfig
from rmray.errors import UsageError
from rmray.train.identity import IDENTITY_FILE, check_or_record


def _interrupted_run(tmp_path, cfg: TrainConfig) -> str:
    """What a run killed after its checkpoint 10 leaves: its identity and a checkpoint folder."""
    run_dir = os.path.join(cfg.checkpoints.output_dir, "ray")
    check_or_record(cfg, run_dir)
    os.makedirs(os.path.join(run_dir, "checkpoint-000010"))
    return run_dir


def test_another_run_into_an_unfinished_folder_is_refused_naming_what_differs(tmp_path, no_ray):
    from rmray.train.run import train

    (tmp_path / "other.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    demo = TrainConfig(train_data="demo", output_dir=str(tmp_path / "out"), max_steps=40, save_steps=5)
    run_dir = _interrupted_run(tmp_path, demo)
    other = TrainConfig(train_data=str(tmp_path / "other.jsonl"), output_dir=demo.checkpoints.output_dir, max_steps=12,
                        learning_rate=1e-3)
    with pytest.raises(UsageError) as err:
        train(other)
    message = str(err.value)
    for key in ("train_data", "max_steps", "learning_rate", "fix: another output_dir"):
        assert key in message, message
    assert "save_steps" not in message  # cadence may change across a resume
    assert json.load(open(os.path.join(demo.checkpoints.output_dir, IDENTITY_FILE)))["max_steps"] == 40  # untouched

    check_or_record(TrainConfig(train_data="demo", output_dir=demo.checkpoints.output_dir, max_steps=40, save_steps=10,
                                logging_steps=3), run_dir)  # the same run with other cadences: resumes
    check_or_record(TrainConfig(**{**other.__dict__, "resume_other_run": True}), run_dir)  # asked for
    assert json.load(open(os.path.join(demo.checkpoints.output_dir, IDENTITY_FILE)))["max_steps"] == 12


def test_changed_data_contents_count_as_another_run(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cfg = TrainConfig(train_data=str(data), output_dir=str(tmp_path / "out"), max_steps=4)
    run_dir = _interrupted_run(tmp_path, cfg)
    data.write_text('{"prompt": "q", "chosen": "c", "rejected": "d"}\n')  # same name, same size, new rows
    with pytest.raises(UsageError, match="train_data_fingerprint"):
        check_or_record(cfg, run_dir)


def test_a_key_added_since_the_run_started_counts_as_its_default(tmp_path):
    """A run recorded before ``loss`` was a run key resumes with the default loss, and is refused with
    another one: the missing key is read as its default, not as a difference."""
    cfg = TrainConfig(train_data="demo", output_dir=str(tmp_path / "out"), max_steps=4)
    run_dir = _interrupted_run(tmp_path, cfg)
    path = os.path.join(cfg.checkpoints.output_dir, IDENTITY_FILE)
    saved = json.load(open(path))
    del saved["loss"]
    json.dump(saved, open(path, "w"))
    check_or_record(cfg, run_dir)  # resumes
    json.dump(saved, open(path, "w"))
    with pytest.raises(UsageError, match="loss: 'bradley_terry' there, 'plackett_luce' now"):
        check_or_record(TrainConfig(**{**cfg.__dict__, "loss": "plackett_luce"}), run_dir)


def test_a_same_size_edit_anywhere_in_a_large_file_counts_as_another_run(tmp_path):
    """A label fix that swaps one row's chosen and rejected keeps the file's size and every byte around it:
    the fingerprint reads every byte (a sample of blocks would miss it: the edit here is 150 KB from any
    eighth of the file)."""
    rows = [{"prompt": f"q{i:06d}", "chosen": "yes, gladly", "rejected": "no, go away"} for i in range(24_000)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(train_data=str(data), output_dir=str(tmp_path / "out"), max_steps=4)
    run_dir = _interrupted_run(tmp_path, cfg)
    text = data.read_text()
    size = len(text)
    at = text.index('"chosen"', size * 3 // 16)  # midway between two eighths
    row = text.index('{', at - 40)
    end = text.index("\n", row)
    swapped = json.loads(text[row:end])
    swapped["chosen"], swapped["rejected"] = swapped["rejected"], swapped["chosen"]
    edited = text[:row] + json.dumps(swapped) + text[end:]
    assert len(edited) == size and edited != text
    data.write_text(edited)
    with pytest.raises(UsageError, match="train_data_fingerprint"):
        check_or_record(cfg, run_dir)


def test_with_checkpoints_in_a_uri_storage_path_another_run_is_refused_too(tmp_path):
    """``storage_path`` as a URI (``file://`` here: pyarrow's code path for s3:// and gs://): the checkpoints
    are found by listing it, so the guard runs as it does for a local folder."""
    storage = f"file://{tmp_path / 'bucket'}"
    cfg = TrainConfig(train_data="demo", output_dir=str(tmp_path / "out"), max_steps=40, storage_path=storage)
    check_or_record(cfg, None)
    os.makedirs(tmp_path / "bucket" / "ray" / "checkpoint-000010")
    with pytest.raises(UsageError, match="learning_rate"):
        check_or_record(TrainConfig(**{**cfg.__dict__, "learning_rate": 1e-3}), None)
    check_or_record(cfg, None)  # the same run resumes
