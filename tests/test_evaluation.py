"""Evaluation metrics and best-of-n selection rules on constructed cases with known answers (no Ray)."""

import math

import pytest

from rmray.core.evaluation import calibration, preference_metrics, sigmoid
from rmray.score.select import Selection, select_rows


def logit(p):
    return math.log(p / (1 - p))


def test_ece_on_a_constructed_case():
    # Bin [0.85, 0.9): 4 pairs at p = 0.875 (3 right, one wrong: p = 0.125 -> confidence 0.875, predicts rejected).
    # Bin [0.5, 0.55): 2 pairs at p = 0.52, both right.
    probs = [0.875, 0.875, 0.875, 0.125, 0.52, 0.52]
    ece, bins = calibration(probs, n_bins=10)
    # |0.875 - 0.75| * 4/6 + |0.52 - 1.0| * 2/6 = 0.08333 + 0.16
    assert ece == pytest.approx(0.125 * 4 / 6 + 0.48 * 2 / 6, abs=1e-9)
    assert [b.count for b in bins] == [2, 4]
    assert bins[1].accuracy == pytest.approx(0.75) and bins[1].confidence == pytest.approx(0.875)
    # Perfectly calibrated: within one bin, accuracy equals confidence.
    ece, _ = calibration([0.9] * 9 + [0.1], n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-9)


def test_preference_metrics_from_rewards():
    chosen = [logit(0.875), 2.0, 0.0, 1.0]
    rejected = [0.0, 1.0, 0.5, 1.0]  # the last is a tie: wrong, as in TRL
    m = preference_metrics(chosen, rejected, subsets=["a", "a", "b", "b"])
    assert m["accuracy"] == 0.5
    assert m["mean_margin"] == pytest.approx((logit(0.875) + 1 - 0.5 + 0) / 4)
    assert m["subsets"] == {"a": {"pairs": 2, "accuracy": 1.0, "mean_margin": pytest.approx((logit(0.875) + 1) / 2)},
                            "b": {"pairs": 2, "accuracy": 0.0, "mean_margin": -0.25}}
    assert sigmoid(-800) == pytest.approx(0.0) and sigmoid(800) == pytest.approx(1.0)  # no overflow


def test_top_k_per_prompt_breaks_ties_deterministically():
    rows = [{"prompt": "p", "response": r, "reward": w, "id": i}
            for i, (r, w) in enumerate([("b", 1.0), ("a", 1.0), ("c", 2.0), ("d", None), ("e", 0.5)])]
    best = select_rows(rows, Selection(top_k=2))
    assert [r["response"] for r in best] == ["c", "a"]  # the 1.0 tie goes to the smaller response
    assert select_rows(list(reversed(rows)), Selection(top_k=2)) == best
    assert [r["response"] for r in select_rows(rows, Selection(threshold=1.0))] == \
        ["c", "a", "b"]
    assert select_rows(rows, Selection(top_k=1, threshold=5.0)) == []


def test_ranking_metrics_on_hand_worked_groups():
    from rmray.core.evaluation import ranking_metrics

    assert ranking_metrics([([3, 1, 2], [2, 0, 1])]) == {"groups": 1, "group_pairs": 3, "pair_accuracy": 1.0,
                                                           "kendall_tau": 1.0, "spearman": 1.0, "top1_accuracy": 1.0}
    worst = ranking_metrics([([1, 3, 2], [2, 0, 1])])
    assert (worst["pair_accuracy"], worst["kendall_tau"], worst["spearman"], worst["top1_accuracy"]) == (0, -1, -1, 0)
    tied = ranking_metrics([([1, 2, 2, 5], [1, 1, 2, 3])])
    assert tied["group_pairs"] == 5 and tied["pair_accuracy"] == pytest.approx(4 / 5)
    assert tied["kendall_tau"] == pytest.approx(0.8) and tied["spearman"] == pytest.approx(3.75 / 4.5)
    both = ranking_metrics([([3, 1, 2], [2, 0, 1]), ([1, 3, 2], [2, 0, 1]), ([1, 1], [1, 0])])
    assert both["groups"] == 3 and both["pair_accuracy"] == pytest.approx(3 / 7)  # the flat group: no pair right
    assert both["kendall_tau"] == pytest.approx(0.0)  # (1 + -1) / 2: the flat group has no defined tau
    assert both["top1_accuracy"] == pytest.approx(1 / 3)  # a tie for the highest reward is not a top-1 hit
