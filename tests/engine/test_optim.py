"""Optimizers and their parameter groups; learning-rate schedule: linear warm-up, step and
cosine decay."""

from __future__ import annotations

import math

import pytest

from rcnn_cli.engine.optim import lr_factor


def test_warmup_is_linear_from_the_factor():
    assert lr_factor(0, 100, 10, 0.001, "step", [], 0.1) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, 0.001, "step", [], 0.1) == pytest.approx(0.5005)
    assert lr_factor(10, 100, 10, 0.001, "step", [], 0.1) == 1.0


def test_step_decay_at_fractions_of_max_iter():
    f = [lr_factor(i, 100, 0, 1.0, "step", [0.5, 0.8], 0.1) for i in (49, 50, 79, 80)]
    assert f == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_cosine_decay():
    assert lr_factor(50, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))


def test_optimizer_choice():
    import torch

    from rcnn_cli.engine.optim import build_optimizer

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    sgd = build_optimizer(model, "sgd", 0.1, 0.9, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups[0]["params"]) == 1
    adamw = build_optimizer(model, "adamw", 1e-3, 0.9, 0.05)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.9, 0.999)
    assert adamw.param_groups[0]["weight_decay"] == 0.05


def test_fused_optimizer_steps_like_the_loop_up_to_rounding():
    import torch

    from rcnn_cli.engine.optim import build_optimizer

    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for name in ("adamw", "sgd"):
        loop, fused = (build_optimizer(m, name, 1e-2, 0.9, 0.05, fused=f)
                       for m, f in zip(models, (False, True)))
        assert fused.defaults["fused"] and not loop.defaults["fused"]
        for _ in range(3):
            for m, opt in zip(models, (loop, fused)):
                opt.zero_grad()
                m(torch.ones(2, 4)).square().sum().backward()
                opt.step()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_offset_layers_learn_at_their_own_rate_and_follow_the_schedule():
    import torch

    from rcnn_cli.engine.optim import build_optimizer, build_scheduler
    from rcnn_cli.ops.deform_conv import OffsetConv2d

    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), OffsetConv2d(4, 9))
    opt = build_optimizer(model, "adamw", 1e-3, 0.9, 0.05, offset_lr_mult=0.1)
    plain, offsets = opt.param_groups
    assert [p.shape for p in offsets["params"]] == [(18, 4, 3, 3), (18,)]
    assert len(plain["params"]) == 2
    assert (plain["lr"], offsets["lr"]) == pytest.approx((1e-3, 1e-4))
    sched = type("S", (), {"decay": "cosine", "decay_steps": [], "max_iter": 10,
                           "warmup_iters": 0, "warmup_factor": 1.0, "gamma": 0.1})
    scheduler = build_scheduler(opt, sched)
    for _ in range(5):
        opt.step()
        scheduler.step()
    assert (plain["lr"], offsets["lr"]) == pytest.approx((5e-4, 5e-5))


def test_without_offset_layers_or_at_one_a_single_group_as_before():
    import torch

    from rcnn_cli.engine.optim import build_optimizer
    from rcnn_cli.ops.deform_conv import OffsetConv2d

    opt = build_optimizer(torch.nn.Conv2d(2, 2, 1), "sgd", 0.1, 0.9, 0.0, offset_lr_mult=0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.1
    opt = build_optimizer(OffsetConv2d(2, 9), "sgd", 0.1, 0.9, 0.0, offset_lr_mult=1.0)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 2


def test_a_checkpoint_with_other_groups_names_the_key():
    import torch

    from rcnn_cli.engine.optim import build_optimizer, check_groups
    from rcnn_cli.errors import ConfigError
    from rcnn_cli.ops.deform_conv import OffsetConv2d

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), OffsetConv2d(2, 9))
    old = build_optimizer(model, "adamw", 1e-3, 0.9, 0.05, offset_lr_mult=1.0).state_dict()
    new = build_optimizer(model, "adamw", 1e-3, 0.9, 0.05, offset_lr_mult=0.1)
    with pytest.raises(ConfigError, match=r"run\.pt.*1 parameter group.*offset_lr_mult"):
        check_groups(old, new, "run.pt")
    check_groups(new.state_dict(), new, "run.pt")
