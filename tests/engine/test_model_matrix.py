"""Every detector x backbone x pooler trains a few iterations on tiny shapes and evaluates.

A representative subset runs by default (each model, each backbone, each pooler at least
once); the full matrix is ``slow``.
"""

from __future__ import annotations

import itertools

import pytest

from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.train import train
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector
from tests.conftest import TINY, compose_cfg

MODELS = ["faster", "mask", "cascade"]
BACKBONES = ["vgg16", "r50_c4", "r50_fpn", "r18_fpn"]
POOLERS = ["roi_pool", "roi_align"]
ANCHORS = {"vgg16": "paper_small", "r50_c4": "paper_small", "r50_fpn": "fpn_small",
           "r18_fpn": "fpn_small"}
# Each model, backbone and pooler at least once (r18_fpn + roi_align: the cascade_mask test).
DEFAULT = {("faster", "r50_c4", "roi_pool"), ("mask", "vgg16", "roi_align"),
           ("cascade", "r50_fpn", "roi_pool")}
# Few RoIs and narrow heads: the code paths are the same, the arithmetic much smaller.
FAST = TINY + ["schedule.max_iter=2", "schedule.checkpoint_period=2", "log.tensorboard=false",
               "dataset.train_size=4", "dataset.val_size=2", "model.rpn.pre_nms_top_n_train=200",
               "model.rpn.post_nms_top_n_train=50", "model.rpn.pre_nms_top_n_test=100",
               "model.rpn.post_nms_top_n_test=20", "sampler.roi.batch_size_per_image=16",
               "model.box_head.representation_size=64", "model.box_head.detections_per_img=10",
               "model.mask_head.layers=[32,32]", "model.mask_head.dim_reduced=32",
               "schedule.optimizer=sgd", "schedule.momentum=0"]  # no optimizer state to save


def overrides(model: str, backbone: str, pooler: str) -> list[str]:
    return [f"model={model}", f"backbone={backbone}", f"anchors={ANCHORS[backbone]}",
            f"pooler={pooler}", *FAST]


def combos():
    for combo in itertools.product(MODELS, BACKBONES, POOLERS):
        marks = [] if combo in DEFAULT else [pytest.mark.slow]
        yield pytest.param(*combo, marks=marks, id="-".join(combo))


@pytest.mark.parametrize(("model", "backbone", "pooler"), list(combos()))
def test_trains_and_evaluates(model, backbone, pooler, tmp_path):
    metrics = train(compose_cfg("train", overrides(model, backbone, pooler)), tmp_path / "run")
    assert metrics["iteration"] == 2
    assert metrics["bbox/AP"] is not None
    assert ("segm/AP" in metrics) == (model == "mask")


def test_cascade_mask_trains_and_evaluates_again_from_its_checkpoint(tmp_path):
    metrics = train(compose_cfg("train", overrides("cascade_mask", "r18_fpn", "roi_align")),
                    tmp_path / "run")
    assert metrics["segm/AP"] is not None and metrics["bbox/AP"] is not None
    # rcnn-eval's path: the model rebuilt from the checkpoint gives the same box and mask AP.
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    again = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={ckpt}"]), tmp_path / "eval")
    for key, value in metrics.items():
        if not key.startswith("val/"):  # the validation loss is training's, not rcnn-eval's
            assert again[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(("backbone", "norm"), [("vgg16", "gn"), ("vgg16", "frozen_bn"),
                                                ("mobilenet_v3_fpn", "gn")])
def test_unsupported_backbone_norm_is_named(backbone, norm):
    cfg = compose_cfg("train", [f"backbone={backbone}", f"backbone.norm={norm}"])
    with pytest.raises(ConfigError, match=f"backbone={backbone}.*norm={norm}"):
        build_detector(cfg, num_classes=3)


def test_single_map_backbone_with_pyramid_anchors_is_named():
    cfg = compose_cfg("train", ["backbone=r50_c4", "anchors=fpn"])
    with pytest.raises(ConfigError, match="anchors=fpn defines 5 feature map.*backbone=r50_c4"):
        build_detector(cfg, num_classes=3)


@pytest.mark.parametrize("preset", ["faster_vgg16_paper", "faster_r50_c4", "faster_r50_fpn",
                                    "mask_r50_fpn", "cascade_r50_fpn"])
def test_classic_recipe_presets_build(preset):
    from rcnn_cli.config import validate

    # No download here, and a narrow fc head (VGG's 4096-wide fc6 alone takes seconds to init).
    cfg = compose_cfg("train", [f"experiment={preset}", "backbone.weights=null",
                                "model.box_head.representation_size=64"])
    validate(cfg)
    assert cfg.model.name == preset.split("_")[0]
    model = build_detector(cfg, num_classes=20)
    per_location = {"faster_vgg16_paper": 9, "faster_r50_c4": 15}.get(preset, 3)
    assert model.rpn.anchor_generator.num_anchors_per_location()[0] == per_location
    assert model.rpn.ignore_border == (preset == "faster_vgg16_paper")
