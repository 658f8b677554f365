"""The driver's plan for the data: a stream of rows for the ranks, or the whole set read first, and the
schedule that follows from either.

Streamed (the default), nothing is read here: the lazy Ray Data pipeline goes to a ``RowStream`` actor
(:mod:`rmray.data.stream`) and the schedule comes from the source's row count
(:mod:`rmray.data.rowcount`). Read whole first (``stream_data=false``, a source with no count, or no CPU
left beside the workers for Ray Data's tasks), the reports and the exact count come before the first
step. Both feed the ranks through the same ``RowStream``, so both follow one order rule.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

from rmray.config import DATA_OBJECT_STORE_MB, TrainConfig
from rmray.core.files import write_json_atomic
from rmray.core.spec import ScoringSpec
from rmray.errors import UsageError

STREAM_BLOCK_BYTES = 2**20  # a few hundred tokenized pairs: less than the first window needs


@dataclass
class PreparedData:
    spec: ScoringSpec
    stream: object  # the RowStream actor every rank reads from (rmray.data.stream)
    reports: list  # the data reports when read whole first; [] when counted as the rows stream
    total_steps: int
    has_eval: bool


def prepare_data(cfg: TrainConfig, tokenizer, readout: str, stream: bool) -> PreparedData:
    """The rows' stream and the schedule. Streamed, the schedule comes from the source's row count; read
    whole first (``stream_data=false``, a source without a count, or no CPU left beside the workers for
    Ray Data's tasks), from the exact count, with the report printed before the first step."""
    from rmray.data.preferences import RowRules, tokenized_rows

    spec = ScoringSpec(max_length=cfg.data.max_length, truncation=cfg.data.truncation, add_eos=cfg.data.add_eos,
                       eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
                       readout=readout, uses_chat_template=tokenizer.chat_template is not None,
                       attributes=list(cfg.optimization.attributes) or None, attribute_weights=cfg.optimization.reward_weights,
                       kind="process" if cfg.data.data_format == "stepwise" else "reward",
                       step_separator=cfg.data.step_separator, prm_aggregate=cfg.data.prm_aggregate)
    _explain_layout(cfg, readout)
    rules = RowRules(tokenizer, spec, fmt=cfg.data.data_format, strict=cfg.data.on_bad_row == "error", fields=cfg.data.fields(),
                     num_cpus=cfg.ray.tokenize_num_cpus)
    rows = _expected_train_rows(cfg) if stream else None
    if stream and rows is None and cfg.optimization.max_steps <= 0:
        print(f"{cfg.data.train_data}: no row count without reading it (set max_steps to stream it); reading it whole first",
              flush=True)
        stream = False
    has_eval = bool(cfg.data.eval_data) or cfg.data.eval_split_ratio > 0
    if stream:
        with _stream_context(cfg):
            train = tokenized_rows(cfg.data.train_data, rules, limit=cfg.data.max_train_samples)
            evals = _stream_eval(cfg, rules)
        reports, total_steps = [], cfg.optimization.max_steps if rows is None else _total_steps(cfg, rows)
        print(f"streaming {cfg.data.train_data}: " + (f"about {rows} train rows, " if rows is not None else "")
              + f"{cfg.ray.num_workers} workers, {total_steps} steps", flush=True)
    else:
        train, evals, reports, rows = _read_whole(cfg, rules)
        total_steps = _total_steps(cfg, rows)
    from rmray.data.stream import RowStream, StreamShape

    shape = StreamShape(cfg.ray.num_workers, cfg.optimization.per_device_train_batch_size * cfg.speed.length_group_window,
                        eval_split_ratio=0.0 if cfg.data.eval_data else cfg.data.eval_split_ratio,
                        max_eval_rows=cfg.data.max_eval_samples, count_reports=stream,
                        replay_bytes=(cfg.data.data_object_store_mb or DATA_OBJECT_STORE_MB) * 2**20)
    row_stream = RowStream.remote(train, evals, shape)
    return PreparedData(spec, row_stream, reports, total_steps, has_eval)


def _stream_eval(cfg: TrainConfig, rules):
    """The eval rows: ``eval_data``, or the train source's held-out rows -- found by their hash before
    tokenizing, so the first evaluation's pass over the source tokenizes only them."""
    from rmray.data.preferences import tokenized_rows

    if cfg.data.eval_data:
        return tokenized_rows(cfg.data.eval_data, rules, limit=cfg.data.max_eval_samples)
    if cfg.data.eval_split_ratio > 0:
        return tokenized_rows(cfg.data.train_data, rules, limit=cfg.data.max_train_samples, split=(0.0, cfg.data.eval_split_ratio))
    return None


def _read_whole(cfg: TrainConfig, rules) -> tuple:
    """Read and tokenize everything first: the reports and the exact train row count up front."""
    from ray.data.expressions import col

    from rmray.data.preferences import build_preferences

    print(f"reading and tokenizing {cfg.data.train_data}...", flush=True)
    train = build_preferences(cfg.data.train_data, rules, name="train", limit=cfg.data.max_train_samples)
    reports, evals, ratio = [train.report], None, 0.0 if cfg.data.eval_data else cfg.data.eval_split_ratio
    if cfg.data.eval_data:
        eval_prefs = build_preferences(cfg.data.eval_data, rules, name="eval", limit=cfg.data.max_eval_samples)
        reports.append(eval_prefs.report)
        evals = eval_prefs.tokenized
    n_train = train.dataset.filter(expr=col("split_key") >= ratio).count() if ratio else train.report.rows_kept
    if ratio and n_train == train.report.rows_kept:
        raise UsageError(f"eval_split_ratio={ratio} left no eval pairs out of {train.report.rows_kept}: "
                         "raise eval_split_ratio, give eval_data, or set eval_split_ratio=0")
    for report in reports:
        print(report.format(), flush=True)
    save_json(os.path.join(cfg.checkpoints.output_dir, "data_report.json"), [r.to_dict() for r in reports])
    print(f"training on {n_train} rows with {cfg.ray.num_workers} workers", flush=True)
    return train.tokenized, evals, reports, n_train


def _expected_train_rows(cfg: TrainConfig) -> int | None:
    """Train rows from the source's own count, before validation. Of a split by row hash, the expected
    train share plus three standard deviations: a schedule a little long is harmless (the learning rate
    ends near 0), one too short would end the decay before the data."""
    from rmray.data.source import open_source

    rows = open_source(cfg.data.train_data).count_rows()
    if rows is None:
        return None
    if cfg.data.max_train_samples:
        rows = min(rows, cfg.data.max_train_samples)
    ratio = 0.0 if cfg.data.eval_data else cfg.data.eval_split_ratio
    return min(rows, math.ceil(rows * (1 - ratio) + 3 * math.sqrt(rows * ratio * (1 - ratio))))


@contextlib.contextmanager
def _stream_context(cfg: TrainConfig):
    """Ray Data's settings for the datasets made inside (each copies them when made), restored after:
    the object-store budget for rows read and tokenized ahead, and blocks of ``STREAM_BLOCK_BYTES``. A
    task hands on its output a block at a time, cut when it reaches its target size -- at Ray's default
    of 128 MB the first tokenized row would wait until a whole file of pairs is tokenized."""
    import ray.data
    from ray.data._internal.execution.interfaces import ExecutionResources

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.execution_options.resource_limits
    context.target_max_block_size = STREAM_BLOCK_BYTES
    if cfg.data.data_object_store_mb:
        context.execution_options.resource_limits = ExecutionResources(object_store_memory=cfg.data.data_object_store_mb * 2**20)
    try:
        yield
    finally:
        context.target_max_block_size, context.execution_options.resource_limits = saved


def _explain_layout(cfg: TrainConfig, readout: str) -> None:
    from .batches import choose_layout

    layout = choose_layout(cfg.speed.padding_free, cfg.speed.share_prompt, readout == "last_token")
    text = {"padded": "padded batches", "packed": "padding-free packing", "shared": "shared-prompt packing"}[layout]
    if cfg.speed.padding_free and cfg.speed.share_prompt and readout != "last_token":
        text += " (share_prompt is exact only for causal attention; this encoder attends both ways, so pairs are packed)"
    if layout != "padded":
        text += ", segment attention" if cfg.speed.packed_attention == "segments" else ", dense block mask"
    print(f"layout: {text}" + (", length-grouped" if cfg.speed.group_by_length else ""), flush=True)


def _total_steps(cfg: TrainConfig, n_train: int) -> int:
    per_rank = n_train // cfg.ray.num_workers  # the order rule gives every rank as many rows (rmray.data.stream)
    batches = math.ceil(per_rank / cfg.optimization.per_device_train_batch_size)
    steps_per_epoch = batches // cfg.optimization.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise UsageError(
            f"{n_train} train pairs over {cfg.ray.num_workers} workers give {batches} micro-batches per worker per epoch, "
            f"fewer than gradient_accumulation_steps={cfg.optimization.gradient_accumulation_steps}: no optimizer step would run. "
            "(fix: more data, fewer workers, or a smaller batch size / accumulation)"
        )
    return cfg.optimization.max_steps if cfg.optimization.max_steps > 0 else steps_per_epoch * cfg.optimization.num_train_epochs


def save_json(path: str, obj) -> None:
    write_json_atomic(path, obj)
