"""The per-batch work of offline scoring and evaluation, run inside Ray Data actors.

Actors load the model(s) once and score pyarrow batches; a bad row never fails the batch: its reward
is null and ``score_error`` says which field is wrong and why, so the driver can report it by row.
"""

from __future__ import annotations

import json

import pyarrow as pa

from rmray.core.evaluation import ensemble
from rmray.core.formats import BadRow, detect_format, normalize_row, read_group
from rmray.core.scoring import Scorer
from rmray.core.tokenize import encode, encode_pair

from .columns import TEXT_COLUMN
from .settings import EvalConfig, ScoreConfig


def _device(num_gpus: float) -> str | None:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else None


def _text_error(value, field: str) -> str | None:
    if value is None:
        return f"{field}: missing"
    if isinstance(value, str):
        return None if value or field == "prompt" else f"{field}: empty"
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return None
    return f"{field}: expected text or a list of {{role, content}} messages, got {type(value).__name__}"


PARSE_ERROR = "__rmray_parse_error"


class ResponseScorer:
    """Adds ``reward`` (ensemble mean), per-model ``reward_<name>`` and ``reward_std`` for ensembles,
    ``reward_<attribute>`` for a model with per-attribute heads (``reward_<name>_<attribute>`` in an
    ensemble), ``truncated`` and ``score_error`` to every batch, keeping all input columns."""

    def __init__(self, cfg: ScoreConfig, names: list[str]):
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.scorers = [Scorer.load(d, device=_device(cfg.num_gpus), precision=cfg.precision) for d in cfg.model_dirs]
        self.names, self.prompt_field, self.response_field = names, cfg.prompt_field, cfg.response_field
        self.max_batch_tokens = cfg.max_batch_tokens

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
        parsed: list = [None] * n
        if PARSE_ERROR in batch.column_names:  # set by the JSON-lines reader for rows it could not type
            parsed = batch.column(PARSE_ERROR).to_pylist()
            batch = batch.drop_columns([PARSE_ERROR])
        prompts = self._texts(batch, self.prompt_field, "")
        responses = self._texts(batch, self.response_field, None)
        batch = batch.drop_columns([c for c in batch.column_names if c.startswith(TEXT_COLUMN.format(""))])
        errors: list[str | None] = [e or _text_error(r, self.response_field) or
                                    (_text_error(p, self.prompt_field) if p is not None else None)
                                    for e, p, r in zip(parsed, prompts, responses)]
        per_model, truncated, attribute_columns = [], [False] * n, {}
        for name, scorer in zip(self.names, self.scorers):
            rewards, attributes = self._score_one(scorer, prompts, responses, errors, truncated)
            per_model.append(rewards)
            for attribute, values in attributes.items():
                attribute_columns[f"reward_{attribute}" if len(self.scorers) == 1 else f"reward_{name}_{attribute}"] = values
        # A row that failed for one model of an ensemble is null for all: the mean would be misleading.
        for rewards in [*per_model, *attribute_columns.values()]:
            for i in range(n):
                if errors[i]:
                    rewards[i] = None
        ok = [i for i in range(n) if not errors[i]]
        mean_ok, std_ok = ensemble([[r[i] for i in ok] for r in per_model])
        mean, std = [None] * n, [None] * n
        for i, m, s in zip(ok, mean_ok, std_ok):
            mean[i], std[i] = m, s
        out = batch.append_column("reward", pa.array(mean, pa.float64()))
        if len(per_model) > 1:
            for name, rewards in zip(self.names, per_model):
                out = out.append_column(f"reward_{name}", pa.array(rewards, pa.float64()))
            out = out.append_column("reward_std", pa.array(std, pa.float64()))
        for column, values in attribute_columns.items():
            out = out.append_column(column, pa.array(values, pa.float64()))
        out = out.append_column("truncated", pa.array(truncated, pa.bool_()))
        return out.append_column("score_error", pa.array(errors, pa.string()))

    def _score_one(self, scorer, prompts: list, responses: list, errors: list, truncated: list) -> tuple[list, dict]:
        """One model's rewards by row (None where a row cannot be scored; its error noted), and a
        per-attribute model's scores by attribute name."""
        ids, rows = [], []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            if errors[i]:
                continue
            try:
                enc = encode(scorer.tokenizer, scorer.spec, p or "", r)
            except (BadRow, ValueError) as err:
                errors[i] = f"{getattr(err, 'field', None) or self.response_field}: {err}"
                continue
            ids.append(enc.ids)
            rows.append(i)
            truncated[i] = truncated[i] or enc.truncated
        names = scorer.attributes or []
        rewards, attributes = [None] * len(prompts), {name: [None] * len(prompts) for name in names}
        for i, value in zip(rows, scorer.score_ids(ids, max_batch_tokens=self.max_batch_tokens, per_attribute=bool(names))):
            rewards[i] = value[0] if names else value
            for a, name in enumerate(names):
                attributes[name][i] = value[1 + a]
        return rewards, attributes


