"""Exactness of padding-free packing and the shared-prefix forward against the plain padded forward."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from rmray.core.collate import pad_sequences
from rmray.core.formats import PreferencePair
from rmray.core.loss import bradley_terry_loss
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.packing import pack_groups, pair_groups, pair_readout_order, shared_prefix_length
from rmray.core.spec import ScoringSpec
from rmray.core.tokenize import encode_pair
from rmray.core.tokenizer import load_tokenizer


def edge_case_pairs(tok, hh_rows=None):
    """Pairs covering: different prompt lengths, empty shared prefix, one-token responses, truncation."""
    spec = ScoringSpec(max_length=48, eos_token=tok.eos_token)
    pairs = [
        PreferencePair("\n\nHuman: How do I boil an egg?\n\nAssistant:", " Boil it 9 minutes.", " No."),
        PreferencePair("\n\nHuman: hi\n\nAssistant:", " Hello! How can I help you today?", " Go away."),
        PreferencePair("", "Completely different text", "Another answer entirely"),  # no prompt
        PreferencePair("Q: " + "long context sentence. " * 40, " short yes", " short no"),  # truncated
        PreferencePair("\n\nHuman: pick one\n\nAssistant:", "A", "B"),  # one-character responses
    ]
    encoded = [encode_pair(tok, spec, p) for p in pairs]
    chosen, rejected = [e.chosen_ids for e in encoded], [e.rejected_ids for e in encoded]
    # A one-token response each: the prefix is everything but the last token.
    chosen.append(chosen[0][:-1] + [chosen[0][-1]])
    rejected.append(chosen[0][:-1] + [rejected[1][-1]])
    assert any(e.truncated for e in encoded)
    return chosen, rejected


def rewards_and_grads(model, fn):
    model.zero_grad()
    rewards = fn()
    chosen, rejected = rewards.chunk(2)
    bradley_terry_loss(chosen, rejected, torch.tensor([0.5] * len(chosen), device=rewards.device)).backward()
    return rewards.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@contextlib.contextmanager
def saved_bytes():
    """Bytes autograd keeps for the backward pass while the block runs (checkpointed layers keep only their inputs)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def run_packed(model, pb, attention: str):
    """The model on a packed batch, with its dense 4D mask or its segment plan."""
    if attention == "segments":
        assert model.segments_ok
        return model(pb.input_ids, None, pb.position_ids, readout_row=pb.readout_row, readout_col=pb.readout_col,
                     segments=pb.plan)
    return model(pb.input_ids, pb.attention_mask, pb.position_ids, readout_row=pb.readout_row, readout_col=pb.readout_col)


def assert_close_relative(a: torch.Tensor, b: torch.Tensor, rel=1e-4):
    if b.norm() < 1e-8:  # an analytically ~zero gradient (e.g. an unused position row): both must be ~0
        assert a.norm() < 1e-8
        return
    assert (a - b).norm() <= rel * max(b.norm(), 1e-12), f"relative error {(a - b).norm() / b.norm():.2e}"


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama_pad_is_eos"])
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("attention", ["dense", "segments"])
def test_causal_packed_and_shared_equal_padded(fixture, share_prefix, attention, request):
    path = request.getfixturevalue(fixture)
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id))
    chosen, rejected = edge_case_pairs(tok)
    n = len(chosen)
    assert shared_prefix_length(chosen[2], rejected[2]) <= 1  # the no-prompt pair shares (almost) nothing

    ref, ref_grads = rewards_and_grads(model, lambda: model(*pad_sequences(chosen + rejected, tok.pad_token_id)))

    def packed():
        pb = pack_groups(pair_groups(chosen, rejected, share_prefix), row_tokens=64, pad_token_id=tok.pad_token_id,
                         causal=True, dense_mask=attention == "dense")
        assert pb.input_ids.shape[0] < 2 * n  # several sequences really share rows
        return run_packed(model, pb, attention)[pair_readout_order(n, share_prefix)]

    out, grads = rewards_and_grads(model, packed)
    assert_close_relative(out, ref)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name])


