"""Per-class linear SVMs with hard-negative mining (Girshick et al. 2014, §2.3 "Object
category classifiers" and Appendix B; mining as in Felzenszwalb et al. 2010 / Sung & Poggio).

Positives of class k are its ground-truth boxes only; negatives are regions with IoU < 0.3 to
the class's ground truth; regions in between are ignored. Training (L2-regularised hinge loss,
scikit-learn's ``LinearSVC`` = liblinear ``-s 3`` as the R-CNN code calls it) starts from a
random subset of the negatives; each round scores *all* negatives and adds the margin violators
(score > ``hard_threshold``) to the cache, evicting cached easy ones (score < ``easy_threshold``).
Features may be a memory map: they are read in row blocks and never copied whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from rcnn_cli.errors import DataError

BLOCK_ROWS = 8192


@dataclass
class SVMParams:
    """Defaults of the R-CNN code (``rcnn_train.m``).

    C: hinge-loss weight (``svm_C = 1e-3``, for features scaled to mean L2 norm 20).
    rounds: hard-negative mining rounds (one training per round + a final one).
    initial_negatives: random negatives in the cache before the first round.
    hard_threshold: a negative scoring above this violates the margin and joins the cache.
    easy_threshold: a cached negative scoring below this is evicted ("evict_thresh").
    pos_weight: loss weight of positives (``pos_loss_weight = 2``).
    bias_scale: the constant feature whose weight is the bias (``bias_mult = 10``).
    max_cache: most negatives in the cache; the highest-scoring are kept beyond it.
    tol: liblinear's stopping tolerance; 0.1 is liblinear's default for ``-s 3``, which the
        R-CNN code kept. On 6.4k cached R-CNN fc7 features it stops after 8 passes (0.4 s)
        with the objective within 0.3 % of tol=1e-3's (scikit-learn's default 1e-4 took 8.7k
        passes, 58 s) and the same training accuracy.
    max_iter: liblinear passes per training at most.
    seed: the initial negatives' draw and liblinear's coordinate-descent order.
    """

    C: float = 0.001
    rounds: int = 3
    initial_negatives: int = 1000
    hard_threshold: float = -1.0
    easy_threshold: float = -1.2
    pos_weight: float = 2.0
    bias_scale: float = 10.0
    max_cache: int = 20000
    tol: float = 0.1
    max_iter: int = 1000
    seed: int = 0


@dataclass
class LinearSVM:
    w: np.ndarray  # [D]
    b: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Scores of rows ``x [N, D]`` (any array, a memmap included), read in blocks."""
        return np.concatenate([np.asarray(x[i:i + BLOCK_ROWS], np.float64) @ self.w + self.b
                               for i in range(0, len(x), BLOCK_ROWS)] or [np.zeros(0)])


def feature_scale(features: np.ndarray, target_norm: float = 20.0) -> float:
    """The factor that brings the mean L2 norm of the rows to ``target_norm`` (R-CNN: 20)."""
    norms = [np.linalg.norm(np.asarray(features[i:i + BLOCK_ROWS], np.float64), axis=1)
             for i in range(0, len(features), BLOCK_ROWS)]
    mean = float(np.concatenate(norms).mean()) if norms else 0.0
    if mean == 0:
        raise DataError("feature_scale: the features are all zero (or there are none)")
    return target_norm / mean


