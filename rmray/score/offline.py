"""``rmray score``: reward every row of a dataset with Ray Data, into Parquet, resumably.

Input files are scored in one streaming pipeline (actor pool, bounded memory) with their order kept;
the driver writes one Parquet file per input file, atomically (temp name, then rename) as soon as that
file's last row is in. A rerun into the same output skips input files whose output the same models
wrote (recorded in each file's metadata), so a crash costs at most the files in flight; output of
another model is refused unless ``overwrite`` (see :mod:`rmray.score.provenance`).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import pyarrow as pa

from rmray.core.contract import ensemble_rule
from rmray.core.files import Folder
from rmray.core.scoring import model_name
from rmray.core.spec import ScoringSpec, check_model_dir
from rmray.data.kinds import file_kind, is_lines
from rmray.data.lines import parse_line
from rmray.data.readable import check_columns, folder_files
from rmray.data.source import open_source
from rmray.errors import UsageError
from rmray.ray_env import init_ray

from .columns import LINE_COLUMN, TEXT_COLUMN, WHERE_COLUMN, FileParts, expand_lines, to_json
from .provenance import METADATA_KEY, check_scored_by, provenance
from .settings import ScoreConfig  # noqa: F401  (rmray score's settings; imported from here by callers)

FILE_TAG = "__rmray_file"
PARSE_ERROR = "__rmray_parse_error"


@dataclass
class ScoreResult:
    output: str
    files_written: list[str]
    files_skipped: list[str]
    rows: int
    bad_rows: int
    rows_per_s: float


def list_inputs(source: str) -> list[str | None]:
    """Input files in a stable order; ``[None]`` for sources that are not files (saved datasets, hub ids)."""

    if os.path.isfile(source):
        return [source]
    if os.path.isdir(source):
        return folder_files(source) or [None]
    if any(ch in source for ch in "*?["):
        files = sorted(glob.glob(source))
        if not files:
            raise UsageError(f"input {source}: no files match (fix: check the path and pattern)")
        return files
    if "://" in source:  # object stores and other pyarrow filesystems: a file or a folder of files
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [source]
        if info.type == pafs.FileType.Directory:
            scheme = source.split("://", 1)[0]
            files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path)) if file_kind(f.path))
            if files:
                return [f"{scheme}://{f}" for f in files]
        raise UsageError(f"{source}: no .jsonl/.json/.parquet/.csv files found there (fix: check the URI)")
    return [None]


def output_name(index: int, path: str | None) -> str:
    if path is None:
        return f"part-{index:05d}.parquet"
    base = os.path.basename(path.rstrip("/"))
    for ext in (".gz", ".zst", ".jsonl", ".json", ".parquet", ".csv"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return f"part-{index:05d}-{base}.parquet"


def _parse_lines(batch: pa.Table, text_fields: tuple[str, ...], index_of: dict[str, int]) -> pa.Table:
    """JSON lines -> rows whose columns have fixed types: the line itself (the driver builds the user's
    columns from it when writing, see :mod:`rmray.score.columns` -- blocks of different column types
    would not even concatenate inside Ray Data), the text fields as JSON for the scorer, and the reason
    for a line that is not a JSON object (a row with its reason, never a crash of the whole run)."""
    kept, texts, errors = [], {name: [] for name in text_fields}, []
    for line, unreadable in zip(batch.column("_line").to_pylist(), batch.column("_error").to_pylist()):
        row, error = parse_line(line, unreadable)
        kept.append(None if error else line)
        errors.append(error)
        for name in text_fields:
            texts[name].append(to_json(row.get(name)))
    return pa.table({LINE_COLUMN: pa.array(kept, pa.string()), WHERE_COLUMN: batch.column("_where"),
                     **{TEXT_COLUMN.format(name): pa.array(values, pa.string()) for name, values in texts.items()},
                     PARSE_ERROR: pa.array(errors, pa.string()),
                     FILE_TAG: pa.array([index_of[p] for p in batch.column("path").to_pylist()], pa.int32())})


def _tag_by_path(batch: pa.Table, index_of: dict[str, int]) -> pa.Table:
    tags = pa.array([index_of[p] for p in batch.column("path").to_pylist()], pa.int32())
    return batch.drop_columns(["path"]).append_column(FILE_TAG, tags)


def _tag_all(batch: pa.Table) -> pa.Table:
    return batch.append_column(FILE_TAG, pa.array([0] * batch.num_rows, pa.int32()))


def _read(pending: list[tuple[int, str | None]], cfg: "ScoreConfig"):
    """One read over all pending files (one read keeps file order; a union would interleave blocks)."""
    import ray

    from rmray.data.lines import JsonLinesText

    if pending[0][1] is None:
        return open_source(cfg.input).read().map_batches(_tag_all, batch_format="pyarrow", num_cpus=0.25)
    paths = [p for _, p in pending]
    kinds = {("lines" if is_lines(p) else file_kind(p)) for p in paths}
    if len(kinds) != 1:
        raise UsageError(f"{cfg.input}: mixed file types {sorted(map(str, kinds))} (fix: score each type separately)")
    kind = kinds.pop()
    # Ray reports paths without a URI scheme; map both spellings.
    index_of = {}
    for k, p in pending:
        index_of[p] = index_of[os.path.abspath(p)] = index_of[p.split("://", 1)[-1]] = k
    if kind == "lines":
        return ray.data.read_datasource(JsonLinesText(paths, include_paths=True)).map_batches(
            _parse_lines, fn_kwargs={"text_fields": (cfg.prompt_field, cfg.response_field), "index_of": index_of},
            batch_format="pyarrow", num_cpus=0.25)
    reader = {"json": ray.data.read_json, "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}[kind]
    return reader(paths, include_paths=True).map_batches(_tag_by_path, fn_kwargs={"index_of": index_of},
                                                         batch_format="pyarrow", num_cpus=0.25)


def score_dataset(cfg: ScoreConfig) -> ScoreResult:
    import ray

    from .batch import ResponseScorer

    for path in cfg.model_dirs:  # before Ray: a mistake costs a second, not a start-up
        check_model_dir(path)
    if len(cfg.model_dirs) > 1 and any(ScoringSpec.load(d).kind == "process" for d in cfg.model_dirs):
        raise UsageError("a process reward model (kind: process) scores alone, not in an ensemble "
                         "(fix: score with it by itself)")
    open_source(cfg.input).check("input", parse_lines=False)  # a line that is not JSON is a row with its score_error
    check_columns(cfg.input, {"--response-field": cfg.response_field})
    names = cfg.model_names or [model_name(d) for d in cfg.model_dirs]
    inputs = list_inputs(cfg.input)
    out = Folder(cfg.output)
    out.make()
    out.check_writable("output")
    scored_by = provenance(cfg.model_dirs, names, cfg.prompt_field, cfg.response_field)
    if len(cfg.model_dirs) > 1:  # the rule the ensemble's reward column was combined by
        scored_by["ensemble"] = ensemble_rule([ScoringSpec.load(d) for d in cfg.model_dirs], cfg.ensemble)
    pending = [(k, p) for k, p in enumerate(inputs) if not _already_scored(cfg, out, output_name(k, p), scored_by)]
    skipped = [output_name(k, p) for k, p in enumerate(inputs) if (k, p) not in pending]
    if not out.remote:
        for stale in glob.glob(os.path.join(cfg.output, ".*.tmp*")):  # partial files of an interrupted run
            os.remove(stale)
    if skipped:
        print(f"rmray score: {len(skipped)} of {len(inputs)} input files already scored in {cfg.output}; skipping them")
    if not pending:
        out.close()
        return ScoreResult(cfg.output, [], skipped, 0, 0, 0.0)

    init_ray(cfg.ray_address)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = _read(pending, cfg)
    scored = ds.map_batches(
        ResponseScorer, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"cfg": cfg, "names": names},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    try:
        return _write(scored, cfg, out, pending, skipped, scored_by)
    finally:
        out.close()


def _already_scored(cfg: ScoreConfig, out: Folder, name: str, scored_by: dict) -> bool:
    """Skip an output file only when these models scored it; refuse another model's (see provenance)."""
    if not out.exists(name):
        return False
    try:
        return check_scored_by(out.path(name), scored_by, out.read_schema(name))
    except UsageError:
        if cfg.overwrite:
            return False  # scored again; the new file replaces it atomically when done
        raise