def test_shared_prefix_computes_fewer_tokens(tiny_qwen):
    tok = load_tokenizer(tiny_qwen)
    chosen, rejected = edge_case_pairs(tok)
    shared = pack_groups(pair_groups(chosen, rejected, True), row_tokens=64, pad_token_id=0, causal=True)
    plain = pack_groups(pair_groups(chosen, rejected, False), row_tokens=64, pad_token_id=0, causal=True)
    prefix = sum(shared_prefix_length(c, r) for c, r in zip(chosen, rejected))
    assert plain.real_tokens == sum(map(len, chosen + rejected))
    assert shared.real_tokens == plain.real_tokens - prefix and prefix > 50


@pytest.mark.parametrize("attention", ["dense", "segments"])
def test_encoder_packed_equals_padded(minilm_path, attention):
    tok = load_tokenizer(minilm_path)
    torch.manual_seed(0)  # the fresh head's weights: a fixed draw, whatever ran before in this process
    model = RewardModel(load_hf_model(minilm_path, pad_token_id=tok.pad_token_id))
    chosen, rejected = edge_case_pairs(tok)
    n = len(chosen)
    ref, ref_grads = rewards_and_grads(model, lambda: model(*pad_sequences(chosen + rejected, tok.pad_token_id)))

    def packed():
        pb = pack_groups(pair_groups(chosen, rejected, False), row_tokens=64, pad_token_id=tok.pad_token_id,
                         causal=False, dense_mask=attention == "dense")
        assert pb.input_ids.shape[0] < 2 * n
        return run_packed(model, pb, attention)

    out, grads = rewards_and_grads(model, packed)
    assert_close_relative(out, ref)
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name])


@pytest.mark.parametrize("attention", ["dense", "segments"])
def test_group_of_many_responses_equals_scoring_each_alone(tiny_qwen, attention):
    """One prompt x N responses (GRPO-style group scoring) in one packed row."""
    tok = load_tokenizer(tiny_qwen)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)).eval()
    prompt = tok("\n\nHuman: Write a haiku about rain.\n\nAssistant:")["input_ids"]
    responses = [tok(f" rain number {i} falls" + " softly" * i + tok.eos_token)["input_ids"] for i in range(16)]
    with torch.no_grad():
        alone = model(*pad_sequences([prompt + r for r in responses], tok.pad_token_id))
        pb = pack_groups([(prompt, responses)], row_tokens=0, pad_token_id=tok.pad_token_id, causal=True)
        grouped = run_packed(model, pb, attention)
    assert pb.input_ids.shape[0] == 1 and pb.real_tokens == len(prompt) + sum(map(len, responses))
    assert_close_relative(grouped, alone)


def test_length_grouping_sees_every_row_once_and_cuts_padding():
    import random

    from rmray.core.batching import length_grouped_batches

    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches != length_grouped_batches(lengths, 8, seed=2)  # order depends on the seed (epoch)

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    plain = [list(range(i, i + 8)) for i in range(0, 1000, 8)]
    assert padded(batches) < 0.6 * padded(plain)


def test_segment_attention_runs_in_float32_under_cpu_bf16_autocast():
    """CPU SDPA is slower in bf16 than in float32 (see rmray.core.attention), so under CPU autocast the
    segment path computes attention in float32: its output equals float32 SDPA, not a bf16 rounding."""
    import types

    from rmray.core.attention import KWARG, Segments, segment_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 40, 16) for _ in range(3))
    module = types.SimpleNamespace(is_causal=True, training=False, num_key_value_groups=1)
    plan = {KWARG: Segments([[(0, 0, [40])]])}  # one causal sequence: exactly one is_causal SDPA call
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = segment_attention(module, q, k, v, None, **plan)
        out_bf16_inputs, _ = segment_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, **plan)
    assert out.dtype == torch.float32 and out_bf16_inputs.dtype == torch.bfloat16
    assert (out - reference).abs().max() < 1e-5  # bf16 attention would be off by ~1e-2
    assert (out_bf16_inputs.float() - reference).abs().max() < 5e-2


