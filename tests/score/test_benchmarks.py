"""``rmray eval --benchmark``: each benchmark scored as its own harness scores it.

The reference is the benchmark's own code, installed with ``pip --no-deps`` (tests/frameworks.txt):
RewardBench's ``rewardbench/constants.py`` loaded as it is, and ``calculate_scores_per_section`` taken
from ``rewardbench/utils.py`` and run unchanged (the package's ``__init__`` imports fastchat, vLLM-era
model code and the hub, which a scoring function does not need)."""

import ast
import importlib.util
import json
import os
import random

import pytest

from rmray.core.benchmarks import rewardbench


def _rewardbench_code():
    """RewardBench's constants module and its section-scoring function, from the installed package's files."""
    spec = importlib.util.find_spec("rewardbench")
    if spec is None:
        pytest.skip("rewardbench is not installed (make setup installs tests/frameworks.txt)")
    folder = spec.submodule_search_locations[0]
    constants_spec = importlib.util.spec_from_file_location("rewardbench_constants", os.path.join(folder, "constants.py"))
    constants = importlib.util.module_from_spec(constants_spec)
    constants_spec.loader.exec_module(constants)
    utils = ast.parse(open(os.path.join(folder, "utils.py")).read())
    function = next(node for node in utils.body if isinstance(node, ast.FunctionDef)
                    and node.name == "calculate_scores_per_section")
    namespace: dict = {}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "rewardbench/utils.py", "exec"), namespace)
    return constants, namespace["calculate_scores_per_section"]


def _harness(constants, per_section, subsets, chosen, rejected) -> tuple[dict, dict]:
    """What rewardbench's run_rm.py does with the rewards: 1 where chosen > rejected, accuracy per subset,
    then its section scores."""
    results: dict[str, list[int]] = {}
    for subset, c, r in zip(subsets, chosen, rejected):
        results.setdefault(subset, []).append(1 if c > r else 0)
    accuracy = {s: sum(v) / len(v) for s, v in results.items()}
    return accuracy, per_section(constants.EXAMPLE_COUNTS, constants.SUBSET_MAPPING, accuracy)


def test_rewardbench_sections_and_score_equal_rewardbenchs_own_code():
    constants, per_section = _rewardbench_code()
    rng = random.Random(0)
    subsets = [s for s in constants.EXAMPLE_COUNTS for _ in range(rng.randint(3, 9))]
    chosen = [rng.gauss(0, 1) for _ in subsets]
    rejected = [c if rng.random() < 0.1 else rng.gauss(0, 1) for c in chosen]  # exact ties count as wrong
    ours = rewardbench(subsets, chosen, rejected)
    accuracy, sections = _harness(constants, per_section, subsets, chosen, rejected)
    assert ours["subsets"].keys() == accuracy.keys()
    assert all(ours["subsets"][s] == pytest.approx(accuracy[s], abs=1e-9) for s in accuracy)
    assert ours["sections"].keys() == sections.keys() == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert all(ours["sections"][s] == pytest.approx(sections[s], abs=1e-9) for s in sections)
    assert ours["score"] == pytest.approx(sum(sections.values()) / 4, abs=1e-9)  # the leaderboard's mean

    partial = rewardbench(subsets[:20], chosen[:20], rejected[:20])  # Chat's subsets only: no overall score
    assert partial["score"] is None and set(partial["missing_sections"]) == {"Chat Hard", "Safety", "Reasoning"}
    assert partial["sections"]["Chat"] == pytest.approx(
        _harness(constants, per_section, subsets[:20], chosen[:20], rejected[:20])[1]["Chat"], abs=1e-9)


def test_rewardbench_worked_example_in_the_docstring():
    # alpacaeval-easy 1 of 2 right, alpacaeval-hard 2 of 2: Chat = (0.5 * 100 + 1.0 * 95) / 195
    out = rewardbench(["alpacaeval-easy"] * 2 + ["alpacaeval-hard"] * 2, [1, 0, 1, 1], [0, 1, 0, 0])
    assert out["sections"] == {"Chat": pytest.approx(145 / 195, abs=1e-12)}


def _write_rewardbench_rows(path) -> list[dict]:
    """Rows in RewardBench's published format (``prompt, chosen, rejected, subset, id``), one empty answer."""
    rows = []
    for k, subset in enumerate(["alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "hep-python", "math-prm"]):
        for j in range(2):
            rows.append({"prompt": f"Question {k}.{j}: how do I keep basil fresh?", "subset": subset,
                         "chosen": "Keep the stems in water, like cut flowers." if j else "",
                         "rejected": f"I cannot help with that ({k}).", "id": 100 * k + j})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_rmray_eval_benchmark_scores_every_item_as_the_chat_template_renders_it(ray_cluster, rm_qwen_chat, tmp_path):
    """A chat model: each answer is scored as the harness renders (user prompt, assistant answer) with the
    model's chat template -- the reward plain transformers gives that text; every row in rewards.jsonl;
    the sections equal RewardBench's own code on those rewards."""
    from transformers import AutoTokenizer

    from rmray.score.evaluate import evaluate
    from rmray.score.settings import EvalConfig
    from rmray.testing import plain_transformers_scores

    constants, per_section = _rewardbench_code()
    rows = _write_rewardbench_rows(tmp_path / "rb.jsonl")
    metrics = evaluate(EvalConfig(model_dir=rm_qwen_chat, data=str(tmp_path / "rb.jsonl"), benchmark="rewardbench",
                                  output=str(tmp_path / "out")))
    written = {r["id"]: r for r in map(json.loads, open(tmp_path / "out" / "rewards.jsonl"))}
    assert sorted(written) == sorted(str(r["id"]) for r in rows)
    tokenizer = AutoTokenizer.from_pretrained(rm_qwen_chat)
    for row in rows[:4]:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                                {"role": "assistant", "content": row[side]}], tokenize=False)
                 for side in ("chosen", "rejected")]
        expected = plain_transformers_scores(rm_qwen_chat, texts, add_eos=False)
        got = written[str(row["id"])]
        assert [got["chosen"][0], got["rejected"][0]] == pytest.approx(expected, abs=1e-4), row["id"]
    subsets = [written[str(r["id"])]["subset"] for r in rows]
    accuracy, sections = _harness(constants, per_section, subsets, [written[str(r["id"])]["chosen"][0] for r in rows],
                                  [written[str(r["id"])]["rejected"][0] for r in rows])
    assert metrics["benchmark"]["sections"] == pytest.approx(sections, abs=1e-9)
    assert metrics["benchmark"]["score"] == pytest.approx(sum(sections.values()) / 4, abs=1e-9)
    assert json.load(open(tmp_path / "out" / "metrics.json"))["benchmark"]["name"] == "rewardbench"


def test_a_file_not_in_the_benchmarks_format_and_an_unknown_name_are_one_line_before_ray(rm_qwen, tmp_path, capsys,
                                                                                          no_ray):
    from rmray import cli

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"}) + "\n")
    for args, expected in ((["--benchmark", "rewardbench"], "not in rewardbench's row format: no column 'subset'"),
                           (["--benchmark", "rewardbench3"], "known: rewardbench")):
        code = cli.main(["eval", rm_qwen, str(tmp_path / "pairs.jsonl"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)
