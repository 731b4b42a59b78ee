"""Checkpoints: atomic writes, an index of sizes and hashes, and ``weights_only`` loads only.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it; nothing is ever retried with pickle.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import atomic_torch_save, atomic_write_json

FORMAT = "rcnn-cli/1"
INDEX = "index.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} was refused by the weights-only loader (it needs code to "
            f"unpickle, which is never run): {first[-1] if first else e}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or not a checkpoint: "
            f"{type(e).__name__}: {e or 'unexpected end of file'}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    ckpt = load_file(path)
    if ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an rcnn-cli checkpoint (no '{FORMAT}' format "
                              "field); use model.weights= for plain state dicts")
    return ckpt


def load_state_file(path: str | Path) -> dict:
    """Model weights from a plain state dict or from an rcnn-cli checkpoint."""
    obj = load_file(path)
    state = obj["model"] if obj.get("format") == FORMAT else obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """``<run>/checkpoints/{last,best}.pt`` plus ``index.json`` (iteration, size, sha256)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def save(self, name: str, state: dict) -> Path:
        path = atomic_torch_save(self.path(name), {"format": FORMAT, **state})
        index = self.index()
        index[name] = {"file": path.name, "iteration": int(state.get("iteration", -1)),
                       "size": path.stat().st_size, "sha256": sha256(path)}
        atomic_write_json(self.dir / INDEX, index)
        return path

    def index(self) -> dict:
        try:
            return json.loads((self.dir / INDEX).read_text())
        except (OSError, ValueError):
            return {}


def resolve_resume(target: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``; a file means itself."""
    target = Path(target).expanduser()
    if target.is_dir():
        cand = target / "checkpoints" / "last.pt"
        if not cand.is_file():
            raise CheckpointError(f"resume={target}: no checkpoints/last.pt in that run directory")
        return cand
    if not target.is_file():
        raise CheckpointError(f"resume={target}: no such file or run directory")
    return target
