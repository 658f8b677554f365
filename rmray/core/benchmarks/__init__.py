"""The field's reward-model benchmarks, each scored exactly as its own harness scores it.

A benchmark is three things (:class:`Benchmark`): its published data (a hub id, read when ``rmray eval``
is given no DATA), how one published row becomes an :class:`Item` -- a prompt with its *chosen* answers
(the right ones) and its *rejected* answers -- and how the items' rewards become the benchmark's score.
The rewards travel as ``rewards.jsonl`` lines, ``{"id", "subset", "chosen": [r, ...], "rejected": [r, ...]}``,
so a score can be recomputed from that file alone::

    >>> from rmray.core.benchmarks import BENCHMARKS
    >>> BENCHMARKS["judgebench"].score([{"id": "1", "subset": "livebench-math", "chosen": [0.5], "rejected": [0.2]},
    ...                                 {"id": "2", "subset": "livecodebench", "chosen": [0.1], "rejected": [0.1]}])["score"]
    0.5

Every answer is scored as the harnesses score a sequence classifier: (user prompt, assistant answer)
rendered with the model's chat template when it has one (:func:`as_conversation`), else prompt + answer as
text under the model's scoring spec -- the reward ``/score`` and ``rmray score`` give that prompt and answer.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from . import judgebench, rewardbench, rm_bench
from .item import Item


class Benchmark(NamedTuple):
    name: str
    data: str
    """Its published data, ``hub_id:split``."""
    columns: tuple[str, ...]
    """The columns of its published row format (checked on a local file before Ray starts)."""
    item: Callable[[dict], Item]
    """One published row -> its prompt, chosen and rejected answers (:class:`BadRow` naming a bad field)."""
    score: Callable[[list[dict]], dict]
    """``rewards.jsonl`` lines -> ``{"name", "score", "sections", ...}``."""
    id_field: str = "id"
    """The column naming an item (``rewards.jsonl``'s ``id``)."""
    subset_field: str = "subset"
    """The column its sections are read from (``rewards.jsonl``'s ``subset``)."""


BENCHMARKS = {
    "rewardbench": Benchmark("rewardbench", "allenai/reward-bench:filtered", ("prompt", "chosen", "rejected", "subset", "id"),
                             rewardbench.item, rewardbench.score),
    "rewardbench2": Benchmark("rewardbench2", "allenai/reward-bench-2:test",
                              ("prompt", "chosen", "rejected", "num_correct", "subset", "id"),
                              rewardbench.item_v2, rewardbench.score_v2),
    "rm-bench": Benchmark("rm-bench", "THU-KEG/RM-Bench:train", ("prompt", "chosen", "rejected", "id"),
                          rm_bench.item, rm_bench.score, subset_field="domain"),
    "judgebench": Benchmark("judgebench", "ScalerLab/JudgeBench:gpt",
                            ("question", "response_A", "response_B", "label", "source"), judgebench.item, judgebench.score,
                            id_field="pair_id", subset_field="source"),
}
"""Benchmark name -> how rmray reads and scores it."""


def benchmark_sources(entries: list[str]) -> list[tuple[str, str]]:
    """``eval_benchmarks`` entries -- ``NAME`` (its published data) or ``NAME=DATA`` -- as (name, data)."""
    out = []
    for entry in entries:
        name, _, data = entry.partition("=")
        if name not in BENCHMARKS:
            raise ValueError(f"{entry!r}: {name!r} is not a benchmark rmray scores; known: {', '.join(BENCHMARKS)}")
        out.append((name, data or BENCHMARKS[name].data))
    return out


def item_group(benchmark: Benchmark, row: dict, as_chat: bool) -> tuple:
    """One published row as the group rmray scores: ``(prompt, answers, ratings)`` with the right answers
    first, rated 1, then the wrong ones, rated 0 -- the order ``rewards.jsonl`` splits them back in. With
    ``as_chat`` (the model has a chat template) in the harness's conversation form."""
    item = benchmark.item(row)
    if as_chat:
        item = as_conversation(item)
    return item.prompt, item.chosen + item.rejected, [1.0] * len(item.chosen) + [0.0] * len(item.rejected)


def split_answers(rewards: list[float], ratings: list[float]) -> tuple[list[float], list[float]]:
    """An :func:`item_group`'s rewards back into (right answers', wrong answers'), by their ratings."""
    rated = list(zip(rewards, ratings))
    return [r for r, k in rated if k == 1], [r for r, k in rated if k == 0]


def as_conversation(item: Item) -> Item:
    """An item as the harnesses render it for a model with a chat template: the prompt as the user's turn and
    each answer as the assistant's."""
    def turn(text):
        return [{"role": "assistant", "content": text}]
    return item._replace(prompt=[{"role": "user", "content": item.prompt}], chosen=[turn(t) for t in item.chosen],
                         rejected=[turn(t) for t in item.rejected])


__all__ = ["BENCHMARKS", "Benchmark", "Item", "as_conversation", "benchmark_sources", "item_group",
           "split_answers"]
