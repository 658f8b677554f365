import json

import pytest

from rmray.core.formats import BadRow, detect_format, normalize_row, split_implicit_prompt


def test_detect_formats():
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "standard"
    assert detect_format({"chosen": "a", "rejected": "b"}) == "implicit"
    assert detect_format({"chosen": [{"role": "user", "content": "x"}], "rejected": []}) == "conversational"
    with pytest.raises(ValueError, match="needs 'chosen' and 'rejected'"):
        detect_format({"question": "q", "answer": "a"})


def test_implicit_prompt_cut_at_turn_marker():
    chosen = "\n\nHuman: How do I bake?\n\nAssistant: I would start with flour."
    rejected = "\n\nHuman: How do I bake?\n\nAssistant: I don't know."
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    # The common prefix runs into the answers ("I "), but the prompt stops at the turn marker.
    assert prompt == "\n\nHuman: How do I bake?\n\nAssistant:"
    assert c == " I would start with flour." and r == " I don't know."
    assert prompt + c == chosen and prompt + r == rejected


def test_implicit_prompt_without_marker_cuts_at_whitespace():
    prompt, c, r = split_implicit_prompt("the cat sat", "the cab ran")
    assert prompt == "the" and c == " cat sat" and r == " cab ran"


def test_implicit_on_real_pairs_reconstructs_texts(hh_rows):
    skipped = []
    for i, row in enumerate(hh_rows[:300]):
        try:
            pair = normalize_row(row, "implicit")
        except BadRow as e:  # real data has a few dialogues whose last answer is empty
            assert e.reason == "empty_field"
            skipped.append(i)
            continue
        assert pair.prompt + pair.chosen == row["chosen"]
        assert pair.prompt + pair.rejected == row["rejected"]
        assert pair.prompt.endswith("Assistant:")
    assert 86 in skipped and len(skipped) < 6  # row 86: the chosen answer is blank


def test_standard_with_margin():
    pair = normalize_row({"prompt": "Q", "chosen": " a", "rejected": " b", "margin": 2}, "standard")
    assert (pair.prompt, pair.chosen, pair.rejected, pair.margin) == ("Q", " a", " b", 2.0)
    assert normalize_row({"prompt": "", "chosen": "a", "rejected": "b"}, "standard").prompt == ""


def test_conversational_explicit_and_implicit():
    user = {"role": "user", "content": "hi"}
    a, b = {"role": "assistant", "content": "hello!"}, {"role": "assistant", "content": "go away"}
    explicit = normalize_row({"prompt": [user], "chosen": [a], "rejected": [b]}, "conversational")
    implicit = normalize_row({"chosen": [user, a], "rejected": [user, b]}, "conversational")
    assert explicit == implicit
    assert explicit.prompt == [user] and explicit.chosen == [a] and explicit.conversational


@pytest.mark.parametrize("row, fmt, reason, field", [
    ({"prompt": "p", "rejected": "b"}, "standard", "missing_field", "chosen"),
    ({"prompt": "p", "chosen": None, "rejected": "b"}, "standard", "missing_field", "chosen"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "standard", "non_string_field", "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": "  "}, "standard", "empty_field", "rejected"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "standard", "non_string_field", "prompt"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "standard", "identical_chosen_rejected", "chosen"),
    ({"chosen": "same", "rejected": "same"}, "implicit", "identical_chosen_rejected", "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "standard", "bad_margin", "margin"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": float("nan")}, "standard", "bad_margin", "margin"),
    ({"chosen": "not a list", "rejected": []}, "conversational", "malformed_messages", "chosen"),
    ({"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "x"}]}, "conversational",
     "malformed_messages", "chosen"),
    ({"chosen": [{"role": "assistant", "content": " "}], "rejected": [{"role": "assistant", "content": "x"}]},
     "conversational", "empty_field", "chosen"),
])
def test_bad_rows_name_reason_and_field(row, fmt, reason, field):
    with pytest.raises(BadRow) as info:
        normalize_row(row, fmt)
    assert info.value.reason == reason
    assert info.value.field == field


