"""Length bias with and without ``debias_length=true`` on the shipped hh-rlhf recipe.

    python benchmarks/length_debias.py --hh ../shared/data/hh-rlhf-harmless-dev.jsonl.gz --out /tmp/length-debias

The 1,812 hh-rlhf harmless pairs are split once: every 10th pair is held out (182), the rest train (1,630).
``jobs/configs/hh-rlhf-minilm.yaml`` trains twice on the train part, seed 0, the held-out part as
``eval_data`` -- as it is, and with ``debias_length=true`` -- and ``rmray eval`` scores each ``final/`` on
the held-out pairs. Reported: accuracy and ``length_bias`` (Spearman of reward with response length in
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
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "length_debias.json"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, held = split(args.hh, args.out)
    results = {"plain": run("plain", train, held, args.out, []),
               "debias_length": run("debias", train, held, args.out, ["debias_length=true"])}
    plain, debiased = results["plain"], results["debias_length"]
    results["rho_ratio"] = abs(debiased["spearman_reward_length"]) / abs(plain["spearman_reward_length"])
    results["accuracy_change_points"] = 100 * (debiased["accuracy"] - plain["accuracy"])
    write_results(args.results, results)
    for name in ("plain", "debias_length"):
        r = results[name]
        print(f"{name:>14}: accuracy {r['accuracy']:.4f}, Spearman(reward, length) {r['spearman_reward_length']:+.3f}, "
              f"pick-the-longer {r['longer_wins_accuracy']:.3f}, accuracy when chosen longer "
              f"{r['accuracy_when_chosen_longer']:.3f} / shorter {r['accuracy_when_chosen_shorter']:.3f}")
    print(f"|rho| ratio {results['rho_ratio']:.2f}, accuracy change {results['accuracy_change_points']:+.1f} points")


if __name__ == "__main__":
    main()
