"""Packed process-reward-model forwards equal padded ones: several solutions in few rows, each its own
attention block, give the padded batch's step logits, loss and gradients (causal and encoder models)."""

import pytest
import torch

from rmray.core.collate import pad_sequences
from rmray.core.packing import PackRule
from rmray.core.steps import IGNORE, pack_steps, read_steps, step_loss, tokenize_steps
from rmray.testing import build_tiny_prm

ROWS = [
    {"prompt": "What is 12 * 3 + 4?", "completions": ["12 * 3 = 36.", "36 + 4 = 41."], "labels": [True, False]},
    {"prompt": "Add 7 and 5.", "completions": ["7 + 5 = 12.", "So the answer is 12."], "labels": [True, True]},
    {"prompt": "Q", "completions": ["one step only"], "labels": [False]},
    {"prompt": "What is 9 - 3 - 1? Think step by step, then answer.",
     "completions": ["9 - 3 = 6.", "6 - 1 = 5.", "The answer is 5.", "Done."], "labels": [True, True, True, True]},
]


def _padded_loss(model, items, pad_id):
    ids, mask = pad_sequences([t.input_ids for t in items], pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits
    rows = [b for b, t in enumerate(items) for label in t.labels if label != IGNORE]
    cols = [p for t in items for p, label in enumerate(t.labels) if label != IGNORE]
    labels = [label for t in items for label in t.labels if label != IGNORE]
    return step_loss(logits, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels)), logits[rows, cols]


@pytest.mark.parametrize("base", ["rm_qwen", "rm_minilm"])
def test_packed_step_loss_and_gradients_equal_the_padded_forwards(base, request, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    folder = build_tiny_prm(request.getfixturevalue(base), str(tmp_path / "prm"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()  # no dropout: exact comparison
    items = [tokenize_steps(tokenizer, read_steps(r), "\n", 512) for r in ROWS]
    causal = base == "rm_qwen"

    padded, padded_logits = _padded_loss(model, items, tokenizer.pad_token_id)
    padded.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    packed = pack_steps(items, PackRule(pad_token_id=tokenizer.pad_token_id, causal=causal, row_tokens=64))
    rows = packed.inputs["input_ids"].shape[0]
    assert 2 <= rows < len(items)  # several rows, and a row holding two solutions: blocks and rows exercised
    logits = model(**packed.inputs).logits
    loss = step_loss(logits, packed.rows, packed.cols, packed.labels)
    loss.backward()
    torch.testing.assert_close(logits[packed.rows, packed.cols], padded_logits, atol=1e-4, rtol=1e-4)
    assert loss.item() == pytest.approx(padded.item(), abs=1e-4)
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-4, rtol=1e-3, msg=name)
    assert packed.real_tokens == sum(len(t.input_ids) for t in items)
