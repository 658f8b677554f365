"""Preference-evaluation metrics from per-pair rewards: accuracy (overall and per subset), margin, and
the expected calibration error of the Bradley-Terry probability sigma(r_chosen - r_rejected).

Calibration follows the usual classification definition (Guo et al., 2017): the model "predicts"
chosen when p > 0.5, with confidence max(p, 1 - p); ECE is the bin-weighted gap between confidence and
accuracy over equal-width confidence bins. A reward model with ECE near 0 gives probabilities one can
use as soft labels or for best-of-n with a threshold.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@dataclass
class CalibrationBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence in the bin
    accuracy: float  # fraction correct in the bin


def calibration(probs: Sequence[float], n_bins: int = 10) -> tuple[float, list[CalibrationBin]]:
    """(ECE, bins) for probabilities that chosen beats rejected (the truth is always "chosen")."""
    if not probs:
        return float("nan"), []
    lo = 0.5  # confidence max(p, 1-p) lies in [0.5, 1]
    width = (1.0 - lo) / n_bins
    sums = [[0, 0.0, 0] for _ in range(n_bins)]  # count, confidence sum, correct
    for p in probs:
        conf = max(p, 1 - p)
        k = min(int((conf - lo) / width), n_bins - 1)
        sums[k][0] += 1
        sums[k][1] += conf
        sums[k][2] += p > 0.5
    bins, ece, n = [], 0.0, len(probs)
    for k, (count, conf_sum, correct) in enumerate(sums):
        if count:
            conf, acc = conf_sum / count, correct / count
            ece += count / n * abs(conf - acc)
            bins.append(CalibrationBin(lo + k * width, lo + (k + 1) * width, count, conf, acc))
    return ece, bins


def preference_metrics(chosen: Sequence[float], rejected: Sequence[float], subsets: Sequence[str] | None = None,
                       n_bins: int = 10, temperature: float | None = None) -> dict:
    """Accuracy is strict (r_chosen > r_rejected), as TRL's; ties count as wrong. With a ``temperature``
    (the model's fitted one), ``calibrated_ece`` and its bins are those of sigmoid(margin / temperature)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen rewards but {len(rejected)} rejected")
    n = len(chosen)
    margins = [c - r for c, r in zip(chosen, rejected)]
    probs = [sigmoid(m) for m in margins]
    ece, bins = calibration(probs, n_bins)
    out = {
        "pairs": n,
        "accuracy": sum(m > 0 for m in margins) / n if n else float("nan"),
        "mean_margin": sum(margins) / n if n else float("nan"),
        "chosen_reward_mean": sum(chosen) / n if n else float("nan"),
        "rejected_reward_mean": sum(rejected) / n if n else float("nan"),
        "ece": ece,
        "calibration_bins": [b.__dict__ for b in bins],
    }
    if temperature:
        calibrated_ece, calibrated_bins = calibration([sigmoid(m / temperature) for m in margins], n_bins)
        out.update(temperature=temperature, calibrated_ece=calibrated_ece,
                   calibrated_bins=[b.__dict__ for b in calibrated_bins])
    if subsets is not None:
        groups: dict[str, list[float]] = defaultdict(list)
        for s, m in zip(subsets, margins):
            groups[str(s)].append(m)
        out["subsets"] = {s: {"pairs": len(ms), "accuracy": sum(m > 0 for m in ms) / len(ms),
                              "mean_margin": sum(ms) / len(ms)} for s, ms in sorted(groups.items())}
    return out
