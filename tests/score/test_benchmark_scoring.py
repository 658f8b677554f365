"""Each benchmark's score and sections equal the benchmark's own scoring code on the same rewards (1e-9).

The rewards are random, drawn from a few values so that exact ties -- which every harness treats in its
own way -- happen often. The reference code is in :mod:`tests.score.reference`."""

import random

import pytest

from rmray.core.benchmarks import BENCHMARKS

from .reference import (
    JUDGEBENCH_SOURCES,
    judgebench_compute_final_metrics,
    judgebench_decision,
    rewardbench2_harness,
    rewardbench_constants,
    rewardbench_harness,
    rm_bench_compute_accuracy,
)


def _reward(rng: random.Random) -> float:
    return rng.choice([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]) + (rng.random() if rng.random() < 0.5 else 0.0)


def _lines(subsets, chosen, rejected) -> list[dict]:
    """``rewards.jsonl`` lines of one-against-one items."""
    return [{"id": str(i), "subset": s, "chosen": [c], "rejected": [r]}
            for i, (s, c, r) in enumerate(zip(subsets, chosen, rejected))]


def test_rewardbench_sections_and_score_equal_rewardbenchs_own_code():
    constants = rewardbench_constants()
    rng = random.Random(0)
    subsets = [s for s in constants.EXAMPLE_COUNTS for _ in range(rng.randint(3, 9))]
    chosen = [_reward(rng) for _ in subsets]
    rejected = [_reward(rng) for _ in subsets]
    ours = BENCHMARKS["rewardbench"].score(_lines(subsets, chosen, rejected))
    accuracy, sections = rewardbench_harness(subsets, chosen, rejected)
    assert ours["subsets"] == pytest.approx(accuracy, abs=1e-9)
    assert ours["sections"].keys() == sections.keys() == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert ours["sections"] == pytest.approx(sections, abs=1e-9)
    assert ours["score"] == pytest.approx(sum(sections.values()) / 4, abs=1e-9)  # the leaderboard's mean

    partial = BENCHMARKS["rewardbench"].score(_lines(subsets[:20], chosen[:20], rejected[:20]))
    assert partial["score"] is None and set(partial["missing_sections"]) == {"Chat Hard", "Safety", "Reasoning"}
    assert partial["sections"]["Chat"] == pytest.approx(
        rewardbench_harness(subsets[:20], chosen[:20], rejected[:20])[1]["Chat"], abs=1e-9)


def test_rewardbench_worked_example_in_the_docstring():
    # alpacaeval-easy 1 of 2 right, alpacaeval-hard 2 of 2: Chat = (0.5 * 100 + 1.0 * 95) / 195
    out = BENCHMARKS["rewardbench"].score(_lines(["alpacaeval-easy"] * 2 + ["alpacaeval-hard"] * 2, [1, 0, 1, 1],
                                                 [0, 1, 0, 0]))
    assert out["sections"] == {"Chat": pytest.approx(145 / 195, abs=1e-12)}


def _rewardbench2_items(rng: random.Random) -> list[dict]:
    """``rewards.jsonl`` lines shaped like RewardBench 2: best-of-4 subsets, and Ties' ``ref:N``/``tied:N``
    items with several right answers (one prompt with only ``tied``, one with only ``ref``, one whose right
    answers all tie)."""
    items = []
    for subset in ["Factuality", "Precise IF", "Math", "Safety", "Focus"]:
        for k in range(rng.randint(5, 12)):
            items.append({"id": str(len(items)), "subset": subset, "chosen": [_reward(rng)],
                          "rejected": [_reward(rng) for _ in range(3)]})
    for prompt in range(12):
        for kind in ["ref", "tied"]:
            if (prompt, kind) in ((10, "ref"), (11, "tied")):
                continue
            right = [_reward(rng) + 1 for _ in range(rng.randint(1, 2) if kind == "ref" else rng.randint(2, 4))]
            if prompt == 3 and kind == "tied":
                right = [1.5, 1.5, 1.5]
            items.append({"id": f"{kind}:{prompt}", "subset": "Ties", "chosen": right,
                          "rejected": [_reward(rng) for _ in range(rng.randint(2, 5))]})
    return items


