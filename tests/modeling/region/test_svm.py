"""R-CNN's per-class linear SVMs: separation of a toy set, and hard-negative mining that adds
exactly the margin violators (checked against the round's model directly)."""

from __future__ import annotations

import numpy as np
import pytest

import rcnn_cli.modeling.region.svm as svm_module
from rcnn_cli.engine.stages.feature_store import FeatureStore
from rcnn_cli.errors import DataError
from rcnn_cli.modeling.region.svm import SVMParams, feature_scale, train_class_svms, train_svm


def separable(n_pos=40, n_neg=400, dim=6, seed=0):
    """Positives around +2 e0, negatives around -2 e0 (noise 0.5): a margin of ~2 on e0."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(0, 0.5, (n_pos, dim)) + 2 * np.eye(dim)[0]
    neg = rng.normal(0, 0.5, (n_neg, dim)) - 2 * np.eye(dim)[0]
    neg[:, 0] = np.clip(neg[:, 0], None, -0.6)
    pos[:, 0] = np.clip(pos[:, 0], 0.6, None)
    return pos.astype(np.float32), neg.astype(np.float32)


def test_svm_separates_a_linearly_separable_toy_set():
    pos, neg = separable()
    model, history = train_svm(pos, neg, SVMParams(C=1.0, initial_negatives=400, rounds=0))
    assert (model.decision(pos) > 0).all() and (model.decision(neg) < 0).all()
    assert history[-1]["accuracy"] == 1.0 and history[-1]["cache_size"] == 400


def test_hard_negative_mining_adds_only_margin_violators(tmp_path, monkeypatch):
    monkeypatch.setattr(svm_module, "BLOCK_ROWS", 64)  # score the memmap in many blocks
    rng = np.random.default_rng(1)
    pos, easy = separable(n_neg=1500, seed=1)
    # Hard negatives near the boundary, few of them in the random initial cache.
    hard = (rng.normal(0, 0.5, (300, 6)) + np.eye(6)[0] * 0.2).astype(np.float32)
    all_neg = np.concatenate([easy, hard])
    store = FeatureStore.create(tmp_path / "neg.npy", len(all_neg), 6)
    store.write(0, all_neg)
    neg = store.commit().array
    params = SVMParams(C=1.0, rounds=3, initial_negatives=60, max_cache=10000, seed=3, tol=1e-4)
    steps = []
    model, history = train_svm(pos, neg, params,
                               on_round=lambda *step: steps.append(step))
    assert steps and len(steps[0][3]) > 0, "the toy set must give the miner something to add"
    for (round_, m, cache, added, evicted), entry, following in zip(steps, history, history[1:]):
        scores = all_neg.astype(np.float64) @ m.w + m.b  # direct computation, all negatives
        violators = set(np.flatnonzero(scores > params.hard_threshold)) - set(cache)
        assert set(added) == violators
        assert (scores[added] > -1.0).all()  # margin violators only
        assert set(evicted) == {i for i in cache if scores[i] < params.easy_threshold}
        assert entry["round"] == round_ and entry["added"] == len(added)
        assert entry["evicted"] == len(evicted) and entry["cache_size"] == len(cache)
        assert following["cache_size"] == len(cache) - len(evicted) + len(added)
    # Mining stops when a round adds nothing, or after `rounds` rounds plus a final training.
    if len(steps[-1][3]) == 0:
        assert len(history) == len(steps) <= params.rounds
    else:
        assert len(steps) == params.rounds and len(history) == params.rounds + 1
    assert (model.decision(pos) > 0).mean() >= 0.95
    first = steps[0][1]
    assert (model.decision(hard) < 0).mean() > (first.decision(hard) < 0).mean()


def test_the_cache_keeps_the_hardest_negatives_when_full():
    pos, neg = separable(n_neg=600, seed=2)
    neg[:200, 0] = 1.0  # 200 negatives inside the positive side: all violate the margin
    params = SVMParams(C=1.0, rounds=1, initial_negatives=10, max_cache=50)
    steps = []
    _, history = train_svm(pos, neg, params, on_round=lambda *s: steps.append(s))
    _, m, cache, added, evicted = steps[0]
    scores = neg.astype(np.float64) @ m.w + m.b
    assert len(cache) - len(evicted) + len(added) == 50
    candidates = np.setdiff1d(np.flatnonzero(scores > -1.0), cache)
    assert scores[added].min() >= np.sort(scores[candidates])[::-1][len(added) - 1]
    assert history[0]["left_out"] == len(candidates) - len(added) > 0


def test_no_violator_is_left_out_when_the_cache_has_room():
    pos, neg = separable(n_neg=600, seed=2)
    neg[:200, 0] = 1.0
    _, history = train_svm(pos, neg, SVMParams(C=1.0, rounds=1, initial_negatives=10))
    assert history[0]["added"] > 0 and history[0]["left_out"] == 0


def test_class_svms_use_gt_positives_and_low_iou_negatives(monkeypatch):
    labels = np.array([1, 1, 1, 2, 2, 0, 1, 2])
    ious = np.array([1.0, 0.8, 0.1, 1.0, 0.4, 0.0, 0.4, 0.2])
    is_gt = np.array([True, False, False, True, False, False, False, False])
    features = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    seen = {}

    def fake_train(pos, neg, params, neg_rows):
        seen[len(seen) + 1] = (pos.copy(), list(neg_rows))
        return svm_module.LinearSVM(np.full(3, float(len(seen))), -1.0), [{"round": 0}]

    monkeypatch.setattr(svm_module, "train_svm", fake_train)
    w, b, history = train_class_svms(features, labels, ious, is_gt, 2)
    assert np.array_equal(seen[1][0], features[[0]]) and seen[1][1] == [2, 3, 4, 5, 7]
    assert np.array_equal(seen[2][0], features[[3]]) and seen[2][1] == [0, 1, 2, 5, 6, 7]
    assert w.tolist() == [[1, 1, 1], [2, 2, 2]] and b.tolist() == [-1, -1]
    assert [h["class"] for h in history] == [1, 2]


def test_class_svms_separate_three_toy_classes():
    rng = np.random.default_rng(0)
    centres = 3 * np.eye(4)[1:]  # classes 1..3 along axes 1..3, background near 0
    labels = np.repeat([0, 1, 2, 3], 60)
    features = np.concatenate([rng.normal(0, 0.3, (60, 4))] +
                              [rng.normal(0, 0.3, (60, 4)) + c for c in centres]).astype(np.float32)
    is_gt = (labels > 0) & (np.arange(240) % 60 < 20)
    ious = np.where(labels > 0, np.where(is_gt, 1.0, 0.7), 0.0)
    calls = []
    w, b, history = train_class_svms(features, labels, ious, is_gt, 3,
                                     SVMParams(C=1.0, initial_negatives=50),
                                     progress=lambda k, n: calls.append((k, n)))
    predicted = np.argmax(features @ w.T + b, axis=1) + 1
    fg = labels > 0
    assert (predicted[fg] == labels[fg]).mean() >= 0.95
    assert ((features[~fg] @ w.T + b) < 0).all(axis=1).mean() >= 0.95
    assert calls == [(1, 3), (2, 3), (3, 3)] and {h["class"] for h in history} == {1, 2, 3}


def test_feature_scale_gives_mean_norm_20_and_empty_inputs_fail():
    x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    s = feature_scale(x)
    assert np.linalg.norm(x * s, axis=1).mean() == pytest.approx(20.0, rel=1e-5)
    with pytest.raises(DataError, match="all zero"):
        feature_scale(np.zeros((3, 4)))
    with pytest.raises(DataError, match="positives and negatives"):
        train_svm(np.zeros((0, 4)), np.ones((3, 4)))
    with pytest.raises(DataError, match="class 2"):
        train_class_svms(np.ones((2, 3)), np.array([1, 0]), np.array([1.0, 0.0]),
                         np.array([True, False]), 2)
