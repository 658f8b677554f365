"""Stepwise rows for process reward models: their tokens equal TRL's ``PRMTrainer.tokenize_row`` (the
function itself, from the trl 0.19.1 wheel: TRL dropped the trainer later), bad rows are named by
reason, and the read-out and aggregation rules by hand-worked numbers."""

import ast
import glob
import itertools
import math
import os
import zipfile

import pytest
import torch

from rmray.core.formats import BadRow
from rmray.core.steps import IGNORE, StepRow, aggregate, read_steps, split_response, step_probabilities, tokenize_steps

TRL_WHEEL = "trl-0.19.1-py3-none-any.whl"  # make setup downloads it into .venv/reference (--no-deps, never installed)


def trl_tokenize_row():
    """``PRMTrainer.tokenize_row`` compiled from trl 0.19.1's ``trl/trainer/prm_trainer.py`` and run unchanged
    (the module imports trainer machinery of that release that cannot load beside the pinned trl)."""
    wheels = glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "..", ".venv", "reference", TRL_WHEEL))
    if not wheels:
        pytest.skip(f"{TRL_WHEEL} not found in .venv/reference (make setup downloads it)")
    source = zipfile.ZipFile(wheels[0]).read("trl/trainer/prm_trainer.py").decode()
    tree = ast.parse(source)
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PRMTrainer")
    function = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "tokenize_row")
    function.decorator_list = []  # a @staticmethod inside the class; a plain function here
    namespace = {"chain": itertools.chain}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "trl/trainer/prm_trainer.py", "exec"), namespace)
    return namespace["tokenize_row"]


ROWS = [
    {"prompt": "What is 12 * 3 + 4?", "completions": ["12 * 3 = 36.", "36 + 4 = 41."], "labels": [True, False]},
    {"prompt": "Add 7 and 5.", "completions": ["7 + 5 = 12.", "So the answer is 12.", " Done"], "labels": [True, True, True]},
    {"prompt": "Q", "completions": ["one step only"], "labels": [False]},
]


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("separator", ["\n", "\n\n", " ки"])
def test_tokens_and_label_positions_equal_trls_prm_tokenize_row(tiny_qwen, bos, separator):
    from transformers import AutoTokenizer

    tokenize_row = trl_tokenize_row()
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    if bos:
        tokenizer.bos_token = tokenizer.eos_token  # a tokenizer with a BOS: TRL puts it first
    assert (tokenizer.bos_token_id is not None) == bos
    for row in ROWS:
        want = tokenize_row(row, tokenizer, separator, None, None, None, False, False)
        got = tokenize_steps(tokenizer, read_steps(row), separator, max_length=4096)
        assert got.input_ids == want["input_ids"] and got.labels == want["labels"]
        assert got.positions == [i for i, label in enumerate(want["labels"]) if label != IGNORE]
        assert got.prompt_cut == 0
        # too long: the prompt loses tokens from the left, as TRL's max_prompt_length cuts it; no step is cut
        prompt_len = len(tokenize_row({**row, "completions": [], "labels": []}, tokenizer, separator, None, None, None,
                                      False, False)["input_ids"])
        completion_len = len(want["input_ids"]) - prompt_len
        keep = 1
        cut = tokenize_steps(tokenizer, read_steps(row), separator, max_length=completion_len + keep)
        trl_cut = tokenize_row(row, tokenizer, separator, None, keep, None, False, False)
        assert cut.input_ids == trl_cut["input_ids"] and cut.labels == trl_cut["labels"]
        assert cut.prompt_cut == prompt_len - keep
        with pytest.raises(BadRow) as err:
            tokenize_steps(tokenizer, read_steps(row), separator, max_length=completion_len - 1)
        assert err.value.reason == "too_long"


@pytest.mark.parametrize("row, reason, field", [
    ({"completions": ["a"], "labels": [True]}, "missing_field", "prompt"),
    ({"prompt": "p", "completions": [], "labels": []}, "missing_field", "completions"),
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, "bad_step_labels", "labels"),
    ({"prompt": "p", "completions": ["a"], "labels": [1]}, "bad_step_labels", "labels"),
    ({"prompt": "p", "completions": ["a"], "labels": ["true"]}, "bad_step_labels", "labels"),
    ({"prompt": "p", "completions": ["a", "  "], "labels": [True, True]}, "empty_step", "completions"),
    ({"prompt": "p", "completions": ["a", 3], "labels": [True, True]}, "non_string_field", "completions"),
    ({"prompt": "p", "completions": ["a"]}, "missing_field", "labels"),
])
def test_a_bad_stepwise_row_is_refused_by_reason_naming_its_field(row, reason, field):
    with pytest.raises(BadRow) as err:
        read_steps(row)
    assert (err.value.reason, err.value.field) == (reason, field)


