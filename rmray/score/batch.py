"""The per-batch work of offline scoring and evaluation, run inside Ray Data actors.

Actors load the model(s) once and score pyarrow batches; a bad row never fails the batch: its reward
is null and ``score_error`` says which field is wrong and why, so the driver can report it by row.
"""

from __future__ import annotations

import json

import pyarrow as pa

from rmray.core.benchmarks import BENCHMARKS, item_group
from rmray.core.contract import check_item, combine, encode_item, ensemble_rule, response_length, split_attributes
from rmray.core.formats import BadRow, detect_format, normalize_row, read_group
from rmray.core.scoring import Scorer, model_name
from rmray.core.spec import ScoringSpec
from rmray.core.step_scoring import StepScorer
from rmray.core.tokenize import encode, encode_pair

from .columns import TEXT_COLUMN
from .settings import EvalConfig, ScoreConfig
from .steps import score_step_columns


def _device(num_gpus: float) -> str | None:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else None


PARSE_ERROR = "__rmray_parse_error"


class ResponseScorer:
    """Adds ``reward`` (ensemble mean), per-model ``reward_<name>`` and ``reward_std`` for ensembles,
    ``reward_<attribute>`` for a model with per-attribute heads (``reward_<name>_<attribute>`` in an
    ensemble), ``truncated`` and ``score_error`` to every batch, keeping all input columns."""

    def __init__(self, cfg: ScoreConfig, names: list[str]):
        import torch

        torch.set_num_threads(cfg.torch_threads)
        process = ScoringSpec.load(cfg.model_dirs[0]).kind == "process"  # served alone (checked before Ray)
        load = StepScorer.load if process else Scorer.load
        self.scorers = [load(d, device=_device(cfg.num_gpus), precision=cfg.precision) for d in cfg.model_dirs]
        self.process = process
        self.names, self.prompt_field, self.response_field = names, cfg.prompt_field, cfg.response_field
        self.max_batch_tokens = cfg.max_batch_tokens
        self.ensemble = ensemble_rule([s.spec for s in self.scorers], cfg.ensemble)

    @staticmethod
    def _texts(batch: pa.Table, field: str, missing) -> list:
        """A text field's values: from the JSON-lines reader's JSON copy when there is one (the visible
        column may have become JSON text), else from the column itself."""
        hidden = TEXT_COLUMN.format(field)
        if hidden in batch.column_names:
            return [json.loads(v) if v is not None else None for v in batch.column(hidden).to_pylist()]
        if field in batch.column_names:
            return batch.column(field).to_pylist()
        return [missing] * batch.num_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        errors: list = [None] * n
        if PARSE_ERROR in batch.column_names:  # set by the JSON-lines reader for rows it could not type
            errors = batch.column(PARSE_ERROR).to_pylist()
            batch = batch.drop_columns([PARSE_ERROR])
        prompts = self._texts(batch, self.prompt_field, "")
        responses = self._texts(batch, self.response_field, None)
        batch = batch.drop_columns([c for c in batch.column_names if c.startswith(TEXT_COLUMN.format(""))])
        if self.process:  # step rewards (rmray.score.steps)
            return score_step_columns(self.scorers[0], batch, prompts, responses, errors, self.max_batch_tokens,
                                      self.response_field)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            errors[i] = errors[i] or self._item_error(p, r)
        truncated = [False] * n
        values = [self._score_one(scorer, prompts, responses, errors, truncated) for scorer in self.scorers]
        # A row that failed for one model of an ensemble is null for all: the mean would be misleading.
        ok = [i for i in range(n) if not errors[i]]
        specs = [s.spec for s in self.scorers]
        per_model, attributes = split_attributes(self.names, specs, [[v[i] for i in ok] for v in values])
        combined = combine(self.names, specs, per_model, self.ensemble)
        out = batch.append_column("reward", _column(combined["rewards"], ok, n))
        for name, rewards in (combined.get("per_model") or {}).items():
            out = out.append_column(f"reward_{name}", _column(rewards, ok, n))
        if "reward_std" in combined:
            out = out.append_column("reward_std", _column(combined["reward_std"], ok, n))
        for label, scores in attributes.items():  # "helpfulness", or "model/helpfulness" in an ensemble
            out = out.append_column("reward_" + label.replace("/", "_"), _column(scores, ok, n))
        out = out.append_column("truncated", pa.array(truncated, pa.bool_()))
        return out.append_column("score_error", pa.array(errors, pa.string()))

    def _item_error(self, prompt, response) -> str | None:
        try:
            check_item(prompt, response, self.prompt_field, self.response_field)
        except BadRow as err:
            return f"{err.field}: {err}"
        return None

    def _score_one(self, scorer, prompts: list, responses: list, errors: list, truncated: list) -> list:
        """One model's values by row (None where a row cannot be scored, its error noted): the reward, or
        ``[reward, output_1, ..., output_A]`` for a per-attribute model."""
        ids, rows = [], []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            if errors[i]:
                continue
            try:
                enc = encode_item(scorer.tokenizer, scorer.spec, p, r)
            except (BadRow, ValueError) as err:
                errors[i] = f"{getattr(err, 'field', None) or self.response_field}: {err}"
                continue
            ids.append(enc.ids)
            rows.append(i)
            truncated[i] = truncated[i] or enc.truncated
        values = [None] * len(prompts)
        scored = scorer.score_ids(ids, max_batch_tokens=self.max_batch_tokens, per_attribute=bool(scorer.attributes))
        for i, value in zip(rows, scored):
            values[i] = value
        return values