def varlen_reference(q, k, v, index, causal):
    """What a varlen flash kernel computes from an index, in plain torch: each query sequence attends to
    its key sequence, the causal mask aligned bottom-right (FlashAttention-2's rule when keys > queries)."""
    q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (q, k, v))  # [B * L, H, D]
    if index.key_index is not None:
        k, v = k[index.key_index], v[index.key_index]
    out = []
    for s in range(len(index.cu_q) - 1):
        qs = q[index.cu_q[s]:index.cu_q[s + 1]].transpose(0, 1)
        ks, vs = (t[index.cu_k[s]:index.cu_k[s + 1]].transpose(0, 1) for t in (k, v))
        n, m = qs.shape[1], ks.shape[1]
        mask = torch.ones(n, m, dtype=torch.bool).tril(m - n) if causal else None
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_index_computes_what_the_per_piece_path_computes(causal):
    """The GPU kernel's input (one flash call per layer over cumulative lengths and gathered keys) is
    built here on CPU; fed to a plain-torch varlen reference it must give the per-piece SDPA result.
    Covers: several responses per group, a zero-length prefix, one-token responses, row padding."""
    from rmray.core.attention import Segments, _Call, _per_piece, _varlen_index

    torch.manual_seed(0)
    plan = [[(0, 5, [3, 1, 4]), (13, 0, [2, 6]), (21, 7, [1])], [(0, 2, [9]), (11, 4, [1, 1, 1, 2])]]
    if not causal:  # encoders: one sequence per group, no shared prefix
        plan = [[(0, 0, [8]), (8, 0, [1]), (9, 0, [12])], [(0, 0, [5]), (5, 0, [14])]]
    length = 32
    q, k, v = (torch.randn(2, 3, length, 8, dtype=torch.float64) for _ in range(3))
    index = _varlen_index(plan, length, causal, "cpu")
    expected = _per_piece((q, k, v), Segments(plan), _Call(0.0, None, causal)).flatten(0, 1)
    got = varlen_reference(q, k, v, index, causal)
    real = torch.zeros(2, length, dtype=torch.bool)  # padding outputs are never read
    for b, row in enumerate(plan):
        real[b, :sum(p + sum(r) for _, p, r in row)] = True
    real = real.flatten()
    assert int(index.cu_q[-1]) == 2 * length and (index.key_index is not None) == causal
    assert torch.allclose(got[real], expected[real], atol=1e-12)


@pytest.mark.parametrize("fixture,lora", [("tiny_qwen", False), ("tiny_qwen", True), ("minilm_path", False)])
def test_segment_attention_under_gradient_checkpointing(fixture, lora, request):
    """Checkpointed layers recompute their forward during backward; the segment plan must reach that
    recomputation too (it once lived in a context variable, gone by then: the backward raised). LoRA +
    checkpointing is the README's recipe for large models."""
    from peft import LoraConfig

    from rmray.core.model import apply_lora

    path = request.getfixturevalue(fixture)
    tok = load_tokenizer(path)
    causal = fixture == "tiny_qwen"
    chosen, rejected = edge_case_pairs(tok)
    results, stored = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        hf = load_hf_model(path, pad_token_id=tok.pad_token_id)
        if checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.enable_input_require_grads()
        if lora:
            torch.manual_seed(1)
            hf = apply_lora(hf, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        model = RewardModel(hf).train()
        pb = pack_groups(pair_groups(chosen, rejected, causal), row_tokens=0, pad_token_id=tok.pad_token_id,
                         causal=causal, dense_mask=False)
        with saved_bytes() as saved:
            results.append(rewards_and_grads(model, lambda: run_packed(model, pb, "segments")))
        stored.append(saved[0])
    # 2-layer model: the last layer (the read-out fast path) keeps its activations; without checkpointing
    # nothing changes (ratio 1), with it the first layer keeps only its input.
    assert stored[1] < 0.6 * stored[0], f"checkpointing did not run: {stored[1]} vs {stored[0]} bytes kept for backward"
    (ref, ref_grads), (out, grads) = results
    assert_close_relative(out, ref)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name])


