"""Small random-weight causal reward models built offline, for tests and benchmarks.

Cost and exactness do not depend on weights, so a random Qwen2/Llama with a byte-level BPE tokenizer
trained on local text is a faithful stand-in for hub models that an offline test run cannot download. The
tokenizer is built with ``tokenizers`` and wrapped in ``PreTrainedTokenizerFast``: loading a BERT
vocabulary through ``AutoTokenizer`` on a qwen2 folder would silently produce garbage ids.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

# Qwen2's ChatML template: each turn "<|im_start|>role\n...<|im_end|>\n".
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, pad_token: str | None = "<|pad|>",
                        chatml: bool = False):
    """A byte-level BPE trained on ``texts``; ``chatml`` adds Qwen2's turn tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + ([pad_token] if pad_token else []) + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token=pad_token,
                                        clean_up_tokenization_spaces=False,
                                        additional_special_tokens=specials[len(specials) - 2:] if chatml else None)
    if chatml:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


TINY_SIZES = {"num_layers": 2, "hidden": 64, "heads": 4, "vocab_size": 2000, "seed": 0}


def build_tiny_causal_rm(out_dir: str, texts: Iterable[str], *, arch: str = "qwen2", pad_token: str | None = "<|pad|>",
                         chatml: bool = False, **sizes) -> str:
    """Write a random-init ``*ForSequenceClassification`` (num_labels=1) plus tokenizer to ``out_dir``.

    ``pad_token=None`` makes the tokenizer's pad token its EOS (the Llama-3 situation). ``sizes``
    override ``TINY_SIZES`` (layers, hidden size, heads, BPE vocabulary, weight seed).
    """
    from transformers import AutoModelForSequenceClassification, LlamaConfig, Qwen2Config

    unknown = set(sizes) - set(TINY_SIZES)
    if unknown:
        raise TypeError(f"unknown sizes {sorted(unknown)}; known: {sorted(TINY_SIZES)}")
    size = TINY_SIZES | sizes
    hidden, heads = size["hidden"], size["heads"]
    tokenizer = build_bpe_tokenizer(texts, size["vocab_size"], pad_token, chatml)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=size["num_layers"],
        num_attention_heads=heads, num_key_value_heads=heads // 2 if heads > 1 else 1, max_position_embeddings=2048,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(size["seed"])
    model = AutoModelForSequenceClassification.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def as_rmray_model(model_path: str, out_dir: str, *, max_length: int = 512, attributes=None,
                   attribute_weights=None) -> str:
    """Export a plain seq-cls model folder as an rmray model (weights + tokenizer + scoring spec), the
    way training's ``final/`` looks, so scoring/serving tests can start from untrained weights. With
    ``attributes``, a fresh head per attribute (seeded) combined by ``attribute_weights``."""
    from rmray.core.export import save_reward_model
    from rmray.core.model import load_hf_model, readout_kind
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    if attributes:
        torch.manual_seed(0)
    model = load_hf_model(model_path, pad_token_id=tokenizer.pad_token_id, attributes=attributes)
    spec = ScoringSpec(max_length=max_length, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
                       readout=readout_kind(model), attributes=attributes, attribute_weights=attribute_weights)
    return save_reward_model(model, tokenizer, spec, out_dir)


def plain_transformers_scores(model_path: str, texts: list[str], add_eos: bool = True,
                              read_last: bool = False, all_outputs: bool = False) -> list:
    """Independent reference for parity tests: stock transformers, one text at a time, no padding.

    Decoders get the EOS appended (rmray's default ``add_eos``) unless ``add_eos=False`` (a text the chat
    template rendered, which ends its own turns); encoders score the text as is. ``read_last``: the
    reward at the last position even where the pad id is the EOS id (Llama 3), where transformers' own
    pooling stops at the first "pad" -- done by transformers itself, with the pad id unset.
    ``all_outputs``: every output of a per-attribute model, a list per text.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    if read_last:
        model.config.pad_token_id = None  # one unpadded row: transformers reads its last position
    decoder = not model.config.is_encoder_decoder and hasattr(model, "score")
    out = []
    with torch.no_grad():
        for text in texts:
            if add_eos and decoder and tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
                text += tokenizer.eos_token
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
            out.append(logits.tolist() if all_outputs else logits[0].item())
    return out


def build_tiny_policy(out_dir: str, tokenizer_dir: str, *, hidden: int = 32, seed: int = 0) -> str:
    """A random 1-layer Qwen2 causal LM sharing ``tokenizer_dir``'s tokenizer: a policy for RL-loop tests."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_prm(base_dir: str, out_dir: str, *, max_length: int = 512, separator: str = "\n",
                   aggregate: str = "min") -> str:
    """A random-init two-label ``*ForTokenClassification`` on ``base_dir``'s config and tokenizer, saved as an
    rmray process reward model (``kind: process``), as training's ``final/`` of a PRM looks."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from rmray.core.export import save_reward_model
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    config = AutoConfig.from_pretrained(base_dir, num_labels=2, id2label={0: "wrong", 1: "correct"},
                                        label2id={"wrong": 0, "correct": 1})
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(config)
    spec = ScoringSpec(max_length=max_length, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
                       kind="process", step_separator=separator, prm_aggregate=aggregate)
    return save_reward_model(model, tokenizer, spec, out_dir)