def test_a_file_mixing_formats_keeps_every_prompt_in_either_order(tiny_qwen):
    """Arrow gives implicit rows a null prompt; the format is decided per row, so no row's prompt is
    dropped and none is refused, whichever kind comes first."""
    import pyarrow as pa

    from rmray.core.model import load_tokenizer
    from rmray.core.spec import ScoringSpec
    from rmray.data.preferences import tokenize_batch

    tokenizer = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    standard = {"prompt": "Q: name a color?\nA:", "chosen": " Blue.", "rejected": " Seven."}
    implicit = {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"}
    broken = {"prompt": "Q: x?", "rejected": " y"}  # no chosen: counted, named
    for rows in ([implicit, standard, broken], [standard, implicit, broken]):
        columns = ["prompt", "chosen", "rejected"]  # as Ray's JSON reader unifies them: null where absent
        table = pa.table({**{c: [r.get(c) for r in rows] for c in columns}, "_row_id": list(range(len(rows)))})
        out = tokenize_batch(table, tokenizer=tokenizer, spec=spec, fmt="auto", strict=False)
        got = {id(r): rec for r, rec in zip(rows, out.to_dict("records"))}
        std = got[id(standard)]
        assert std["status"] == "ok"
        assert list(std["chosen_ids"]) == tokenizer(standard["prompt"] + standard["chosen"] + "<|endoftext|>")["input_ids"]
        imp = got[id(implicit)]
        assert imp["status"] == "ok"
        assert list(imp["chosen_ids"]) == tokenizer(implicit["chosen"] + "<|endoftext|>")["input_ids"]
        assert got[id(broken)]["status"] == "missing_field" and "chosen" in got[id(broken)]["message"]


def test_a_rated_row_is_every_ordered_pair_of_different_ratings():
    from rmray.core.formats import detect_format, normalize_rated

    row = {"prompt": "Q:", "responses": [" a", " b", " c", " d"], "ratings": [3, 1, 2, 2]}
    assert detect_format(row) == "rated"
    pairs = {(p.chosen, p.rejected) for p in normalize_rated(row)}
    # 3 > 2 = 2 > 1: a beats b, c, d; c and d beat b; c and d tie (no pair)
    assert pairs == {(" a", " b"), (" a", " c"), (" a", " d"), (" c", " b"), (" d", " b")}
    ranked = normalize_rated({"prompt": "Q:", "responses": [" x", " y", " z"], "ranking": [2, 3, 1]})
    assert {(p.chosen, p.rejected) for p in ranked} == {(" z", " x"), (" z", " y"), (" x", " y")}  # rank 1 best
    chat = normalize_rated({"prompt": [{"role": "user", "content": "hi"}],
                            "responses": [[{"role": "assistant", "content": "hello"}],
                                          [{"role": "assistant", "content": "go"}]], "ratings": [0.9, 0.1]})
    assert len(chat) == 1 and chat[0].conversational and chat[0].prompt == [{"role": "user", "content": "hi"}]
    # a table reader's NaN where a row has no value for another row's list column is "absent"
    nan = float("nan")
    assert detect_format({"prompt": "Q:", "chosen": " a", "rejected": " b", "responses": nan}) == "standard"
    assert len(normalize_rated({"responses": [" x", " y"], "ratings": nan, "ranking": [1, 2]})) == 1


def test_a_rated_file_with_bad_rows_is_counted_by_reason(tiny_qwen):
    """Every input row comes out as its pairs or as one row with its reason (a group is kept whole or
    skipped whole), in a file that mixes rated and pair rows."""
    import pyarrow as pa

    from rmray.core.model import load_tokenizer
    from rmray.core.spec import ScoringSpec
    from rmray.data.preferences import tokenize_batch

    tokenizer = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    rows = [
        {"id": "g", "prompt": "Q:", "responses": [" a", " b", " c"], "ratings": [2, 1, 0]},  # 3 pairs
        {"id": "one", "prompt": "Q:", "responses": [" a"], "ratings": [1]},
        {"id": "nan", "prompt": "Q:", "responses": [" a", " b"], "ratings": [1, float("nan")]},
        {"id": "short", "prompt": "Q:", "responses": [" a", " b"], "ratings": [1]},
        {"id": "text", "prompt": "Q:", "responses": [" a", " b"], "ratings": ["good", "bad"]},
        {"id": "tie", "prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 1]},
        {"id": "blank", "prompt": "Q:", "responses": [" a", "  "], "ratings": [1, 0]},
        {"id": "pair", "prompt": "Q:", "chosen": " a", "rejected": " b"},
    ]
    # as training's JSON-lines reader hands them over: each line's text, parsed row by row
    table = pa.table({"_line": [json.dumps(r) for r in rows], "_where": [f"r.jsonl:{i + 1}" for i in range(len(rows))],
                      "_error": pa.array([None] * len(rows), pa.string())})
    out = tokenize_batch(table, tokenizer=tokenizer, spec=spec, fmt="auto", strict=False)
    assert int(out["source_row"].sum()) == len(rows)  # every input row accounted for once
    by_row = dict(zip(out["row_id"], out["status"]))
    assert [by_row[f"g#{k}"] for k in range(3)] == ["ok"] * 3 and by_row["pair"] == "ok"
    assert {k: by_row[k] for k in ("one", "nan", "short", "text", "tie", "blank")} == {
        "one": "too_few_responses", "nan": "bad_rating", "short": "bad_rating", "text": "bad_rating",
        "tie": "all_tied", "blank": "empty_field"}
    first = out[out["row_id"] == "g#0"].iloc[0]
    assert list(first["chosen_ids"]) == tokenizer("Q: a<|endoftext|>")["input_ids"]
    assert list(first["rejected_ids"]) == tokenizer("Q: b<|endoftext|>")["input_ids"]
    assert len(set(out[out["row_id"].str.startswith("g#")]["split_key"])) == 1  # a group stays on one side


def test_a_saved_dataset_dict_without_a_train_split_is_named_with_the_fix(tmp_path):
    import datasets

    from rmray.data.saved import read_saved_dataset
    from rmray.errors import UsageError

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"chosen": "a", "rejected": "b"}])}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(UsageError, match=r"dd: a saved DatasetDict without a 'train' split \(it has \['test'\]\); fix: "):
        read_saved_dataset(str(tmp_path / "dd"))
