import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.engine.pretrain import PretrainParams, crop_boxes, pretrain, sample_batch
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.backbones import build_backbone


def test_background_crops_avoid_every_object():
    rng = np.random.default_rng(0)
    objects = np.array([[10, 10, 50, 50], [60, 60, 120, 110]], np.float32)
    boxes, is_obj = crop_boxes(objects, rng, n_bg=8, size=128)
    assert is_obj.sum() == 2 and (~is_obj).sum() == 8
    iou = box_iou(torch.from_numpy(boxes[~is_obj]), torch.from_numpy(objects))
    assert iou.max() < 0.3
    # object crops keep the object inside (10-50 % context, shift <= 10 %)
    assert (box_iou(torch.from_numpy(boxes[is_obj]), torch.from_numpy(objects)).diag() > 0.4).all()


def test_batch_labels_match_crops():
    p = PretrainParams(batch_size=16, crop_size=32, images=10)
    x, y = sample_batch(ShapesDataset("train", 10, 128, seed=p.seed), np.random.default_rng(0), p)
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert set(y.tolist()) <= {0, 1, 2, 3} and (y == 0).any() and (y > 0).any()


# Batches of 16 and 64 held-out crops (the default is 2000): the held-out accuracy runs in
# batches of the training batch size, and its forward passes were most of these tests' time.
def test_pretrained_file_loads_as_backbone_weights(tmp_path):
    p = PretrainParams(iters=20, batch_size=16, crop_size=32, images=10, held_out=64)
    out = tmp_path / "r18.pt"
    result = pretrain(p, out)
    assert out.is_file() and 0 <= result["held_out_acc"] <= 1
    saved = torch.load(out, weights_only=True)
    spec = build_backbone("r18_fpn", str(out), 5, "bn", 64)
    trunk = spec.module.body
    assert torch.equal(trunk.conv1.weight, saved["conv1.weight"])
    assert torch.equal(trunk.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])


def test_context_range_sets_the_crop_size_around_the_object():
    objects = np.array([[40, 40, 60, 60]], np.float32)
    boxes, _ = crop_boxes(objects, np.random.default_rng(0), n_bg=1, size=128, context=(3, 3))
    side = boxes[0, 2:] - boxes[0, :2]
    assert np.allclose(side, 60)  # 3 x the 20 px object


def test_sgd_pretraining_and_bad_options(tmp_path):
    p = PretrainParams(arch="alexnet", iters=20, batch_size=16, crop_size=64, images=10,
                       optimizer="sgd", lr=0.01, context_min=1.5, context_max=3.0, held_out=64)
    assert 0 <= pretrain(p, tmp_path / "a.pt")["held_out_acc"] <= 1
    with pytest.raises(ConfigError, match="optimizer=adam: use adamw or sgd"):
        pretrain(PretrainParams(optimizer="adam"), tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="context 2.0-1.5"):
        pretrain(PretrainParams(context_min=2.0, context_max=1.5), tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="held_out=0: need at least 1 crop"):
        pretrain(PretrainParams(held_out=0), tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="iters=10: need at least 20"):
        pretrain(PretrainParams(iters=10), tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()
