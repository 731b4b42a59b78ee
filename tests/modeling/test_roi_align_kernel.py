"""pooler.kernel: the vectorised RoIAlign is a drop-in for torchvision's inside the detector."""

from __future__ import annotations

import pytest
import torch

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import collate
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.poolers import pool_op, roi_align_kernel
from rcnn_cli.ops.roi_align import roi_align as vectorised
from tests.conftest import TINY, compose_cfg


def losses_and_grads(kernel: str, model_name: str):
    cfg = compose_cfg("train", TINY + [f"pooler.kernel={kernel}", f"model={model_name}"])
    data = build_dataset(cfg.dataset, "train", train=True,
                         with_masks=model_name == "mask")
    images, targets = collate([data[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_detector(cfg, len(data.raw.classes)).train()
    torch.manual_seed(1)
    losses = model(list(images), list(targets))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


@pytest.mark.parametrize("model_name", ["faster", "mask"])
def test_vectorised_kernel_gives_torchvision_losses_and_gradients(model_name):
    ref_losses, ref_grads = losses_and_grads("torchvision", model_name)
    losses, grads = losses_and_grads("vectorised", model_name)
    # Fixed sampling_ratio (the default recipe's 1): the kernels are bit-identical.
    assert losses == ref_losses
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert torch.equal(grads[k], ref_grads[k]), k


def test_auto_picks_the_vectorised_kernel_on_cpu_only():
    assert roi_align_kernel("auto", torch.device("cpu")) is vectorised
    assert roi_align_kernel("auto", torch.device("cuda")) is not vectorised
    assert roi_align_kernel("vectorised", torch.device("cuda")) is vectorised
    assert roi_align_kernel("torchvision", torch.device("cpu")) is not vectorised


def test_unknown_kernel_is_refused_at_config_and_build_time():
    with pytest.raises(Exception, match="pooler.kernel"):
        compose_cfg("train", ["pooler.kernel=cuda_magic"])
    with pytest.raises(ConfigError, match="pooler.kernel=cuda_magic"):
        pool_op("roi_align", 7, 2, False, "cuda_magic")
