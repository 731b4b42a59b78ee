"""``model.json`` next to an exported model: everything needed to use it without rcnn-cli."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from rcnn_cli.deploy.graph import DeployGraph
from rcnn_cli.engine.runtime import config_dict
from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import sha256

SIDECAR = "model.json"
DEPLOY_FORMAT = "rcnn-cli-deploy/1"

OUTPUT_DOCS = {
    "boxes": "(N, 4) float32 x1, y1, x2, y2 in input-image pixels",
    "labels": "(N,) int64 in 1..K: classes[label - 1], category_ids[label - 1]",
    "scores": "(N,) float32 class probability, >= score_thresh, sorted per class by NMS",
    "masks": "(N, 1, H, W) float32 per-pixel probability of the detected class (>= 0.5: in)",
}

PROPOSALS_DOC = ("x1, y1, x2, y2 in input-image pixels, computed outside the graph (selective "
                 "search or a proposal file, as in training)")


def describe(*, fmt: str, file: str, file_sha256: str, exporter: str, opset: int | None,
             source: str, source_sha256: str, ckpt: dict, train_cfg: DictConfig,
             graph: DeployGraph, example_size: list[int], parity: list[dict]) -> dict:
    m, d = train_cfg.model, train_cfg.dataset
    return {
        "format": DEPLOY_FORMAT, "model_format": fmt, "file": file, "sha256": file_sha256,
        "exporter": exporter, "opset": opset, "torch": torch.__version__,
        "source": {"path": str(source), "sha256": source_sha256,
                   "iteration": int(ckpt["iteration"])},
        "model": m.name, "backbone": train_cfg.backbone.name,
        "classes": list(ckpt["classes"]), "category_ids": [int(c) for c in ckpt["category_ids"]],
        "input": {"name": "image", "shape": [3, "height", "width"], "dtype": "float32",
                  "color": "RGB", "value_range": [0.0, 1.0], "batch": 1,
                  "note": "any height and width; one image per run"},
        **({"proposals": {"name": "proposals", "shape": ["proposals", 4], "dtype": "float32",
                          "note": PROPOSALS_DOC}} if graph.proposals else {}),
        "preprocessing": {
            "inside_graph": True,
            "steps": "(x - mean) / std; resize so the shorter side is min_size and the longer "
                     "at most max_size (bilinear); detector; boxes (and masks) scaled back to "
                     "the input image",
            "mean": list(m.image_mean), "std": list(m.image_std),
            "min_size": int(d.min_size), "max_size": int(d.max_size)},
        "outputs": {k: OUTPUT_DOCS[k] for k in graph.output_names},
        "score_thresh": float(m.box_head.score_thresh),
        "nms_thresh": float(m.box_head.nms_thresh),
        "detections_per_img": int(m.box_head.detections_per_img),
        "export_image_size": list(example_size), "parity": parity,
        "config": config_dict(train_cfg),
    }


def read_sidecar(model_file: Path) -> dict:
    """The sidecar of an exported file, checked against the file's sha256."""
    sidecar = model_file.with_name(SIDECAR)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_file}: cannot read its sidecar {sidecar}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != DEPLOY_FORMAT:
        raise CheckpointError(f"{sidecar} is not an rcnn-export sidecar ('{DEPLOY_FORMAT}')")
    if meta.get("file") != model_file.name:
        raise CheckpointError(f"{sidecar} describes {meta.get('file')!r}, not {model_file.name}")
    if sha256(model_file) != meta.get("sha256"):
        raise CheckpointError(f"{model_file}: sha256 differs from {sidecar} (corrupt or "
                              "replaced file)")
    return meta
