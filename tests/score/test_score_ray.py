"""Offline scoring, best-of-n and evaluation through Ray Data, checked against plain transformers."""

import json
import os
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from rmray.testing import plain_transformers_scores

PROMPTS = ["\n\nHuman: How do I clean a cast iron pan?\n\nAssistant:", "\n\nHuman: Name a fast land animal.\n\nAssistant:"]
ANSWERS = [" Scrub with hot water, dry it on the stove, and oil it lightly.", " Soap will ruin it forever.",
           " Use a brush.", " The cheetah.", " A snail.", " Cheetahs and pronghorn antelope."]


def write_inputs(folder):
    os.makedirs(folder, exist_ok=True)
    rows = [{"id": f"r{i}", "prompt": PROMPTS[i // 3 % 2], "response": ANSWERS[i % 6], "meta": {"k": i}}
            for i in range(12)]
    with open(os.path.join(folder, "a.jsonl"), "w") as f:
        for row in rows[:7]:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"id": "bad1", "prompt": "x", "response": None, "meta": {"k": -1}}) + "\n")
        f.write(json.dumps({"id": "bad2", "prompt": "x", "response": 42, "meta": {"k": -2}}) + "\n")
    with open(os.path.join(folder, "b.jsonl"), "w") as f:
        for row in rows[7:]:
            f.write(json.dumps(row) + "\n")
    return rows


def read_output(folder):
    """The output rows, with the columns written as JSON text (types varied by row) decoded back."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))
    rows = []
    for f in files:
        table = pq.read_table(os.path.join(folder, f))
        as_json = json.loads((table.schema.metadata or {}).get(b"rmray.json_columns", b"[]"))
        for row in table.to_pylist():
            rows.append({k: json.loads(v) if k in as_json and v is not None else v for k, v in row.items()})
    return files, rows


def test_score_dataset_rewards_columns_bad_rows_and_resume(ray_cluster, rm_qwen, rm_minilm, tmp_path):
    from rmray.score.offline import ScoreConfig, score_dataset
    from rmray.score.select import Selection, select_best

    rows = write_inputs(tmp_path / "in")
    out = str(tmp_path / "out")
    result = score_dataset(ScoreConfig(model_dirs=[rm_qwen], input=str(tmp_path / "in"), output=out, batch_size=4))
    files, scored = read_output(out)
    assert files == ["part-00000-a.parquet", "part-00001-b.parquet"]
    assert len(scored) == 14 and result.rows == 14 and result.bad_rows == 2
    assert [r["id"] for r in scored] == [r["id"] for r in rows[:7]] + ["bad1", "bad2"] + [r["id"] for r in rows[7:]]
    good = [r for r in scored if r["score_error"] is None]
    expected = plain_transformers_scores(rm_qwen, [r["prompt"] + r["response"] for r in good])
    assert [r["reward"] for r in good] == pytest.approx(expected, abs=1e-4)
    assert good[0]["meta"] == {"k": 0} and set(good[0]) >= {"id", "prompt", "response", "meta", "reward", "truncated"}
    bad = {r["id"]: r for r in scored if r["score_error"] is not None}
    assert bad["bad1"]["reward"] is None and bad["bad1"]["score_error"] == "response: missing"
    assert "response" in bad["bad2"]["score_error"] and bad["bad2"]["response"] == 42  # kept as it was
    report = json.load(open(os.path.join(out, "_score_report.json")))
    assert any(s.startswith("a.jsonl:8: response: missing") for s in report["bad_row_samples"]), report  # file:line

    # A rerun skips whole files; a lost file is redone alone.
    mtime = os.path.getmtime(os.path.join(out, files[0]))
    os.remove(os.path.join(out, files[1]))
    again = score_dataset(ScoreConfig(model_dirs=[rm_qwen], input=str(tmp_path / "in"), output=out))
    assert again.files_skipped == [files[0]] and again.files_written == [files[1]]
    assert os.path.getmtime(os.path.join(out, files[0])) == mtime
    rescored = read_output(out)[1]
    assert [{k: v for k, v in r.items() if k != "reward"} for r in rescored] == \
        [{k: v for k, v in r.items() if k != "reward"} for r in scored]
    assert [r["reward"] for r in rescored] == pytest.approx([r["reward"] for r in scored], abs=1e-5)

    # Another model into the same folder: refused before Ray work, naming the file; --overwrite rescores.
    from rmray.errors import UsageError

    other = ScoreConfig(model_dirs=[rm_minilm], input=str(tmp_path / "in"), output=str(tmp_path / "other"))
    shutil.copytree(out, other.output)
    with pytest.raises(UsageError, match=r"part-00000-a.parquet was scored differently: models: \[qwen@"):
        score_dataset(other)
    assert os.path.getmtime(os.path.join(out, files[0])) == mtime
    other.overwrite = True
    redone = score_dataset(other)
    assert redone.files_written == files and not redone.files_skipped
    minilm = [r["reward"] for r in read_output(other.output)[1] if r["score_error"] is None]
    assert minilm == pytest.approx(plain_transformers_scores(rm_minilm, [r["prompt"] + r["response"] for r in good]),
                                   abs=1e-4)
    other.overwrite = False  # the same model again: skipped
    assert score_dataset(other).files_skipped == files

    # Best-of-n: exactly the top 2 per prompt.
    kept = select_best(out, str(tmp_path / "best"), Selection(top_k=2))
    best = read_output(str(tmp_path / "best"))[1]
    assert kept == len(best) == 4
    for prompt in PROMPTS:
        ranked = sorted((r for r in good if r["prompt"] == prompt), key=lambda r: (-r["reward"], r["response"]))
        assert sorted(r["id"] for r in best if r["prompt"] == prompt) == sorted(r["id"] for r in ranked[:2])

    # Ensemble: per-model columns, mean and std.
    ens = str(tmp_path / "ens")
    score_dataset(ScoreConfig(model_dirs=[rm_qwen, rm_minilm], model_names=["q", "m"],
                              input=(tmp_path / "in" / "b.jsonl").as_uri(), output=ens))  # a pyarrow URI
    rows_e = read_output(ens)[1]
    minilm = plain_transformers_scores(rm_minilm, [r["prompt"] + r["response"] for r in rows_e])
    assert [r["reward_m"] for r in rows_e] == pytest.approx(minilm, abs=1e-4)
    assert [r["reward"] for r in rows_e] == pytest.approx([(r["reward_q"] + r["reward_m"]) / 2 for r in rows_e])
    assert [r["reward_std"] for r in rows_e] == pytest.approx([abs(r["reward_q"] - r["reward_m"]) / 2 for r in rows_e])


@pytest.fixture(scope="module")
def eval_pairs(hh_rows, tmp_path_factory, rm_qwen):
    """Real hh pairs short enough that no truncation happens (so plain transformers sees the same text)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_qwen)
    rows = [r for r in hh_rows[:200] if max(len(tok(r["chosen"])["input_ids"]), len(tok(r["rejected"])["input_ids"])) < 250
            and r["chosen"] != r["rejected"] and r["chosen"].strip().split("Assistant:")[-1].strip()][:40]
    path = tmp_path_factory.mktemp("eval") / "pairs.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"], "subset": "even" if i % 2 == 0 else "odd"}) + "\n")
    return str(path), rows


