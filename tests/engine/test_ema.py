"""Weight EMA: the averaging and warm-up math, and exact resume through the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rcnn_cli.engine.ema import WeightEMA, inference_weights
from rcnn_cli.engine.train import train
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg
from tests.engine.test_resume import assert_same


def test_average_follows_the_warmed_up_decay():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = WeightEMA(model, decay=0.9, warmup=4.0)
    w0 = model[0].weight.detach().clone()
    expected = w0.clone()
    for t in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        ema.update(model)
        d = 0.9 * (1 - math.exp(-t / 4.0))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        assert ema.current_decay() == pytest.approx(d)
    assert torch.allclose(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 5  # integer buffers are copied
    assert not ema.module.training and not ema.module[0].weight.requires_grad
    first = 0.9 * (1 - math.exp(-1 / 4.0))
    assert first < 0.2  # early steps follow the weights, not the initialisation


def test_state_round_trip_is_exact():
    model = nn.Linear(3, 2)
    a = WeightEMA(model, 0.99, 10.0)
    for _ in range(3):
        a.update(model)
    b = WeightEMA(nn.Linear(3, 2), 0.99, 10.0)
    b.load_state_dict(a.state_dict())
    assert b.updates == 3 and all(torch.equal(a.module.state_dict()[k], v)
                                  for k, v in b.module.state_dict().items())


FLAT = TINY + NO_OPTIMIZER_STATE + ["schedule.decay=step", "schedule.decay_steps=[]", "log.tensorboard=false",
               "schedule.ema.decay=0.9", "schedule.ema.warmup=2", "log.images_every=0",
               "dataset.val_size=1", "schedule.max_iter=3"]


def test_resumed_run_restores_the_average_exactly(tmp_path):
    train(compose_cfg("train", FLAT), tmp_path / "full")
    train(compose_cfg("train", FLAT + ["schedule.max_iter=2"]), tmp_path / "part")
    train(compose_cfg("train", FLAT + [f"resume={tmp_path / 'part'}"]), tmp_path / "resumed")
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["ema"]["updates"] == 3
    assert_same(a["ema"], b["ema"], "ema")
    assert_same(a["model"], b["model"], "model")
    # the export and rcnn-eval use the average, not the raw weights
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "full" / "export" / "model.safetensors")
    assert_same(exported, dict(inference_weights(a)), "export")
    name = next(k for k, v in a["model"].items() if v.is_floating_point() and v.numel() > 1
                and not torch.equal(v, a["ema"]["weights"][k]))
    assert not torch.equal(exported[name], a["model"][name])
