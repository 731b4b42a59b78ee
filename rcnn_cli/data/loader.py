"""Data loading: seeded iteration-indexed batches (exact resume) and detection collation."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rcnn_cli.data.transforms import build_transforms, proposal_boxes, to_sample


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


class DetectionView(Dataset):
    """Applies the transforms to a raw dataset; each item gets its own RNG seed.

    Items are requested as ``(index, seed)`` so augmentation depends only on the seed,
    not on worker layout or the global RNG: a resumed run sees the same pixels.
    """

    def __init__(self, raw, train: bool, flip_prob: float, min_sizes: list[int] | None = None,
                 max_size: int | None = None, color_jitter: float = 0.0,
                 aspect_grouping: bool = False):
        self.raw = raw
        self.transforms = build_transforms(train, flip_prob, min_sizes, max_size, color_jitter)
        # image id -> float32 [K, 4] external proposals (rcnn_cli.data.proposal_cache); they
        # travel in target["proposals"] and are transformed with the image, like the boxes.
        self.proposals: dict | None = None
        self.aspect_grouping = aspect_grouping

    def group_ids(self):
        """0 for landscape (w >= h), 1 for portrait images; None without grouping."""
        if not self.aspect_grouping or not hasattr(self.raw, "aspect_ratios"):
            return None
        return (self.raw.aspect_ratios() < 1.0).astype("int64").tolist()

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
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_iter: int,
                 max_iter: int, group_ids: list[int] | None = None):
        if num_items < batch_size:
            raise ValueError(f"dataset has {num_items} images, fewer than batch_size={batch_size}")
        self.n, self.bs, self.seed = num_items, batch_size, seed
        self.start, self.stop = start_iter, max_iter
        self.groups = group_ids
        if group_ids is None:
            self.per_epoch = num_items // batch_size
        else:
            sizes = torch.bincount(torch.as_tensor(group_ids, dtype=torch.int64))
            self.per_epoch = int((sizes // batch_size).sum())
            if self.per_epoch == 0:
                raise ValueError(f"no aspect-ratio group has batch_size={batch_size} images")

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.groups is None:
            return [perm[p * self.bs:(p + 1) * self.bs] for p in range(self.per_epoch)]
        by_group: dict[int, list[int]] = {}
        for i in perm:
            by_group.setdefault(self.groups[i], []).append(i)
        batches = [m[p:p + self.bs] for _, m in sorted(by_group.items())
                   for p in range(0, len(m) - self.bs + 1, self.bs)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[k] for k in order]

    def __iter__(self):
        batches, batches_epoch = None, -1
        for it in range(self.start, self.stop):
            epoch, pos = divmod(it, self.per_epoch)
            if epoch != batches_epoch:
                batches, batches_epoch = self.epoch_batches(epoch), epoch
            yield [(i, sample_seed(self.seed, epoch, i)) for i in batches[pos]]


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


def train_loader(view: DetectionView, batch_size: int, seed: int, start_iter: int, max_iter: int,
                 num_workers: int) -> DataLoader:
    groups = view.group_ids() if hasattr(view, "group_ids") else None
    sampler = IterationBatchSampler(len(view), batch_size, seed, start_iter, max_iter, groups)
    # Its own generator: creating the iterator must not draw from the global RNG.
    return DataLoader(view, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(view: DetectionView, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(view, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))