def test_rewardbench2_subsets_equal_rewardbenchs_own_code_ties_included():
    items = _rewardbench2_items(random.Random(1))
    ours = BENCHMARKS["rewardbench2"].score(items)
    reference = rewardbench2_harness(items)
    assert set(ours["sections"]) == set(reference) == {"Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"}
    assert ours["sections"] == pytest.approx(reference, abs=1e-9)
    assert ours["score"] == pytest.approx(sum(reference.values()) / 6, abs=1e-9)
    # An exact tie with the right answer at the top earns 1/k: 1/2 with one wrong answer level with it.
    tie = [{"id": "0", "subset": "Math", "chosen": [1.0], "rejected": [1.0, 0.5, 0.2]},
           {"id": "1", "subset": "Math", "chosen": [1.0], "rejected": [1.0, 1.0, 0.2]}]
    assert BENCHMARKS["rewardbench2"].score(tie)["sections"]["Math"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert rewardbench2_harness(tie)["Math"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_rm_bench_hard_normal_easy_and_domains_equal_rm_benchs_own_code():
    rng = random.Random(2)
    domains = ["chat", "math", "code", "safety-refuse", "safety-response"]
    rows = [{"domain": d, "score_chosen": [_reward(rng) + 0.3 * s for s in range(3)],
             "score_rejected": [_reward(rng) + 0.3 * s for s in range(3)]} for d in domains for _ in range(rng.randint(4, 9))]
    lines = [{"id": str(i), "subset": r["domain"], "chosen": r["score_chosen"], "rejected": r["score_rejected"]}
             for i, r in enumerate(rows)]
    ours = BENCHMARKS["rm-bench"].score(lines)
    reference = rm_bench_compute_accuracy([dict(r) for r in rows])
    assert ours["sections"] == pytest.approx({d: reference[d] for d in ("chat", "math", "code", "safety")}, abs=1e-9)
    for level in ("hard_acc", "normal_acc", "easy_acc"):
        assert ours[level] == pytest.approx(reference[level], abs=1e-9), level
    assert ours["score"] == pytest.approx(reference["total_avg_acc"], abs=1e-9)

    one_domain = BENCHMARKS["rm-bench"].score([{**line, "subset": None} for line in lines[:7]])
    reference = rm_bench_compute_accuracy([{k: v for k, v in r.items() if k != "domain"} for r in rows[:7]])
    assert {k: one_domain[k] for k in reference} == pytest.approx(reference, abs=1e-9)


def test_rm_bench_worked_example_in_the_docstring():
    out = BENCHMARKS["rm-bench"].score([{"id": "0", "subset": None, "chosen": [3, 2, 1], "rejected": [2.5, 1.5, 0.5]}])
    assert (out["hard_acc"], out["normal_acc"], out["easy_acc"]) == (1.0, 1.0, 0.0)


def test_judgebench_per_source_and_overall_equal_judgebenchs_own_code():
    rng = random.Random(3)
    sources = ["mmlu-pro-law", "mmlu-pro-math", "livebench-reasoning", "livebench-math", "livecodebench"]
    pairs, lines = [], []
    for i in range(120):
        a, b, label, source = _reward(rng), _reward(rng), rng.choice(["A>B", "B>A"]), rng.choice(sources)
        # the harness judges both ways round with a reward model (run_judge.py without --single_game)
        pairs.append({"label": label, "source": source,
                      "judgments": [{"decision": judgebench_decision(a, b)}, {"decision": judgebench_decision(b, a)}]})
        preferred, other = (a, b) if label == "A>B" else (b, a)
        lines.append({"id": str(i), "subset": source, "chosen": [preferred], "rejected": [other]})
    ours = BENCHMARKS["judgebench"].score(lines)
    for prefix in JUDGEBENCH_SOURCES:
        expected = judgebench_compute_final_metrics(pairs, True, include_fn=lambda x: x["source"].startswith(prefix))
        got = ours["sections"][prefix] if prefix else ours["score"]
        assert 100 * got == pytest.approx(expected, abs=1e-9), prefix
    assert sum(a == b for a, b in ((line["chosen"][0], line["rejected"][0]) for line in lines)) >= 3  # ties were tested


def test_rows_a_benchmark_cannot_read_are_refused_naming_the_field():
    from rmray.core.formats import BadRow

    cases = [("rewardbench2", {"prompt": "Q", "chosen": ["a"], "rejected": ["b"], "subset": "Ties", "id": "7"}, "id"),
             ("rewardbench2", {"prompt": "Q", "chosen": ["a"], "rejected": ["b"], "num_correct": 2, "subset": "Math"},
              "num_correct"),
             ("rm-bench", {"prompt": "Q", "chosen": ["a", "b"], "rejected": ["c", "d", "e"]}, "chosen"),
             ("judgebench", {"question": "Q", "response_A": "a", "response_B": "b", "label": "A=B"}, "label"),
             ("rewardbench", {"prompt": "Q", "chosen": None, "rejected": "b"}, "chosen")]
    for name, row, field in cases:
        with pytest.raises(BadRow) as err:
            BENCHMARKS[name].item(row)
        assert err.value.field == field, (name, err.value.field)
    # ... and one that reads, with an empty answer: scored like any other
    assert BENCHMARKS["judgebench"].item({"question": "Q", "response_A": "", "response_B": "b", "label": "B>A"}) == \
        ("Q", ["b"], [""])
