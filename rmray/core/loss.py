"""Bradley-Terry loss and the preference metrics every consumer logs.

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
