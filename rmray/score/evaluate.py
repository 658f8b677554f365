"""``rmray eval``: preference accuracy, margins and calibration of a reward model on a preference
dataset, with a JSON + PNG + HTML report people can look at."""

from __future__ import annotations

import json
import os
import sys

from rmray.core.benchmarks import BENCHMARKS, split_answers
from rmray.core.contract import ensemble_rule
from rmray.core.evaluation import attribute_metrics, length_bias, preference_metrics, ranking_metrics
from rmray.core.files import Folder, write_text_atomic
from rmray.core.spec import ScoringSpec, check_model_dir
from rmray.errors import UsageError
from rmray.ray_env import init_ray
from rmray.report import html, plots

from .settings import EvalConfig


def evaluate(cfg: EvalConfig) -> dict:
    """Score every pair of ``cfg.data`` with Ray Data actors; metrics (and a report and every row's rewards
    in ``rewards.jsonl`` when ``cfg.output``). Several models are evaluated as one ensemble."""
    import ray

    from rmray.data.readable import check_benchmark_rows
    from rmray.data.source import open_source

    from .batch import PairScorer

    for path in cfg.model_dirs:  # before Ray: a mistake costs a second, not a start-up
        check_model_dir(path)
    source = open_source(cfg.data)
    source.check("data")
    out = Folder(cfg.output) if cfg.output else None
    if out is not None:
        out.check_writable("--output")
    if cfg.benchmark:
        check_benchmark_rows(cfg.data, cfg.benchmark, BENCHMARKS[cfg.benchmark].columns)
    specs = [ScoringSpec.load(d) for d in cfg.model_dirs]
    if specs[0].kind == "process":  # step rewards on stepwise rows (rmray.score.steps)
        from .steps import evaluate_steps

        init_ray(cfg.ray_address)
        return evaluate_steps(cfg, source, out)
    init_ray(cfg.ray_address)
    scored = source.read().map_batches(
        PairScorer, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    rows = [batch for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None)]
    chosen, rejected, subsets, groups, errors, attributed = _collect(rows)
    if cfg.benchmark:  # a benchmark's answers are right or wrong: no ranking among them to report
        groups = []
    if not chosen:
        raise UsageError(f"{cfg.data}: no row could be scored; first problems: {errors[:3]}")
    has_subsets = any(s is not None for s in subsets)
    temperature = specs[0].temperature if len(specs) == 1 else None  # an ensemble has no one temperature
    metrics = preference_metrics(chosen, rejected, subsets if has_subsets else None, temperature=temperature)
    metrics.update({"model": os.path.abspath(cfg.model_dir), "data": cfg.data, "bad_rows": len(errors),
                    "bad_row_samples": errors[:20]})
    if len(specs) > 1:
        metrics.update({"models": [os.path.abspath(d) for d in cfg.model_dirs],
                        "ensemble": ensemble_rule(specs, cfg.ensemble)})
    lines = reward_lines(rows)
    if cfg.benchmark:
        metrics["benchmark"] = _benchmark(cfg.benchmark, lines)
    pairs, responses = _lengths(rows)
    metrics["length_bias"] = bias = length_bias(pairs, responses)
    _print_summary(metrics, groups, attributed, specs[0], errors)
    print(f"rmray eval: length bias: Spearman(reward, length) {_fmt(bias['spearman_reward_length'])}, "
          f"'pick the longer' accuracy {_fmt(bias['longer_wins_accuracy'])}; accuracy when chosen is longer "
          f"{_fmt(bias['accuracy_when_chosen_longer'])}, shorter {_fmt(bias['accuracy_when_chosen_shorter'])}")
    if out is not None:
        _write_outputs(out, metrics, chosen, rejected, lines, cfg.train_dir, responses)
        print(f"rmray eval: report in {out.path('report.html')}", file=sys.stderr)
    return metrics


def _write_outputs(out, metrics: dict, chosen, rejected, lines: list[dict], train_dir, responses) -> None:
    """The report, plots, metrics and rewards into ``out``: on a disk each file atomically, in place; to an
    object store made locally, then each uploaded whole (the report last, when what it shows is there)."""
    here = out.staging if out.remote else out.location
    try:
        write_report(metrics, chosen, rejected, here, train_dir=train_dir, responses=responses)
        write_text_atomic(os.path.join(here, "rewards.jsonl"), "".join(json.dumps(x) + "\n" for x in lines))
        if out.remote:
            names = sorted(os.listdir(here), key=lambda name: name == "report.html")
            for name in names:
                out.publish(os.path.join(here, name), name)
    finally:
        out.close()


def _benchmark(name: str, lines: list[dict]) -> dict:
    """The benchmark's score and sections over its items' rewards (an item that could not be scored counts
    as wrong -- every reward 0 -- as a harness that crashed on it would report no score at all)."""
    items = [line if "error" not in line else {**line, "chosen": [0.0], "rejected": [0.0]} for line in lines]
    result = BENCHMARKS[name].score(items)
    sections = ", ".join(f"{k} {v:.4f}" for k, v in result["sections"].items())
    score = "n/a (not every section)" if result["score"] is None else f"{result['score']:.4f}"
    print(f"rmray eval: {name} score {score}; {sections}", flush=True)
    return result


