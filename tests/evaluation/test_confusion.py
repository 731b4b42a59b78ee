"""Detection confusion matrix on a constructed case."""

from __future__ import annotations

import numpy as np

from rcnn_cli.evaluation.confusion import confusion_matrix, to_markdown, write

GT = {
    "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
    "images": [{"id": 1}, {"id": 2}],
    "annotations": [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},  # dog, found
        {"image_id": 1, "category_id": 3, "bbox": [20, 20, 10, 10], "iscrowd": 0},  # cat as dog
        {"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "iscrowd": 0},  # cat, missed
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},  # cat, found
        {"image_id": 2, "category_id": 1, "bbox": [80, 80, 5, 5], "iscrowd": 1},  # crowd: ignored
    ],
}
DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # duplicate: FP
    {"image_id": 1, "category_id": 1, "bbox": [21, 21, 10, 10], "score": 0.7},
    {"image_id": 1, "category_id": 3, "bbox": [51, 51, 10, 10], "score": 0.3},  # below score
    {"image_id": 2, "category_id": 3, "bbox": [1, 0, 10, 10], "score": 0.6},
    {"image_id": 2, "category_id": 3, "bbox": [40, 40, 10, 10], "score": 0.6},  # background
]


def test_constructed_case():
    c = confusion_matrix(GT, DETS, score_thresh=0.5, iou_thresh=0.5)
    # classes ordered by id: dog (1), cat (3), then background
    assert c.names == ["dog", "cat", "background"]
    expected = np.array([[1, 0, 0],   # dog: found as dog
                         [1, 1, 1],   # cat: once as dog, once as cat, once missed
                         [1, 1, 0]])  # background: the duplicate dog, a cat on nothing
    assert np.array_equal(c.counts, expected)
    # the highest IoU wins: the exact box (IoU 1) is the match, the 0.9-score one the duplicate
    low = confusion_matrix(GT, DETS, score_thresh=0.0)
    assert low.counts[1, 1] == 2 and low.counts[1, 2] == 0


def test_table_and_png(tmp_path):
    c = confusion_matrix(GT, DETS)
    md = to_markdown(c, "t")
    assert "| cat | 1 | 1 | 1 |" in md and "| truth \\ predicted | dog | cat | background |" in md
    write(c, tmp_path, "t")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "confusion.md").read_text() == md
