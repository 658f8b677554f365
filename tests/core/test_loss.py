
import pytest
import torch

from rmray.core.collate import collate_pairs
from rmray.core.loss import bradley_terry_loss, metrics_from_sums, preference_sums


def test_bt_loss_hand_computed():
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928; -log sigmoid(-1) = log(1 + e) = 1.313262
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-6)


def test_margin_shifts_the_difference():
    # c - r - m = 2 - 0 - 1 = 1 -> log(1 + e^-1) = 0.313262
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)


def test_center_rewards_coefficient():
    # base 0.126928 + 0.01 * mean((2 + 0)^2) = 0.126928 + 0.04
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), center_rewards_coefficient=0.01)
    assert loss.item() == pytest.approx(0.166928, abs=1e-6)


def test_metrics_from_sums_split_invariant():
    c, r = torch.tensor([1.0, 2.0, -1.0, 0.5]), torch.tensor([0.0, 3.0, -2.0, 0.5])
    whole = metrics_from_sums(preference_sums(c, r))
    parts = metrics_from_sums(preference_sums(c[:1], r[:1]) + preference_sums(c[1:], r[1:]))
    assert whole == pytest.approx(parts)
    assert whole["accuracy"] == 0.5  # 1>0, 2<3, -1>-2, 0.5==0.5 (a tie is not correct, as in TRL)
    assert whole["margin"] == pytest.approx((1 - 1 + 1 + 0) / 4)
    assert whole["chosen_reward_mean"] == pytest.approx(0.625)
    assert whole["chosen_reward_std"] == pytest.approx(c.std(unbiased=False).item())
    assert whole["rejected_reward_std"] == pytest.approx(r.std(unbiased=False).item())
    assert whole["reward_std"] == pytest.approx(torch.cat([c, r]).std(unbiased=False).item())
    assert whole["loss"] == 0.0  # no loss summed in
    # the loss is a sum over the part's pairs, reported as their mean: 2.6 over 4 pairs, and split alike
    summed = metrics_from_sums(preference_sums(c[:1], r[:1], 0.6) + preference_sums(c[1:], r[1:], 2.0))
    assert summed["loss"] == pytest.approx(2.6 / 4)


def test_collate_layout_and_pad_to_multiple():
    batch = {"chosen_ids": [[1, 2, 3], [4, 5]], "rejected_ids": [[6, 7], [8, 9, 10, 11, 12]], "margin": [0.5, 1.0]}
    out = collate_pairs(batch, pad_token_id=0, pad_to_multiple_of=8)
    assert out["input_ids"].tolist() == [
        [1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 0, 0, 0, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 0, 0, 0]]
    assert out["attention_mask"].sum(1).tolist() == [3, 2, 2, 5]
    assert out["margin"].tolist() == [0.5, 1.0] and int(out["num_pairs"]) == 2
    assert collate_pairs({"chosen_ids": [[1]], "rejected_ids": [[2]]}, 0)["margin"].tolist() == [0.0]


def test_length_correlation_is_pearsons_r_times_the_rewards_std_over_the_present_responses():
    import numpy as np
    from scipy.stats import pearsonr

    from rmray.core.loss import length_correlation

    rewards = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 9.0]])
    lengths = torch.tensor([[10.0, 20.0, 0.0], [60.0, 5.0, 99.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])  # the third column is past the groups' end
    present_r, present_n = [1.0, 2.0, 3.0, -1.0], [10.0, 20.0, 60.0, 5.0]
    expected = pearsonr(present_r, present_n).statistic * np.std(present_r)
    assert float(length_correlation(rewards, lengths, mask)) == pytest.approx(expected, abs=1e-6)
    one = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(length_correlation(one, torch.tensor([[10.0, 20.0, 60.0]]), torch.ones(1, 3, dtype=torch.bool))) == \
        pytest.approx(50 / (3 * 1400) ** 0.5, abs=1e-6)  # the docstring's worked example
    assert float(length_correlation(10 * one, torch.tensor([[10.0, 20.0, 60.0]]), torch.ones(1, 3, dtype=torch.bool))) == \
        pytest.approx(10 * 50 / (3 * 1400) ** 0.5, abs=1e-5)  # in reward units: it scales with the rewards
    # ... but its gradient is the correlation's: orthogonal to the centred rewards, so it never shrinks them.
    r = torch.tensor([[0.3, -1.2, 0.8, 2.0]], requires_grad=True)
    length_correlation(r, torch.tensor([[12.0, 40.0, 7.0, 25.0]]), torch.ones(1, 4, dtype=torch.bool)).backward()
    centred = (r - r.mean()).detach()
    assert abs(float((r.grad * centred).sum())) < 1e-6 and float(r.grad.abs().max()) > 1e-3
    same_length = length_correlation(one.requires_grad_(), torch.full((1, 3), 7.0), torch.ones(1, 3, dtype=torch.bool))
    assert float(same_length.detach()) == 0.0 and same_length.requires_grad  # no information: nothing added, graph kept
    same_length.backward()
    assert torch.isfinite(one.grad).all()
    flat = torch.zeros(1, 3, requires_grad=True)  # every reward equal: the model's start, or a collapse
    length_correlation(flat, torch.tensor([[10.0, 20.0, 60.0]]), torch.ones(1, 3, dtype=torch.bool)).backward()
    assert torch.isfinite(flat.grad).all()
