"""Data loading: seeded iteration-indexed batches (exact resume) and detection collation."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from rcnn_cli.data.repeat_factor import image_categories, repeat_factors, stochastic_counts
from rcnn_cli.data.transforms import Augment, build_transforms, proposal_boxes, sanitize, to_sample
from rcnn_cli.data.workers import Loader
from rcnn_cli.errors import DataError

log = logging.getLogger("rcnn_cli")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


class DetectionView(Dataset):
    """Applies the transforms to a raw dataset; each item gets its own RNG seed.

    Items are requested as ``(index, seed)`` so augmentation depends only on the seed,
    not on worker layout or the global RNG: a resumed run sees the same pixels.
    """

    def __init__(self, raw, train: bool, flip_prob: float, min_sizes: list[int] | None = None,
                 max_size: int | None = None, color_jitter: float = 0.0,
                 aspect_grouping: bool = False, repeat_factor_threshold: float = 0.0,
                 augment: Augment | None = None):
        self.raw = raw
        self.transforms = build_transforms(train, flip_prob, min_sizes, max_size, color_jitter,
                                           augment)
        self.crops = train and augment is not None and augment.crops
        # image id -> float32 [K, 4] external proposals (rcnn_cli.data.proposal_cache); they
        # travel in target["proposals"] and are transformed with the image, like the boxes.
        self.proposals: dict | None = None
        self.aspect_grouping = aspect_grouping
        self.repeat_factor_threshold = repeat_factor_threshold

    def group_ids(self):
        """0 for landscape (w >= h), 1 for portrait images; None without grouping."""
        if not self.aspect_grouping or not hasattr(self.raw, "aspect_ratios"):
            return None
        return (self.raw.aspect_ratios() < 1.0).astype("int64").tolist()

    def repeat_factors(self) -> torch.Tensor | None:
        """Per-image repeat factors (``dataset.repeat_factor_threshold``); None when off."""
        if not self.repeat_factor_threshold:
            return None
        factors = repeat_factors(image_categories(self.raw.coco_gt()),
                                 self.repeat_factor_threshold)
        log.info("repeat-factor sampling (t=%g): %d of %d images repeated, %.1f images per "
                 "epoch", self.repeat_factor_threshold, int((factors > 1).sum()), len(factors),
                 float(factors.sum()))
        return factors

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        image, target = to_sample(*self.raw.raw(index))
        if self.proposals is not None:
            target["proposals"] = proposal_boxes(self.proposals[target["image_id"]], image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, target = self.transforms(image, target)
        if self.crops:
            target = sanitize(target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if "proposals" in target:
            target["proposals"] = target["proposals"].as_subclass(torch.Tensor)
        for key in ("masks", "semantic"):
            if key in target:
                target[key] = target[key].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), target


def index_seed(index: int) -> int:
    return sample_seed(0, 0, index)


class IterationBatchSampler:
    """Batches for iterations ``[start_iter, max_iter)``; iteration i is a pure function of
    ``(seed, i)``.

    Epoch e is a seeded permutation (drop_last), so resuming at iteration k continues with
    exactly the batch an uninterrupted run would have used. With ``group_ids`` (aspect-ratio
    groups), each epoch's permutation is cut into single-group batches, and the order of
    those batches is shuffled with the same seed: still a pure function of ``(seed, epoch)``.
    With ``repeat_factors`` (``rcnn_cli.data.repeat_factor``) an epoch permutes each image
    repeated a stochastically rounded ``r(I)`` times. An epoch shorter than one batch (a
    dataset smaller than the batch) continues with further seeded permutations, i.e. draws
    with replacement as an infinite sampler does.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_iter: int,
                 max_iter: int, group_ids: list[int] | None = None,
                 repeat_factors: torch.Tensor | None = None):
        if num_items < 1:
            raise DataError("the training set has no images")
        self.n, self.bs, self.seed = num_items, batch_size, seed
        self.start, self.stop = start_iter, max_iter
        self.factors = repeat_factors
        weights = torch.ones(num_items, dtype=torch.float64) if repeat_factors is None \
            else repeat_factors.to(torch.float64)
        self.groups = group_ids
        if group_ids is not None:
            sizes = torch.zeros(max(group_ids) + 1, dtype=torch.float64).index_add_(
                0, torch.as_tensor(group_ids), weights)
            self.per_epoch = int((sizes.floor() // batch_size).sum())
            if self.per_epoch == 0:
                log.warning("no aspect-ratio group has a batch of %d images: batches mix "
                            "landscape and portrait images (set dataset.aspect_grouping=false "
                            "or lower schedule.batch_size to silence this)", batch_size)
                self.groups = None
        if self.groups is None:
            expected = int(weights.sum())
            self.per_epoch = max(1, expected // batch_size)
            if expected < batch_size:
                log.warning("the training set has %d images, fewer than a batch of %d "
                            "(schedule.batch_size x schedule.accum_steps x processes): batches "
                            "draw images with replacement", expected, batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def draw(self, g: torch.Generator) -> list[int]:
        """One seeded permutation of the images (each repeated per its factor)."""
        if self.factors is None:
            return torch.randperm(self.n, generator=g).tolist()
        counts = stochastic_counts(self.factors, g)
        items = torch.repeat_interleave(torch.arange(self.n), counts)
        return items[torch.randperm(len(items), generator=g)].tolist()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        if self.groups is None:
            stream: list[int] = []
            while len(stream) < self.per_epoch * self.bs:
                stream += self.draw(g)
            return [stream[p * self.bs:(p + 1) * self.bs] for p in range(self.per_epoch)]
        batches: list[list[int]] = []
        while len(batches) < self.per_epoch:
            by_group: dict[int, list[int]] = {}
            for i in self.draw(g):
                by_group.setdefault(self.groups[i], []).append(i)
            drawn = [m[p:p + self.bs] for _, m in sorted(by_group.items())
                     for p in range(0, len(m) - self.bs + 1, self.bs)]
            order = torch.randperm(len(drawn), generator=g).tolist()
            batches += [drawn[k] for k in order]
        return batches[:self.per_epoch]

    def seeded_epoch(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's batches as ``(index, sample seed)``; a repeated image gets a new seed
        (its k-th occurrence uses key ``index + k * n``), so its copies are augmented apart."""
        seen: dict[int, int] = {}
        out = []
        for batch in self.epoch_batches(epoch):
            items = []
            for i in batch:
                k = seen.get(i, 0)
                seen[i] = k + 1
                items.append((i, sample_seed(self.seed, epoch, i + k * self.n)))
            out.append(items)
        return out

    def __iter__(self):
        batches, batches_epoch = None, -1
        for it in range(self.start, self.stop):
            epoch, pos = divmod(it, self.per_epoch)
            if epoch != batches_epoch:
                batches, batches_epoch = self.seeded_epoch(epoch), epoch
            yield batches[pos]


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


def train_loader(view: DetectionView, batch_size: int, seed: int, start_iter: int, max_iter: int,
                 num_workers: int) -> Loader:
    groups = view.group_ids() if hasattr(view, "group_ids") else None
    factors = view.repeat_factors() if hasattr(view, "repeat_factors") else None
    sampler = IterationBatchSampler(len(view), batch_size, seed, start_iter, max_iter, groups,
                                    factors)
    # Its own generator: creating the iterator must not draw from the global RNG.
    return Loader(view, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                  generator=torch.Generator().manual_seed(seed))


def eval_loader(view: DetectionView, batch_size: int, num_workers: int) -> Loader:
    return Loader(view, batch_size=batch_size, shuffle=False, collate_fn=collate,
                  num_workers=num_workers, generator=torch.Generator().manual_seed(0))
