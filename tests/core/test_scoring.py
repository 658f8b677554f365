"""Scorer: token-budget batches and shared-prompt group scoring equal plain one-at-a-time scores."""

import pytest

from rmray.core.packing import split_shared_prefix
from rmray.core.scoring import Scorer
from rmray.testing import plain_transformers_scores as plain_scores

PROMPT = "\n\nHuman: What should I cook tonight with rice, eggs and spinach?\n\nAssistant:"
RESPONSES = [" Fried rice.", " Try a spinach omelette with rice on the side, seasoned with soy.", " x",
             " Fried rice with spinach and a fried egg on top.", " " + "long answer " * 40]


@pytest.mark.parametrize("fixture", ["rm_qwen", "rm_minilm", "rm_llama"])
def test_group_and_budget_batches_equal_plain_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    scorer = Scorer.load(path)
    # pad == eos (Llama 3): transformers' own pooling would stop one token early (see test_model), so the
    # reference reads the last position, as transformers does for an unpadded row without a pad id
    expected = plain_scores(path, [PROMPT + r for r in RESPONSES], read_last=fixture == "rm_llama")
    grouped = scorer.score_group(PROMPT, RESPONSES)
    batched = scorer.score([PROMPT] * len(RESPONSES), RESPONSES)
    tiny_budget = scorer.score_ids([scorer.encode(PROMPT, r) for r in RESPONSES], max_batch_tokens=64)
    assert grouped == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert batched == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert tiny_budget == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_many_groups_with_different_prompts_and_a_one_token_budget(rm_qwen):
    scorer = Scorer.load(rm_qwen)
    groups = [(PROMPT, RESPONSES[:3]), ("", [" hello", " hello there"]), ("\n\nHuman: hi\n\nAssistant:", [" hi"])]
    ids = [[scorer.encode(p, r) for r in rs] for p, rs in groups]
    together = scorer.score_id_groups(ids)
    one_by_one = scorer.score_id_groups(ids, max_batch_tokens=1)  # every group its own forward
    for (prompt, responses), got, alone in zip(groups, together, one_by_one):
        want = scorer.score([prompt] * len(responses), responses)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert alone == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_shared_prefix_leaves_every_response_a_token():
    prefix, suffixes = split_shared_prefix([[1, 2, 3], [1, 2, 3], [1, 2, 3, 4]])
    assert prefix == [1, 2] and suffixes == [[3], [3], [3, 4]]
    prefix, suffixes = split_shared_prefix([[5], [6, 7]])
    assert prefix == [] and suffixes == [[5], [6, 7]]


def test_normalize_uses_saved_stats(rm_qwen):
    scorer = Scorer.load(rm_qwen)
    assert scorer.normalize([1.0]) is None
    scorer.spec.reward_mean, scorer.spec.reward_std = 1.0, 2.0
    assert scorer.normalize([3.0, -1.0]) == [1.0, -1.0]


def test_a_saved_model_is_readable_like_any_folder(rm_qwen):
    """Written through a private temporary folder, the model still gets the umask's modes, not 700/600."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(rm_qwen).st_mode) == 0o777 & ~umask
    for name in os.listdir(rm_qwen):
        assert stat.S_IMODE(os.stat(os.path.join(rm_qwen, name)).st_mode) == 0o666 & ~umask, name


def test_precision_auto_is_float32_on_cpu_and_bfloat16_runs_under_autocast(rm_qwen):
    """``auto`` scores in float32 off a GPU (bit for bit); ``bfloat16`` really runs the forward in bf16:
    close to the float32 rewards, not equal to them, in both the padded and the group path."""
    import pytest

    from rmray.core.scoring import Scorer
    from rmray.testing import plain_transformers_scores

    prompts = ["Q: name a colour.\nA:", "Q: 2+2?\nA:", "Q: say hi\nA:"]
    responses = [" blue", " 4", " hello there, how are you today?"]
    expected = plain_transformers_scores(rm_qwen, [p + r for p, r in zip(prompts, responses)])
    auto = Scorer.load(rm_qwen)
    assert auto.precision == "float32"
    assert auto.score(prompts, responses) == pytest.approx(expected, abs=1e-5)
    bf16 = Scorer.load(rm_qwen, precision="bfloat16")
    got = bf16.score(prompts, responses)
    scale = max(abs(x) for x in expected)
    assert got != pytest.approx(expected, abs=1e-6)  # autocast ran: bf16 rounding shows
    assert got == pytest.approx(expected, abs=0.05 * scale)
    group = bf16.score_group(prompts[0], responses)
    assert group == pytest.approx(auto.score_group(prompts[0], responses), abs=0.05 * scale)
    with pytest.raises(ValueError, match="precision='fp8'"):
        Scorer.load(rm_qwen, precision="fp8")
