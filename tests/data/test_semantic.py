"""Semantic maps for HTC: from instance masks, from a COCO-stuff style folder, batched."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.semantic import (
    IGNORE,
    check_classes,
    semantic_from_instances,
    semantic_targets,
)
from rcnn_cli.errors import DataError
from tests.conftest import compose_cfg
from tests.data.helpers import shapes_to_disk


def test_instances_paint_their_class_later_ones_on_top():
    masks = torch.zeros(2, 4, 5, dtype=torch.uint8)
    masks[0, :2, :3] = 1
    masks[1, 1:3, 2:4] = 1
    sem = semantic_from_instances(masks, torch.tensor([2, 3]))
    assert sem.tolist() == [[2, 2, 2, 0, 0], [2, 2, 3, 3, 0], [0, 0, 3, 3, 0], [0, 0, 0, 0, 0]]


def test_batched_maps_pad_with_ignore_and_prefer_a_given_map():
    masks = torch.ones(1, 2, 3, dtype=torch.uint8)
    given = torch.full((2, 2), 7)
    targets = [{"masks": masks, "labels": torch.tensor([1])},
               {"masks": masks, "labels": torch.tensor([1]), "semantic": given}]
    out = semantic_targets(targets, [(2, 3), (2, 2)], (4, 4))
    assert out[0].tolist() == [[1, 1, 1, IGNORE], [1, 1, 1, IGNORE], [IGNORE] * 4, [IGNORE] * 4]
    assert out[1, :2, :2].eq(7).all() and out[1, 2:].eq(IGNORE).all()
    with pytest.raises(DataError, match="'semantic' maps or instance 'masks'"):
        semantic_targets([{"labels": torch.tensor([1])}], [(2, 2)], (2, 2))
    with pytest.raises(DataError, match="model.htc.semantic_classes"):
        check_classes(out[1], 4)


def test_a_stuff_folder_is_read_and_transformed_with_its_image(tmp_path):
    paths = shapes_to_disk(tmp_path, n_train=4, n_val=2)
    ds = [f"dataset.{k}={v}" for k, v in paths.items() if k != "voc_root"]
    cfg = compose_cfg("train", ["dataset=coco", *ds, "dataset.with_masks=true",
                                "dataset.min_size=96", "dataset.max_size=96",
                                "dataset.flip_prob=1.0"])
    plain = build_dataset(cfg.dataset, "train", train=True, with_masks=True)
    folder = tmp_path / "stuff"
    folder.mkdir()
    for i in range(len(plain.raw)):
        _, target = plain.raw.raw(i)
        sem = semantic_from_instances(torch.as_tensor(target["masks"]),
                                      torch.as_tensor(target["labels"]))
        name = plain.raw.store.file_name(i).rsplit(".", 1)[0] + ".png"
        Image.fromarray(sem.to(torch.uint8).numpy()).save(folder / name)
    cfg.dataset.semantic_dir = str(folder)
    view = build_dataset(cfg.dataset, "train", train=True, with_masks=True)
    image, target = view[0]
    assert target["semantic"].shape == image.shape[-2:] == (96, 96)
    # resized and flipped exactly as the instance masks
    torch.testing.assert_close(target["semantic"].long(),
                               semantic_from_instances(target["masks"], target["labels"]))
    (folder / name).unlink()
    with pytest.raises(DataError, match="cannot read the semantic map"):
        view[len(plain.raw) - 1]