def test_eval_matches_plain_transformers_and_writes_a_report(ray_cluster, rm_qwen, eval_pairs, tmp_path):
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig

    path, rows = eval_pairs
    train_dir = tmp_path / "run"
    train_dir.mkdir()
    (train_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"step": 1, "epoch": 0, "loss": 0.7, "accuracy": 0.5}, {"step": 2, "epoch": 0, "loss": 0.6, "accuracy": 0.6},
        {"step": 2, "epoch": 0, "eval_loss": 0.65, "eval_accuracy": 0.55}, {"event": "summary", "steps": 2}]))
    out = tmp_path / "report"
    metrics = evaluate(EvalConfig(model_dir=rm_qwen, data=path, output=str(out), train_dir=str(train_dir)))
    chosen = plain_transformers_scores(rm_qwen, [r["chosen"] for r in rows])
    rejected = plain_transformers_scores(rm_qwen, [r["rejected"] for r in rows])
    correct = [c > r for c, r in zip(chosen, rejected)]
    assert metrics["pairs"] == len(rows) and metrics["bad_rows"] == 0
    assert metrics["accuracy"] == sum(correct) / len(rows)
    assert metrics["subsets"]["even"]["accuracy"] == sum(correct[0::2]) / len(correct[0::2])
    assert metrics["mean_margin"] == pytest.approx(sum(c - r for c, r in zip(chosen, rejected)) / len(rows), abs=1e-4)
    assert json.load(open(out / "metrics.json"))["accuracy"] == metrics["accuracy"]
    plots = ("reward_histograms.png", "calibration.png", "reward_vs_length.png", "training_curves.png")
    for name in plots:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        import matplotlib.image

        assert matplotlib.image.imread(str(out / name)).shape[0] > 100
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (CI installs the Debian `chromium` package): HTML render not checked")
    shot = tmp_path / "shot.png"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--allow-file-access-from-files"]
    dom = subprocess.run(common + ["--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert "Reward model evaluation" in dom.stdout and dom.stdout.count("data:image/png;base64") == len(plots)
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1000,1400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000


def test_score_keeps_every_input_column_whatever_the_rows_hold(ray_cluster, rm_qwen_chat, tmp_path):
    """Keys missing from the first row or first seen in a later batch, a prompt that is text in one row
    and chat messages in another, an extra column that is int then str, an int response and a line
    that is not JSON: every line comes out as a row, every column with the values that went in."""
    from rmray.score.offline import ScoreConfig, score_dataset

    chat = [{"role": "user", "content": "Name a fast land animal."}]
    lines = [
        "this line is not JSON",
        json.dumps({"prompt": PROMPTS[0], "response": ANSWERS[0]}),
        json.dumps({"prompt": PROMPTS[1], "response": ANSWERS[3], "tag": 7}),
        json.dumps({"prompt": chat, "response": [{"role": "assistant", "content": ANSWERS[3]}], "tag": "seven"}),
        json.dumps({"prompt": PROMPTS[1], "response": 5}),
        json.dumps({"prompt": PROMPTS[0], "response": ANSWERS[2], "late": {"deep": [1, 2]}}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    result = score_dataset(ScoreConfig(model_dirs=[rm_qwen_chat], input=str(src), output=str(tmp_path / "out"), batch_size=2))
    _, scored = read_output(tmp_path / "out")
    assert result.rows == len(scored) == 6 and result.bad_rows == 2
    assert "not a JSON object" in scored[0]["score_error"] and scored[0]["reward"] is None
    report = json.load(open(tmp_path / "out" / "_score_report.json"))
    assert [s.split(": ")[0] for s in report["bad_row_samples"]] == ["in.jsonl:1", "in.jsonl:5"]
    originals = [{}] + [json.loads(line) for line in lines[1:]]
    for row, original in zip(scored, originals):
        for key in ("prompt", "response", "tag", "late"):
            assert row[key] == original.get(key), (key, row, original)
    assert [r["tag"] for r in scored] == [None, None, 7, "seven", None, None]
    assert scored[4]["reward"] is None and "response" in scored[4]["score_error"]
    good = [r for r in scored if r["score_error"] is None]
    assert len(good) == 4 and all(r["reward"] is not None for r in good)
    text_rows = [r for r in good if isinstance(r["prompt"], str)]
    expected = plain_transformers_scores(rm_qwen_chat, [r["prompt"] + r["response"] for r in text_rows])
    assert [r["reward"] for r in text_rows] == pytest.approx(expected, abs=1e-4)


def test_eval_of_rated_groups_ranks_them_with_plain_transformers_rewards(ray_cluster, rm_qwen, tmp_path):
    """A rated file (ratings and rankings, one bad row) in rmray eval: each group's rewards are plain
    transformers', the ranking metrics are computed from them, and every rated pair counts as a pair."""
    from rmray.core.evaluation import ranking_metrics
    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig

    prompt = "\n\nHuman: What should I plant in spring?\n\nAssistant:"
    groups = [([" Peas and lettuce.", " Nothing.", " Tomatoes after the last frost.", " Rocks."], [3, 0, 4, 1]),
              ([" Water them.", " Ignore them.", " Mulch and water deeply."], [2, 0, 3])]
    rows = [{"prompt": prompt, "responses": groups[0][0], "ratings": groups[0][1]},
            {"prompt": prompt, "responses": groups[1][0], "ranking": [2, 3, 1]},  # the same order as ratings [2, 0, 3]
            {"prompt": prompt, "responses": [" a", " b"], "ratings": [1, 1]}]  # all tied: a bad row
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate(EvalConfig(model_dir=rm_qwen, data=str(path)))
    plain = [(plain_transformers_scores(rm_qwen, [prompt + r for r in responses]), ratings)
             for responses, ratings in groups]
    negated = [plain[0], (plain[1][0], [-2, -3, -1])]  # what the ranking row means: rank 1 is the best
    want = ranking_metrics(negated)
    got = metrics["ranking"]
    assert got["groups"] == 2, metrics["bad_row_samples"]
    assert got["group_pairs"] == 6 + 3 and metrics["pairs"] == 9
    for key in ("pair_accuracy", "kendall_tau", "spearman", "top1_accuracy"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert metrics["bad_rows"] == 1 and "rated the same" in metrics["bad_row_samples"][0]
