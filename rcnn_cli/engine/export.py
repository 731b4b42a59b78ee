"""The format to share: model weights as safetensors plus a JSON sidecar.

``model.safetensors`` holds only tensors (no pickle, nothing to execute); ``model.json``
holds what is needed to use them: classes, the contiguous-label -> dataset category id map,
the resolved training config, the iteration and the weights file's sha256.
``rcnn-eval ckpt=<dir or .safetensors>`` evaluates it like a checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rcnn_cli.engine.ema import inference_weights

# Reading an export is a weights read: it lives at the trust boundary (rcnn_cli.io).
from rcnn_cli.io import (  # noqa: F401  (is_export, load_export re-exported)
    EXPORT_FORMAT,
    SIDECAR,
    WEIGHTS,
    atomic_write_bytes,
    atomic_write_json,
    is_export,
    load_export,
)


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
