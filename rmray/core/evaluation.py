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


def ranking_metrics(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """Metrics of rated groups, each ``(rewards, ratings)`` for one prompt's responses:

    - ``pair_accuracy``: over every pair of a group with different ratings, the fraction whose rewards
      are ordered the same way (strictly, as pair accuracy);
    - ``kendall_tau`` and ``spearman``: the mean over groups of the rank correlations between rewards
      and ratings (tau-b and Spearman with average ranks, so ties count as ties; a group whose rewards
      or ratings are all equal is left out);
    - ``top1_accuracy``: the fraction of groups whose highest reward (one response, not a tie) goes to a
      response rated highest.

    Worked example: rewards [3, 1, 2] for ratings [2, 0, 1] order every pair right (tau 1, top-1 right);
    rewards [1, 3, 2] for the same ratings get 0 of 3 pairs right, tau -1, top-1 wrong. With a tie,
    rewards [1, 2, 2, 5] for ratings [1, 1, 2, 3]: 4 of the 5 rated pairs right (2 vs 2 is not), tau-b
    4 / sqrt(5 * 5) = 0.8, Spearman 3.75 / 4.5 = 0.8333."""
    right = pairs = top1 = 0
    taus, rhos = [], []
    for rewards, ratings in groups:
        for i in range(len(ratings)):
            for j in range(len(ratings)):
                if ratings[i] > ratings[j]:
                    pairs += 1
                    right += rewards[i] > rewards[j]
        tops = [k for k in range(len(rewards)) if rewards[k] == max(rewards)]
        top1 += len(tops) == 1 and ratings[tops[0]] == max(ratings)
        tau, rho = _kendall_tau_b(rewards, ratings), spearman(rewards, ratings)
        if tau is not None:
            taus.append(tau)
            rhos.append(rho)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"groups": len(groups), "group_pairs": pairs, "pair_accuracy": right / pairs if pairs else float("nan"),
            "kendall_tau": mean(taus), "spearman": mean(rhos),
            "top1_accuracy": top1 / len(groups) if groups else float("nan")}


def _kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else None


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation (ties share their average rank); NaN when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    var = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return cov / var if var else float("nan")


def attribute_metrics(rows: Sequence[tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]],
                      names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per attribute, over every rated response (each row ``(scores, ratings)``, both ``[K][A]``): the
    Pearson and Spearman correlations of the model's attribute score with the rating, and the mean
    squared error (the training objective). Worked example: scores [1, 2, 3] for ratings [2, 4, 7]
    give Pearson 0.9934, Spearman 1.0, MSE (1 + 4 + 16) / 3 = 7.0."""
    out = {}
    for a, name in enumerate(names):
        scores = [s[a] for row_scores, _ in rows for s in row_scores]
        ratings = [r[a] for _, row_ratings in rows for r in row_ratings]
        if not scores:
            continue
        out[name] = {"responses": len(scores), "pearson": _pearson(scores, ratings), "spearman": spearman(scores, ratings),
                     "mse": sum((s - r) ** 2 for s, r in zip(scores, ratings)) / len(scores)}
    return out


def length_bias(pairs: Sequence[tuple[float, float, int, int]], responses: Sequence[tuple[float, int]]) -> dict:
    """Does the model reward length? ``pairs`` are (chosen reward, rejected reward, chosen length, rejected
    length); ``responses`` every scored response once as (reward, length in tokens).

    - ``spearman_reward_length``: rank correlation of reward with length over ``responses``;
    - ``longer_wins_accuracy``: the accuracy of "pick the longer response" on the same pairs (equal lengths
      count 1/2) -- the heuristic a reward model must beat to have learned more than length;
    - ``accuracy_when_chosen_longer`` / ``_shorter``: the model's accuracy on the pairs whose chosen response
      is longer / shorter (None without such pairs). A large gap means length, not content, decides.

    Worked example: pairs (2, 1, 10, 5), (0, 1, 3, 8), (1, 0, 4, 4): the longer response is chosen in the
    first, rejected in the second, a tie in the third, so longer-wins = (1 + 0 + 0.5) / 3 = 0.5; the model
    is right on the first (chosen longer: 1/1) and wrong on the second (chosen shorter: 0/1).
    """
    longer = [1.0 if lc > lr else 0.0 if lc < lr else 0.5 for _, _, lc, lr in pairs]
    when_longer = [rc > rr for rc, rr, lc, lr in pairs if lc > lr]
    when_shorter = [rc > rr for rc, rr, lc, lr in pairs if lc < lr]
    rewards, lengths = [r for r, _ in responses], [n for _, n in responses]
    return {
        "spearman_reward_length": _finite(spearman(rewards, lengths)) if len(responses) > 1 else None,
        "longer_wins_accuracy": sum(longer) / len(longer) if longer else None,
        "accuracy_when_chosen_longer": sum(when_longer) / len(when_longer) if when_longer else None,
        "accuracy_when_chosen_shorter": sum(when_shorter) / len(when_shorter) if when_shorter else None,
        "pairs_chosen_longer": len(when_longer), "pairs_chosen_shorter": len(when_shorter),
        "mean_length_chosen": sum(lc for *_, lc, _ in pairs) / len(pairs) if pairs else None,
        "mean_length_rejected": sum(lr for *_, lr in pairs) / len(pairs) if pairs else None,
    }


def _finite(x: float) -> float | None:
    """None for NaN (a constant column has no rank correlation; JSON has no NaN)."""
    return None if math.isnan(x) else x


def ensemble(per_model: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Per item: mean over models and their disagreement (population std)."""
    means, stds = [], []
    for column in zip(*per_model):
        mean = sum(column) / len(column)
        means.append(mean)
        stds.append((sum((x - mean) ** 2 for x in column) / len(column)) ** 0.5)
    return means, stds
