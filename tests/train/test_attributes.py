"""Per-attribute reward heads (HelpSteer2 style): ratings per attribute are read and checked per row,
the model has one output per attribute, training adds their regression to the ranking loss on the one
reward (the weighted sum), and the saved model scores every attribute as plain transformers does."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from rmray.core.formats import BadRow, read_attribute_ratings, read_group
from rmray.core.loss import group_loss
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.spec import ScoringSpec
from rmray.core.tokenizer import load_tokenizer
from rmray.train.batches import Layout, to_chunks
from rmray.train.compute import Compute
from rmray.train.parallel import DDPStrategy

ATTRIBUTES = ["helpfulness", "verbosity"]
WEIGHTS = [0.75, -0.25]
ROW = {"prompt": "Q: 2+2?\nA:", "responses": [" 4", " 5", " four, of course"],
       "ratings": {"helpfulness": [4, 0, 3], "verbosity": [0, 0, 4], "unused": [1, 1, 1]}}


def test_ratings_per_attribute_are_read_weighted_and_checked():
    weights = dict(zip(ATTRIBUTES, WEIGHTS))
    assert read_attribute_ratings(ROW, ATTRIBUTES, 3) == [[4.0, 0.0], [0.0, 0.0], [3.0, 4.0]]
    ratings = read_group(ROW, weights).ratings
    assert ratings == [3.0, 0.0, 1.25]  # 0.75 * helpfulness - 0.25 * verbosity
    assert read_attribute_ratings({"responses": ["a", "b"], "ratings": [1, 0]}, ATTRIBUTES, 2) is None
    cases = [
        ({**ROW, "ratings": {"helpfulness": [4, 0, 3]}}, weights, "ratings.verbosity"),  # an attribute missing
        ({**ROW, "ratings": {"helpfulness": [4, 0], "verbosity": [0, 0, 4]}}, weights, "ratings.helpfulness"),
        ({**ROW, "ratings": {"helpfulness": [4, "x", 3], "verbosity": [0, 0, 4]}}, weights, "ratings.helpfulness"),
        (ROW, None, "ratings"),  # per-attribute data, but the run names no attributes
    ]
    for row, w, field in cases:
        with pytest.raises(BadRow) as e:
            read_group(row, w)
        assert e.value.reason == "bad_rating" and e.value.field == field


def _attribute_model(tiny_qwen):
    torch.manual_seed(0)
    hf = load_hf_model(tiny_qwen, pad_token_id=load_tokenizer(tiny_qwen).pad_token_id, attributes=ATTRIBUTES)
    assert hf.config.num_labels == 2 and hf.config.id2label == {0: "helpfulness", 1: "verbosity"}
    return RewardModel(hf, attribute_weights=WEIGHTS).train()


def test_the_loss_is_the_ranking_loss_on_the_weighted_reward_plus_the_attribute_regression(tiny_qwen):
    tok = load_tokenizer(tiny_qwen)
    model = _attribute_model(tiny_qwen)
    seqs = [tok(ROW["prompt"] + r + tok.eos_token)["input_ids"] for r in ROW["responses"]]
    targets = [[4.0, 0.0], [0.0, 0.0], [3.0, 4.0]]
    batch = {"row_id": ["g", "p"], "group_ids": [seqs, []], "ratings": [[3.0, 0.0, 1.25], []],
             "attribute_ratings": [targets, []], "chosen_ids": [[], seqs[0]], "rejected_ids": [[], seqs[1]],
             "margin": [0.0, 0.0]}
    compute = Compute(model, model, DDPStrategy(), torch.device("cpu"), False, group_loss("bradley_terry"),
                      attribute_loss_weight=0.5)
    chunk = to_chunks(batch, Layout("shared", causal=True, pad_token_id=tok.pad_token_id, segments=model.segments_ok))[0]
    better, worse, loss = compute.score_chunk(chunk)

    # The same numbers from transformers itself: one forward per sequence, its two logits.
    with torch.no_grad():
        logits = [model.hf_model(input_ids=torch.tensor([s])).logits[0] for s in seqs]
    reward = [float(x @ torch.tensor(WEIGHTS)) for x in logits]
    pairs = [(0, 1), (0, 2), (2, 1), (0, 1)]  # the group's 3 pairs (3 > 1.25 > 0), then the pair row
    assert better.tolist() == pytest.approx([reward[i] for i, _ in pairs], abs=1e-5)
    assert worse.tolist() == pytest.approx([reward[j] for _, j in pairs], abs=1e-5)
    ranking = sum(-F.logsigmoid(torch.tensor(reward[i] - reward[j])) for i, j in pairs) / 4
    mse = sum(float((logits[k][a] - targets[k][a]) ** 2) for k in range(3) for a in range(2)) / 6  # the pair row has no ratings
    assert float(loss.detach()) == pytest.approx(float(ranking) + 0.5 * mse, rel=1e-5)
    loss.backward()
    assert model.hf_model.score.weight.grad.abs().sum() > 0


def test_a_saved_attribute_model_scores_every_attribute_as_transformers_does(tiny_qwen, tmp_path):
    from rmray.core.export import save_reward_model
    from rmray.core.scoring import Scorer

    tok = load_tokenizer(tiny_qwen)
    model = _attribute_model(tiny_qwen)
    spec = ScoringSpec(max_length=64, eos_token=tok.eos_token, pad_token=tok.pad_token,
                       attributes=ATTRIBUTES, attribute_weights=WEIGHTS)
    save_reward_model(model, tok, spec, str(tmp_path / "m"))
    saved = json.load(open(tmp_path / "m" / "rmray_scoring.json"))
    assert saved["attributes"] == ATTRIBUTES and saved["attribute_weights"] == WEIGHTS

    scorer = Scorer.load(str(tmp_path / "m"))
    seqs = [scorer.encode(ROW["prompt"], r) for r in ROW["responses"]]
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        want = [plain(input_ids=torch.tensor([s])).logits[0].tolist() for s in seqs]
    per_attribute = scorer.score_ids(seqs, per_attribute=True)
    rewards = scorer.score_ids(seqs)
    for got, outputs, reward in zip(per_attribute, want, rewards):
        assert got[1:] == pytest.approx(outputs, abs=1e-5)
        assert got[0] == pytest.approx(WEIGHTS[0] * outputs[0] + WEIGHTS[1] * outputs[1], abs=1e-5)
        assert reward == pytest.approx(got[0], abs=1e-6)
    grouped = scorer.score_id_groups([seqs], per_attribute=True)[0]
    for got, outputs in zip(grouped, want):  # one shared-prompt forward: the same outputs
        assert got[1:] == pytest.approx(outputs, abs=1e-5)
    with pytest.raises(ValueError, match="attribute_weights"):
        ScoringSpec(attributes=ATTRIBUTES)


def test_offline_scoring_and_eval_read_out_every_attribute(tiny_qwen, tmp_path):
    """``rmray score``'s and ``rmray eval``'s batch workers (run here without Ray): a column per attribute,
    and each rated row's attribute scores beside its ratings."""
    import pyarrow as pa

    from rmray.score.batch import PairScorer, ResponseScorer
    from rmray.score.settings import EvalConfig, ScoreConfig
    from rmray.testing import as_rmray_model

    path = as_rmray_model(tiny_qwen, str(tmp_path / "m"), max_length=64, attributes=ATTRIBUTES,
                          attribute_weights=WEIGHTS)
    rows = pa.table({"prompt": [ROW["prompt"]] * 3, "response": ROW["responses"]})
    out = ResponseScorer(ScoreConfig(model_dirs=[path], input="rows", output="out", max_batch_tokens=4096), ["m"])(rows)
    want = [[float(x) for x in o] for o in _plain_outputs(path, [ROW["prompt"] + r for r in ROW["responses"]])]
    assert out.column("reward_helpfulness").to_pylist() == pytest.approx([o[0] for o in want], abs=1e-5)
    assert out.column("reward_verbosity").to_pylist() == pytest.approx([o[1] for o in want], abs=1e-5)
    assert out.column("reward").to_pylist() == pytest.approx([0.75 * h - 0.25 * v for h, v in want], abs=1e-5)

    scored = PairScorer(EvalConfig(model_dir=path, data="rows", max_batch_tokens=4096))(pa.Table.from_pylist([ROW]))
    assert scored.column("attribute_ratings").to_pylist() == [[[4.0, 0.0], [0.0, 0.0], [3.0, 4.0]]]
    assert scored.column("group_ratings").to_pylist() == [[3.0, 0.0, 1.25]]
    (scores,) = scored.column("attribute_scores").to_pylist()
    for got, o in zip(scores, want):
        assert got == pytest.approx(o, abs=1e-5)


