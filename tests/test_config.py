"""Config tree: every option composes; typos, wrong types and missing values fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rcnn_cli.config import typed_train_config, validate
from rcnn_cli.errors import ConfigError
from tests.conftest import NO_OPTIMIZER_STATE, REPO, TINY, compose_cfg, run_cli

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    for group in ("model", "backbone", "anchors", "sampler", "schedule", "dataset"):
        assert group in GROUPS and any(g == group for g, _ in OPTIONS)


ALIASES = {("schedule", "four_step"): "alternating", ("anchors", "shapes"): "fpn_small",
           ("anchors", "voc"): "fpn", ("anchors", "coco"): "fpn"}

# Options whose files leave paths as ``???``: given here, and checked to be reported as missing.
REQUIRED = {
    ("dataset", "coco"): ["dataset.train_json=a.json", "dataset.train_images=img",
                          "dataset.val_json=b.json", "dataset.val_images=img"],
    ("dataset", "voc"): ["dataset.root=VOC"],
}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    required = REQUIRED.get((group, option), [])
    if required:
        with pytest.raises(ConfigError, match="missing value") as err:
            validate(compose_cfg("train", [f"{group}={option}"]))
        assert all(r.split("=")[0] in str(err.value) for r in required)
    cfg = compose_cfg("train", [f"{group}={option}", *required])
    validate(cfg)
    if group not in ("experiment", "recipe"):
        assert cfg[group].name == ALIASES.get((group, option), option)
    OmegaConf.to_container(cfg, resolve=True)


def test_eval_config_composes_with_and_without_dataset():
    cfg = compose_cfg("eval", ["ckpt=x.pt"])
    assert cfg.dataset is None
    validate(cfg)
    cfg = compose_cfg("eval", ["ckpt=x.pt", "dataset=shapes"])
    assert cfg.dataset.name == "shapes"


@pytest.mark.parametrize("mode", ["none", "flip", "flips", "scales"])
def test_every_tta_mode_passes_validation_and_others_are_named(mode):
    """The start-up check knows the modes that rcnn_cli.evaluation.tta builds."""
    validate(compose_cfg("eval", ["ckpt=x.pt", f"eval.tta={mode}"]))
    with pytest.raises(ConfigError, match="eval.tta"):
        validate(compose_cfg("eval", ["ckpt=x.pt", "eval.tta=mirror"]))


def test_cli_typo_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException, match="schedule.lrr"):
        compose_cfg("train", ["schedule.lrr=0.1"])


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("train", ["schedule.lr=fast"])
    assert "schedule.lr" in str(e.value) + str(e.value.__cause__)


def test_plus_typo_is_rejected_by_validate():
    cfg = compose_cfg("train", ["+schedule.lrr=0.1"])
    with pytest.raises(ConfigError, match="schedule.lrr"):
        validate(cfg)


def test_all_missing_values_are_listed_at_once():
    cfg = compose_cfg("eval")
    cfg.eval.batch_size = "???"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "ckpt" in str(e.value) and "eval.batch_size" in str(e.value)


def test_typo_in_a_yaml_file_fails_naming_the_key(tmp_path: Path):
    bad = tmp_path / "schedule"
    bad.mkdir()
    (bad / "typo.yaml").write_text("defaults:\n  - schedule_schema\n  - _self_\n"
                                   "name: typo\nmax_itre: 10\n")
    r = run_cli("rcnn-train", "--config-dir", str(tmp_path), "schedule=typo",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode != 0
    assert "max_itre" in r.stderr + r.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("args,key", [
    (["schedule.lrr=0.1"], "schedule.lrr"),
    (["+schedule.lrr=0.1"], "schedule.lrr"),
    (["schedule.max_iter=many"], "schedule.max_iter"),
])
def test_cli_errors_exit_before_any_work(tmp_path: Path, args, key):
    r = run_cli("rcnn-train", *args, f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0
    assert key in r.stderr + r.stdout
    assert not (tmp_path / "metrics.jsonl").exists()
    assert "Traceback" not in r.stderr


def test_rcnn_eval_without_ckpt_names_it(tmp_path: Path):
    r = run_cli("rcnn-eval", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0
    assert "ckpt" in r.stderr + r.stdout
    assert not (tmp_path / "metrics.json").exists()


def test_typed_train_config_restores_enums_and_rejects_unknown_keys():
    cfg = compose_cfg("train")
    stored = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    typed = typed_train_config(stored)
    assert typed.backbone.norm.name == "bn"
    stored["schedule"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        typed_train_config(stored)


@pytest.mark.parametrize("override", ["schedule.checkpoint_period=0", "log.period=0",
                                      "schedule.lr=-0.1", "schedule.max_iter=0"])
def test_out_of_range_values_are_named(override):
    cfg = compose_cfg("train", [override])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(cfg)


def test_shapes_recipe_applies_to_the_default_run_only():
    """`make train` keeps the light shapes recipe; a named backbone or another dataset gets
    the plain group defaults (torchvision's layout for r50_fpn); anchors follow the dataset
    unless chosen."""
    default = compose_cfg("train")
    assert default.model.box_head.representation_size == 256
    assert default.pooler.canonical_scale == 56 and default.anchors.name == "fpn_small"
    assert list(default.anchors.sizes) == [[16], [32], [64], [128], [256]]
    assert default.schedule.optimizer.value == "adamw"
    for over in (["backbone=r50_fpn"], ["dataset=voc", "dataset.root=X"]):
        cfg = compose_cfg("train", over)
        assert cfg.model.box_head.representation_size == 1024
        assert cfg.pooler.canonical_scale == 224 and cfg.schedule.optimizer.value == "sgd"
        assert cfg.sampler.roi.batch_size_per_image == 512
    assert compose_cfg("train", ["dataset=voc", "dataset.root=X"]).anchors.name == "fpn"
    assert compose_cfg("train", ["anchors=fpn"]).anchors.name == "fpn"
    named = compose_cfg("train", ["dataset=voc", "dataset.root=X", "experiment=scratch_cpu"])
    assert named.model.box_head.representation_size == 256
    assert named.pooler.canonical_scale == 224  # small-object settings only under shapes_cpu


def test_finetune_presets_load_torchvision_coco_weights_with_its_layout():
    for name, weights in (("finetune_faster_r50_fpn", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"),
                          ("finetune_mask_r50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"),
                          ("finetune_faster_mobilenet_v3_fpn",
                           "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1")):
        cfg = compose_cfg("train", [f"experiment={name}"])
        validate(cfg)
        assert cfg.model.weights == weights and cfg.backbone.weights is None
        assert cfg.backbone.norm.value == "frozen_bn" and cfg.backbone.trainable_layers == 3
        assert cfg.model.box_head.representation_size == 1024
    assert compose_cfg("train", ["experiment=finetune_faster_r50_fpn"]).backbone.norm_eps == 0.0


@pytest.mark.parametrize("cpus,expected", [(2, 2), (1, 1), (16, 4)])
def test_loader_workers_default_to_what_the_machine_has(monkeypatch, caplog, cpus, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    cfg = compose_cfg("train", ["dataset=voc", "dataset.root=VOC"])
    with caplog.at_level("INFO", logger="rcnn_cli"):
        assert cfg.dataset.num_workers == expected
    chosen = [r.getMessage() for r in caplog.records if "num_workers" in r.getMessage()]
    assert chosen == ([] if expected == 4 else
                      [f"dataset.num_workers: {expected} (the dataset's default 4; {cpus} CPUs "
                       "available)"])
    explicit = compose_cfg("train", ["dataset=voc", "dataset.root=VOC", "dataset.num_workers=3"])
    assert explicit.dataset.num_workers == 3  # a command-line choice is taken as given


def test_small_data_preset_trains_end_to_end(tmp_path):
    """experiment=small_data on top of shapes_cpu: vertical flips, and nothing the BCCD
    measurements left out (EMA, photometric distortion, scale jitter, early stopping)."""
    import json

    from rcnn_cli.engine.train import train

    over = ["experiment=small_data", *TINY, "schedule.eval_period=2", "log.images_every=0"]
    assert compose_cfg("train", over).schedule.optimizer.value == "adamw"  # shapes_cpu under
    cfg = compose_cfg("train", [*over, *NO_OPTIMIZER_STATE])  # checkpoints without moments
    assert cfg.dataset.vflip_prob == 0.5
    assert cfg.schedule.ema.decay == 0 and cfg.schedule.early_stop.patience == 0
    assert cfg.dataset.photometric_distort == 0 and not cfg.dataset.scale_jitter
    metrics = train(cfg, tmp_path)
    assert "val/total_loss" in metrics and metrics["iteration"] == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("val/total_loss" in r and "bbox/AP" in r for r in rows)
    assert (tmp_path / "confusion.md").exists() and (tmp_path / "confusion.png").exists()