def fit_linear_svm(pos: np.ndarray, neg: np.ndarray, params: SVMParams) -> tuple[LinearSVM, dict]:
    """One hinge-loss fit on positives and the cached negatives; primal objective and
    training accuracy for the history."""
    x = np.concatenate([np.asarray(pos, np.float64), np.asarray(neg, np.float64)])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    svc = LinearSVC(C=params.C, loss="hinge", penalty="l2", dual=True,
                    class_weight={1: params.pos_weight, 0: 1.0}, fit_intercept=True,
                    intercept_scaling=params.bias_scale, tol=params.tol,
                    max_iter=params.max_iter, random_state=params.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svc.fit(x, y)
    model = LinearSVM(svc.coef_[0].copy(), float(svc.intercept_[0]))
    scores = x @ model.w + model.b
    margin = np.where(y == 1, scores, -scores)
    weight = np.where(y == 1, params.pos_weight, 1.0)
    bias_w = model.b / params.bias_scale
    objective = 0.5 * (model.w @ model.w + bias_w ** 2) + params.C * float(
        weight @ np.maximum(0.0, 1.0 - margin))
    return model, {"objective": float(objective), "accuracy": float((margin > 0).mean()),
                   "iterations": int(np.max(svc.n_iter_))}


RoundHook = Callable[[int, LinearSVM, np.ndarray, np.ndarray, np.ndarray], None]


def train_svm(pos: np.ndarray, neg: np.ndarray, params: SVMParams | None = None,
              neg_rows: np.ndarray | None = None,
              on_round: RoundHook | None = None) -> tuple[LinearSVM, list[dict]]:
    """Train with hard-negative mining; returns the model and one history entry per training.

    ``neg_rows`` selects the negatives among the rows of ``neg`` (default: all). Each round
    trains on the cache, then (unless it is the last allowed) scores every negative, evicts
    cached negatives below ``easy_threshold`` and adds uncached ones above ``hard_threshold``;
    mining stops when a round adds none (the cache is then left as it is: evicting negatives
    with zero hinge loss would not change the solution). The returned model is always trained
    on the final cache; an entry's ``added`` / ``evicted`` count the mining step after it, its
    ``left_out`` the margin violators that a full cache (``max_cache``) had no room for: with
    any left out when mining stops, the model has seen only the hardest negatives, and
    detections suffer (R-CNN on the lineage's 1000 shapes images: AP50 0.08 against 0.45).
    ``on_round(round, model, cache_before, added, evicted)`` sees each mining step (indices
    into ``neg_rows``).
    """
    params = params or SVMParams()
    rows = np.arange(len(neg)) if neg_rows is None else np.asarray(neg_rows, np.int64)
    if len(pos) == 0 or len(rows) == 0:
        raise DataError(f"train_svm: need positives and negatives, got {len(pos)} and {len(rows)}")
    rng = np.random.default_rng(params.seed)
    cache = np.sort(rng.permutation(len(rows))[:min(params.initial_negatives, len(rows))])
    history = []
    for round_ in range(params.rounds + 1):
        model, stats = fit_linear_svm(pos, _read(neg, rows[cache]), params)
        entry = {"round": round_, "cache_size": int(len(cache)), **stats, "added": 0,
                 "evicted": 0, "left_out": 0}
        history.append(entry)
        if round_ == params.rounds:
            break
        scores = model.decision(_RowView(neg, rows))
        new_cache, added, evicted = _mine(cache, scores, params)
        if on_round is not None:
            on_round(round_, model, cache, added, evicted)
        violators = int(np.count_nonzero(scores > params.hard_threshold))
        left_out = violators - int(np.count_nonzero(scores[new_cache] > params.hard_threshold))
        entry.update(added=int(len(added)), evicted=int(len(evicted)), left_out=left_out)
        if len(added) == 0:
            break
        cache = new_cache
    return model, history


def _mine(cache: np.ndarray, scores: np.ndarray,
          params: SVMParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new cache, added, evicted): evict easy cached negatives, add uncached hard ones, keep
    the ``max_cache`` highest-scoring if over."""
    evicted = cache[scores[cache] < params.easy_threshold]
    kept = np.setdiff1d(cache, evicted)
    hard = np.flatnonzero(scores > params.hard_threshold)
    added = np.setdiff1d(hard, cache)
    room = params.max_cache - len(kept)
    if len(added) > room:
        added = np.sort(added[np.argsort(-scores[added], kind="stable")[:max(room, 0)]])
    return np.union1d(kept, added), added, evicted


def train_class_svms(features: np.ndarray, labels: np.ndarray, ious: np.ndarray,
                     is_gt: np.ndarray, num_classes: int, params: SVMParams | None = None,
                     neg_iou: float = 0.3,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One SVM per class 1..K on rows of ``features [N, D]`` (a memmap is fine).

    ``labels`` = class of each region's best ground truth (0 = none), ``ious`` = IoU with it,
    ``is_gt`` marks the ground-truth boxes. Positives of k: ground-truth boxes of class k;
    negatives of k: regions whose label is not k or whose IoU < ``neg_iou``.
    Returns ``W [K, D]``, ``b [K]`` and the history (entries tagged with ``"class"``);
    ``progress(done_classes, num_classes)`` is called after each class.
    """
    labels, ious, is_gt = np.asarray(labels), np.asarray(ious), np.asarray(is_gt, bool)
    if not len(labels) == len(ious) == len(is_gt) == len(features):
        raise ValueError("features, labels, ious and is_gt must have one row per region")
    weights = np.zeros((num_classes, features.shape[1]), np.float32)
    biases = np.zeros(num_classes, np.float32)
    history = []
    for k in range(1, num_classes + 1):
        pos_rows = np.flatnonzero(is_gt & (labels == k))
        neg_rows = np.flatnonzero(((labels != k) | (ious < neg_iou)) & ~(is_gt & (labels == k)))
        if len(pos_rows) == 0:
            raise DataError(f"train_class_svms: class {k} has no ground-truth boxes")
        model, hist = train_svm(_read(features, pos_rows), features, params, neg_rows)
        weights[k - 1], biases[k - 1] = model.w, model.b
        history += [{"class": k, **h} for h in hist]
        if progress is not None:
            progress(k, num_classes)
    return weights, biases, history


def _read(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of an array or memmap, in memory."""
    return np.asarray(array[np.asarray(rows, np.int64)])


class _RowView:
    """``array[rows]`` read lazily in slices (for block-wise scoring of a memmap)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> np.ndarray:
        return _read(self.array, self.rows[item])
