"""Training on groups: one prompt with K responses runs as one block (the prompt computed once for a
causal LM, packed for an encoder) and must give exactly what K(K-1)/2 separate pair forwards give --
the rewards of every ordered pair, the loss and its gradients."""

import functools

import pytest
import torch
import torch.nn.functional as F

from rmray.core.collate import pad_sequences
from rmray.core.loss import group_loss
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.tokenizer import load_tokenizer
from rmray.train.batches import Layout, batch_groups, choose_layout, padded_equivalent_tokens, to_chunks
from rmray.train.compute import Compute
from rmray.train.parallel import DDPStrategy
from tests.core.test_packing import assert_close_relative as _close_relative


def assert_close_relative(a: torch.Tensor, b: torch.Tensor) -> None:
    """Within 1e-4 relative; a gradient that is analytically zero (the score's bias under a pairwise
    loss, whose two rewards both carry it) within float32 rounding of zero."""
    if b.norm() < 1e-8:
        assert a.norm() < 1e-6
    else:
        _close_relative(a, b, rel=1e-5 if a.dtype == torch.float64 else 1e-4)

PROMPTS = ["Q: what is the capital of France?\nA:", "Q: 2+2?\nA:", "Tell me a story about a cat that"]
RESPONSES = [[" Paris.", " Lyon, I think.", " Paris, the capital and largest city.", " I do not know"],
             [" 4", " 5", " four"],
             [" sat on a mat all day long.", " flew.", " found a fish and ate it.", " ran", " slept"]]
RATINGS = [[3.0, 1.0, 2.0, 0.0], [1.0, 0.0, 1.0], [2.0, 0.0, 1.0, 1.0, 0.5]]  # ties make no pair


def _batch(tok) -> dict:
    groups = [[tok(p + r + (tok.eos_token or ""))["input_ids"] for r in rs] for p, rs in zip(PROMPTS, RESPONSES)]
    return {"row_id": ["a", "b", "c"], "group_ids": groups, "ratings": RATINGS}


def _pair_reference(model, batch, pad_id) -> tuple[list[float], list[float], dict]:
    """Every ordered pair of different ratings as its own two-row forward; Bradley-Terry's mean over
    all of them, backward pair by pair."""
    pairs = [(seqs[i], seqs[j]) for seqs, r in zip(batch["group_ids"], batch["ratings"])
             for i in range(len(r)) for j in range(len(r)) if r[i] > r[j]]
    better, worse = [], []
    for chosen, rejected in pairs:
        rewards = model(*pad_sequences([chosen, rejected], pad_id))
        (-F.logsigmoid(rewards[0] - rewards[1]) / len(pairs)).backward()
        better.append(rewards[0].item())
        worse.append(rewards[1].item())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return better, worse, grads


@pytest.mark.parametrize("kind", ["causal", "encoder", "causal-padded"])
def test_a_group_equals_its_pairs_run_one_by_one(kind, tiny_qwen, minilm_path):
    padded = kind.endswith("padded")
    path = minilm_path if kind == "encoder" else tiny_qwen
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    # float64 (rewards still leave the head in float32): two exact computations agree to 1e-5, far
    # inside 1e-4, whatever order float32 sums would take
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).double().train()
    causal = kind != "encoder"
    batch = _batch(tok)
    better, worse, want = _pair_reference(model, batch, tok.pad_token_id)
    assert len(better) == 6 + 2 + 9  # every pair of different ratings: each tie leaves one out

    layout = Layout(choose_layout(not padded, True, causal), causal=causal, pad_token_id=tok.pad_token_id,
                    attention_ratio=6.0 * 64, segments=model.segments_ok and not padded)
    assert layout.kind == ("padded" if padded else "shared" if causal else "packed")
    chunks = to_chunks(batch, layout)
    compute = Compute(model, model, DDPStrategy(), torch.device("cpu"), False, group_loss("bradley_terry"))
    got_better, got_worse, _ = compute.score_chunk(chunks[0])
    assert_close_relative(got_better.detach(), torch.tensor(better))
    assert_close_relative(got_worse.detach(), torch.tensor(worse))
    compute.forward_backward(chunks)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for name in want:
        assert_close_relative(got[name], want[name])
    if layout.kind == "shared":  # each prompt ran once, not once per response
        prompt_tokens = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
        assert chunks[0].real_tokens - chunks[0].computed_tokens >= prompt_tokens
        assert padded_equivalent_tokens(batch_groups(batch)) > 5 * chunks[0].computed_tokens


def test_a_micro_batch_of_groups_cut_into_chunks_weights_each_loss_by_what_it_averages(tiny_qwen):
    """Plackett-Luce is a mean over groups and Bradley-Terry over pairs: cut by ``max_tokens_per_batch``
    (groups of 3, 4 and 5 responses in separate forwards), the gradients equal the uncut micro-batch's."""
    tok = load_tokenizer(tiny_qwen)
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)).train()
    layout = functools.partial(Layout, "shared", causal=True, pad_token_id=tok.pad_token_id, segments=model.segments_ok)
    batch = _batch(tok)
    for name, per_pair in (("plackett_luce", False), ("bradley_terry", True)):
        compute = Compute(model, model, DDPStrategy(), torch.device("cpu"), False, group_loss(name), per_pair)
        results = []
        for cut in (None, 20):
            chunks = to_chunks(batch, layout(max_tokens_per_batch=cut))
            assert len(chunks) == (1 if cut is None else 3)
            compute.forward_backward(chunks)
            results.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad(set_to_none=True)
        for key in results[0]:
            assert_close_relative(results[1][key], results[0][key])


def test_rating_margins_apply_to_rated_rows_and_pairs_keep_their_own(tiny_qwen):
    """``rating_margin=0.5``: a rated pair (i better than j) is scored -log sigmoid(r_i - r_j - 0.5 (s_i - s_j));
    a pair row keeps its data margin (0.3 here), whatever its [1, 0] ratings."""
    tok = load_tokenizer(tiny_qwen)
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)).eval()
    groups = _batch(tok)
    batch = {"row_id": ["a", "p"], "group_ids": [groups["group_ids"][1], []], "ratings": [RATINGS[1], []],
             "chosen_ids": [[], groups["group_ids"][0][0]], "rejected_ids": [[], groups["group_ids"][0][1]],
             "margin": [0.0, 0.3]}
    compute = Compute(model, model, DDPStrategy(), torch.device("cpu"), False, group_loss("bradley_terry"),
                      rating_margin=0.5)
    chunk = to_chunks(batch, Layout("shared", causal=True, pad_token_id=tok.pad_token_id, segments=model.segments_ok))[0]
    with torch.no_grad():
        better, worse, loss = compute.score_chunk(chunk)
    # ratings [1, 0, 1]: pairs (0, 1) and (2, 1), each rated 1 apart; then the pair row
    margins = torch.tensor([0.5, 0.5, 0.3])
    assert float(loss) == pytest.approx(float(-F.logsigmoid(better - worse - margins).mean()), rel=1e-6)
