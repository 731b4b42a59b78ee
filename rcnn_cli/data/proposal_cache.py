"""Proposal files and the proposal cache.

The rcnn-cli proposal file (``.npz``, read with ``allow_pickle=False``):

- ``image_ids`` int64 ``[N]``; ``offsets`` int64 ``[N + 1]``: image i owns rows
  ``offsets[i]:offsets[i+1]`` of
- ``boxes`` float32 ``[sum K, 4]``, XYXY in original image pixels, best first, and
- ``scores`` float32 ``[sum K]`` (higher is better);
- ``meta`` a JSON string: ``format``, and for a cache ``dataset`` / ``source`` / ``params``.

``proposals.file`` may also name a folder holding ``proposals_<split>.npz`` per split, as a
4-step run's ``stages/proposals2/`` does.

Also read: ``.json`` ``{"proposals": [{"image_id", "boxes", "scores"?}, ...]}``, detectron2's
proposal ``.pkl`` (``ids`` / ``boxes`` / ``objectness_logits``, XYXY_ABS) and mmdetection's
``.pkl`` (a list of ``[K, 4|5]`` arrays in dataset order). Pickles go through a restricted
unpickler that only rebuilds numpy arrays: no code from the file is ever run.

The cache stores proposals of a non-learned source (or a frozen RPN, keyed by its checkpoint
hash) once per (dataset split, source, parameters) under ``cache_dir``; a later run reuses the
file after checking that its identity and image ids are the ones requested.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn_cli.errors import ConfigError, DataError
from rcnn_cli.io import atomic_write_bytes

log = logging.getLogger("rcnn_cli")

FORMAT = "rcnn-cli-proposals/1"
# Dataset keys that change which images/pixels a split holds (not how they are loaded).
LOADING_KEYS = {"flip_prob", "vflip_prob", "num_workers", "min_size", "max_size", "train_min_sizes",
                "color_jitter", "aspect_grouping", "with_masks"}


@dataclass
class ProposalSet:
    image_ids: list[int]
    boxes: list[np.ndarray]  # float32 [K, 4] per image
    scores: list[np.ndarray]  # float32 [K] per image
    meta: dict

    def by_id(self) -> dict[int, np.ndarray]:
        return dict(zip(self.image_ids, self.boxes))


# --- validation -------------------------------------------------------------------------


def checked_entry(path, image_id, boxes, scores) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[K, 4]`` finite with x1 >= x0, y1 >= y0; scores ``[K]`` finite (rank if None)."""
    where = f"proposal file {path}: image id {image_id}"
    try:
        b = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: field 'boxes' is not numeric: {e}") from None
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise DataError(f"{where}: field 'boxes' has shape {tuple(b.shape)}, expected [K, 4]")
    if not np.isfinite(b).all():
        raise DataError(f"{where}: field 'boxes' holds non-finite values")
    if (b[:, 2:] < b[:, :2]).any():
        raise DataError(f"{where}: field 'boxes' has x1 < x0 or y1 < y0 (expected XYXY)")
    if scores is None:
        s = 1.0 / (1.0 + np.arange(len(b), dtype=np.float32))
    else:
        try:
            s = np.asarray(scores, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: field 'scores' is not numeric: {e}") from None
        if len(s) != len(b) or not np.isfinite(s).all():
            raise DataError(f"{where}: field 'scores' has {len(s)} finite-checked values for "
                            f"{len(b)} boxes (need one finite score per box)")
    return b, s


def check_identity(path, meta: dict, expected: dict) -> None:
    """A cache must be for this dataset split, source and parameters."""
    for key in ("format", "dataset", "source", "params"):
        if meta.get(key) != expected.get(key):
            raise DataError(
                f"proposal cache {path} is stale or foreign: field '{key}' is "
                f"{json.dumps(meta.get(key), sort_keys=True)}, this run needs "
                f"{json.dumps(expected.get(key), sort_keys=True)}; delete the file to recompute")


def check_ids(path, pset: ProposalSet, image_ids: list[int], exact: bool) -> ProposalSet:
    """Every dataset image needs proposals; a cache must hold exactly the dataset's ids."""
    have = set(pset.image_ids)
    missing = [i for i in image_ids if i not in have]
    if missing:
        raise DataError(f"proposal file {path}: no proposals for {len(missing)} of "
                        f"{len(image_ids)} dataset image id(s), e.g. {missing[:5]}")
    if exact and (len(pset.image_ids) != len(image_ids) or pset.image_ids != list(image_ids)):
        raise DataError(f"proposal cache {path}: holds {len(pset.image_ids)} image ids, the "
                        f"dataset has {len(image_ids)} (or a different order); stale cache")
    extra = len(have) - len(set(image_ids))
    if extra > 0:
        log.info("proposal file %s: %d image id(s) not in this dataset ignored", path, extra)
    return pset


# --- reading and writing ----------------------------------------------------------------


def save_npz(path: str | Path, pset: ProposalSet) -> Path:
    """Write the rcnn-cli proposal file atomically."""
    offsets = np.cumsum([0] + [len(b) for b in pset.boxes]).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, image_ids=np.asarray(pset.image_ids, np.int64), offsets=offsets,
        boxes=np.concatenate(pset.boxes + [np.zeros((0, 4), np.float32)]).astype(np.float32),
        scores=np.concatenate(pset.scores + [np.zeros(0, np.float32)]).astype(np.float32),
        meta=np.array(json.dumps({"format": FORMAT, **pset.meta}, sort_keys=True)))
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> ProposalSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("image_ids", "offsets", "boxes", "scores", "meta")}
    except KeyError as e:
        raise DataError(f"proposal file {path}: missing array {e}") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"proposal file {path} is not a readable .npz: {e}") from None
    ids, off = arrays["image_ids"].astype(np.int64), arrays["offsets"].astype(np.int64)
    if len(off) != len(ids) + 1 or off[0] != 0 or off[-1] != len(arrays["boxes"]) \
            or (np.diff(off) < 0).any():
        raise DataError(f"proposal file {path}: field 'offsets' does not index 'boxes'")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        raise DataError(f"proposal file {path}: field 'meta' is not JSON") from None
    boxes, scores = [], []
    for i, iid in enumerate(ids.tolist()):
        lo, hi = off[i], off[i + 1]
        s = arrays["scores"][lo:hi] if len(arrays["scores"]) == len(arrays["boxes"]) else None
        b, s = checked_entry(path, iid, arrays["boxes"][lo:hi], s)
        boxes.append(b)
        scores.append(s)
    return ProposalSet(ids.tolist(), boxes, scores, meta)


