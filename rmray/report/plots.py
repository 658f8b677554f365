"""PNG plots for evaluation reports and model cards (matplotlib, headless Agg backend).

Each function writes one file and returns its path, so reports can link or inline them.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHOSEN, REJECTED = "#2a9d8f", "#e76f51"


def reward_histograms(chosen: Sequence[float], rejected: Sequence[float], path: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    lo, hi = min(min(chosen), min(rejected)), max(max(chosen), max(rejected))
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    ax.hist(chosen, bins=bins, alpha=0.6, color=CHOSEN, label=f"chosen (mean {sum(chosen) / len(chosen):.2f})")
    ax.hist(rejected, bins=bins, alpha=0.6, color=REJECTED,
            label=f"rejected (mean {sum(rejected) / len(rejected):.2f})")
    ax.set_xlabel("reward")
    ax.set_ylabel("pairs")
    ax.set_title("Rewards of chosen vs rejected responses")
    ax.legend(frameon=False)
    return _save(fig, path)


def reward_vs_length(responses: Sequence[tuple[float, int]], bias: dict, path: str) -> str:
    """Each scored response's reward against its length in tokens: a rising cloud is a model that pays
    for length, the first thing a policy learns to exploit."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.scatter([n for _, n in responses], [r for r, _ in responses], s=8, alpha=0.5, color=CHOSEN)
    rho, longer = bias.get("spearman_reward_length"), bias.get("longer_wins_accuracy")
    ax.set_title("Reward vs response length" + (f" (Spearman {rho:.2f})" if rho is not None else ""))
    ax.set_xlabel("response length (tokens)" + (f"; 'pick the longer' accuracy {longer:.2f}" if longer is not None else ""))
    ax.set_ylabel("reward")
    return _save(fig, path)


def calibration_curve(bins: Sequence[dict], ece: float, path: str) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    ax.plot([0.5, 1.0], [0.5, 1.0], color="#999", linestyle="--", label="perfectly calibrated")
    if bins:
        conf = [b["confidence"] for b in bins]
        acc = [b["accuracy"] for b in bins]
        sizes = [20 + 200 * b["count"] / max(x["count"] for x in bins) for b in bins]
        ax.plot(conf, acc, color=CHOSEN, marker="o")
        ax.scatter(conf, acc, s=sizes, color=CHOSEN, alpha=0.5)
    ax.set_xlim(0.48, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("confidence max(p, 1-p), p = σ(r_chosen − r_rejected)", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Calibration (ECE {ece:.3f})")
    ax.legend(frameon=False, loc="lower right")
    return _save(fig, path)


def training_curves(metrics_jsonl: str, path: str) -> str | None:
    """Train loss/accuracy per logging step and eval points from a run's ``metrics.jsonl``."""
    train, evals = [], []
    with open(metrics_jsonl) as f:
        for line in f:
            row = json.loads(line)
            if "event" in row:  # resume / summary markers
                continue
            if "eval_accuracy" in row:
                evals.append(row)
            elif "loss" in row:
                train.append(row)
    if not train and not evals:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], color="#264653", label="train")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], color=REJECTED, marker="o", label="eval")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend(frameon=False)
    if train and "accuracy" in train[0]:
        right.plot([r["step"] for r in train], [r["accuracy"] for r in train], color="#264653", label="train")
    if evals:
        right.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], color=REJECTED, marker="o",
                   label="eval")
    right.set_xlabel("step")
    right.set_ylabel("accuracy")
    right.set_ylim(-0.02, 1.02)
    right.legend(frameon=False)
    fig.suptitle("Training curves")
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