class PairScorer:
    """Scores preference rows (any training format): ``chosen_reward``, ``rejected_reward``, ``subset``,
    ``score_error``; a ``rated`` row gets ``group_rewards`` and ``group_ratings`` instead, and for a
    per-attribute model rated per attribute, ``attribute_scores`` and ``attribute_ratings`` ([K][A]). Pairs and
    groups go through group scoring, so a causal model computes each prompt once."""

    def __init__(self, cfg: EvalConfig):
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.scorer = Scorer.load(cfg.model_dir, device=_device(cfg.num_gpus))
        self.data_format, self.max_batch_tokens = cfg.data_format, cfg.max_batch_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        n = len(rows)
        errors: list[str | None] = [None] * n
        ratings: list[list[float] | None] = [None] * n
        targets: list[list[list[float]] | None] = [None] * n
        groups, where = [], []
        for i, row in enumerate(rows):
            try:
                ids, ratings[i], targets[i] = self._encode(row)
            except BadRow as err:
                errors[i] = f"{err.field or 'row'}: {err}"
                continue
            except ValueError as err:
                errors[i] = f"row: {err}"
                continue
            groups.append(ids)
            where.append(i)
        names = self.scorer.attributes or []
        chosen, rejected, grouped, predicted = [None] * n, [None] * n, [None] * n, [None] * n
        scored = self.scorer.score_id_groups(groups, max_batch_tokens=self.max_batch_tokens, per_attribute=bool(names))
        for i, values in zip(where, scored):
            rewards = [v[0] for v in values] if names else values
            if ratings[i] is None:
                chosen[i], rejected[i] = rewards
            else:
                grouped[i] = rewards
            if targets[i] is not None:
                predicted[i] = [v[1:] for v in values]
        subset = [str(row["subset"]) if row.get("subset") is not None else None for row in rows]
        return pa.table({"chosen_reward": pa.array(chosen, pa.float64()),
                         "rejected_reward": pa.array(rejected, pa.float64()),
                         "group_rewards": pa.array(grouped, pa.list_(pa.float64())),
                         "group_ratings": pa.array(ratings, pa.list_(pa.float64())),
                         "attribute_scores": pa.array(predicted, pa.list_(pa.list_(pa.float64()))),
                         "attribute_ratings": pa.array(targets, pa.list_(pa.list_(pa.float64()))),
                         "subset": pa.array(subset, pa.string()), "score_error": pa.array(errors, pa.string())})

    def _encode(self, row: dict) -> tuple[list[list[int]], list[float] | None, list[list[float]] | None]:
        """A pair's two sequences, or a rated row's K sequences, their ratings and, for a per-attribute
        model, their ratings per attribute ([K][A]) when the row gives them."""
        tokenizer, spec = self.scorer.tokenizer, self.scorer.spec
        fmt = self.data_format or detect_format(row)
        if fmt == "rated":
            group = read_group(row, spec.weights_by_attribute())
            return [encode(tokenizer, spec, group.prompt, r).ids for r in group.responses], group.ratings, group.attributes
        enc = encode_pair(tokenizer, spec, normalize_row(row, fmt))
        return [enc.chosen_ids, enc.rejected_ids], None, None
