"""Losses over [G, K] groups: hand-worked numbers, and pairs as the K = 2 case of the same code."""

import math

import pytest
import torch

from rmray.core.loss import bradley_terry_group, bradley_terry_loss, group_loss, pair_groups, plackett_luce


def nll_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_plackett_luce_against_hand_worked_numbers():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])
    ratings = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 2.0]])  # second group ranked: index 2, 0, 1
    first = -(2 - math.log(math.e**2 + math.e + 1)) - (1 - math.log(math.e + 1))
    second = -(3 - math.log(math.exp(3) + math.exp(0.5) + math.exp(-1))) - (0.5 - math.log(math.exp(0.5) + math.exp(-1)))
    assert first == pytest.approx(0.720868, abs=1e-6)  # the docstring's worked example
    assert plackett_luce(rewards, ratings).item() == pytest.approx((first + second) / 2, abs=1e-6)


def test_plackett_luce_with_a_missing_response_ranks_only_those_present():
    rewards = torch.tensor([[2.0, 1.0, 9.0]])
    ratings = torch.tensor([[2.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, False]])  # a group of 2 padded to K = 3
    assert plackett_luce(rewards, ratings, mask).item() == pytest.approx(nll_sigmoid(1.0), abs=1e-6)


def test_bradley_terry_over_a_group_is_the_mean_over_its_ordered_pairs():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [0.3, 0.3, -0.2]])
    ratings = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # a tie in the second group: no pair there
    pairs = [(2 - 1), (2 - 0), (1 - 0), (0.3 + 0.2), (0.3 + 0.2)]
    expected = sum(nll_sigmoid(d) for d in pairs) / len(pairs)
    assert bradley_terry_group(rewards, ratings).item() == pytest.approx(expected, abs=1e-6)
    assert nll_sigmoid(2.0) == pytest.approx(0.126928, abs=1e-6)


@pytest.mark.parametrize("loss", ["bradley_terry", "plackett_luce"])
@pytest.mark.parametrize("coef", [None, 0.01])
def test_pairs_as_groups_reproduce_the_pair_loss_and_its_gradients(loss, coef):
    torch.manual_seed(0)
    chosen, rejected = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    margin = torch.rand(6) if loss == "bradley_terry" else None  # Plackett-Luce has no margins
    want = bradley_terry_loss(chosen, rejected, margin, coef)
    want_grads = torch.autograd.grad(want, [chosen, rejected])
    got = group_loss(loss)(**pair_groups(chosen, rejected, margin), center_rewards_coefficient=coef)
    got_grads = torch.autograd.grad(got, [chosen, rejected])
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-6)


def test_an_unknown_loss_is_named_with_the_choices():
    with pytest.raises(ValueError, match="'bradley_terry', 'plackett_luce'"):
        group_loss("hinge")
