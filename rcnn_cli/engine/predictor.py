"""``rcnn-predict``: run a trained detector over images, draw its boxes, write COCO results.

``input`` is an image file, a folder (its .png/.jpg/.jpeg files, sorted), a glob, or the word
``dataset`` (the ``split`` of ``dataset``; by default the checkpoint's dataset config).
``ckpt`` is a checkpoint, an export, or an ``rcnn-export`` ``model.onnx`` (run by ONNX Runtime).
Outputs in ``output`` (the Hydra run directory by default):

* ``<image name>``: the image with boxes, class names and scores >= ``score_thresh`` (masks
  for mask models), PNG or JPEG like the input;
* ``detections.json``: COCO results format, original category ids (the dataset's for
  ``input=dataset``, else the checkpoint's), every detection the model
  returns (its own ``model.box_head.score_thresh``), ready for ``COCO.loadRes``;
* ``images.json``: the COCO ``images`` (id, file_name, width, height) and ``categories``.

Image ids are the dataset's for ``input=dataset``; for files they come from ``ann_file`` (a COCO
annotation file, matched by file name) or else count 1, 2, ... in the sorted input order.
"""

from __future__ import annotations

import glob
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from rcnn_cli.config import validate
from rcnn_cli.data.proposal_cache import image_proposer
from rcnn_cli.data.transforms import to_sample
from rcnn_cli.engine import fast_inference, runtime
from rcnn_cli.engine.evaluator import build_trained_model, check_classes, load_trained
from rcnn_cli.engine.runtime import hydra_run_dir, make_progress
from rcnn_cli.errors import ConfigError, DataError
from rcnn_cli.evaluation import tta
from rcnn_cli.evaluation.draw import draw_output, read_image, write_image
from rcnn_cli.evaluation.inference import to_coco_results
from rcnn_cli.io import atomic_write_json
from rcnn_cli.modeling.build import uses_masks

log = logging.getLogger("rcnn_cli")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Item:
    """One input image: where its pixels come from, its id and its output name."""

    image_id: int
    name: str
    path: Path | None = None
    index: int | None = None  # into a raw dataset


def find_images(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
    if not found:
        raise DataError(f"input={spec}: no .png/.jpg/.jpeg image found (a file, folder or glob)")
    return found


def ids_from_annotations(ann_file: str) -> dict[str, int]:
    """file name (its last path component) -> image id, from a COCO annotation file."""
    try:
        images = json.loads(Path(ann_file).read_text())["images"]
        return {Path(im["file_name"]).name: int(im["id"]) for im in images}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"ann_file={ann_file}: not a readable COCO annotation file with "
                        f"'images' (id, file_name): {e}") from None


def file_items(paths: list[Path], ann_file: str | None) -> list[Item]:
    ids = ids_from_annotations(ann_file) if ann_file else None
    items, names = [], set()
    for k, p in enumerate(paths):
        if ids is not None and p.name not in ids:
            raise DataError(f"{p}: file name {p.name!r} is not among the images of {ann_file}")
        name = p.name if p.name not in names else f"{k:06d}_{p.name}"
        names.add(name)
        items.append(Item(ids[p.name] if ids is not None else k + 1, name, path=p))
    return items


def dataset_items(raw) -> list[Item]:
    files = {im["id"]: Path(im.get("file_name", f"{im['id']}.png")).name
             for im in raw.coco_gt()["images"]}
    return [Item(int(iid), files[int(iid)], index=i) for i, iid in enumerate(raw.image_ids)]


def load_pixels(item: Item, raw=None) -> torch.Tensor:
    """(3, H, W) float image in [0, 1]."""
    if item.index is not None:
        image, _ = to_sample(*raw.raw(item.index))
        image = image.as_subclass(torch.Tensor)
    else:
        from PIL import UnidentifiedImageError

        try:
            image = read_image(item.path)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{item.path}: cannot decode the image: {e}") from None
    return image.float() / 255


