import json
import os

import pytest
import torch

from rmray.config import TrainConfig
from rmray.train.checkpoint import OPTIMIZER_FILE, TRAINER_STATE, load_training_state, save_training_state
from rmray.train.schedule import build_scheduler, lr_factor


def test_training_state_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = build_scheduler(opt, TrainConfig(warmup_steps=2).optimization, total_steps=10)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    save_training_state(str(tmp_path), optimizer_state=opt.state_dict(), scheduler=sched,
                        position={"step": 3, "epoch": 0, "batches_in_epoch": 3})
    assert {OPTIMIZER_FILE, TRAINER_STATE} <= set(os.listdir(tmp_path))
    json.load(open(tmp_path / TRAINER_STATE))  # plain JSON, no pickle anywhere

    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = build_scheduler(opt2, TrainConfig(warmup_steps=2).optimization, total_steps=10)
    state, optimizer_state = load_training_state(str(tmp_path), scheduler=sched2)
    opt2.load_state_dict(optimizer_state)
    assert (state["step"], state["batches_in_epoch"]) == (3, 3)
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], opt2.state[p][key])
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize("kind, step, expected", [
    ("linear", 0, 0.0), ("linear", 1, 0.5), ("linear", 2, 1.0), ("linear", 6, 0.5), ("linear", 10, 0.0),
    ("cosine", 6, 0.5), ("cosine", 10, 0.0), ("constant", 9, 1.0),
])
def test_lr_schedule_hand_computed(kind, step, expected):
    # warmup 2 steps to the peak, then decay over the remaining 8 steps
    assert lr_factor(step, warmup=2, total=10, kind=kind) == pytest.approx(expected)


def test_a_saved_checkpoint_loads_back_into_a_fresh_model_optimizer_and_scheduler(rm_qwen, tmp_path):
    """save_checkpoint and load_checkpoint are one pair: what one writes (weights, Adam moments, the
    schedule, the position, torch's RNG) the other restores into a model built from scratch."""
    from types import SimpleNamespace

    from rmray.core.model import RewardModel, load_hf_model
    from rmray.core.spec import ScoringSpec
    from rmray.core.tokenizer import load_tokenizer
    from rmray.train.checkpoint import checkpoint_problem, load_checkpoint, save_checkpoint
    from rmray.train.parallel import DDPStrategy

    def fresh(seed):
        torch.manual_seed(seed)
        raw = RewardModel(load_hf_model(rm_qwen))
        for p in raw.parameters():  # distinct weights per seed, so a load that did nothing is visible
            p.data.add_(torch.randn_like(p) * 0.01)
        opt = torch.optim.AdamW(raw.parameters(), lr=1e-3)
        sched = build_scheduler(opt, TrainConfig(warmup_steps=2).optimization, total_steps=10)
        return SimpleNamespace(model=raw, raw=raw, strategy=DDPStrategy()), opt, sched

    compute, opt, sched = fresh(0)
    ids = torch.tensor([[5, 6, 7, 8]])
    for _ in range(2):
        compute.raw(ids, torch.ones_like(ids)).sum().backward()
        opt.step()
        sched.step()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    save_checkpoint(str(tmp_path), compute=compute, tokenizer=load_tokenizer(rm_qwen), spec=ScoringSpec.load(rm_qwen),
                    model_state=None, optimizer_state=opt.state_dict(), scheduler=sched,
                    position={"step": 2, "epoch": 0, "batches_in_epoch": 2, "pairs_seen": 16})
    assert checkpoint_problem(str(tmp_path)) is None

    other, opt2, sched2 = fresh(1)
    torch.manual_seed(999)
    position = load_checkpoint(str(tmp_path), compute=other, optimizer=opt2, scheduler=sched2)
    assert (position["step"], position["batches_in_epoch"], position["pairs_seen"]) == (2, 2, 16)
    for (name, a), b in zip(compute.raw.state_dict().items(), other.raw.state_dict().values()):
        assert torch.equal(a, b), name
    for p, q in zip(compute.raw.parameters(), other.raw.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG is where it was when the checkpoint was saved
