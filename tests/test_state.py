import json
import os

import pytest
import torch

from rmray.config import TrainConfig
from rmray.train.schedule import build_scheduler, lr_factor
from rmray.train.state import OPTIMIZER_FILE, TRAINER_STATE, load_training_state, save_training_state


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
