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

    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, tokenize_batch

    tokenizer = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    standard = {"prompt": "Q: name a color?\nA:", "chosen": " Blue.", "rejected": " Seven."}
    implicit = {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"}
    broken = {"prompt": "Q: x?", "rejected": " y"}  # no chosen: counted, named
    for rows in ([implicit, standard, broken], [standard, implicit, broken]):
        columns = ["prompt", "chosen", "rejected"]  # as Ray's JSON reader unifies them: null where absent
        table = pa.table({**{c: [r.get(c) for r in rows] for c in columns}, "_row_id": list(range(len(rows)))})
        out = tokenize_batch(table, RowRules(tokenizer, spec)).to_pandas()
        got = {id(r): rec for r, rec in zip(rows, out.to_dict("records"))}
        std = got[id(standard)]
        assert std["status"] == "ok"
        assert list(std["chosen_ids"]) == tokenizer(standard["prompt"] + standard["chosen"] + "<|endoftext|>")["input_ids"]
        imp = got[id(implicit)]
        assert imp["status"] == "ok"
        assert list(imp["chosen_ids"]) == tokenizer(implicit["chosen"] + "<|endoftext|>")["input_ids"]
        assert got[id(broken)]["status"] == "missing_field" and "chosen" in got[id(broken)]["message"]


def test_a_rated_row_is_one_group_whose_pairs_are_its_differently_rated_responses():
    import torch

    from rmray.core.formats import detect_format, read_group
    from rmray.core.loss import ordered_pairs

    def pairs(row):
        _, responses, ratings, _ = read_group(row)
        place = torch.arange(len(responses), dtype=torch.float32).unsqueeze(0)  # "rewards" = each response's index
        better, worse = ordered_pairs(place, torch.tensor([ratings]), torch.ones(1, len(responses), dtype=torch.bool))
        return {(responses[int(i)], responses[int(j)]) for i, j in zip(better, worse)}

    row = {"prompt": "Q:", "responses": [" a", " b", " c", " d"], "ratings": [3, 1, 2, 2]}
    assert detect_format(row) == "rated"
    # 3 > 2 = 2 > 1: a beats b, c, d; c and d beat b; c and d tie (no pair)
    assert pairs(row) == {(" a", " b"), (" a", " c"), (" a", " d"), (" c", " b"), (" d", " b")}
    ranked = {"prompt": "Q:", "responses": [" x", " y", " z"], "ranking": [2, 3, 1]}
    assert pairs(ranked) == {(" z", " x"), (" z", " y"), (" x", " y")}  # rank 1 is the best
    prompt, responses, ratings, _ = read_group({"prompt": [{"role": "user", "content": "hi"}],
                                             "responses": [[{"role": "assistant", "content": "hello"}],
                                                           [{"role": "assistant", "content": "go"}]], "ratings": [0.9, 0.1]})
    assert prompt == [{"role": "user", "content": "hi"}] and responses[1] == [{"role": "assistant", "content": "go"}]
    assert ratings == [0.9, 0.1]
    # a table reader's NaN where a row has no value for another row's list column is "absent"
    nan = float("nan")
    assert detect_format({"prompt": "Q:", "chosen": " a", "rejected": " b", "responses": nan}) == "standard"
    assert read_group({"responses": [" x", " y"], "ratings": nan, "ranking": [1, 2]})[2] == [-1.0, -2.0]


def test_a_rated_file_with_bad_rows_is_counted_by_reason(tiny_qwen):
    """Every input row comes out as its pairs or as one row with its reason (a group is kept whole or
    skipped whole), in a file that mixes rated and pair rows."""
    import pyarrow as pa

    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.data.preferences import RowRules, tokenize_batch

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
    out = tokenize_batch(table, RowRules(tokenizer, spec)).to_pandas()
    assert list(out["row_id"]) == [r["id"] for r in rows]  # every input row comes out once, as itself
    by_row = dict(zip(out["row_id"], out["status"]))
    assert by_row["g"] == "ok" and by_row["pair"] == "ok"
    assert {k: by_row[k] for k in ("one", "nan", "short", "text", "tie", "blank")} == {
        "one": "too_few_responses", "nan": "bad_rating", "short": "bad_rating", "text": "bad_rating",
        "tie": "all_tied", "blank": "empty_field"}
    group = out[out["row_id"] == "g"].iloc[0]
    assert [list(ids) for ids in group["group_ids"]] == [tokenizer(f"Q: {r}<|endoftext|>")["input_ids"] for r in "abc"]
    assert list(group["ratings"]) == [2.0, 1.0, 0.0] and group["pairs"] == 3
    assert list(group["chosen_ids"]) == [] and out[out["row_id"] == "pair"].iloc[0]["pairs"] == 1


def test_responses_that_tokenize_alike_are_one_response_rated_their_mean(tiny_qwen):
    from rmray.core.formats import RatedGroup
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenize import encode_group
    from rmray.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen)
    spec = ScoringSpec(eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    group = encode_group(tokenizer, spec, RatedGroup("Q:", [" a", " b", " a"], [3.0, 2.0, 0.0]))
    assert group.ratings == [1.5, 2.0]  # " a" twice, rated 3 and 0
    assert group.ids == [tokenizer("Q: a<|endoftext|>")["input_ids"], tokenizer("Q: b<|endoftext|>")["input_ids"]]
    with pytest.raises(BadRow) as e:
        encode_group(tokenizer, spec, RatedGroup("Q:", [" a", " b", " a"], [3.0, 2.0, 1.0]))  # a = 2 = b after merging
    assert e.value.reason == "all_tied"


def test_a_saved_dataset_dict_without_a_train_split_is_named_with_the_fix(tmp_path):
    import datasets

    from rmray.data.saved import read_saved_dataset
    from rmray.errors import UsageError

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"chosen": "a", "rejected": "b"}])}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(UsageError, match=r"dd: a saved DatasetDict without a 'train' split \(it has \['test'\]\); fix: "):
        read_saved_dataset(str(tmp_path / "dd"))
