"""Bradley-Terry loss (pairs and groups), Plackett-Luce, and the preference metrics every consumer logs.

Loss, per pair i with rewards c_i (chosen), r_i (rejected) and margin m_i (0 when absent)::

    loss = mean_i[ -log sigmoid(c_i - r_i - m_i) ]  +  coef * mean_i[ (c_i + r_i)^2 ]

The second term is TRL's ``center_rewards_coefficient`` (arXiv 2312.09244, Eq. 2): it keeps rewards
near zero without changing their order. Worked example: c=2, r=0, m=0 gives -log sigmoid(2) = 0.126928.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss


# --- Losses over groups: one prompt, K responses, rewards as a [G, K] tensor -----------------------
#
# A pair is the K = 2 group whose ratings are [1, 0]; the group losses below reproduce
# ``bradley_terry_loss`` exactly there (tested), so pairs and groups are one code path.
#
# Worked example (Plackett-Luce), rewards [2, 1, 0] ranked in that order:
#     -(2 - log(e^2 + e^1 + e^0)) - (1 - log(e^1 + e^0)) = 0.407606 + 0.313262 = 0.720868
# Bradley-Terry over the group's ordered pairs, same rewards and ratings [2, 1, 0]:
#     mean(-log sigmoid(2-1), -log sigmoid(2-0), -log sigmoid(1-0)) = mean(0.313262, 0.126928, 0.313262) = 0.251151


def pair_groups(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> dict:
    """Pairs as [G, 2] groups -- ``rewards``, ``ratings`` [1, 0] and the pair's margin where the group
    losses read it (``margins[g, 0, 1]``) -- as keyword arguments of any group loss."""
    rewards = torch.stack([chosen, rejected], dim=1)
    ratings = torch.tensor([1.0, 0.0], device=rewards.device).expand_as(rewards)
    margins = None
    if margin is not None:
        margins = torch.zeros(rewards.shape[0], 2, 2, dtype=rewards.dtype, device=rewards.device)
        margins[:, 0, 1] = margin.to(rewards.dtype)
    return {"rewards": rewards, "ratings": ratings, "margins": margins}


def bradley_terry_group(rewards: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor | None = None,
                        margins: torch.Tensor | None = None, center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(r_i - r_j - margins[g, i, j]) over every ordered pair of a group whose
    ratings differ (i rated higher), both responses present in ``mask``. Ties make no pair.

    The centering term generalizes TRL's ``(c + r)^2``: ``coef * mean_g (2 * mean_k r_gk)^2``."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    better = better_pairs(ratings, mask)
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    if margins is not None:
        diff = diff - margins.to(diff.dtype)
    loss = -F.logsigmoid(diff[better]).mean()
    if center_rewards_coefficient:
        means = (rewards * mask).sum(1) / mask.sum(1).clamp_min(1)
        loss = loss + center_rewards_coefficient * torch.mean((2 * means) ** 2)
    return loss


def plackett_luce(rewards: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor | None = None,
                  margins: torch.Tensor | None = None, center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Listwise: minus the log-probability of the ranking by ``ratings`` (best first) under
    P(first) = softmax over the responses not yet placed. Mean over groups; ties keep their order in
    the group. K = 2 is -log sigmoid(c - r), Bradley-Terry's pair loss. ``margins`` are not used."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    order = torch.sort(ratings.masked_fill(~mask, float("-inf")), dim=1, descending=True, stable=True).indices
    ranked = rewards.gather(1, order).masked_fill(~mask.gather(1, order), float("-inf"))
    # log sum_{j >= i} exp(r_j): a reversed cumulative logsumexp
    tails = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)
    placed = mask.gather(1, order).clone()
    placed[torch.arange(len(placed)), mask.sum(1) - 1] = False  # the last one left is chosen with probability 1
    loss = -(ranked - tails)[placed].sum() / rewards.shape[0]
    if center_rewards_coefficient:
        means = (rewards * mask).sum(1) / mask.sum(1).clamp_min(1)
        loss = loss + center_rewards_coefficient * torch.mean((2 * means) ** 2)
    return loss


GROUP_LOSSES = {"bradley_terry": bradley_terry_group, "plackett_luce": plackett_luce}
# What each loss is a mean over: a micro-batch cut into chunks weights each chunk's loss by its share
# of these, so the summed gradient is the whole micro-batch's (groups of different K count rightly).
LOSS_MEAN_OVER = {"bradley_terry": "pairs", "plackett_luce": "groups"}
# How the model card and reports name each loss.
LOSS_TITLES = {"bradley_terry": "Bradley-Terry", "plackett_luce": "Plackett-Luce"}


def attribute_mse(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of per-attribute outputs ``[G, K, A]`` against the rows' ratings, over the
    entries rated (NaN = not rated: a pair row, or a group position past its K). SteerLM / HelpSteer2's
    regression objective. Worked example: outputs [[1, 2]] and ratings [[3, NaN]] give (1 - 3)^2 = 4."""
    rated = ~torch.isnan(targets)
    if not bool(rated.any()):
        return predicted.sum() * 0.0  # keeps the graph (DDP expects every output used)
    return ((predicted[rated] - targets[rated].to(predicted.dtype)) ** 2).mean()


