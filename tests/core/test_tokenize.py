import pytest

from rmray.core.formats import BadRow, PreferencePair, normalize_row
from rmray.core.spec import ScoringSpec
from rmray.core.tokenize import encode, encode_pair
from rmray.core.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def qwen_tok(tiny_qwen):
    return load_tokenizer(tiny_qwen)


@pytest.fixture(scope="module")
def bert_tok(minilm_path):
    return load_tokenizer(minilm_path)


def spec_for(tok, **kw):
    return ScoringSpec(eos_token=tok.eos_token, pad_token=tok.pad_token, **kw)


def test_whole_string_tokenization_matches_plain_tokenizer(qwen_tok):
    """Same ids as tokenizing prompt + response + EOS in one go (what TRL and transformers do)."""
    prompt, response = "\n\nHuman: How do I boil an egg?\n\nAssistant:", " Boil it for 9 minutes."
    ids = encode(qwen_tok, spec_for(qwen_tok), prompt, response).ids
    assert ids == qwen_tok(prompt + response + qwen_tok.eos_token)["input_ids"]
    assert ids[-1] == qwen_tok.eos_token_id


def test_truncate_cuts_prompt_from_left_and_keeps_response(qwen_tok):
    prompt = "".join(f"\n\nHuman: question number {i}?\n\nAssistant: answer {i}." for i in range(30)) + "\n\nHuman: last?\n\nAssistant:"
    response = " The final answer."
    full = encode(qwen_tok, spec_for(qwen_tok, max_length=10_000), prompt, response).ids
    cut = encode(qwen_tok, spec_for(qwen_tok, max_length=40), prompt, response)
    assert cut.truncated and len(cut.ids) == 40
    assert cut.ids == full[-40:]  # left truncation of the prompt: the latest turns and the whole response survive
    assert qwen_tok.decode(cut.ids).endswith("last?\n\nAssistant: The final answer.<|endoftext|>")


def test_truncate_cuts_response_end_but_keeps_eos(qwen_tok):
    response = " word" * 100
    enc = encode(qwen_tok, spec_for(qwen_tok, max_length=20), "Q:", response)
    assert len(enc.ids) == 20 and enc.truncated
    assert enc.ids[-1] == qwen_tok.eos_token_id  # the reward is read at the EOS; it survives the cut
    assert "Q:" not in qwen_tok.decode(enc.ids)


def test_encoder_truncation_keeps_cls_and_sep(bert_tok):
    prompt = " ".join(f"sentence {i}." for i in range(200))
    enc = encode(bert_tok, spec_for(bert_tok, max_length=32), prompt, " the answer is here")
    assert len(enc.ids) == 32
    assert enc.ids[0] == bert_tok.cls_token_id and enc.ids[-1] == bert_tok.sep_token_id
    assert bert_tok.decode(enc.ids[1:-1]).endswith("the answer is here")


def test_drop_and_error_policies(qwen_tok):
    pair = PreferencePair("long prompt " * 50, " yes", " no")
    with pytest.raises(BadRow) as info:
        encode_pair(qwen_tok, spec_for(qwen_tok, max_length=16, truncation="drop"), pair)
    assert info.value.reason == "too_long"
    with pytest.raises(ValueError, match="more than max_length=16"):
        encode_pair(qwen_tok, spec_for(qwen_tok, max_length=16, truncation="error"), pair)
    assert encode_pair(qwen_tok, spec_for(qwen_tok, max_length=16), pair).truncated


def test_no_pair_dropped_under_truncate(qwen_tok, hh_rows):
    spec = spec_for(qwen_tok, max_length=64)
    valid = [normalize_row(r, "implicit") for i, r in enumerate(hh_rows[:300]) if i != 86]  # 86: blank answer
    pairs = [encode_pair(qwen_tok, spec, p) for p in valid]
    assert len(pairs) == len(valid) == 299
    assert all(len(p.chosen_ids) <= 64 and len(p.rejected_ids) <= 64 for p in pairs)
    assert sum(p.truncated for p in pairs) > 100  # most hh dialogues exceed 64 tokens


def test_pair_identical_after_truncation_is_a_bad_row(qwen_tok):
    pair = PreferencePair("Q:", " same start " * 20 + "A", " same start " * 20 + "B")
    with pytest.raises(BadRow) as info:
        encode_pair(qwen_tok, spec_for(qwen_tok, max_length=12), pair)
    assert info.value.reason == "identical_chosen_rejected"


def test_conversational_uses_chat_template(qwen_tok, bert_tok):
    msgs = [{"role": "user", "content": "hi"}]
    pair = PreferencePair(msgs, [{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "bye"}])
    with pytest.raises(ValueError, match="chat_template=plain"):
        encode_pair(bert_tok, spec_for(bert_tok), pair)
    plain = load_tokenizer(bert_tok.name_or_path, chat_template="plain")
    enc = encode_pair(plain, spec_for(plain, readout="pooler"), pair)
    assert plain.decode(enc.chosen_ids) == "[CLS] user : hi assistant : hello [SEP]"


def test_whole_text_rules(rm_qwen_chat, tiny_qwen):
    """vLLM-style whole texts: a chat-rendered text is the conversation (no EOS added), plain text gets
    the EOS, and a too-long text keeps its end (the response)."""
    from rmray.core.spec import PLAIN_CHAT_TEMPLATE
    from rmray.core.tokenize import encode_text, is_rendered_chat, keep_end

    chat_tok = load_tokenizer(rm_qwen_chat)
    spec = spec_for(chat_tok)
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    rendered = chat_tok.apply_chat_template(messages, tokenize=False)
    assert rendered.endswith("<|im_end|>\n") and is_rendered_chat(chat_tok, rendered)
    assert encode_text(chat_tok, spec, rendered).ids == encode(chat_tok, spec, messages[:1], messages[1:]).ids
    assert encode_text(chat_tok, spec, rendered).ids == chat_tok(rendered)["input_ids"]
    plain = "Human: hi\n\nAssistant: hello"
    assert not is_rendered_chat(chat_tok, plain)
    assert encode_text(chat_tok, spec, plain).ids == chat_tok(plain + "<|endoftext|>")["input_ids"]
    plain_template = load_tokenizer(tiny_qwen)
    plain_template.chat_template = PLAIN_CHAT_TEMPLATE  # an assistant turn ends "<|endoftext|>\n": told apart
    assert is_rendered_chat(plain_template, "user: hi\nassistant: hello<|endoftext|>\n")
    assert encode_text(plain_template, spec, "user: hi there\nassistant: hello<|endoftext|>\n").ids == \
        encode(plain_template, spec, messages[:1], messages[1:]).ids
    assert not is_rendered_chat(plain_template, "user: hi\nassistant: hello\n")  # plain text: EOS appended
    long_text = "word " * 200 + "the response"
    ids = chat_tok(long_text + "<|endoftext|>")["input_ids"]
    cut = encode_text(chat_tok, spec_for(chat_tok, max_length=30), long_text)
    assert cut.truncated and cut.ids == ids[-30:]
    assert encode_text(chat_tok, spec_for(chat_tok, max_length=300), long_text, max_length=12).ids == ids[-12:]
    assert keep_end([5, 6, 7, 8], spec_for(chat_tok, max_length=3)).ids == [6, 7, 8]
    with pytest.raises(BadRow):
        keep_end([5, 6, 7, 8], spec_for(chat_tok, max_length=3, truncation="drop"))