def test_rows_to_score_need_no_labels_and_a_response_splits_at_the_separator():
    assert read_steps({"prompt": "p", "steps": ["a", "b"]}, need_labels=False) == StepRow("p", ["a", "b"], None)
    assert split_response("a\nb\n\n c \n", "\n") == ["a", "b", " c "]
    assert split_response("no separator", "\n") == ["no separator"]


def test_step_rewards_are_class_one_probabilities_and_aggregate_by_the_rule():
    logits = torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, 0.0], [0.5, 0.5]])
    got = step_probabilities(logits, [1, 2])
    assert got == pytest.approx([1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))])
    rewards = [0.9, 0.2, 0.6]
    assert aggregate(rewards, "min") == 0.2
    assert aggregate(rewards, "last") == 0.6
    assert aggregate(rewards, "mean") == pytest.approx(1.7 / 3)
    assert aggregate(rewards, "prod") == pytest.approx(0.9 * 0.2 * 0.6)
    with pytest.raises(ValueError, match="prm_aggregate"):
        aggregate(rewards, "max")


def test_step_metrics_by_hand():
    from rmray.core.steps import first_error, step_metrics

    assert first_error([True, False, False]) == 1 and first_error([True, True]) == -1
    # solution A: labels T F T, rewards .9 .4 .3 -> predicted T F F: first error 1 vs 1 (right)
    # solution B: labels T T, rewards .6 .45 -> predicted T F: first error 1 vs -1 (wrong)
    # solution C: labels F, rewards .7 -> predicted T: first error -1 vs 0 (wrong)
    got = step_metrics([[0.9, 0.4, 0.3], [0.6, 0.45], [0.7]], [[True, False, True], [True, True], [False]])
    # steps: (T,T) (F,F) (F,T) (T,T) (F,T) (T,F): 3 of 6 right; wrong steps 2, flagged 3, caught 1
    assert got["step_accuracy"] == pytest.approx(3 / 6)
    precision, recall = 1 / 3, 1 / 2
    assert got["step_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert got["erroneous_accuracy"] == pytest.approx(1 / 2) and got["correct_accuracy"] == 0.0
    assert got["first_error_f1"] == 0.0  # a harmonic mean with a zero
    assert (got["solutions"], got["steps"]) == (3, 6)


def test_the_demo_step_set_labels_every_step_by_its_arithmetic():
    """Each generated row read back as TRL's format; a step is labelled right exactly when it carries the
    right number, its sum is right, and no step before it was wrong (checked here by redoing the arithmetic)."""
    import re

    from rmray.core.demo_data import demo_steps

    rows = demo_steps(300, seed=1)
    planted = 0
    for row in rows:
        read_steps(row)
        a, b, c = map(int, re.findall(r"\d+", row["prompt"]))
        x, b_again, s1 = map(int, re.findall(r"-?\d+", row["completions"][0]))
        y, c_again, s2 = map(int, re.findall(r"-?\d+", row["completions"][1]))
        answer = int(re.findall(r"-?\d+", row["completions"][2])[0])
        ok = [x == a and s1 == a + b, y == s1 and s2 == s1 + c, answer == s2]
        assert (b_again, c_again) == (b, c) and s1 == x + b and s2 == y + c  # each step's own sum is right
        assert row["labels"] == [all(ok[:k + 1]) for k in range(3)]
        planted += not all(ok)
    assert 0.4 < planted / len(rows) < 0.6


def test_step_sums_reduce_to_the_metrics_step_metrics_gives():
    """Sums over two batches, added as ranks' sums are all-reduced, give the metrics of all steps at once."""
    from rmray.core.steps import metrics_from_step_sums, step_metrics, step_sums

    rewards = [[0.9, 0.4, 0.3], [0.6, 0.45], [0.7]]
    labels = [[True, False, True], [True, True], [False]]
    flat_p = [p for r in rewards for p in r]
    flat_y = [y for ys in labels for y in ys]
    logits = torch.tensor([[0.0, math.log(p / (1 - p))] for p in flat_p])
    target = torch.tensor([int(y) for y in flat_y])
    sums = step_sums(logits[:3], target[:3], 1.5) + step_sums(logits[3:], target[3:], 0.9)
    got = metrics_from_step_sums(sums)
    want = step_metrics(rewards, labels)
    assert got["accuracy"] == pytest.approx(want["step_accuracy"]) and got["step_f1"] == pytest.approx(want["step_f1"])
    assert got["loss"] == pytest.approx(2.4 / 6) and got["steps"] == 6
