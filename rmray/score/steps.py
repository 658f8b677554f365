"""Process reward models offline: step rewards for ``rmray score``, step metrics for ``rmray eval``.

Both read a solution as the server does (:mod:`rmray.core.steps`): a response that is a list of texts
is its steps; a text is split at the model's ``step_separator``. ``rmray score`` adds ``step_rewards``
(one P(correct) per step) and ``reward`` (their aggregate by ``prm_aggregate``); ``rmray eval`` reads
stepwise rows (``prompt``, ``completions``, ``labels``) and reports :func:`rmray.core.steps.step_metrics`,
with every row's step rewards and labels in ``rewards.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa

from rmray.core.formats import BadRow
from rmray.core.step_scoring import StepScorer
from rmray.core.steps import StepRow, read_steps, split_response, step_metrics, tokenize_steps
from rmray.errors import UsageError


def solution_steps(response, separator: str) -> list[str]:
    """A response as steps: a list of texts as it is, a text split at the separator, messages' contents."""
    if isinstance(response, list) and all(isinstance(x, str) for x in response):
        if not response or not all(x.strip() for x in response):
            raise BadRow("empty_step", None, "a solution needs at least one step, and no step may be empty")
        return list(response)
    if isinstance(response, list):
        response = separator.join(m.get("content") or "" for m in response if isinstance(m, dict))
    if not isinstance(response, str) or not response.strip():
        raise BadRow("empty_field", None, "the response is empty: no step to score")
    return split_response(response, separator)


def score_step_columns(scorer: StepScorer, batch: pa.Table, prompts: list, responses: list, errors: list,
                       max_batch_tokens: int, response_field: str) -> pa.Table:
    """``reward``, ``step_rewards``, ``truncated`` and ``score_error`` appended to ``batch``."""
    spec, tokens, rows, truncated = scorer.spec, [], [], [False] * batch.num_rows
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        if errors[i]:
            continue
        try:
            steps = solution_steps(response, spec.step_separator)
            encoded = tokenize_steps(scorer.tokenizer, StepRow(prompt, steps, None), spec.step_separator, spec.max_length)
        except (BadRow, ValueError) as err:
            errors[i] = f"{getattr(err, 'field', None) or response_field}: {err}"
            continue
        tokens.append(encoded)
        rows.append(i)
        truncated[i] = encoded.prompt_cut > 0
    steps_out, rewards = [None] * batch.num_rows, [None] * batch.num_rows
    for i, step_rewards in zip(rows, scorer.score_tokens(tokens, max_batch_tokens=max_batch_tokens)):
        steps_out[i], rewards[i] = step_rewards, scorer.reward(step_rewards)
    return (batch.append_column("reward", pa.array(rewards, pa.float64()))
            .append_column("step_rewards", pa.array(steps_out, pa.list_(pa.float64())))
            .append_column("truncated", pa.array(truncated, pa.bool_()))
            .append_column("score_error", pa.array(errors, pa.string())))


class StepEvalScorer:
    """A Ray Data actor for ``rmray eval`` of a process model: each stepwise row's ``step_rewards`` and
    ``labels``, its ``id``, and ``score_error`` for a row that cannot be used (its reason and field)."""

    def __init__(self, cfg):
        import torch

        torch.set_num_threads(cfg.torch_threads)
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else None
        self.scorer = StepScorer.load(cfg.model_dir, device=device)
        self.max_batch_tokens = cfg.max_batch_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec, rows = self.scorer.spec, batch.to_pylist()
        tokens, kept, errors, labels = [], [], [None] * len(rows), [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                step_row = read_steps(row)
                tokens.append(tokenize_steps(self.scorer.tokenizer, step_row, spec.step_separator, spec.max_length))
            except BadRow as err:
                errors[i] = f"{err.reason}: {err.field}: {err}"
                continue
            kept.append(i)
            labels[i] = step_row.labels
        step_rewards = [None] * len(rows)
        for i, value in zip(kept, self.scorer.score_tokens(tokens, max_batch_tokens=self.max_batch_tokens)):
            step_rewards[i] = value
        ids = [str(r["id"]) if r.get("id") is not None else None for r in rows]
        return pa.table({"id": pa.array(ids, pa.string()), "step_rewards": pa.array(step_rewards, pa.list_(pa.float64())),
                         "labels": pa.array(labels, pa.list_(pa.bool_())), "score_error": pa.array(errors, pa.string())})


def evaluate_steps(cfg, source, out) -> dict:
    """``rmray eval`` of a process model on stepwise rows (Ray started): metrics, printed and written."""
    import ray

    if len(cfg.model_dirs) > 1:
        raise UsageError("a process reward model is evaluated alone, not in an ensemble")
    scored = source.read().map_batches(
        StepEvalScorer, batch_format="pyarrow", batch_size=cfg.batch_size, fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    lines = [row for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None) for row in batch.to_pylist()]
    good = [x for x in lines if x["score_error"] is None]
    errors = [x["score_error"] for x in lines if x["score_error"] is not None]
    if not good:
        raise UsageError(f"{cfg.data}: no stepwise row could be scored; first problems: {errors[:3]}")
    metrics = step_metrics([x["step_rewards"] for x in good], [x["labels"] for x in good])
    metrics.update({"model": os.path.abspath(cfg.model_dir), "data": cfg.data, "bad_rows": len(errors),
                    "bad_row_samples": errors[:20]})
    print(f"rmray eval: {metrics['solutions']} solutions, {metrics['steps']} steps: step accuracy "
          f"{metrics['step_accuracy']:.4f}, step F1 {metrics['step_f1']:.4f}; first error: erroneous "
          f"{_fmt(metrics['erroneous_accuracy'])}, correct {_fmt(metrics['correct_accuracy'])}, "
          f"F1 {_fmt(metrics['first_error_f1'])}" + (f"; {len(errors)} rows skipped" if errors else ""), flush=True)
    if out is not None:
        records = [{"id": x["id"], "step_rewards": x["step_rewards"], "labels": x["labels"]} if x["score_error"] is None
                   else {"id": x["id"], "error": x["score_error"]} for x in lines]
        try:
            out.make()
            out.write_text("metrics.json", json.dumps(metrics, indent=2))
            out.write_text("rewards.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        finally:
            out.close()
        print(f"rmray eval: metrics in {out.path('metrics.json')}", file=sys.stderr)
    return metrics


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
