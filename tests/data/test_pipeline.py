"""The input pipeline: resize by shorter side with a cap, multi-scale, jitter, aspect groups,
and COCO polygon / RLE masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn_cli.data.loader import DetectionView, IterationBatchSampler


class Raw:
    """Two images: 64x48 (landscape) and 48x64 (portrait), one box each."""

    classes = ["thing"]
    sizes = [(64, 48), (48, 64)]

    def __len__(self):
        return len(self.sizes)

    def aspect_ratios(self):
        return np.array([w / h for w, h in self.sizes])

    def raw(self, i):
        w, h = self.sizes[i]
        image = torch.arange(3 * h * w, dtype=torch.int64).reshape(3, h, w).remainder(251)
        return image.to(torch.uint8), {"boxes": np.array([[8, 8, 24, 16]], np.float32),
                                       "labels": np.array([1]), "image_id": i + 1}


@pytest.mark.parametrize("max_size, expected", [(1000, (32, 42)), (40, (30, 40))])
def test_shorter_side_resize_with_a_cap_scales_the_boxes(max_size, expected):
    view = DetectionView(Raw(), train=True, flip_prob=0.0, min_sizes=[32], max_size=max_size)
    image, target = view[(0, 1)]
    assert tuple(image.shape[-2:]) == expected
    sy, sx = expected[0] / 48, expected[1] / 64
    assert target["boxes"].tolist()[0] == pytest.approx([8 * sx, 8 * sy, 24 * sx, 16 * sy],
                                                        abs=1e-4)


def test_multi_scale_draws_a_shorter_side_per_sample_seed():
    view = DetectionView(Raw(), train=True, flip_prob=0.0, min_sizes=[16, 32], max_size=1000)
    shorter = {min(view[(0, seed)][0].shape[-2:]) for seed in range(20)}
    assert shorter == {16, 32}


def test_evaluation_keeps_the_original_size():
    image, target = DetectionView(Raw(), train=False, flip_prob=0.0)[(1, 0)]
    assert tuple(image.shape[-2:]) == (64, 48) and target["boxes"].tolist() == [[8, 8, 24, 16]]


def test_color_jitter_changes_pixels_not_boxes():
    plain = DetectionView(Raw(), train=True, flip_prob=0.0)[(0, 3)]
    jit = DetectionView(Raw(), train=True, flip_prob=0.0, color_jitter=0.4)[(0, 3)]
    assert not torch.equal(plain[0], jit[0])
    assert torch.equal(plain[1]["boxes"], jit[1]["boxes"])


def test_aspect_ratio_groups_give_single_orientation_batches():
    groups = [0, 1] * 6  # alternate landscape / portrait
    sampler = IterationBatchSampler(12, 3, seed=0, start_iter=0, max_iter=8, group_ids=groups)
    assert sampler.per_epoch == 4
    batches = [[i for i, _ in b] for b in sampler]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches[:4] for i in b) == list(range(12))
    view = DetectionView(Raw(), train=True, flip_prob=0.0, aspect_grouping=True)
    assert view.group_ids() == [0, 1]
    assert DetectionView(Raw(), train=True, flip_prob=0.0).group_ids() is None


def test_the_training_loader_batches_by_orientation():
    from rcnn_cli.engine.distributed import train_loader

    raw = Raw()
    raw.sizes = [(64, 48), (48, 64)] * 4
    view = DetectionView(raw, train=True, flip_prob=0.0, aspect_grouping=True)
    loader = train_loader(view, 2, 1, seed=0, start_iter=0, max_iter=8, num_workers=0)
    shapes = [{tuple(im.shape[-2:]) for im in images} for images, _ in loader]
    assert len(shapes) == 8 and all(len(s) == 1 for s in shapes)


def test_the_model_resizes_only_at_inference():
    from rcnn_cli.modeling.build import build_detector
    from tests.conftest import compose_cfg

    cfg = compose_cfg("train", ["dataset.image_size=64"])
    model = build_detector(cfg, 1)
    image = torch.rand(3, 30, 40)
    target = {"boxes": torch.tensor([[1.0, 1.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    model.transform.train()
    batch, _ = model.transform([image], [target])
    assert batch.image_sizes == [(30, 40)]  # the input pipeline already resized it
    model.transform.eval()
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(48, 64)]  # min_size = max_size = 64 for shapes


def test_polygon_and_rle_segmentations_become_masks(tmp_path):
    from pycocotools import mask as mask_utils

    from rcnn_cli.data.annotations import StoredDataset
    from rcnn_cli.data.coco import parse_coco
    from rcnn_cli.data.validate import validate_index
    from tests.data.helpers import coco_file

    square = np.zeros((30, 40), np.uint8, order="F")
    square[5:15, 20:30] = 1
    rle = mask_utils.encode(square)
    rle["counts"] = rle["counts"].decode()
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80,
             "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 5, 10, 10], "area": 100,
             "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 20, 5, 5], "area": 25,
             "iscrowd": 0}]
    path, img_dir = coco_file(tmp_path, annotations=anns)
    store = validate_index(parse_coco(path, img_dir), strict=True)
    assert store.has_masks
    masks = StoredDataset(store, with_masks=True).target(0)["masks"]
    assert masks.shape == (3, 30, 40)
    assert 70 <= masks[0].sum() <= 100  # the polygon, rasterised
    assert np.array_equal(masks[1], square)  # the RLE, exactly
    assert masks[2].sum() == 25  # no segmentation: the box
