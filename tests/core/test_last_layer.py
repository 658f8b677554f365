"""The last layer computed at read-out positions only (rmray.core.last_layer): exact, and really smaller."""

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, MistralConfig, Qwen3Config, RobertaConfig

from rmray.core import last_layer
from rmray.core.architecture import LAYER_SHAPES, describe
from rmray.core.collate import pad_sequences
from rmray.core.model import RewardModel, load_hf_model
from rmray.core.packing import pack_groups, pair_groups, pair_readout_order
from rmray.core.tokenizer import load_tokenizer
from tests.core.test_packing import assert_close_relative, edge_case_pairs, rewards_and_grads, run_packed


def _random_model(kind: str, vocab: int, pad_id: int):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_labels=1, pad_token_id=pad_id)
    config = {
        "qwen3": lambda: Qwen3Config(**common, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "roberta": lambda: RobertaConfig(**common, max_position_embeddings=600),
        "bert": lambda: BertConfig(**common, max_position_embeddings=600),
    }[kind]()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _mlp_rows(layer) -> list[int]:
    """Positions the last layer's MLP computes, per forward (recorded by a hook)."""
    seen = []
    mlp = layer.mlp if hasattr(layer, "mlp") else layer.intermediate
    mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    return seen


@pytest.mark.parametrize("kind", ["tiny_qwen", "tiny_llama_pad_is_eos", "qwen3", "mistral", "minilm", "bert",
                                  "roberta"])
def test_readout_last_layer_equals_full_forward_and_computes_only_readout_rows(kind, tiny_qwen, minilm_path, request,
                                                                                monkeypatch):
    built_here = kind in ("qwen3", "mistral", "bert", "roberta")  # random configs; tiny_qwen lends its tokenizer
    path = minilm_path if kind == "minilm" else tiny_qwen if built_here else request.getfixturevalue(kind)
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    hf = _random_model(kind, len(tok), tok.pad_token_id) if built_here else load_hf_model(path, pad_token_id=tok.pad_token_id)
    causal = kind not in ("minilm", "bert", "roberta")
    chosen, rejected = edge_case_pairs(tok)
    n = len(chosen)
    pb = pack_groups(pair_groups(chosen, rejected, causal), row_tokens=0, pad_token_id=tok.pad_token_id,
                     causal=causal, dense_mask=False)
    order = pair_readout_order(n, causal)

    full = RewardModel(copy.deepcopy(hf), last_layer_readout_only=False)
    fast = RewardModel(hf)
    assert fast.last_layer_readout_only and not full.last_layer_readout_only
    rows = _mlp_rows(describe(fast.hf_model).last_layer)

    ref, ref_grads = rewards_and_grads(full, lambda: full(*pad_sequences(chosen + rejected, tok.pad_token_id)))
    queries = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: queries.append(q.shape[2]) or sdpa(q, *a, **k))
    out, grads = rewards_and_grads(fast, lambda: run_packed(fast, pb, "segments")[order])
    assert rows == [2 * n]  # one position per sequence, not the packed row's pb.real_tokens
    layers = hf.config.num_hidden_layers
    assert sum(queries) == (layers - 1) * pb.real_tokens + 2 * n  # the last layer: one query per sequence
    assert pb.real_tokens > 10 * n
    assert_close_relative(out, ref)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name])


def test_padded_causal_rows_use_it_and_dense_packed_rows_keep_the_full_last_layer(tiny_qwen):
    """Padded causal rows (scoring, serving) read at each row's last real token; the dense-mask path
    carries no read-out positions and must run the layer as transformers does."""
    tok = load_tokenizer(tiny_qwen)
    torch.manual_seed(0)
    hf = load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id)
    full = RewardModel(copy.deepcopy(hf), last_layer_readout_only=False)
    model = RewardModel(hf)
    rows = _mlp_rows(describe(model.hf_model).last_layer)
    chosen, rejected = edge_case_pairs(tok)
    ids, mask = pad_sequences(chosen + rejected, tok.pad_token_id)
    with torch.no_grad():
        assert_close_relative(model(ids, mask), full(ids, mask))
        left = torch.stack([m.roll(int((m == 0).sum())) for m in mask])  # the same rows, left-padded
        left_ids = torch.stack([i.roll(int((m == 0).sum())) for i, m in zip(ids, mask)])
        assert_close_relative(model(left_ids, left), full(ids, mask))
        dense = pack_groups(pair_groups(chosen, rejected, True), row_tokens=64, pad_token_id=tok.pad_token_id,
                            causal=True, dense_mask=True)
        run_packed(model, dense, "dense")
    assert rows == [ids.shape[0], ids.shape[0], dense.input_ids.numel()]
    assert model.last_layer_readout_used and not full.last_layer_readout_used


def test_deepcopy_keeps_the_readout_path_on_the_copy(tiny_qwen):
    """The patched forward is a bound method: a copied model must run its own layer, not the original's."""
    tok = load_tokenizer(tiny_qwen)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in describe(clone.hf_model).last_layer.mlp.parameters():
            p.add_(1.0)
    chosen, rejected = edge_case_pairs(tok)
    pb = pack_groups(pair_groups(chosen, rejected, True), row_tokens=0, pad_token_id=tok.pad_token_id, causal=True,
                     dense_mask=False)
    with torch.no_grad():
        a, b = run_packed(model, pb, "segments"), run_packed(clone, pb, "segments")
    assert (a - b).abs().max() > 1e-3


def test_unknown_layer_types_are_left_alone(tiny_qwen, monkeypatch):
    monkeypatch.setitem(LAYER_SHAPES, "pre_norm", set())
    tok = load_tokenizer(tiny_qwen)
    model = RewardModel(load_hf_model(tiny_qwen, pad_token_id=tok.pad_token_id))
    assert not model.last_layer_readout_only
    assert "forward" not in vars(model.hf_model.model.layers[-1])


def test_outside_the_verified_transformers_range_the_last_layer_runs_in_full(tiny_qwen, monkeypatch):
    """A transformers release the read-out bodies were not checked against gets the plain layer, with a
    warning naming the range; inside it the fast path is on."""
    import transformers

    from rmray.core.model import RewardModel, load_hf_model

    assert last_layer.transformers_verified(transformers.__version__)  # the installed one (pyproject caps it)
    monkeypatch.setattr(last_layer.transformers, "__version__", "5.99.0")  # the version the module reads
    with pytest.warns(UserWarning, match=r"verified on transformers 5\.17 to <5\.26; with 5\.99\.0"):
        model = RewardModel(load_hf_model(tiny_qwen), last_layer_readout_only=True)
    assert not model.last_layer_readout_only and describe(model.hf_model).last_layer is not None
    with pytest.warns(UserWarning):
        assert not last_layer.transformers_verified("5.16.1")
    assert last_layer.transformers_verified("5.17.0")
