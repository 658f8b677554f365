"""The field's benchmarks scored at each evaluation (``eval_benchmarks``), logged as ``bench/<name>/<section>``.

The driver reads each benchmark's rows once (Ray Data, like every other source) and hands them to the
ranks through the object store; every rank tokenizes its share as ``rmray eval --benchmark`` does (one group
per item: the right answers rated 1, then the wrong ones) and scores it -- item i is rank i % world's, all
of them under FSDP, whose forwards are collectives. The items' rewards are gathered so every rank
holds the same scores (early stopping and ``metric_for_best_model`` may read them), and the benchmark's
own scoring rule (:mod:`rmray.core.benchmarks`) turns them into its sections.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rmray.core.benchmarks import BENCHMARKS, item_group, split_answers
from rmray.core.formats import BadRow
from rmray.core.tokenize import encode

from .batches import Rows, chunks_of


def read_benchmarks(entries: list[tuple[str, str]]) -> dict:
    """On the driver: ``{name: object ref of its rows}`` for the ranks."""
    import ray

    from rmray.data.source import open_source

    return {name: ray.put(open_source(data).read().take_all()) for name, data in entries}


class BenchmarkEval:
    """One rank's benchmark items, tokenized once, and their scoring at each evaluation."""

    def __init__(self, refs: dict, tokenizer, spec, rank: int, world: int, everything: bool):
        """``everything``: this rank scores every item (FSDP, whose forwards are collectives); else item i
        is rank i % world's, and only those are tokenized here."""
        import ray

        self.items, self.gather = {}, not everything and world > 1
        as_chat = bool(tokenizer.chat_template)  # as the harnesses render a sequence classifier's input
        for name, ref in refs.items():
            benchmark, items = BENCHMARKS[name], []
            rows = ray.get(ref)
            for row in rows if everything else rows[rank::world]:
                key = (str(row.get(benchmark.id_field)), row.get(benchmark.subset_field))
                try:
                    prompt, answers, ratings = item_group(benchmark, row, as_chat)
                except BadRow:  # scored as wrong, as rmray eval counts a row it cannot score
                    items.append((*key, None, None))
                    continue
                items.append((*key, [encode(tokenizer, spec, prompt, a).ids for a in answers], ratings))
            self.items[name] = items

    @torch.no_grad()
    def evaluate(self, compute, model, layout, batch_size: int) -> dict[str, float]:
        """``{"bench/<name>/score": ..., "bench/<name>/<section>": ...}`` (RM-Bench adds hard/normal/easy)."""
        out = {}
        for name, items in self.items.items():
            lines = self._score(compute, model, layout, batch_size, items)
            if self.gather and dist.is_available() and dist.is_initialized():
                shares = [None] * dist.get_world_size()
                dist.all_gather_object(shares, lines)
                lines = [line for share in shares for line in share]
            result = BENCHMARKS[name].score(lines)
            values = {"score": result["score"], **result["sections"],
                      **{k: result[k] for k in ("hard_acc", "normal_acc", "easy_acc") if k in result}}
            out.update({f"bench/{name}/{k}": float(v) for k, v in values.items() if v is not None})
        return out

    @staticmethod
    def _score(compute, model, layout, batch_size: int, items: list) -> list[dict]:
        """``rewards.jsonl``-shaped lines of ``items``; an item that could not be read has every reward 0."""
        lines = [{"id": key, "subset": subset, "chosen": [0.0], "rejected": [0.0]} for key, subset, _, _ in items]
        scorable = [k for k, item in enumerate(items) if item[2] is not None]
        for start in range(0, len(scorable), batch_size):
            batch = scorable[start:start + batch_size]
            groups, ratings = [items[k][2] for k in batch], [items[k][3] for k in batch]
            rows = Rows(groups, ratings, [0.0] * len(batch), [None] * len(batch), [True] * len(batch))
            done = 0
            for chunk in chunks_of(rows, layout):
                rewards, _ = compute.group_rewards(chunk, model)
                for g, reward_row in enumerate(rewards.tolist()):
                    k = batch[done + g]
                    chosen, rejected = split_answers(reward_row, items[k][3])
                    lines[k].update(chosen=chosen, rejected=rejected)
                done += chunk.num_groups
        return lines