def length_correlation(rewards: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the rewards with the responses' lengths over a batch's present responses
    (``[G, K]`` each), times the rewards' standard deviation held constant: the term ``debias_length``
    penalizes as its absolute value.

    The correlation is what ODIN decorrelates its reward head from (Chen et al. 2024, "ODIN: Disentangled
    Reward Mitigates Hacking in RLHF", arXiv 2402.07319). Alone it is scale-free, so its gradient grows as
    1 / std(r): at the start of training, rewards about 0.01 apart, it was 200 times the Bradley-Terry
    gradient (grad norm 20 against 0.1, MiniLM on hh-rlhf) and, clipped, left the preferences unlearned.
    Times std(r) held constant it is measured in reward units -- it weighs like the preference loss at every
    scale -- and its gradient stays the correlation's: it turns the rewards away from length without
    shrinking them (a covariance penalty would also pay for smaller rewards, and flattened them). Zero where
    undefined (fewer than two responses, or all of one length).

    Worked example: rewards [1, 2, 3] at lengths [10, 20, 60]: centred [-1, 0, 1] and [-20, -10, 30],
    Pearson 50 / sqrt(2 * 1400) = 0.9449, times std sqrt(2 / 3) = 0.7715."""
    r, n = rewards[mask].float(), lengths.to(rewards.device)[mask].float()
    if r.numel() < 2:
        return rewards.sum() * 0.0
    r, n = r - r.mean(), n - n.mean()
    # Clamped inside the roots: sqrt's slope is infinite at 0, and 0 * inf would be a NaN gradient.
    pearson = (r * n).sum() / torch.sqrt(((r * r).sum() * (n * n).sum()).clamp_min(1e-24))
    return pearson * torch.sqrt((r * r).mean()).detach()


def count_pairs(ratings) -> int:
    """Ordered pairs of one group whose ratings differ (a pair rated [1, 0]: 1)."""
    return sum(a > b for a in ratings for b in ratings)


def better_pairs(ratings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[G, K, K]`` bool: response i is rated above response j, both present."""
    return (ratings.unsqueeze(2) > ratings.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)


def ordered_pairs(rewards: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards of every ordered pair of a group whose ratings differ, as (better, worse) vectors --
    group by group, then by the better response's place -- for the pair metrics. A ``[G, 2]`` group
    rated ``[1, 0]`` gives back its two columns."""
    g, i, j = better_pairs(ratings, mask.bool()).nonzero(as_tuple=True)
    return rewards[g, i], rewards[g, j]


def group_loss(name: str):
    """The loss a ``loss`` config key names."""
    if name not in GROUP_LOSSES:
        raise ValueError(f"loss={name!r} is not one of {sorted(GROUP_LOSSES)}")
    return GROUP_LOSSES[name]


# Order of the sufficient statistics in a sums vector; sums add across batches and ranks, so the
# metrics are exact whatever the batch split (one all_reduce, then metrics_from_sums).
SUM_FIELDS = ("pairs", "correct", "margin", "chosen", "chosen_sq", "rejected", "rejected_sq", "loss")


def preference_sums(chosen: torch.Tensor, rejected: torch.Tensor, loss_sum: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Sufficient statistics of one batch as a float64 vector in :data:`SUM_FIELDS` order."""
    c, r = chosen.detach().double(), rejected.detach().double()
    return torch.stack([  # on the rewards' device: summing on a GPU needs no sync per batch
        torch.tensor(float(c.numel()), dtype=torch.float64, device=c.device),
        (c > r).double().sum(),
        (c - r).sum(),
        c.sum(), (c * c).sum(),
        r.sum(), (r * r).sum(),
        torch.as_tensor(loss_sum, dtype=torch.float64, device=c.device).detach().reshape(()),
    ])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Accuracy (strict c > r, as TRL), mean margin, chosen/rejected reward mean and std, mean loss."""
    s = dict(zip(SUM_FIELDS, sums.double().tolist()))
    n = max(s["pairs"], 1.0)

    def std(total: float, total_sq: float) -> float:
        return max(total_sq / n - (total / n) ** 2, 0.0) ** 0.5

    return {
        "loss": s["loss"] / n,
        "accuracy": s["correct"] / n,
        "margin": s["margin"] / n,
        "chosen_reward_mean": s["chosen"] / n,
        "chosen_reward_std": std(s["chosen"], s["chosen_sq"]),
        "rejected_reward_mean": s["rejected"] / n,
        "rejected_reward_std": std(s["rejected"], s["rejected_sq"]),
        "reward_mean": (s["chosen"] + s["rejected"]) / (2 * n),
        "reward_std": max((s["chosen_sq"] + s["rejected_sq"]) / (2 * n) - ((s["chosen"] + s["rejected"]) / (2 * n)) ** 2, 0.0) ** 0.5,
        "pairs": s["pairs"],
    }