def load_json(path: Path) -> ProposalSet:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"proposal file {path} is not readable JSON: {e}") from None
    entries = data.get("proposals") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"proposal file {path}: expected {{\"proposals\": [...]}}")
    ids, boxes, scores = [], [], []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("image_id"), int):
            raise DataError(f"proposal file {path}: entry {k}: field 'image_id' missing or "
                            "not an integer")
        if "boxes" not in e:
            raise DataError(f"proposal file {path}: image id {e['image_id']}: field 'boxes' "
                            "missing")
        b, s = checked_entry(path, e["image_id"], e["boxes"], e.get("scores"))
        ids.append(e["image_id"])
        boxes.append(b)
        scores.append(s)
    return ProposalSet(ids, boxes, scores, {"format": FORMAT})


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and plain containers only; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "int")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("detectron2.structures.boxes", "BoxMode"):
            return int  # the enum value; only XYXY_ABS (0) is accepted below
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def load_pickle(path: Path, image_ids: list[int]) -> ProposalSet:
    """detectron2 (dict with ids) or mmdetection (list in dataset order) proposal pickles."""
    try:
        with open(path, "rb") as f:
            data = ArraysOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise DataError(f"proposal file {path} was refused by the restricted unpickler "
                        f"(numpy arrays and plain containers only): {e}") from None
    if isinstance(data, dict):
        data = {{"indexes": "ids", "scores": "objectness_logits"}.get(k, k): v
                for k, v in data.items()}
        if int(data.get("bbox_mode", 0)) != 0:
            raise DataError(f"proposal file {path}: field 'bbox_mode' is "
                            f"{data['bbox_mode']}; only XYXY_ABS (0) is supported")
        try:
            ids = [int(i) for i in data["ids"]]
            raw_boxes, raw_scores = data["boxes"], data.get("objectness_logits")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"proposal file {path}: detectron2 layout needs integer 'ids' and "
                            f"'boxes': {e}") from None
    elif isinstance(data, list):
        if len(data) != len(image_ids):
            raise DataError(f"proposal file {path}: mmdetection list has {len(data)} entries, "
                            f"the dataset has {len(image_ids)} images (matched by position)")
        ids = list(image_ids)
        raw_boxes = [np.asarray(a)[:, :4] if np.ndim(a) == 2 else a for a in data]
        raw_scores = [np.asarray(a)[:, 4] if np.ndim(a) == 2 and np.shape(a)[1] == 5 else None
                      for a in data]
    else:
        raise DataError(f"proposal file {path}: a {type(data).__name__} is neither the "
                        "detectron2 dict nor the mmdetection list layout")
    if len(raw_boxes) != len(ids):
        raise DataError(f"proposal file {path}: {len(ids)} ids but {len(raw_boxes)} box arrays")
    raw_scores = raw_scores if raw_scores is not None else [None] * len(ids)
    boxes, scores = zip(*[checked_entry(path, i, b, s)
                          for i, b, s in zip(ids, raw_boxes, raw_scores)]) if ids else ((), ())
    return ProposalSet(ids, list(boxes), list(scores), {"format": FORMAT})


