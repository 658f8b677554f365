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


def test_length_bias_on_hand_worked_pairs():
    """The docstring's example, and Spearman worked by hand: rewards 2, 1, 0, 1, 1, 0 at lengths
    10, 5, 3, 8, 4, 4. Reward ranks 6, 4, 1.5, 4, 4, 1.5; length ranks 6, 4, 1, 5, 2.5, 2.5. Deviations
    from the mean rank 3.5: rewards (2.5, .5, -2, .5, .5, -2), lengths (2.5, .5, -2.5, 1.5, -1, -1); their
    products sum to 6.25 + .25 + 5 + .75 - .5 + 2 = 13.75; the squares sum to 15 and 17, so
    rho = 13.75 / sqrt(15 * 17) = 0.8611."""
    from rmray.core.evaluation import length_bias

    pairs = [(2, 1, 10, 5), (0, 1, 3, 8), (1, 0, 4, 4)]
    responses = [(2, 10), (1, 5), (0, 3), (1, 8), (1, 4), (0, 4)]
    bias = length_bias(pairs, responses)
    assert bias["longer_wins_accuracy"] == 0.5
    assert bias["accuracy_when_chosen_longer"] == 1.0 and bias["accuracy_when_chosen_shorter"] == 0.0
    assert (bias["pairs_chosen_longer"], bias["pairs_chosen_shorter"]) == (1, 1)
    assert bias["spearman_reward_length"] == pytest.approx(13.75 / math.sqrt(15 * 17), abs=1e-12)
    assert bias["mean_length_chosen"] == pytest.approx(17 / 3) and bias["mean_length_rejected"] == pytest.approx(17 / 3)
    flat = length_bias([(1, 0, 3, 3)], [(1, 3), (0, 3)])  # one length: no correlation, no longer side
    assert flat["spearman_reward_length"] is None and flat["longer_wins_accuracy"] == 0.5
    assert flat["accuracy_when_chosen_longer"] is None


def test_eval_rows_carry_their_responses_lengths_in_tokens(rm_qwen):
    """``rmray eval``'s batch worker (no Ray): each response's length is its text tokenized alone; a rated
    row's pairs are its pairs of different ratings, the better one as chosen."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from rmray.score.batch import PairScorer
    from rmray.score.evaluate import _lengths
    from rmray.score.settings import EvalConfig

    tokenizer = AutoTokenizer.from_pretrained(rm_qwen)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    rows = [{"prompt": "Q: why?", "chosen": " Because the sky scatters blue light more.", "rejected": " No.",
             "responses": None, "ratings": None},
            {"prompt": "Q: name a fruit", "chosen": None, "rejected": None,
             "responses": [" apple", " a red apple from the tree", " ok"], "ratings": [2.0, 1.0, 0.0]}]
    out = PairScorer(EvalConfig(model_dir=rm_qwen, data="rows"))(pa.Table.from_pylist(rows))
    assert out.column("score_error").to_pylist() == [None, None]
    lengths = out.column("lengths").to_pylist()
    assert lengths == [[count(rows[0]["chosen"]), count(rows[0]["rejected"])],
                       [count(" apple"), count(" a red apple from the tree"), count(" ok")]]
    pairs, responses = _lengths([out])
    assert len(pairs) == 1 + 3 and len(responses) == 2 + 3
    g = out.column("group_rewards").to_pylist()[1]
    assert pairs[1:] == [(g[0], g[1], lengths[1][0], lengths[1][1]), (g[0], g[2], lengths[1][0], lengths[1][2]),
                         (g[1], g[2], lengths[1][1], lengths[1][2])]
