"""Length bias with and without ``debias_length=true`` on the shipped hh-rlhf recipe.

    python benchmarks/length_debias.py --hh ../shared/data/hh-rlhf-harmless-dev.jsonl.gz --out /tmp/length-debias

The 1,812 hh-rlhf harmless pairs are split once: every 10th pair is held out (182), the rest train (1,630).
``jobs/configs/hh-rlhf-minilm.yaml`` trains on the train part with the held-out part as ``eval_data``, once
per seed (``--seeds``, default 0 1 2) as it is and once with ``debias_length=true``; ``rmray eval`` scores
each ``final/`` on the held-out pairs. Reported: accuracy and ``length_bias`` (Spearman of reward with response length in
tokens, "pick the longer" accuracy, accuracy when the chosen answer is longer / shorter). Results JSON in
``benchmarks/results/length_debias.json`` (or ``--results``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from results_file import write_results  # noqa: E402 - benchmarks/ is the script folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "jobs", "configs", "hh-rlhf-minilm.yaml")


def split(hh: str, out: str) -> tuple[str, str]:
    with gzip.open(hh, "rt") as f:
        rows = [line for line in f if line.strip()]
    paths = os.path.join(out, "train.jsonl"), os.path.join(out, "heldout.jsonl")
    with open(paths[0], "w") as train, open(paths[1], "w") as held:
        for i, line in enumerate(rows):
            (held if i % 10 == 0 else train).write(line)
    return paths


def run(name: str, train: str, held: str, out: str, extra: list[str]) -> dict:
    """Train with the recipe, evaluate final/ on the held-out pairs; the eval's metrics.json."""
    run_dir, eval_dir = os.path.join(out, name), os.path.join(out, f"{name}-eval")
    subprocess.run([sys.executable, "-m", "rmray.cli", "train", RECIPE, f"train_data={train}", f"eval_data={held}",
                    f"output_dir={run_dir}", "seed=0", "overwrite_output_dir=true", *extra], check=True)
    subprocess.run([sys.executable, "-m", "rmray.cli", "eval", os.path.join(run_dir, "final"), held,
                    "--output", eval_dir], check=True)
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return {"accuracy": metrics["accuracy"], "pairs": metrics["pairs"], **metrics["length_bias"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hh", required=True, help="hh-rlhf-harmless-dev.jsonl.gz")
    parser.add_argument("--out", required=True, help="working folder for the split, the runs and their evals")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "length_debias.json"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, held = split(args.hh, args.out)
    runs = {name: [run(f"{name}-seed{seed}", train, held, args.out, [f"seed={seed}", *extra]) for seed in args.seeds]
            for name, extra in (("plain", []), ("debias_length", ["debias_length=true"]))}
    results = {"seeds": args.seeds, **runs, **summarize(runs)}
    write_results(args.results, results)
    for name in ("plain", "debias_length"):
        for seed, r in zip(args.seeds, runs[name]):
            print(f"{name:>14} seed {seed}: accuracy {r['accuracy']:.4f}, Spearman(reward, length) "
                  f"{r['spearman_reward_length']:+.3f}, accuracy when chosen longer {r['accuracy_when_chosen_longer']:.3f}"
                  f" / shorter {r['accuracy_when_chosen_shorter']:.3f}")
    print(f"'pick the longer' {runs['plain'][0]['longer_wins_accuracy']:.3f}; mean |rho| ratio {results['rho_ratio']:.2f}, "
          f"mean accuracy change {results['accuracy_change_points']:+.1f} points")


def summarize(runs: dict) -> dict:
    """Means over seeds: the ratio of |Spearman(reward, length)| and the accuracy change in points."""
    def mean(name, key, f=float):
        return sum(f(r[key]) for r in runs[name]) / len(runs[name])
    return {"rho_ratio": mean("debias_length", "spearman_reward_length", abs) / mean("plain", "spearman_reward_length", abs),
            "accuracy_change_points": 100 * (mean("debias_length", "accuracy") - mean("plain", "accuracy"))}


if __name__ == "__main__":
    main()
