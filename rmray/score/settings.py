"""Settings of ``rmray score`` and ``rmray eval``: dataclasses whose field docstrings are the help of
their command-line options (``rmray.config_fields.add_options``). No torch or Ray import here, so the command
line parses in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from rmray.core.benchmarks import BENCHMARKS
from rmray.core.formats import Format
from rmray.core.spec import DEFAULT_MAX_BATCH_TOKENS


@dataclass(kw_only=True)
class ActorSettings:
    """How a Ray Data scoring pipeline runs its model actors (``rmray score`` and ``rmray eval``)."""

    concurrency: int = 1
    """Scoring actors (each loads the model once)."""
    num_cpus: float = 0.5
    """Logical CPUs per scoring actor."""
    num_gpus: float = 0.0
    """GPUs per scoring actor (fractions pack several actors on one GPU)."""
    torch_threads: int = 1
    """Intra-op threads per scoring actor."""
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    """Padded tokens per forward: length-sorted rows are cut at this budget."""
    ray_address: Optional[str] = None
    """Ray cluster to join (``auto`` inside ``ray job submit``); default starts a local Ray."""
    ensemble: Literal["normalized", "raw"] = "normalized"
    """How several models' rewards combine, as the server combines them: ``normalized`` averages rewards
    standardized by each model's saved eval-set mean/std (when every model has them), ``raw`` averages the
    rewards as they are. The rule used is recorded in the output."""


@dataclass
class ScoreConfig(ActorSettings):
    model_dirs: list[str]
    """rmray model folders (training's ``final/``); several score as an ensemble."""
    input: str
    """Rows to score: a .jsonl/.json/.parquet/.csv file, folder, glob or URI, or a saved ``datasets`` folder."""
    output: str
    """Folder for one Parquet file per input file; a rerun skips the files the same models wrote."""
    prompt_field: str = "prompt"
    """Column holding the prompt (text or chat messages)."""
    response_field: str = "response"
    """Column holding the response to reward (text or chat messages)."""
    batch_size: int = 256
    """Rows per Ray Data batch handed to an actor; inside it, forwards are cut by ``max_batch_tokens``."""
    model_names: Optional[list[str]] = None
    """Names of the ensemble's ``reward_<name>`` columns; default: the folder names."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Forward precision: ``auto`` is bf16 autocast on a GPU with bf16, float32 on CPU."""
    overwrite: bool = False
    """Score again the input files whose output another model (or spec, or text column) wrote; without
    it such a rerun is refused, naming the file."""


@dataclass
class EvalConfig(ActorSettings):
    model_dir: str
    """The rmray model folder to evaluate (training's ``final/``)."""
    data: Optional[str] = None
    """Preference data in any training format (file, folder, glob or URI); with ``benchmark``, default:
    the benchmark's published data on the hub (``rewardbench``: ``allenai/reward-bench`` split ``filtered``;
    ``rewardbench2``: ``allenai/reward-bench-2`` split ``test``; ``rm-bench``: ``THU-KEG/RM-Bench``;
    ``judgebench``: ``ScalerLab/JudgeBench`` split ``gpt``)."""
    benchmark: Optional[str] = None
    """Score the data as this benchmark's own harness scores it (``rewardbench``, ``rewardbench2``,
    ``rm-bench``, ``judgebench``): its sections and score in ``metrics.json``; the data must be in the
    benchmark's published row format."""
    models: list[str] = field(default_factory=list)
    """More model folders, evaluated with ``model_dir`` as one ensemble."""
    output: Optional[str] = None
    """Folder for metrics.json, PNG plots and report.html; default: print the metrics only."""
    train_dir: Optional[str] = None
    """The model's training output folder, to plot its loss and accuracy curves in the report."""
    data_format: Optional[Format] = None
    """The data's format; default: detected per row."""
    batch_size: int = 128
    """Pairs per Ray Data batch handed to an actor."""

    def __post_init__(self):
        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark {self.benchmark!r} is not one rmray scores; known: {', '.join(BENCHMARKS)}")
        if self.data is None:
            if self.benchmark is None:
                raise ValueError("give the preference data to evaluate on (DATA), or --benchmark NAME")
            self.data = BENCHMARKS[self.benchmark].data

    @property
    def model_dirs(self) -> list[str]:
        return [self.model_dir, *self.models]
