"""``rmray eval``: preference accuracy, margins and calibration of a reward model on a preference
dataset, with a JSON + PNG + HTML report people can look at."""

from __future__ import annotations

import json
import os
import sys

from rmray.core.evaluation import attribute_metrics, preference_metrics, ranking_metrics
from rmray.core.spec import ScoringSpec
from rmray.ray_env import init_ray
from rmray.report import html, plots

from .settings import EvalConfig


def evaluate(cfg: EvalConfig) -> dict:
    """Score every pair of ``cfg.data`` with Ray Data actors; metrics (and a report when ``cfg.output``)."""
    import ray

    from rmray.data.read import read_source

    from .batch import PairScorer

    init_ray(cfg.ray_address)
    model_dir, data, output = cfg.model_dir, cfg.data, cfg.output
    scored = read_source(data).map_batches(
        PairScorer, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    chosen, rejected, subsets, groups, errors, attributed = _collect(scored)
    if not chosen:
        raise ValueError(f"{data}: no row could be scored; first problems: {errors[:3]}")
    has_subsets = any(s is not None for s in subsets)
    spec = ScoringSpec.load(model_dir)
    temperature = spec.temperature
    metrics = preference_metrics(chosen, rejected, subsets if has_subsets else None, temperature=temperature)
    metrics.update({"model": os.path.abspath(model_dir), "data": data, "bad_rows": len(errors),
                    "bad_row_samples": errors[:20]})
    if groups:
        metrics["ranking"] = ranking = ranking_metrics(groups)
        print(f"rmray eval: {ranking['groups']} rated groups: pair accuracy {ranking['pair_accuracy']:.4f}, "
              f"Kendall tau {ranking['kendall_tau']:.3f}, Spearman {ranking['spearman']:.3f}, "
              f"top-1 {ranking['top1_accuracy']:.4f}")
    if attributed:
        metrics["attributes"] = per_attribute = attribute_metrics(attributed, spec.attributes)
        print("rmray eval: per attribute (Pearson, Spearman, MSE): " + ", ".join(
            f"{name} {m['pearson']:.3f} / {m['spearman']:.3f} / {m['mse']:.3f}" for name, m in per_attribute.items()))
    print(f"rmray eval: accuracy {metrics['accuracy']:.4f} on {metrics['pairs']} pairs, "
          f"mean margin {metrics['mean_margin']:.3f}, ECE {metrics['ece']:.3f}"
          + (f" (calibrated: {metrics['calibrated_ece']:.3f} at temperature {temperature:.3f})" if temperature else "")
          + (f"; {len(errors)} rows skipped (e.g. {errors[0]})" if errors else ""))
    if output:
        write_report(metrics, chosen, rejected, output, train_dir=cfg.train_dir)
        print(f"rmray eval: report in {os.path.join(output, 'report.html')}", file=sys.stderr)
    return metrics


def _collect(scored) -> tuple[list, list, list, list, list, list]:
    """Chosen and rejected rewards (a rated group's pairs of different ratings included, the better one
    as chosen), subsets, the rated groups as (rewards, ratings), the bad rows' errors, and the rows
    rated per attribute as (attribute scores, attribute ratings)."""
    chosen, rejected, subsets, groups, errors, attributed = [], [], [], [], [], []
    columns = ("chosen_reward", "rejected_reward", "group_rewards", "group_ratings", "subset", "score_error",
               "attribute_scores", "attribute_ratings")
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
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


def write_report(metrics: dict, chosen, rejected, output: str, *, train_dir: str | None = None) -> None:
    os.makedirs(output, exist_ok=True)
    figures = [plots.reward_histograms(chosen, rejected, os.path.join(output, "reward_histograms.png")),
               plots.calibration_curve(metrics["calibration_bins"], metrics["ece"],
                                       os.path.join(output, "calibration.png"))]
    metrics_file = os.path.join(train_dir, "metrics.jsonl") if train_dir else None
    if metrics_file and os.path.exists(metrics_file):
        figures.append(plots.training_curves(metrics_file, os.path.join(output, "training_curves.png")))
    tmp = os.path.join(output, ".metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(output, "metrics.json"))
    html.eval_report(metrics, figures, os.path.join(output, "report.html"),
                     title=f"Reward model evaluation: {os.path.basename(os.path.normpath(metrics['model']))}",
                     subtitle=f"data: {metrics['data']}")
