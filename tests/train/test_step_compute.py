"""A process reward model's micro-batch in the training loop's compute: the step cross-entropy and its
gradients are the same padded (TRL's PRMTrainer layout), packed, and packed in token-budget chunks --
each against TRL's own padded computation on TRL's tokens (``tokenize_row`` of trl 0.19.1)."""

import numpy as np
import pytest
import torch

from rmray.core.step_model import StepModel, load_step_model
from rmray.core.tokenizer import load_tokenizer
from rmray.train.batches import Layout
from rmray.train.parallel import DDPStrategy
from rmray.train.step_compute import StepCompute
from tests.core.test_step_packing import ROWS
from tests.core.test_steps import trl_tokenize_row


def _batch(tokenizer) -> tuple[dict, list[dict]]:
    """The rows as the stream hands them to a rank (numpy columns), and TRL's tokens of each."""
    from rmray.core.steps import read_steps, tokenize_steps

    trl = [trl_tokenize_row()(r, tokenizer, "\n", None, None, None, False, False) for r in ROWS]
    ours = [tokenize_steps(tokenizer, read_steps(r), "\n", 512) for r in ROWS]
    batch = {"chosen_ids": np.array([np.array(t.input_ids) for t in ours], dtype=object),
             "step_positions": np.array([np.array(t.positions) for t in ours], dtype=object),
             "step_labels": np.array([np.array([t.labels[p] for p in t.positions]) for t in ours], dtype=object)}
    return batch, trl


def _trl_padded(model, trl, pad_id) -> torch.Tensor:
    """What TRL's PRMTrainer computes: right-padded rows, cross-entropy over labels != -100."""
    width = max(len(t["input_ids"]) for t in trl)
    ids = torch.tensor([t["input_ids"] + [pad_id] * (width - len(t["input_ids"])) for t in trl])
    mask = torch.tensor([[1] * len(t["input_ids"]) + [0] * (width - len(t["input_ids"])) for t in trl])
    labels = torch.tensor([t["labels"] + [-100] * (width - len(t["labels"])) for t in trl])
    logits = model.model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("kind, budget", [("padded", None), ("packed", None), ("packed", 60)])
def test_step_loss_and_gradients_equal_trls_padded_computation(rm_qwen, kind, budget):
    tokenizer = load_tokenizer(rm_qwen)
    torch.manual_seed(0)
    model = StepModel(load_step_model(rm_qwen, pad_token_id=tokenizer.pad_token_id)).train()
    batch, trl = _batch(tokenizer)
    _trl_padded(model, trl, tokenizer.pad_token_id).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    compute = StepCompute(model, model, DDPStrategy(), torch.device("cpu"), False)
    layout = Layout(kind=kind, causal=True, pad_token_id=tokenizer.pad_token_id, max_tokens_per_batch=budget)
    chunks, padded = compute.chunks(batch, layout)
    assert len(chunks) == (1 if budget is None else 3) and padded == 4 * max(len(t["input_ids"]) for t in trl)
    sums, tokens = compute.forward_backward(chunks)
    metrics = compute.summarize(sums)
    assert metrics["steps"] == 9 and tokens == sum(len(t["input_ids"]) for t in trl)
    with torch.no_grad():
        assert metrics["loss"] == pytest.approx(_trl_padded(model, trl, tokenizer.pad_token_id).item(), abs=1e-4)
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-4, rtol=1e-3, msg=name)
    eval_sums, margins = compute.eval_sums(batch, layout, model)
    assert compute.summarize(eval_sums)["loss"] == pytest.approx(metrics["loss"], abs=1e-4) and margins == []