def _column(values: list, rows: list[int], n: int) -> pa.Array:
    """A float column of ``n`` rows with ``values`` at ``rows`` and nulls elsewhere."""
    full = [None] * n
    for i, v in zip(rows, values):
        full[i] = v
    return pa.array(full, pa.float64())


class PairScorer:
    """Scores preference rows (any training format): ``chosen_reward``, ``rejected_reward``, ``id``,
    ``subset``, ``score_error``; a ``rated`` row gets ``group_rewards`` and ``group_ratings`` instead, and for
    a per-attribute model rated per attribute, ``attribute_scores`` and ``attribute_ratings`` ([K][A]).
    Pairs and groups go through group scoring, so a causal model computes each prompt once. Several
    models combine by the scoring contract's ensemble rule, as ``rmray score`` and the server combine them."""

    def __init__(self, cfg: EvalConfig):
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.scorers = [Scorer.load(d, device=_device(cfg.num_gpus)) for d in cfg.model_dirs]
        self.names, self.specs = [model_name(d) for d in cfg.model_dirs], [s.spec for s in self.scorers]
        self.ensemble = ensemble_rule(self.specs, cfg.ensemble)
        self.data_format, self.max_batch_tokens = cfg.data_format, cfg.max_batch_tokens
        # A benchmark's harness renders (user prompt, assistant answer) with the chat template when the model
        # has one; rmray does the same where every model of the ensemble has one, else scores plain text.
        self.benchmark = BENCHMARKS[cfg.benchmark] if cfg.benchmark else None
        self.as_chat = self.benchmark is not None and all(s.tokenizer.chat_template for s in self.scorers)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        n = len(rows)
        errors: list[str | None] = [None] * n
        ratings: list[list[float] | None] = [None] * n
        targets: list[list[list[float]] | None] = [None] * n
        encoded: list[list | None] = [None] * n  # per row: each model's sequences
        lengths: list[list[int] | None] = [None] * n  # per row: its responses' lengths in tokens
        for i, row in enumerate(rows):
            try:
                encoded[i], ratings[i], targets[i], lengths[i] = self._encode(row)
            except BadRow as err:
                errors[i] = f"{err.field or 'row'}: {err}"
            except ValueError as err:
                errors[i] = f"row: {err}"
        where = [i for i in range(n) if encoded[i] is not None]
        per_model = [s.score_id_groups([encoded[i][m] for i in where], max_batch_tokens=self.max_batch_tokens,
                                       per_attribute=bool(s.attributes)) for m, s in enumerate(self.scorers)]
        chosen, rejected, grouped, predicted = [None] * n, [None] * n, [None] * n, [None] * n
        for k, i in enumerate(where):
            values = [scored[k] for scored in per_model]
            rewards = combine(self.names, self.specs, split_attributes(self.names, self.specs, values)[0],
                              self.ensemble)["rewards"]
            if ratings[i] is None:
                chosen[i], rejected[i] = rewards
            else:
                grouped[i] = rewards
            if targets[i] is not None and len(self.scorers) == 1:
                predicted[i] = [v[1:] for v in values[0]]

        id_field, subset_field = (self.benchmark.id_field, self.benchmark.subset_field) if self.benchmark else ("id", "subset")

        def text(key):
            return [str(row[key]) if row.get(key) is not None else None for row in rows]

        return pa.table({"chosen_reward": pa.array(chosen, pa.float64()),
                         "rejected_reward": pa.array(rejected, pa.float64()),
                         "group_rewards": pa.array(grouped, pa.list_(pa.float64())),
                         "group_ratings": pa.array(ratings, pa.list_(pa.float64())),
                         "attribute_scores": pa.array(predicted, pa.list_(pa.list_(pa.float64()))),
                         "attribute_ratings": pa.array(targets, pa.list_(pa.list_(pa.float64()))),
                         "lengths": pa.array(lengths, pa.list_(pa.int64())),
                         "id": pa.array(text(id_field), pa.string()), "subset": pa.array(text(subset_field), pa.string()),
                         "benchmark": pa.array([self.benchmark is not None] * n, pa.bool_()),
                         "score_error": pa.array(errors, pa.string())})

    def _encode(self, row: dict) -> tuple[list, list[float] | None, list[list[float]] | None, list[int]]:
        """Per model, a pair's two sequences or a rated row's K sequences; the ratings and, for a
        per-attribute model, the ratings per attribute ([K][A]) when the row gives them; the responses'
        lengths in the first model's tokens (:func:`rmray.core.contract.response_length`)."""
        tokenizer = self.scorers[0].tokenizer
        if self.benchmark:
            return self._encode_item(row)
        fmt = self.data_format or detect_format(row)
        if fmt == "rated":
            group = read_group(row, self.specs[0].weights_by_attribute())
            ids = [[encode(s.tokenizer, s.spec, group.prompt, r).ids for r in group.responses] for s in self.scorers]
            return ids, group.ratings, group.attributes, [response_length(tokenizer, r) for r in group.responses]
        pair = normalize_row(row, fmt, empty_responses=True)
        ids = []
        for s in self.scorers:
            enc = encode_pair(s.tokenizer, s.spec, pair)
            ids.append([enc.chosen_ids, enc.rejected_ids])
        return ids, None, None, [response_length(tokenizer, pair.chosen), response_length(tokenizer, pair.rejected)]

    def _encode_item(self, row: dict) -> tuple[list, list[float], None, list[int]]:
        """A benchmark item as a group: its right answers rated 1, then its wrong ones rated 0."""
        prompt, answers, ratings = item_group(self.benchmark, row, self.as_chat)
        ids = [[encode(s.tokenizer, s.spec, prompt, a).ids for a in answers] for s in self.scorers]
        return ids, ratings, None, [response_length(self.scorers[0].tokenizer, a) for a in answers]
