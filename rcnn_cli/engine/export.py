"""The format to share: model weights as safetensors plus a JSON sidecar.

``model.safetensors`` holds only tensors (no pickle, nothing to execute); ``model.json``
holds what is needed to use them: classes, the contiguous-label -> dataset category id map,
the resolved training config, the iteration and the weights file's sha256.
``rcnn-eval ckpt=<dir or .safetensors>`` evaluates it like a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from rcnn_cli.engine.ema import inference_weights
from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import atomic_write_bytes, atomic_write_json

WEIGHTS, SIDECAR = "model.safetensors", "model.json"
EXPORT_FORMAT = "rcnn-cli-export/1"


def export_model(out_dir: str | Path, state: dict[str, torch.Tensor], classes: list[str],
                 category_ids: list[int], config: dict, iteration: int) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/model.json``; returns the weights."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    # safetensors refuses tensors that share memory; a state dict's entries are cloned.
    data = save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})
    path = atomic_write_bytes(out_dir / WEIGHTS, data)
    atomic_write_json(out_dir / SIDECAR, {
        "format": EXPORT_FORMAT, "weights": WEIGHTS,
        "sha256": hashlib.sha256(data).hexdigest(), "iteration": int(iteration),
        "classes": list(classes), "category_ids": [int(c) for c in category_ids],
        "config": config})
    return path


def export_checkpoint(ckpt: dict, out_dir: str | Path) -> Path:
    return export_model(out_dir, inference_weights(ckpt), ckpt["classes"], ckpt["category_ids"],
                        ckpt["config"], ckpt["iteration"])


def is_export(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".safetensors" or (path.is_dir() and (path / SIDECAR).is_file())


def load_export(path: str | Path) -> dict:
    """An export as a checkpoint-like dict (model, classes, category_ids, config, iteration)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    sidecar = weights.with_name(SIDECAR)
    try:
        meta = json.loads(sidecar.read_text())
        data = weights.read_bytes()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"export {weights}: cannot read it or its sidecar {sidecar}: "
                              f"{e}") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{sidecar} is not an rcnn-cli export sidecar ('{EXPORT_FORMAT}')")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"export {weights} ({len(data)} bytes): sha256 differs from "
                              f"{sidecar} (corrupt or replaced file)")
    try:
        state = load(data)
    except SafetensorError as e:
        raise CheckpointError(f"export {weights}: not a safetensors file: {e}") from None
    return {"model": state, "classes": meta["classes"], "category_ids": meta["category_ids"],
            "config": meta["config"], "iteration": meta["iteration"]}
