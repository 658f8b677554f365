"""Ray integration: the data pipeline and real 2-worker TorchTrainer runs on a local cluster."""

import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmray.config import load_config
from rmray.core.loss import metrics_from_sums, preference_sums
from rmray.train.metrics_log import read_metrics

from ..conftest import ROOT, free_cpus_soon

pytestmark = pytest.mark.ray


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_data_pipeline_counts_and_samples_bad_rows(ray_cluster, tiny_qwen, tmp_path):
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, build_preferences

    good = {"prompt": "Q: hi", "chosen": " hello", "rejected": " go away"}
    rows = [dict(good, id=f"ok-{i}") for i in range(20)] + [
        {"id": "bad-missing", "prompt": "Q", "chosen": None, "rejected": "b"},
        {"id": "bad-type", "prompt": "Q", "chosen": 7, "rejected": "b"},
        {"id": "bad-empty", "prompt": "Q", "chosen": "", "rejected": "b"},
        {"id": "bad-same", "prompt": "Q", "chosen": " x", "rejected": " x"},
        {"id": "bad-margin", "prompt": "Q", "chosen": " x", "rejected": " y", "margin": "lots"},
        {"id": "long", "prompt": "Q " * 300, "chosen": " x", "rejected": " y"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    tok = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(max_length=64, eos_token=tok.eos_token, pad_token=tok.pad_token)
    prefs = build_preferences(path, RowRules(tok, spec), name="train")
    report = prefs.report
    assert (report.rows_read, report.rows_kept, report.rows_truncated) == (26, 21, 1)
    assert report.skipped == {"missing_field": 1, "non_string_field": 1, "empty_field": 1,
                              "identical_chosen_rejected": 1, "bad_margin": 1}
    assert report.samples["non_string_field"][0].startswith("row bad-type:")
    assert prefs.dataset.count() == 21

    dropped = build_preferences(path, RowRules(tok, ScoringSpec(max_length=64, truncation="drop",
                                eos_token=tok.eos_token)), name="train").report
    assert dropped.skipped["too_long"] == 1 and dropped.rows_kept == 20
    with pytest.raises(Exception, match="row bad-missing: field 'chosen' is missing"):
        build_preferences(path, RowRules(tok, spec, strict=True), name="train")

    # Rated groups (UltraFeedback-style): each kept row stays one group, its pairs (different ratings)
    # counted in the report; a bad group is one skipped row.
    rated = write_jsonl(tmp_path / "rated.jsonl", [
        {"prompt": "Q: hi", "responses": [" hello", " go away", " hm"], "ratings": [5, 1, 3]},
        {"prompt": "Q: hi", "responses": [" hello", " hey"], "ranking": [1, 2]},
        {"prompt": "Q: hi", "responses": [" hello", " hey"], "ratings": [2, 2]},
        good])
    rated_prefs = build_preferences(rated, RowRules(tok, spec), name="train")
    rated_report = rated_prefs.report
    assert rated_prefs.dataset.count() == 3
    first = rated_prefs.dataset.take(1)[0]
    assert [list(ids) for ids in first["group_ids"]] == [tok(f"Q: hi{r}<|endoftext|>")["input_ids"]
                                                         for r in (" hello", " go away", " hm")]
    assert (rated_report.rows_read, rated_report.rows_kept, rated_report.pairs) == (4, 3, 3 + 1 + 1)
    assert rated_report.skipped == {"all_tied": 1} and "kept as 5 pairs" in rated_report.format()

    # Not preference data at all (detected inside the tokenize tasks, no extra pass): a clear error.
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="all 2 rows were skipped(.|\n)*needs 'chosen' and 'rejected'"):
        build_preferences(other, RowRules(tok, spec), name="train")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(Exception, match="no rows|empty"):
        build_preferences(str(tmp_path / "empty.jsonl"), RowRules(tok, spec), name="train")


@torch.no_grad()
def plain_transformers_eval(model_dir, pairs):
    """Eval metrics from the saved folder with nothing but transformers, one text at a time."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    chosen, rejected = [], []
    for row in pairs:
        for ids, out in ((row["chosen_ids"], chosen), (row["rejected_ids"], rejected)):
            out.append(model(input_ids=torch.tensor([list(ids)])).logits[0, 0].item())
    assert tok.pad_token is not None
    metrics = metrics_from_sums(preference_sums(torch.tensor(chosen), torch.tensor(rejected)))
    return metrics | {"margins": [c - r for c, r in zip(chosen, rejected)]}


def reference_temperature(margins: list[float]) -> float:
    """The documented calibration rule, solved by scipy: the T in [0.01, 100] minimizing the pairs' NLL
    -log sigmoid(margin / T), plus one right and one wrong pseudo-pair at the mean absolute margin."""
    from scipy.optimize import minimize_scalar

    scale = sum(abs(m) for m in margins) / len(margins)
    every = torch.tensor([*margins, scale, -scale], dtype=torch.float64)
    nll = lambda beta: float(torch.nn.functional.softplus(-every * beta).sum())  # noqa: E731
    beta = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-10}).x
    return 1 / beta


def test_two_worker_training_on_real_pairs(ray_cluster, hh_rows, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", hh_rows[:96])
    evals = write_jsonl(tmp_path / "eval.jsonl", hh_rows[1700:1764])
    cfg = load_config(os.path.join(ROOT, "jobs/configs/hh-rlhf-minilm.yaml"), [
        f"train_data={train}", f"eval_data={evals}", f"output_dir={tmp_path / 'out'}", "max_length=128",
        "num_train_epochs=2", "logging_steps=2", "eval_steps=6", "learning_rate=1e-4", "warmup_ratio=0"])
    from rmray.train.run import train as run_train

    # The early start below needs the idle cluster, not the previous test's Ray Data actors on their way out.
    assert free_cpus_soon(ray_cluster) == 2

    result = run_train(cfg)
    records = read_metrics(result.output_dir)
    steps = [r for r in records if "loss" in r and "event" not in r]
    evals_logged = [r for r in records if "eval_accuracy" in r and "event" not in r]
    summary = records[-1]
    assert summary["event"] == "summary" and summary["steps"] == 12 and summary["epochs"] == 2  # 47 rows a rank: 6 steps of 8
    kept = json.load(open(os.path.join(result.output_dir, "data_report.json")))[0]["rows_kept"]
    assert kept == 95  # row 86 has a blank chosen answer
    assert summary["train_pairs"] == 2 * 2 * (kept // 2)  # 2 epochs; Ray splits the rows equally over 2 workers
    assert summary["train_pairs_per_s"] == pytest.approx(summary["train_pairs"] / summary["train_runtime_s"])
    assert summary["dist_backend"] == "gloo"  # two ranks keep their group
    # The shipped shape (2 x 0.5 CPU) leaves the tokenizer a CPU: workers started while the data was prepared.
    assert summary["workers_started_early"] is True and 0 <= summary["data_wait_s"] < summary["train_runtime_s"]
    # eval_steps=6 == steps per epoch: each step is evaluated once, not again at the epoch end
    assert [r["step"] for r in evals_logged] == [6, 12] and summary["eval_pairs"] == 64
    first, last = steps[: len(steps) // 2], steps[len(steps) // 2:]
    assert sum(r["loss"] for r in last) / len(last) < sum(r["loss"] for r in first) / len(first)
    assert os.path.exists(os.path.join(result.output_dir, "data_report.json"))

    # The final folder loads with plain transformers and reproduces the in-worker eval exactly.
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, build_preferences

    spec = ScoringSpec.load(result.final_model_dir)
    assert spec.readout == "pooler" and spec.max_length == 128 and spec.reward_std > 0
    prefs = build_preferences(evals, RowRules(load_tokenizer(result.final_model_dir), spec), name="eval")
    plain = plain_transformers_eval(result.final_model_dir, prefs.dataset.take_all())
    assert plain["accuracy"] == pytest.approx(summary["eval_accuracy"], abs=1e-9)
    assert plain["chosen_reward_mean"] == pytest.approx(summary["eval_chosen_reward_mean"], abs=1e-4)
    assert plain["rejected_reward_std"] == pytest.approx(summary["eval_rejected_reward_std"], abs=1e-4)

    # Calibration: the temperature fitted on the 64 eval pairs at the end of training is in the scoring
    # contract, and rmray eval reports the calibrated ECE with it (that a fitted temperature lowers ECE on
    # other pairs is tested in test_calibration.py on a model with more signal than 12 steps give).
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig

    assert spec.temperature == summary["eval_temperature"]
    assert spec.temperature == pytest.approx(reference_temperature(plain["margins"]), rel=1e-3)
    held_out = write_jsonl(tmp_path / "held_out.jsonl", hh_rows[1200:1328])
    metrics = evaluate(EvalConfig(model_dir=result.final_model_dir, data=held_out))
    assert metrics["pairs"] == 128 and metrics["temperature"] == spec.temperature
    assert 0 <= metrics["calibrated_ece"] < 0.5 and len(metrics["calibrated_bins"]) >= 1


def test_lora_run_saves_adapter_and_head_and_merges(uneven_lora_run, tiny_qwen):
    from peft import PeftModel

    from rmray.core.collate import pad_sequences
    from rmray.core.model import RewardModel, load_hf_model
    from rmray.core.scoring import Scorer

    result = uneven_lora_run["result"]
    adapter = os.path.join(result.output_dir, "adapter")
    from safetensors.torch import load_file

    keys = load_file(os.path.join(adapter, "adapter_model.safetensors")).keys()
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)

    merged = Scorer.load(result.final_model_dir)
    texts = [merged.encode("\n\nHuman: How do I boil an egg?\n\nAssistant:", r) for r in (" Boil it.", " No.")]
    base = load_hf_model(tiny_qwen, pad_token_id=merged.tokenizer.pad_token_id)
    with_adapter = RewardModel(PeftModel.from_pretrained(base, adapter)).eval()
    with torch.no_grad():
        expected = with_adapter(*pad_sequences(texts, merged.tokenizer.pad_token_id)).tolist()
        untrained = RewardModel(load_hf_model(tiny_qwen)).eval()(*pad_sequences(texts, merged.tokenizer.pad_token_id))
    assert merged.score_ids(texts) == pytest.approx(expected, abs=1e-4)
    assert not torch.allclose(untrained, torch.tensor(expected), atol=1e-3)  # the head was trained and saved


def test_demo_command_reaches_high_accuracy(ray_cluster, tmp_path, capsys):
    from rmray.cli import main

    assert main(["demo", os.path.join(ROOT, "jobs/configs/demo.yaml"), f"output_dir={tmp_path / 'demo'}"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("demo eval accuracy: ")[1].split()[0])
    assert accuracy >= 0.90
    # The start-up breakdown (the run's last line and the summary) is in the order things happen.
    assert "first step at" in out
    # progress through the silent part of start-up, in order
    lines = out.splitlines()
    starting = next(i for i, x in enumerate(lines) if x.startswith("starting Ray"))
    streaming = next(i for i, x in enumerate(lines) if x.startswith("streaming demo: about"))
    first_step = next(i for i, x in enumerate(lines) if x.startswith("step "))
    report = next(i for i, x in enumerate(lines) if x.startswith("data report [train]: 400 rows read"))
    assert starting < streaming < first_step < report  # the report is counted as the rows stream
    summary = next(r for r in read_metrics(str(tmp_path / "demo")) if r.get("event") == "summary")
    phases = [summary["startup_s"][k] for k in ("ray_ready", "data_ready", "worker_entered", "model_ready", "first_step")]
    assert phases == sorted(phases) and phases[0] >= 0
    assert "rewards from" in out
    card = (tmp_path / "demo" / "README.md").read_text()  # the model card
    assert "## Results" in card and "eval_accuracy" in card and "rmray serve" in card
    assert (tmp_path / "demo" / "plots" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.extended
def test_rated_demo_trains_groups_with_attribute_heads_and_eval_reports_them(ray_cluster, tmp_path):
    """The shipped rated config: four answers per question train as one group, a head per attribute;
    the model ranks held-out groups and its attribute scores follow the ratings (rmray eval)."""
    from rmray.core.demo_data import demo_rated_groups
    from rmray.core.spec import ScoringSpec
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig
    from rmray.train.run import train as run_train

    cfg = load_config(os.path.join(ROOT, "jobs/configs/demo-rated.yaml"),
                      [f"output_dir={tmp_path / 'rated'}", "num_train_epochs=2", "eval_steps=1000"])
    result = run_train(cfg)
    report = json.load(open(os.path.join(result.output_dir, "data_report.json")))[0]
    assert (report["rows_kept"], report["pairs"]) == (200, 1200)  # 4 distinct ratings per group: 6 pairs each
    summary = result.summary
    assert summary["eval_accuracy"] > 0.85 and summary["eval_pairs"] == 6 * 55
    spec = ScoringSpec.load(result.final_model_dir)
    assert spec.attributes == ["helpfulness", "verbosity"] and spec.attribute_weights == [1.0, -0.2]
    card = open(os.path.join(result.output_dir, "README.md")).read()
    assert "its reward is 1·helpfulness - 0.2·verbosity" in card

    held_out = write_jsonl(tmp_path / "held_out.jsonl", demo_rated_groups(40, seed=7))
    metrics = evaluate(EvalConfig(model_dir=result.final_model_dir, data=held_out))
    assert metrics["ranking"]["groups"] == 40 and metrics["ranking"]["pair_accuracy"] > 0.85
    assert set(metrics["attributes"]) == {"helpfulness", "verbosity"}
    assert metrics["attributes"]["helpfulness"]["pearson"] > 0.8 and metrics["attributes"]["helpfulness"]["responses"] == 160


def test_reads_every_source_format(ray_cluster, tiny_qwen, tmp_path, monkeypatch):
    """Parquet, CSV, JSON arrays, `datasets` folders and conversational rows all arrive as the same pairs.
    A `save_to_disk` folder (three files here, and a DatasetDict) is read by Ray Data tasks file by file,
    in order: never loaded whole on the driver."""
    import datasets
    import pandas as pd

    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, build_preferences

    rows = [{"prompt": f"Q{i}:", "chosen": f" good answer {i}", "rejected": f" bad {i}", "margin": 0.5} for i in range(30)]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"), num_shards=3)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf_dict"))
    monkeypatch.setattr(datasets, "load_from_disk", lambda *a, **k: pytest.fail("loaded whole on the driver"))
    tok = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(max_length=64, eos_token=tok.eos_token)
    results = {}
    for source in ("d.parquet", "d.csv", "d.json", "hf", "hf_dict"):
        prefs = build_preferences(str(tmp_path / source), RowRules(tok, spec), name="train")
        results[source] = [(tuple(r["chosen_ids"]), tuple(r["rejected_ids"]), r["margin"])
                           for r in prefs.dataset.take_all()]
        assert prefs.report.rows_kept == 30
    assert all(sorted(v) == sorted(results["d.parquet"]) for v in results.values())
    assert results["hf"] == results["hf_dict"] == results["d.parquet"]  # the source's row order, across files

    chat = [{"chosen": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello!"}],
             "rejected": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "go away"}]}
            for i in range(10)]
    write_jsonl(tmp_path / "chat.jsonl", chat)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    prefs = build_preferences(str(tmp_path / "chat.jsonl"), RowRules(tok, spec), name="train")
    assert prefs.report.rows_kept == 10
    first = prefs.dataset.take(1)[0]
    assert tok.decode(first["chosen_ids"]).startswith("<user>hi") and tok.decode(first["chosen_ids"]).endswith("<assistant>hello!\n")
