"""A corpus of unreadable inputs: each one is refused by ``rmray train`` and ``rmray score`` in one line
naming the file (and the line, where there is one), before Ray starts."""

import gzip
import json

import pyarrow as pa
import pytest

from rmray import cli
from rmray.errors import UsageError

GOOD = {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "response": " 4"}


def _parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    schema = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue()


def test_a_folder_of_several_kinds_is_refused_by_every_command_before_ray(tmp_path, capsys, no_ray):
    """Ray Data reads a folder with one reader: a.jsonl beside b.parquet would train on the JSON lines
    alone, the Parquet rows missing from the run and its data report."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    (folder / "b.parquet").write_bytes(_parquet_bytes([GOOD]))
    (folder / "c.csv").write_text("prompt,chosen,rejected\nQ,a,b\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "rmray_scoring.json").write_text("{}")
    for argv in (["train", f"train_data={folder}", f"output_dir={tmp_path}/out"],
                 ["score", str(model), str(folder), str(tmp_path / "scored")],
                 ["eval", str(model), str(folder)]):
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (argv[0], err)
        assert str(folder) in err[0] and "b.parquet" in err[0] and "c.csv" in err[0] and "fix:" in err[0], err


def _write_corpus(folder) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, what the error must name besides the file)."""
    line = json.dumps(GOOD).encode() + b"\n"
    whole = gzip.compress(line * 200)
    return {
        "garbage.jsonl": (bytes(range(256)) * 4, "not readable as JSON lines"),
        "broken-line.jsonl": (line * 3 + b'{"prompt": "x", "chosen": \n' + line, ":4"),
        "not-utf8.jsonl": (line + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"), ":2"),
        "array-line.jsonl": (line + b"[1, 2, 3]\n", ":2"),
        "truncated.jsonl.gz": (whole[: len(whole) // 2], "cut short"),
        "not-gzip.jsonl.gz": (line * 2, "compressed stream"),
        "empty.jsonl": (b"", "no rows"),
        "blank-lines.jsonl": (b"\n\n  \n", "no rows"),
        "garbage.parquet": (b"PAR1" + bytes(100), "Parquet"),
        "text.parquet": (line, "Parquet"),
        "not-utf8.csv": (b"prompt,chosen,rejected\n" + "caf\u00e9,a,b\n".encode("latin-1"), "UTF-8"),
        "lines-in.json": (line * 2 + b"x", "not a JSON document"),
        "no-rows.parquet": (_parquet_bytes([]), "no rows"),
        "open-quote.csv": (b'prompt,chosen,rejected\n"Q,a,b\nQ2,c,d\n', "not readable as CSV"),
        "binary.json": (b"\x00\x01\x02", "not a JSON document"),
    }


def test_unreadable_inputs_are_refused_before_ray(tmp_path, capsys, no_ray):
    corpus = _write_corpus(tmp_path)
    for name, (data, _) in corpus.items():
        (tmp_path / name).write_bytes(data)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "rmray_scoring.json").write_text("{}")
    for name, (_, expected) in corpus.items():
        path = str(tmp_path / name)
        runs = {"train": ["train", f"train_data={path}", f"output_dir={tmp_path}/out", "max_steps=1"]}
        if expected not in ("no rows",) and not name.startswith(("broken-line", "array-line")):
            runs["score"] = ["score", str(model), path, str(tmp_path / "scored")]  # score keeps a bad line as a row
        for command, argv in runs.items():
            code = cli.main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1, (name, command, err)
            assert err[0].startswith(f"rmray: error: {path}") and expected.lower() in err[0].lower(), (name, command, err)
            assert "fix:" in err[0], err


@pytest.mark.parametrize("name", ["ok.jsonl", "ok.jsonl.gz"])
def test_readable_inputs_pass(tmp_path, name):
    from rmray.data.readable import check_readable

    data = (json.dumps(GOOD) + "\n").encode() * 3
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    check_readable(str(tmp_path / name))
    check_readable(str(tmp_path))  # the folder


def test_rated_files_pass_the_column_check_and_per_attribute_ratings_need_attributes(tmp_path, capsys, no_ray):
    from rmray.data.readable import check_columns

    required = {"chosen_field": "chosen", "rejected_field": "rejected"}
    rated = tmp_path / "rated.jsonl"
    rated.write_text(json.dumps({"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}) + "\n")
    check_columns(str(rated), required, rated=True)  # a rated file needs no chosen/rejected columns
    unrated = tmp_path / "unrated.jsonl"
    unrated.write_text(json.dumps({"prompt": "Q:", "responses": [" a", " b"]}) + "\n")
    with pytest.raises(UsageError, match="need 'ratings' or 'ranking'"):
        check_columns(str(unrated), required, rated=True)
    per_attribute = tmp_path / "helpsteer.jsonl"
    per_attribute.write_text(json.dumps({"prompt": "Q:", "responses": [" a", " b"],
                                         "ratings": {"helpfulness": [4, 1]}}) + "\n")
    check_columns(str(per_attribute), required, rated=True, attributes=["helpfulness"])
    code = cli.main(["train", f"train_data={per_attribute}", f"output_dir={tmp_path}/out", "max_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "per attribute (helpfulness)" in err[0] and "attributes=[...]" in err[0], err


def test_column_names_are_mapped_and_missing_ones_named_before_ray(tmp_path, capsys, tiny_qwen, no_ray):
    """prompt_field/chosen_field/rejected_field read data whose columns are named otherwise."""
    import pyarrow as pa

    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, tokenize_batch

    rows = [{"question": "Q: 2+2?\nA:", "better": " 4", "worse": " 5", "prompt": "ignored"}]
    (tmp_path / "named.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = cli.main(["train", f"train_data={tmp_path}/named.jsonl", f"output_dir={tmp_path}/out", "max_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no column 'chosen'" in err[0] and "chosen_field=" in err[0], err
    assert "better, prompt, question, worse" in err[0]  # the columns it does have

    tokenizer = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    table = pa.Table.from_pylist([{**rows[0], "_row_id": 0}])
    out = tokenize_batch(table, RowRules(tokenizer, spec, strict=True,
                                           fields={"prompt": "question", "chosen": "better", "rejected": "worse"})).to_pandas()
    assert list(out["chosen_ids"][0]) == tokenizer("Q: 2+2?\nA: 4" + tokenizer.eos_token)["input_ids"]
    assert list(out["rejected_ids"][0]) == tokenizer("Q: 2+2?\nA: 5" + tokenizer.eos_token)["input_ids"]


def _readable_corpus() -> dict[str, list]:
    """Readable files whose rows are bad, odd or mixed: name -> rows (dicts, or raw text for a bad line)."""
    good = {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}
    chat = [{"role": "user", "content": "2+2?"}]
    return {
        "chosen-equals-rejected.jsonl": [good, {"prompt": "Q:", "chosen": " same", "rejected": " same"}, good],
        "wrong-types.jsonl": [good, {"prompt": "Q:", "chosen": 4, "rejected": " 5"},
                              {"prompt": "Q:", "chosen": " 4", "rejected": " 5", "margin": "big"}, {"prompt": 7, **{
                                  k: v for k, v in good.items() if k != "prompt"}}],
        "mixed-formats.jsonl": [{"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}, good,
                                {"chosen": chat + [{"role": "assistant", "content": "4"}],
                                 "rejected": chat + [{"role": "assistant", "content": "5"}]}, good],
        "huge-row.jsonl": [good, {"prompt": "Q: " + "long words " * 200_000, "chosen": " 4", "rejected": " 5"}],
        "missing-fields.jsonl": [good, {"prompt": "Q:", "chosen": " 4"}, {"rejected": " 5"}, good],
        "empty-strings.jsonl": [good, {"prompt": "Q:", "chosen": "", "rejected": " 5"}, {"prompt": "", "chosen": "", "rejected": ""}],
        "varying-extra-column.jsonl": [dict(good, extra=1), dict(good, extra="one"), dict(good, extra=[1]), good],
    }


def test_readable_bad_rows_are_kept_or_counted_and_scored_with_every_column(ray_cluster, rm_qwen_chat, tmp_path):
    """Every row of a readable file is either kept or reported with its reason by training's data stage
    (rows in = kept + reported), and comes out of ``rmray score`` with all its input columns."""
    import pyarrow.parquet as pq

    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, build_preferences
    from rmray.score.offline import ScoreConfig, score_dataset

    tok = load_tokenizer(rm_qwen_chat)
    spec = ScoringSpec(max_length=128, eos_token=tok.eos_token, pad_token=tok.pad_token)
    corpus, folder = _readable_corpus(), tmp_path / "corpus"
    folder.mkdir()
    for name, rows in corpus.items():
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        prefs = build_preferences(str(path), RowRules(tok, spec), name=name)
        report = prefs.report
        assert report.rows_read == len(rows), name
        assert report.rows_kept + sum(report.skipped.values()) == report.rows_read, (name, report.format())
        assert report.rows_kept == prefs.dataset.count(), name
        if name == "missing-fields.jsonl":  # bad rows are named by file and line, as an editor shows them
            assert {s.split(" ")[1].rstrip(":") for s in report.samples["missing_field"]} == {f"{name}:2", f"{name}:3"}, report.samples
            # ... read through a URI too (file://: pyarrow's code path for s3:// and gs://)
            by_uri = build_preferences(f"file://{path}", RowRules(tok, spec), name=name).report
            assert by_uri.samples["missing_field"] == report.samples["missing_field"], by_uri.samples

    # one rmray score run over the whole folder: one output file per input file
    out = tmp_path / "scored"
    result = score_dataset(ScoreConfig(model_dirs=[rm_qwen_chat], input=str(folder), output=str(out),
                                       response_field="chosen", batch_size=2))
    assert result.rows == sum(len(rows) for rows in corpus.values())
    for k, (name, rows) in enumerate(sorted(corpus.items())):
        table = pq.read_table(out / f"part-{k:05d}-{name[:-len('.jsonl')]}.parquet")
        as_json = json.loads((table.schema.metadata or {}).get(b"rmray.json_columns", b"[]"))
        scored = table.to_pylist()
        assert len(scored) == len(rows), name
        for row, original in zip(scored, rows):
            for key, value in original.items():
                got = json.loads(row[key]) if key in as_json and row[key] is not None else row[key]
                assert got == value, (name, key)
            assert (row["reward"] is None) == (row["score_error"] is not None), (name, row["score_error"])


def test_an_unknown_loss_is_refused_before_ray_naming_the_registry(tmp_path, capsys, no_ray):
    """The ``loss`` key is checked against rmray/core/loss.py's GROUP_LOSSES, the one list of losses."""
    code = cli.main(["train", "loss=hinge", f"output_dir={tmp_path}/out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'loss'" in err[0] and "'hinge'" in err[0] and "bradley_terry" in err[0] and "plackett_luce" in err[0]


def test_rmray_serve_mistakes_are_refused_before_ray(tmp_path, capsys, no_ray, rm_qwen):
    """A folder that is not a model, and settings that contradict each other, answer in one line with
    Ray never started (``no_ray`` fails the test if it is)."""
    from ..conftest import free_port

    (tmp_path / "notes.txt").write_text("not a model")
    for argv in (["serve", str(tmp_path), "--port", str(free_port())],
                 ["serve", rm_qwen, "--port", str(free_port()), "--replicas", "3", "--max-replicas", "2"]):
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("rmray: error:"), (argv, err)


def test_rows_that_end_the_run_are_marked_in_their_status_and_named_by_first_stop(tiny_qwen):
    """A tokenization task never raises for a row: under ``on_bad_row=error`` a bad row, and under
    ``truncation=error`` a too-long one, comes out with ``stop`` set, and ``first_stop`` names the first
    such row -- the rows before it were tokenized and counted."""
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, first_stop, tokenize_batch

    tokenizer = load_tokenizer(tiny_qwen)
    rows = [{"_row_id": "f.jsonl:1", "prompt": "Q", "chosen": " a", "rejected": " b"},
            {"_row_id": "f.jsonl:2", "prompt": "Q " * 40, "chosen": " a", "rejected": " b"},
            {"_row_id": "f.jsonl:3", "prompt": "Q", "chosen": None, "rejected": " b"}]
    table = pa.Table.from_pylist(rows)
    base = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token, "max_length": 16}

    lenient = tokenize_batch(table, RowRules(tokenizer, ScoringSpec(**base)))
    assert lenient.column("status").to_pylist()[0::2] == ["ok", "missing_field"]
    assert not any(lenient.column("stop").to_pylist()) and first_stop(lenient) is None

    strict = tokenize_batch(table, RowRules(tokenizer, ScoringSpec(**base), strict=True))
    assert strict.column("stop").to_pylist() == [False, False, True]
    assert first_stop(strict).startswith("row f.jsonl:3: ") and "reason missing_field" in first_stop(strict)
    assert "on_bad_row=skip" in first_stop(strict)

    too_long = tokenize_batch(table, RowRules(tokenizer, ScoringSpec(**base, truncation="error")))
    assert too_long.column("stop").to_pylist() == [False, True, False]
    assert first_stop(too_long).startswith("row f.jsonl:2: a text has ") and "max_length=16" in first_stop(too_long)


def test_a_uri_glob_is_expanded_by_listing_and_one_that_matches_nothing_is_refused(tmp_path, no_ray):
    """Ray Data reads no globs in URIs: rmray lists the store (``file://`` here, pyarrow's code path for
    s3:// and gs://) and hands it the files."""
    from rmray.data.source import open_source

    for name in ("a.jsonl", "b.jsonl", "c.parquet"):
        (tmp_path / name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    source = open_source(f"file://{tmp_path}/*.jsonl")
    source.check("train_data")
    assert source.files() == [f"file://{tmp_path}/a.jsonl", f"file://{tmp_path}/b.jsonl"]
    with pytest.raises(UsageError, match=r"train_data file://.*/x\*\.jsonl: no such file"):
        open_source(f"file://{tmp_path}/x*.jsonl").check("train_data")


def test_preference_only_settings_on_stepwise_rows_are_refused_before_ray(tmp_path, no_ray):
    """Stepwise rows make a process reward model; a benchmark of preferences or attribute heads cannot
    apply to it: one line naming the key, before Ray."""
    from rmray.config import TrainConfig
    from rmray.errors import UsageError
    from rmray.train.run import train

    data = tmp_path / "steps.jsonl"
    data.write_text(json.dumps({"prompt": "2 + 2?", "completions": ["2 + 2 = 4."], "labels": [True]}) + "\n")
    for key, value in (("eval_benchmarks", ["judgebench"]), ("debias_length", True)):
        with pytest.raises(UsageError, match=f"'{key}': a process reward model") as err:
            train(TrainConfig(train_data=str(data), output_dir=str(tmp_path / "out"), **{key: value}))
        assert "\n" not in str(err.value)