def read_proposal_file(path: str | Path, image_ids: list[int]) -> ProposalSet:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"proposal file {path} does not exist")
    readers = {".npz": load_npz, ".json": load_json}
    if path.suffix in readers:
        return readers[path.suffix](path)
    if path.suffix in (".pkl", ".pickle"):
        return load_pickle(path, image_ids)
    raise DataError(f"proposal file {path}: unknown suffix '{path.suffix}' "
                    "(supported: .npz, .json, .pkl)")


# --- the cache --------------------------------------------------------------------------


def dataset_identity(dataset_cfg, split: str, image_ids: list[int]) -> dict:
    """What makes a split's images what they are: its config (minus loading options) + ids."""
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(dataset_cfg, resolve=True, enum_to_str=True) \
        if not isinstance(dataset_cfg, dict) else dict(dataset_cfg)
    conf = {k: v for k, v in conf.items() if k not in LOADING_KEYS}
    ids_sha = hashlib.sha256(np.asarray(image_ids, np.int64).tobytes()).hexdigest()[:16]
    return {"config": conf, "split": split, "num_images": len(image_ids), "ids_sha": ids_sha}


def cache_path(cache_dir: str | Path, identity: dict, source: str, params: dict) -> Path:
    key = json.dumps({"dataset": identity, "source": source, "params": params}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = identity["config"].get("name", "dataset")
    return Path(cache_dir).expanduser() / f"{name}-{identity['split']}-{source}-{digest}.npz"


def cached_proposals(cache_dir: str | Path, identity: dict, source: str, params: dict,
                     image_ids: list[int], compute: Callable[[], ProposalSet]) -> ProposalSet:
    """Load the cache file for (dataset split, source, params) or compute and write it once."""
    path = cache_path(cache_dir, identity, source, params)
    expected = {"format": FORMAT, "dataset": identity, "source": source, "params": params}
    if path.is_file():
        pset = load_npz(path)
        check_identity(path, pset.meta, expected)
        log.info("proposals: reusing cache %s", path)
        return check_ids(path, pset, image_ids, exact=True)
    pset = compute()
    pset.meta = {k: v for k, v in expected.items() if k != "format"}
    check_ids(path, pset, image_ids, exact=True)
    save_npz(path, pset)
    log.info("proposals: wrote cache %s (%d images)", path, len(image_ids))
    return pset


_WORKER: dict = {}


def _init_worker(raw, params: dict) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER.update(raw=raw, params=params)


def _search_one(index: int) -> tuple[int, np.ndarray]:
    from rcnn_cli.modeling.proposals import selective_search

    image, _ = _WORKER["raw"].raw(index)
    return index, selective_search(image, **_WORKER["params"])


def compute_selective_search(raw, params: dict, workers: int) -> ProposalSet:
    """Selective search over every image of ``raw`` in ``workers`` processes (0: in-process)."""
    import multiprocessing as mp

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    n = len(raw.image_ids)
    boxes: list[np.ndarray | None] = [None] * n
    columns = ("[bold]selective search", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("ss", total=n)
        if workers <= 0:
            _init_worker(raw, params)
            results = map(_search_one, range(n))
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers, _init_worker, (raw, params))
            results = pool.imap_unordered(_search_one, range(n), chunksize=4)
        try:
            for i, b in results:
                boxes[i] = b
                progress.advance(task)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    scores = [1.0 / (1.0 + np.arange(len(b), dtype=np.float32)) for b in boxes]
    return ProposalSet(list(raw.image_ids), boxes, scores, {})


def selective_search_params(pcfg) -> dict:
    return {"mode": getattr(pcfg.mode, "value", pcfg.mode), "scale": float(pcfg.scale),
            "max_proposals": int(pcfg.max_proposals), "min_box_size": float(pcfg.min_box_size)}


def split_file(file: str | None, split: str) -> Path:
    """``proposals.file``: one file for every split, or a folder holding
    ``proposals_<split>.npz`` per split (what a 4-step proposals stage writes)."""
    if not file:
        raise ConfigError("proposals=precomputed needs proposals.file=PATH")
    path = Path(file).expanduser()
    return path / f"proposals_{split}.npz" if path.is_dir() else path


def load_proposals(pcfg, dataset_cfg, split: str, raw) -> dict[int, np.ndarray]:
    """image id -> float32 [K, 4] boxes for a ``selective_search`` or ``precomputed`` source."""
    from rcnn_cli.modeling.proposals import filter_boxes

    ids = list(raw.image_ids)
    if pcfg.name == "selective_search":
        params = selective_search_params(pcfg)
        identity = dataset_identity(dataset_cfg, split, ids)
        pset = cached_proposals(pcfg.cache_dir, identity, "selective_search", params, ids,
                                lambda: compute_selective_search(raw, params, pcfg.workers))
    elif pcfg.name == "precomputed":
        path = split_file(pcfg.file, split)
        pset = check_ids(path, read_proposal_file(path, ids), ids, exact=False)
    else:
        raise ConfigError(f"proposals={pcfg.name} has no proposal file (it is computed by "
                          "the model)")
    found = pset.by_id()
    return {i: filter_boxes(found[i], pcfg.min_box_size, pcfg.max_proposals) for i in ids}


def attach_proposals(cfg, split: str, view) -> None:
    """Give a DetectionView its external proposals when ``cfg.proposals`` is not the RPN."""
    pcfg = cfg.get("proposals") if hasattr(cfg, "get") else None
    if pcfg is None or pcfg.name == "rpn":
        return
    view.proposals = load_proposals(pcfg, cfg.dataset, split, view.raw)


def image_proposer(pcfg, image_ids: list[int]) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """For prediction on images outside a cached split: ``(uint8 HxWx3, image id) -> boxes``
    computed per image (selective search) or looked up (proposal file); None for the RPN."""
    from rcnn_cli.modeling.proposals import filter_boxes, selective_search

    if pcfg is None or pcfg.name == "rpn":
        return None
    if pcfg.name == "selective_search":
        params = selective_search_params(pcfg)
        return lambda image, _id: selective_search(image, **params)
    if Path(pcfg.file).expanduser().is_dir():
        raise ConfigError(f"proposals.file={pcfg.file} is a folder of per-split files; "
                          "prediction reads one file: proposals.file=FOLDER/proposals_val.npz")
    found = read_proposal_file(pcfg.file, image_ids).by_id()

    def lookup(_image, image_id: int) -> np.ndarray:
        if image_id not in found:
            raise DataError(f"proposal file {pcfg.file}: no proposals for image id {image_id}")
        return filter_boxes(found[image_id], pcfg.min_box_size, pcfg.max_proposals)

    return lookup