def predict_images(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Predict, draw and write; returns counts and the throughput of the prediction loop."""
    validate(cfg)
    if not 0.0 <= cfg.score_thresh <= 1.0:
        raise ConfigError(f"score_thresh={cfg.score_thresh}: must be in [0, 1]")
    out_dir = Path(cfg.output) if cfg.output else (
        Path(run_dir) if run_dir is not None else hydra_run_dir())
    ckpt, train_cfg = load_trained(cfg.ckpt, cfg.ckpt_trust)
    runtime.set_threads(cfg.threads)
    device = runtime.select_device(cfg.device)
    raw = None
    if cfg.input == "dataset":
        from rcnn_cli.data.build import build_raw_dataset

        ds_cfg = cfg.dataset if cfg.dataset is not None else train_cfg.dataset
        if ds_cfg.name == "shapes" and cfg.split not in ("train", "val"):
            raise ConfigError(f"split={cfg.split}: dataset=shapes has the splits train and val")
        raw = build_raw_dataset(ds_cfg, cfg.split)
        check_classes(ckpt, raw.classes, cfg.ckpt)
        items = dataset_items(raw)
    else:
        items = file_items(find_images(cfg.input), cfg.ann_file)
    if cfg.limit:
        items = items[:cfg.limit]
    model = fast_inference.prepare(build_trained_model(ckpt, train_cfg, device),
                                   cfg.speed.fold_bn, cfg.speed.channels_last, cfg.speed.compile)
    model = tta.wrap(model, cfg.tta, list(cfg.tta_scales), cfg.tta_merge, cfg.tta_iou,
                     uses_masks(train_cfg.model.name))
    log.info("predicting %d image(s) with %s -> %s", len(items), cfg.ckpt, out_dir)
    proposer = image_proposer(train_cfg.get("proposals"), [it.image_id for it in items])
    # a dataset split keeps its own category ids (names were checked to match the checkpoint's)
    category_ids = list(raw.category_ids) if raw is not None else list(ckpt["category_ids"])
    summary = run_predictions(model, items, raw, list(ckpt["classes"]), category_ids, device,
                              cfg.batch_size, cfg.score_thresh, out_dir, proposer)
    log.info("%d image(s), %d detection(s), %.2f images/s; written to %s", summary["images"],
             summary["detections"], summary["images_per_s"], out_dir)
    return summary


def uint8_hwc(pixels: torch.Tensor):
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@torch.inference_mode()
def run_predictions(model, items: list[Item], raw, classes: list[str], category_ids: list[int],
                    device: torch.device, batch_size: int, score_thresh: float,
                    out_dir: Path, proposer=None) -> dict:
    results, images = [], []
    start = time.perf_counter()
    with make_progress() as progress:
        task = progress.add_task("predict", total=len(items), speed="", losses="")
        for lo in range(0, len(items), batch_size):
            batch = items[lo:lo + batch_size]
            pixels = [load_pixels(it, raw) for it in batch]
            extra = {}
            if proposer is not None:  # model=fast: external proposals per image
                extra["proposals"] = [
                    torch.from_numpy(proposer(uint8_hwc(p), it.image_id)).to(device)
                    for p, it in zip(pixels, batch)]
            outputs = fast_inference.detect(model, [p.to(device) for p in pixels], len(batch),
                                            **extra)
            for it, img, out in zip(batch, pixels, outputs):
                out = {k: v.cpu() for k, v in out.items()}
                results += to_coco_results(out, it.image_id, category_ids)
                write_image(out_dir / it.name, draw_output(img, out, classes, score_thresh))
                images.append({"id": it.image_id, "file_name": it.name,
                               "height": int(img.shape[1]), "width": int(img.shape[2])})
            done = lo + len(batch)
            progress.update(task, completed=done,
                            speed=f"{done / (time.perf_counter() - start):.2f} img/s")
    seconds = time.perf_counter() - start
    atomic_write_json(out_dir / "detections.json", results)
    atomic_write_json(out_dir / "images.json", {
        "images": images,
        "categories": [{"id": int(c), "name": n} for c, n in zip(category_ids, classes)]})
    return {"images": len(items), "detections": len(results), "seconds": seconds,
            "images_per_s": len(items) / seconds if seconds > 0 else float("inf")}
