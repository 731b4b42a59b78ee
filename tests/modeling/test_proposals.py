"""Proposal sources, proposal files and the proposal cache."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from rcnn_cli.data import proposal_cache as pc
from rcnn_cli.data.loader import DetectionView
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.errors import DataError
from rcnn_cli.evaluation.recall import proposal_recall, recall_curve
from rcnn_cli.modeling.proposals import selective_search

SS = {"mode": "fast", "scale": 1.0, "max_proposals": 2000, "min_box_size": 2.0}


def shapes_cfg(**kw):
    base = {"name": "shapes", "train_size": 3, "val_size": 3, "image_size": 64, "seed": 0,
            "flip_prob": 0.5, "num_workers": 0}
    return {**base, **kw}


def test_selective_search_recall_at_2000_on_shapes():
    ds = ShapesDataset("val", 6, 128, seed=0)
    props, gts = [], []
    for i in range(len(ds)):
        image, target = ds.raw(i)
        boxes = selective_search(image, **SS)
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) <= 2000
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.max() <= 128
        props.append(torch.from_numpy(boxes))
        gts.append(torch.from_numpy(target["boxes"]))
    result = proposal_recall(props, gts, [2000])
    recall = recall_curve(result[2000]["ious"], [0.5])[0]
    assert recall >= 0.9, f"selective search recall@2000 (IoU 0.5) = {recall:.3f}"


def test_selective_search_takes_a_stored_datasets_chw_tensor_as_shapes_hwc_array():
    image, _ = ShapesDataset("val", 1, 64, seed=0).raw(0)
    chw = torch.from_numpy(image).permute(2, 0, 1)  # read_image's layout (VOC, COCO)
    np.testing.assert_array_equal(selective_search(chw, **SS), selective_search(image, **SS))


def test_cache_is_computed_once_in_workers_then_reused(tmp_path, monkeypatch):
    raw = ShapesDataset("train", 3, 64, seed=0)
    identity = pc.dataset_identity(shapes_cfg(), "train", raw.image_ids)
    computed = []

    def compute():
        computed.append(1)
        return pc.compute_selective_search(raw, SS, workers=2)

    first = pc.cached_proposals(tmp_path, identity, "selective_search", SS, raw.image_ids,
                                compute)
    path = pc.cache_path(tmp_path, identity, "selective_search", SS)
    assert path.is_file() and len(computed) == 1
    mtime = path.stat().st_mtime_ns

    def must_not_run():
        raise AssertionError("cache was recomputed")

    again = pc.cached_proposals(tmp_path, identity, "selective_search", SS, raw.image_ids,
                                must_not_run)
    assert len(computed) == 1 and path.stat().st_mtime_ns == mtime
    assert again.image_ids == raw.image_ids
    for a, b in zip(first.boxes, again.boxes):
        np.testing.assert_array_equal(a, b)
    # the worker result equals an in-process search
    image, _ = raw.raw(1)
    np.testing.assert_array_equal(again.boxes[1], selective_search(image, **SS))


def _write_cache(tmp_path, identity, params, image_ids):
    boxes = [np.array([[0, 0, 10, 10]], np.float32) for _ in image_ids]
    pset = pc.ProposalSet(list(image_ids), boxes, [np.ones(1, np.float32)] * len(image_ids), {})
    return pc.cached_proposals(tmp_path, identity, "selective_search", params, list(image_ids),
                               lambda: pset)


def test_cache_for_other_params_or_dataset_is_refused(tmp_path):
    ids = [1, 2, 3]
    ident = pc.dataset_identity(shapes_cfg(), "train", ids)
    _write_cache(tmp_path, ident, SS, ids)
    src = pc.cache_path(tmp_path, ident, "selective_search", SS)
    other_params = {**SS, "mode": "quality"}
    dst = pc.cache_path(tmp_path, ident, "selective_search", other_params)
    assert dst != src
    dst.write_bytes(src.read_bytes())  # a foreign file where this run's cache should be
    with pytest.raises(DataError, match=r"(?s)stale or foreign.*'params'.*quality") as e:
        pc.cached_proposals(tmp_path, ident, "selective_search", other_params, ids, lambda: 1 / 0)
    assert dst.name in str(e.value)
    other_ds = pc.dataset_identity(shapes_cfg(seed=1), "train", ids)
    dst2 = pc.cache_path(tmp_path, other_ds, "selective_search", SS)
    dst2.write_bytes(src.read_bytes())
    with pytest.raises(DataError, match=r"'dataset'"):
        pc.cached_proposals(tmp_path, other_ds, "selective_search", SS, ids, lambda: 1 / 0)


def test_malformed_proposal_files_name_image_id_and_field(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"proposals": [
        {"image_id": 1, "boxes": [[0, 0, 5, 5]]}, {"image_id": 7, "boxes": [[0, 0, 5]]}]}))
    with pytest.raises(DataError, match=r"p\.json: image id 7: field 'boxes' has shape"):
        pc.read_proposal_file(bad, [1, 7])
    bad.write_text(json.dumps({"proposals": [
        {"image_id": 3, "boxes": [[0, 0, 5, 5]], "scores": [0.5, 0.1]}]}))
    with pytest.raises(DataError, match=r"image id 3: field 'scores'"):
        pc.read_proposal_file(bad, [3])
    bad.write_text(json.dumps({"proposals": [{"image_id": 4, "boxes": [[5, 0, 1, 5]]}]}))
    with pytest.raises(DataError, match=r"image id 4: field 'boxes' has x1 < x0"):
        pc.read_proposal_file(bad, [4])
    good = pc.read_proposal_file(_ok_json(tmp_path), [1])
    with pytest.raises(DataError, match=r"no proposals for 1 of 2 dataset image id\(s\), e\.g\. "
                                        r"\[2\]"):
        pc.check_ids("ok.json", good, [1, 2], exact=False)


def _ok_json(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"proposals": [{"image_id": 1, "boxes": [[0, 0, 5, 5]]}]}))
    return path


def test_npz_round_trip_and_pickle_layouts(tmp_path):
    boxes = [np.array([[0, 0, 5, 5], [1, 1, 9, 9]], np.float32), np.zeros((0, 4), np.float32)]
    pset = pc.ProposalSet([10, 11], boxes, [np.array([0.9, 0.1], np.float32),
                                            np.zeros(0, np.float32)], {})
    path = pc.save_npz(tmp_path / "p.npz", pset)
    back = pc.read_proposal_file(path, [10, 11])
    assert back.image_ids == [10, 11] and back.boxes[1].shape == (0, 4)
    np.testing.assert_array_equal(back.boxes[0], boxes[0])
    d2 = tmp_path / "d2.pkl"
    d2.write_bytes(pickle.dumps({"ids": [10, 11], "boxes": boxes, "bbox_mode": 0,
                                 "objectness_logits": [np.array([2.0, 1.0]), np.zeros(0)]}))
    assert pc.read_proposal_file(d2, [10, 11]).by_id()[10].shape == (2, 4)
    mm = tmp_path / "mm.pkl"
    mm.write_bytes(pickle.dumps([np.array([[0, 0, 4, 4, 0.9]], np.float32),
                                 np.zeros((0, 5), np.float32)]))
    got = pc.read_proposal_file(mm, [10, 11])
    assert got.image_ids == [10, 11] and got.scores[0].tolist() == pytest.approx([0.9])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(os.system))
    with pytest.raises(DataError, match="refused by the restricted unpickler"):
        pc.read_proposal_file(evil, [10])


def test_proposals_are_transformed_with_the_image():
    raw = ShapesDataset("train", 2, 64, seed=0)
    view = DetectionView(raw, train=True, flip_prob=1.0)
    view.proposals = {1: np.array([[2, 4, 10, 20]], np.float32), 2: np.zeros((0, 4), np.float32)}
    _, target = view[0]
    assert torch.equal(target["proposals"], torch.tensor([[54.0, 4.0, 62.0, 20.0]]))
    _, target = view[1]
    assert target["proposals"].shape == (0, 4)