def _plain_outputs(path: str, texts: list[str]) -> list[list[float]]:
    from rmray.testing import plain_transformers_scores

    return plain_transformers_scores(path, texts, all_outputs=True)


def test_attribute_metrics_worked_example():
    from rmray.core.evaluation import attribute_metrics

    got = attribute_metrics([([[1.0, 0.0], [2.0, 0.0]], [[2.0, 1.0], [4.0, 1.0]]), ([[3.0, 5.0]], [[7.0, 1.0]])],
                            ["a", "b"])
    assert got["a"]["pearson"] == pytest.approx(0.993399, abs=1e-6) and got["a"]["spearman"] == 1.0
    assert got["a"]["mse"] == pytest.approx(7.0) and got["a"]["responses"] == 3
    assert got["b"]["mse"] == pytest.approx((1 + 1 + 16) / 3)


def test_score_text_prints_each_attribute_beside_the_reward(tiny_qwen, tmp_path, capsys):
    from rmray.cli import main
    from rmray.testing import as_rmray_model

    path = as_rmray_model(tiny_qwen, str(tmp_path / "m"), max_length=64, attributes=ATTRIBUTES,
                          attribute_weights=WEIGHTS)
    assert main(["score-text", path, "--prompt", ROW["prompt"], "--response", ROW["responses"][2]]) == 0
    h, v = _plain_outputs(path, [ROW["prompt"] + ROW["responses"][2]])[0]
    line = capsys.readouterr().out.strip().splitlines()[-1].strip()
    assert line.startswith(f"{0.75 * h - 0.25 * v:+.3f} (helpfulness {h:+.3f}, verbosity {v:+.3f})"), line