def _write(scored, cfg: ScoreConfig, out: Folder, pending, skipped, scored_by: dict) -> ScoreResult:
    from tqdm import tqdm

    paths = dict(pending)
    written, bad_samples, rows, bad = [], [], 0, 0
    parts: FileParts | None = None
    current, row_in_file = None, 0
    done: set[int] = set()
    start = time.perf_counter()
    bar = tqdm(desc="scoring", unit="row", disable=None, file=sys.stderr)
    metadata = {METADATA_KEY: json.dumps(scored_by).encode()}

    def finish():
        if parts is not None:
            name = output_name(current, paths[current])
            staged = out.stage(name)
            parts.finish(staged)
            out.publish(staged, name)  # a rename on disk, one upload to an object store: never half a file
            written.append(name)

    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        tags = batch.column(FILE_TAG).to_pylist()
        start_row = 0
        while start_row < len(tags):  # split the batch where the source file changes (order is kept)
            end = start_row
            while end < len(tags) and tags[end] == tags[start_row]:
                end += 1
            piece = expand_lines(batch.slice(start_row, end - start_row).drop_columns([FILE_TAG]))
            wheres = piece.column(WHERE_COLUMN).to_pylist() if WHERE_COLUMN in piece.column_names else None
            piece = piece.drop_columns([WHERE_COLUMN]) if wheres is not None else piece
            if tags[start_row] != current:
                if tags[start_row] in done:  # order is kept by construction; never overwrite a finished file
                    raise RuntimeError(f"rows of {paths[tags[start_row]]} arrived after the file was finished")
                if current is not None:
                    done.add(current)
                finish()
                current, row_in_file = tags[start_row], 0
                parts = FileParts(out.stage(output_name(current, paths[current])), metadata)
            parts.write(piece)
            for offset, error in enumerate(piece.column("score_error").to_pylist()):
                if error is not None:
                    bad += 1
                    if len(bad_samples) < 20:
                        where = os.path.basename(paths[current]) if paths[current] else "input"
                        where = wheres[offset] if wheres else f"{where} row {row_in_file + offset}"
                        bad_samples.append(f"{where}: {error}")
            row_in_file += piece.num_rows
            rows += piece.num_rows
            bar.update(piece.num_rows)
            start_row = end
    finish()
    bar.close()
    seconds = time.perf_counter() - start
    result = ScoreResult(cfg.output, written, skipped, rows, bad, rows / max(seconds, 1e-9))
    report = {**asdict(result), "bad_row_samples": bad_samples, "models": cfg.model_dirs}
    out.write_text("_score_report.json", json.dumps(report, indent=2, default=str))
    print(f"rmray score: {rows} rows -> {cfg.output} ({len(written)} files, {result.rows_per_s:.1f} rows/s)")
    if bad:
        print(f"rmray score: {bad} rows could not be scored (reward is null, score_error says why):\n  "
              + "\n  ".join(bad_samples[:5]), file=sys.stderr)
    return result