def _print_summary(metrics: dict, groups: list, attributed: list, spec: ScoringSpec, errors: list) -> None:
    if groups:
        metrics["ranking"] = ranking = ranking_metrics(groups)
        print(f"rmray eval: {ranking['groups']} rated groups: pair accuracy {ranking['pair_accuracy']:.4f}, "
              f"Kendall tau {ranking['kendall_tau']:.3f}, Spearman {ranking['spearman']:.3f}, "
              f"top-1 {ranking['top1_accuracy']:.4f}")
    if attributed:
        metrics["attributes"] = per_attribute = attribute_metrics(attributed, spec.attributes)
        print("rmray eval: per attribute (Pearson, Spearman, MSE): " + ", ".join(
            f"{name} {m['pearson']:.3f} / {m['spearman']:.3f} / {m['mse']:.3f}" for name, m in per_attribute.items()))
    temperature = metrics.get("temperature")
    print(f"rmray eval: accuracy {metrics['accuracy']:.4f} on {metrics['pairs']} pairs, "
          f"mean margin {metrics['mean_margin']:.3f}, ECE {metrics['ece']:.3f}"
          + (f" (calibrated: {metrics['calibrated_ece']:.3f} at temperature {temperature:.3f})"
             if metrics.get("calibrated_ece") is not None and temperature else "")
          + (f"; {len(errors)} rows skipped (e.g. {errors[0]})" if errors else ""))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _lengths(batches: list) -> tuple[list[tuple[float, float, int, int]], list[tuple[float, int]]]:
    """(chosen reward, rejected reward, chosen length, rejected length) per pair -- a rated group's pairs
    of different ratings, the better one as chosen -- and (reward, length) per scored response."""
    pairs, responses = [], []
    columns = ("chosen_reward", "rejected_reward", "group_rewards", "group_ratings", "lengths", "score_error")
    for batch in batches:
        for c, r, g, ratings, lengths, error in zip(*(batch.column(k).to_pylist() for k in columns)):
            if error is not None:
                continue
            rewards = [c, r] if g is None else g
            responses += list(zip(rewards, lengths))
            order = [(0, 1)] if g is None else [(i, j) for i in range(len(g)) for j in range(len(g))
                                                if ratings[i] > ratings[j]]
            pairs += [(rewards[i], rewards[j], lengths[i], lengths[j]) for i, j in order]
    return pairs, responses


def reward_lines(batches: list) -> list[dict]:
    """Every scored row's rewards, as ``rewards.jsonl`` holds them: ``{"id", "subset", "chosen": [reward, ...],
    "rejected": [reward, ...]}`` for a pair or a benchmark item (its right and wrong answers),
    ``{"id", "subset", "rewards", "ratings"}`` for a rated group, ``{"id", "subset", "error"}`` for a row that
    could not be scored (``id`` is the row's own ``id`` column, null without one)."""
    lines = []
    for batch in batches:
        for row in batch.select(["id", "subset", "chosen_reward", "rejected_reward", "group_rewards",
                                 "group_ratings", "benchmark", "score_error"]).to_pylist():
            out = {"id": row["id"], "subset": row["subset"]}
            if row["score_error"] is not None:
                out["error"] = row["score_error"]
            elif row["benchmark"]:
                chosen, rejected = split_answers(row["group_rewards"], row["group_ratings"])
                out.update(chosen=chosen, rejected=rejected)
            elif row["group_rewards"] is not None:
                out.update(rewards=row["group_rewards"], ratings=row["group_ratings"])
            else:
                out.update(chosen=[row["chosen_reward"]], rejected=[row["rejected_reward"]])
            lines.append(out)
    return lines


def _collect(scored: list) -> tuple[list, list, list, list, list, list]:
    """Chosen and rejected rewards (a rated group's pairs of different ratings included, the better one
    as chosen), subsets, the rated groups as (rewards, ratings), the bad rows' errors, and the rows
    rated per attribute as (attribute scores, attribute ratings)."""
    chosen, rejected, subsets, groups, errors, attributed = [], [], [], [], [], []
    columns = ("chosen_reward", "rejected_reward", "group_rewards", "group_ratings", "subset", "score_error",
               "attribute_scores", "attribute_ratings")
    for batch in scored:
        for c, r, g, ratings, s, e, scores, targets in zip(*(batch.column(k).to_pylist() for k in columns)):
            if e is not None:
                errors.append(e)
                continue
            pairs = [(c, r)] if g is None else [(g[i], g[j]) for i in range(len(g)) for j in range(len(g))
                                               if ratings[i] > ratings[j]]
            if g is not None:
                groups.append((g, ratings))
            if scores is not None:
                attributed.append((scores, targets))
            for better, worse in pairs:
                chosen.append(better)
                rejected.append(worse)
                subsets.append(s)
    return chosen, rejected, subsets, groups, errors, attributed


def write_report(metrics: dict, chosen, rejected, output: str, *, train_dir: str | None = None,
                 responses: list | None = None) -> None:
    os.makedirs(output, exist_ok=True)
    figures = [plots.reward_histograms(chosen, rejected, os.path.join(output, "reward_histograms.png")),
               plots.calibration_curve(metrics["calibration_bins"], metrics["ece"],
                                       os.path.join(output, "calibration.png"))]
    if responses:
        figures.append(plots.reward_vs_length(responses, metrics["length_bias"],
                                              os.path.join(output, "reward_vs_length.png")))
    metrics_file = os.path.join(train_dir, "metrics.jsonl") if train_dir else None
    if metrics_file and os.path.exists(metrics_file):
        figures.append(plots.training_curves(metrics_file, os.path.join(output, "training_curves.png")))
    write_text_atomic(os.path.join(output, "metrics.json"), json.dumps(metrics, indent=2))
    html.eval_report(metrics, figures, os.path.join(output, "report.html"),
                     title=f"Reward model evaluation: {os.path.basename(os.path.normpath(metrics['model']))}",
                     subtitle=f"data: {metrics['data']}")
