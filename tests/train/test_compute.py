"""One micro-batch's gradients do not depend on how it is cut: into forward chunks by
``max_tokens_per_batch``, or into accumulated micro-batches by ``gradient_accumulation_steps``."""

import functools

import pytest
import torch

from rmray.core.loss import bradley_terry_loss, group_loss
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.tokenizer import load_tokenizer
from rmray.train.batches import Layout, choose_layout, to_chunks
from rmray.train.compute import Compute
from rmray.train.parallel import DDPStrategy
from tests.core.test_packing import assert_close_relative, edge_case_pairs


def _setup(tiny_qwen):
    tok = load_tokenizer(tiny_qwen)
    chosen, rejected = edge_case_pairs(tok)
    batch = {"chosen_ids": chosen, "rejected_ids": rejected, "margin": [0.5] * len(chosen)}
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)).train()
    loss = functools.partial(group_loss("bradley_terry"), center_rewards_coefficient=0.01)
    compute = Compute(model, model, DDPStrategy(), torch.device("cpu"), False, loss)
    layout = functools.partial(Layout, choose_layout(True, True, True), causal=True, pad_token_id=tok.pad_token_id,
                               attention_ratio=6.0 * 64, segments=model.segments_ok)
    return model, compute, batch, layout


def _grads(model) -> dict:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _reference(model, batch) -> dict:
    """The plain computation: one padded forward per sequence, TRL's loss with centering, backward."""
    from rmray.core.collate import pad_sequences

    rewards = model(*pad_sequences(batch["chosen_ids"] + batch["rejected_ids"], 0))
    chosen, rejected = rewards.chunk(2)
    bradley_terry_loss(chosen, rejected, torch.tensor(batch["margin"]), 0.01).backward()
    return _grads(model)


def test_chunked_and_unchunked_micro_batches_give_the_same_gradients(tiny_qwen):
    model, compute, batch, layout = _setup(tiny_qwen)
    want = _reference(model, batch)
    whole = to_chunks(batch, layout())
    chunked = to_chunks(batch, layout(max_tokens_per_batch=40))
    assert len(whole) == 1 and len(chunked) >= 3  # really cut
    for chunks in (whole, chunked):
        compute.forward_backward(chunks)
        got = _grads(model)
        assert got.keys() == want.keys()
        for name in want:
            assert_close_relative(got[name], want[name])


def test_gradient_accumulation_equals_one_micro_batch_of_both(tiny_qwen):
    """Two micro-batches of 3 pairs with ``gradient_accumulation_steps=2`` give the gradient of the mean
    loss over all 6 (the centering term is a mean too, so equal halves average exactly)."""
    model, compute, batch, layout = _setup(tiny_qwen)
    want = _reference(model, batch)
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    for i, half in enumerate(halves):
        compute.forward_backward(to_chunks(half, layout()), accumulation=2, final_sync=i == 1)
    got = _grads(model)
    for name in want:
        assert_close_relative(got[name], want[name])


def test_debias_length_adds_the_weighted_length_correlation_in_reward_units(tiny_qwen):
    """The chunk's training loss is Bradley-Terry plus ``w * |Pearson(r, length) * std(r)|`` over its
    responses, a response's length being its tokens after the prompt its pair shares; computed here from a
    padded forward, scipy's Pearson, numpy's std and os.path's common prefix. Evaluation's loss stays
    Bradley-Terry."""
    import os

    import numpy as np
    from scipy.stats import pearsonr

    from rmray.core.collate import pad_sequences

    model, compute, batch, layout = _setup(tiny_qwen)
    compute.length_penalty = 0.7
    chunk = to_chunks(batch, layout())[0]
    _, _, loss = compute.score_chunk(chunk)
    with torch.no_grad():
        rewards = model(*pad_sequences(batch["chosen_ids"] + batch["rejected_ids"], 0)).tolist()
    n = len(batch["chosen_ids"])
    lengths = []
    for side in (0, 1):
        for c, r in zip(batch["chosen_ids"], batch["rejected_ids"]):
            prefix = min(len(os.path.commonprefix([list(c), list(r)])), min(len(c), len(r)) - 1)
            lengths.append(len((c, r)[side]) - prefix)
    bt = bradley_terry_loss(torch.tensor(rewards[:n]), torch.tensor(rewards[n:]), torch.tensor(batch["margin"]), 0.01)
    expected = float(bt) + 0.7 * abs(pearsonr(rewards, lengths).statistic * np.std(rewards))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        assert float(compute.score_chunk(chunk)[2]) == pytest.approx(float(bt), abs=1e-4)
    assert len(set(lengths)) > 2  # the lengths really differ
