"""rmray's rewards and loss equal TRL's RewardTrainer.compute_loss on the same weights and real pairs."""

import pytest
import torch

from rmray.core.collate import collate_pairs
from rmray.core.formats import normalize_row
from rmray.core.loss import bradley_terry_loss
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.spec import ScoringSpec
from rmray.core.tokenize import encode_pair
from rmray.core.tokenizer import load_tokenizer

trl = pytest.importorskip("trl", reason="TRL is a test-only dependency (pip install -e '.[test]')")


def test_rewards_and_loss_match_trl(tiny_qwen, hh_rows, tmp_path):
    from datasets import Dataset

    rows = [r for r in hh_rows[:12] if len(r["chosen"]) + len(r["rejected"]) < 3000][:8]
    assert len(rows) == 8
    tok = load_tokenizer(tiny_qwen)
    model = load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)
    args = trl.RewardConfig(output_dir=str(tmp_path), max_length=4096, bf16=False, report_to="none",
                            per_device_train_batch_size=8, center_rewards_coefficient=0.01, use_cpu=True)
    trainer = trl.RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows))
    trl_inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        trl_loss, outputs = trainer.compute_loss(trainer.model, dict(trl_inputs), return_outputs=True)
    trl_rewards = outputs.logits.squeeze(-1)

    spec = ScoringSpec(max_length=4096, eos_token=tok.eos_token, pad_token=tok.pad_token)
    pairs = [encode_pair(tok, spec, normalize_row(r, "implicit")) for r in rows]
    assert [p.chosen_ids for p in pairs] == [list(x) for x in trainer.train_dataset["chosen_ids"][:8]]
    batch = collate_pairs({"chosen_ids": [p.chosen_ids for p in pairs], "rejected_ids": [p.rejected_ids for p in pairs]},
                          tok.pad_token_id)
    with torch.no_grad():
        ours = RewardModel(trainer.model).eval()(batch["input_ids"], batch["attention_mask"])
    loss = bradley_terry_loss(*ours.chunk(2), batch["margin"], center_rewards_coefficient=0.01)
    assert torch.allclose(ours, trl_rewards, atol=1e-5), (ours - trl_rewards).abs().max()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