@pytest.mark.parametrize("lora", [False, True])
def test_the_training_model_is_in_training_mode_so_checkpointing_runs(tiny_qwen, lora):
    """from_pretrained returns a model in eval mode, where transformers skips gradient checkpointing: a
    training model left so kept every activation (measured on a GPU: LoRA + checkpointing took 21 GB
    where TRL took 8) until a first evaluation switched modes."""
    from rmray.config import TrainConfig
    from rmray.train.batches import Layout, choose_layout, to_chunks
    from rmray.train.build import build_model

    class InPlace:  # the strategy's wrap without a process group; DDP and FSDP keep the module's mode
        def wrap(self, raw, use_bf16, device):
            return raw

    tok = load_tokenizer(tiny_qwen)
    chosen, rejected = edge_case_pairs(tok)
    batch = {"chosen_ids": chosen, "rejected_ids": rejected, "margin": [0.0] * len(chosen)}
    stored = []
    for checkpointing in (False, True):
        cfg = TrainConfig(model_name_or_path=tiny_qwen, train_data="demo", gradient_checkpointing=checkpointing,
                          use_peft=lora, lora_r=4)
        model, raw = build_model(cfg, tok, InPlace(), False, torch.device("cpu"))
        assert raw.training and raw.hf_model.training
        layout = Layout(choose_layout(True, True, True), causal=True, pad_token_id=tok.pad_token_id, attention_ratio=6.0 * 64,
                        segments=raw.segments_ok)
        with saved_bytes() as saved:
            for chunk in to_chunks(batch, layout):
                model(**chunk.inputs).sum().backward()
        stored.append(saved[0])
    # 2-layer model: the last layer (the read-out fast path) keeps its activations; without checkpointing
    # nothing changes (ratio 1), with it the first layer keeps only its input.
    assert stored[1] < 0.6 * stored[0], f"checkpointing did not run: {stored[1]} vs {stored[0]} bytes kept for backward"


def test_packed_forward_refuses_when_the_plan_never_reaches_attention(tiny_qwen, monkeypatch):
    """A transformers model that drops attention keyword arguments would attend each packed row as one
    sequence (across pairs): the forward must fail loudly, not return those rewards."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from rmray.core import attention

    def drops_the_plan(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop(attention.KWARG)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    tok = load_tokenizer(tiny_qwen)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id))
    chosen, rejected = edge_case_pairs(tok)
    pb = pack_groups(pair_groups(chosen, rejected, True), row_tokens=0, pad_token_id=tok.pad_token_id, causal=True,
                     dense_mask=False)
    run_packed(model, pb, "segments")  # the real attention gets the plan
    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, drops_the_plan)
    with pytest.raises(RuntimeError, match="packed_attention=dense"):
        run_packed(model, pb, "segments")


@pytest.mark.parametrize("fixture", ["tiny_qwen", "minilm_path"])
def test_segment_forward_builds_no_attention_mask(fixture, request):
    """transformers builds its mask before the layers run: for packed rows an [L, L] packed-sequence
    mask that segment attention never reads. On a plan every attention call must get none (and the
    rewards stay those of the padded forward); padded rows must still get theirs."""
    path = request.getfixturevalue(fixture)
    tok = load_tokenizer(path)
    model = RewardModel(load_hf_model(path, pad_token_id=tok.pad_token_id)).eval()
    causal = model.readout == "last_token"
    masks = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs: masks.append(kwargs.get("attention_mask")),
                                         with_kwargs=True)
             for name, m in model.named_modules() if name.endswith("self_attn") or name.endswith("attention.self")]
    assert hooks
    chosen, rejected = edge_case_pairs(tok)
    pb = pack_groups(pair_groups(chosen, rejected, causal), row_tokens=0, pad_token_id=tok.pad_token_id,
                     causal=causal, dense_mask=False)
    with torch.no_grad():
        packed = run_packed(model, pb, "segments")[pair_readout_order(len(chosen), causal)]
        assert len(masks) == len(hooks) and all(m is None for m in masks)
        masks.clear()
        padded = model(*pad_sequences(chosen + rejected, tok.pad_token_id))
    assert len(masks) == len(hooks) and all(m is not None for m in masks)
    assert_close_relative(packed, padded)
