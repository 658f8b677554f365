"""Score invariance and the read-out position, on causal LMs and an encoder (fp32)."""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification

from rmray.core.collate import pad_sequences
from rmray.core.model import RewardModel, apply_lora, load_hf_model, readout_kind
from rmray.core.tokenizer import load_tokenizer

SHORT = "\n\nHuman: hi\n\nAssistant: hello there"
LONG = "\n\nHuman: " + "tell me a long story about a dragon and a knight " * 12 + "\n\nAssistant: once upon a time"


def load(path):
    tok = load_tokenizer(path)
    return RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).eval(), tok


def ids_of(tok, text):
    return tok(text + (tok.eos_token or ""))["input_ids"]


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama_pad_is_eos", "minilm_path"])
@torch.no_grad()
def test_score_invariant_to_batch_and_padding_side(fixture, request):
    model, tok = load(request.getfixturevalue(fixture))
    short, long = ids_of(tok, SHORT), ids_of(tok, LONG)
    alone = model(*pad_sequences([short], tok.pad_token_id))[0]
    ids, mask = pad_sequences([short, long, long[:40]], tok.pad_token_id)
    right = model(ids, mask)
    # Left padding: the same rows with their padding moved to the front.
    left_ids, left_mask = torch.full_like(ids, tok.pad_token_id), torch.zeros_like(mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        left_ids[i, -n:], left_mask[i, -n:] = ids[i, :n], 1
    left = model(left_ids, left_mask)
    assert len(long) > 3 * len(short)
    assert right[0].item() == pytest.approx(alone.item(), abs=1e-5)
    assert left[0].item() == pytest.approx(alone.item(), abs=1e-5)
    assert torch.allclose(left, right, atol=1e-5)


@torch.no_grad()
def test_readout_kind_sees_through_wrappers(tiny_qwen, minilm_path):
    """A benchmark once asked the RewardModel wrapper and got "pooler" for a causal LM: it then packed
    Qwen2 pairs without sharing the prompt (74k tokens instead of 48k)."""
    for path, kind in ((tiny_qwen, "last_token"), (minilm_path, "pooler")):
        hf = load_hf_model(path)
        assert readout_kind(hf) == readout_kind(RewardModel(hf)) == RewardModel(hf).readout == kind


def test_pad_equal_to_eos_is_read_at_the_eos(tiny_llama_pad_is_eos):
    model, tok = load(tiny_llama_pad_is_eos)
    assert tok.pad_token_id == tok.eos_token_id
    ids = ids_of(tok, SHORT)
    assert ids[-1] == tok.eos_token_id
    ours = model(*pad_sequences([ids], tok.pad_token_id))[0]
    hf = model.hf_model
    hidden = hf.model(input_ids=torch.tensor([ids])).last_hidden_state
    at_eos, before_eos = hf.score(hidden[0, -1]).item(), hf.score(hidden[0, -2]).item()
    assert ours.item() == pytest.approx(at_eos, abs=1e-5)
    # transformers' own pooling treats the EOS as padding and reads one token early -- the bug avoided.
    assert hf(input_ids=torch.tensor([ids])).logits[0, 0].item() == pytest.approx(before_eos, abs=1e-5)
    assert abs(at_eos - before_eos) > 1e-4


def test_lora_trains_and_saves_head_and_merges_exactly(tiny_qwen, tmp_path):
    from rmray.core.export import save_reward_model, save_unmerged
    from rmray.core.spec import ScoringSpec

    tok = load_tokenizer(tiny_qwen)
    peft_model = apply_lora(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert "score" in peft_model.peft_config["default"].modules_to_save
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_A" in n for n in trainable)
    with torch.no_grad():  # move the adapter and head away from their initial values
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model = RewardModel(peft_model).eval()
    ids, mask = pad_sequences([ids_of(tok, SHORT), ids_of(tok, LONG)], tok.pad_token_id)
    with torch.no_grad():
        before = model(ids, mask)
    save_unmerged(model, tok, ScoringSpec(), str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    from safetensors.torch import load_file

    assert any("score" in k for k in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")))
    save_reward_model(model, tok, ScoringSpec(), str(tmp_path / "merged"))
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
    assert not hasattr(plain, "peft_config")
    with torch.no_grad():
        after = RewardModel(plain).eval()(ids, mask)
    assert torch.allclose(before, after, atol=1e-4)


def test_lora_on_a_bf16_base_trains_float32_adapters_and_head(tiny_qwen, tmp_path):
    """dtype=bfloat16 halves a LoRA run's frozen base; what is trained must stay float32."""
    from rmray.core.export import save_reward_model
    from rmray.core.spec import ScoringSpec

    tok = load_tokenizer(tiny_qwen)
    peft_model = apply_lora(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id, dtype="bfloat16"),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    frozen = [p for p in peft_model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in trainable.values()) and any("score" in n for n in trainable)
    model = RewardModel(peft_model)
    ids, mask = pad_sequences([ids_of(tok, SHORT), ids_of(tok, LONG)], tok.pad_token_id)
    rewards = model(ids, mask)
    assert rewards.dtype == torch.float32
    (rewards[0] - rewards[1]).backward()
    head_grads = [p.grad for n, p in trainable.items() if "score" in n]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in head_grads)
    with torch.no_grad():
        live = model.eval()(ids, mask)
    out = save_reward_model(model, tok, ScoringSpec(), str(tmp_path / "merged"))
    reloaded = RewardModel(load_hf_model(out, pad_token_id=tok.pad_token_id)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids, mask), live, atol=0.05)  # bf16 base vs its float32 reload
