"""Validation loss: the training loss computation, with no gradient and nothing updated."""

from __future__ import annotations

import torch

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader, sample_seed
from rcnn_cli.engine.val_loss import batch_losses, validation_loss
from rcnn_cli.modeling import seeded_sampler
from rcnn_cli.modeling.backbones import eval_frozen_norms
from rcnn_cli.modeling.build import build_detector
from tests.conftest import TINY, compose_cfg


def setup(norm: str):
    cfg = compose_cfg("train", [*TINY, f"backbone.norm={norm}"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    seeded_sampler.install(model)
    view = build_dataset(cfg.dataset, "val", train=False)
    return model, view


def test_equals_the_training_loss_on_the_same_batch():
    model, view = setup("frozen_bn")
    images, targets = next(iter(eval_loader(view, 2, 0)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = batch_losses(model.eval(), images, targets, seed=0)
    # the trainer's computation at iteration 0 (Trainer.forward), without the backward pass
    seeded_sampler.set_seeds(model, [sample_seed(0, 0, int(t["image_id"])) for t in targets])
    eval_frozen_norms(model.train())
    with torch.no_grad():
        train = model(images, targets)
    assert set(val) == set(train) and len(val) == 4
    for k in val:
        assert torch.equal(val[k], train[k]), k
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_statistics_stay_frozen_and_modes_are_restored():
    model, view = setup("bn")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = validation_loss(model, eval_loader(view, 2, 0), torch.device("cpu"), seed=0)
    assert {"val/total_loss", "val/loss_classifier", "val/loss_objectness"} <= set(val)
    total = sum(v for k, v in val.items() if k != "val/total_loss")
    assert abs(val["val/total_loss"] - total) < 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
