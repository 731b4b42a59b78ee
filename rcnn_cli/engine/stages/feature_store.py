"""On-disk feature cache for R-CNN's SVM and box-regression stages (Girshick et al. 2014,
§2.3 "Training" / Appendix B: fc7 and pool5 features of every region are extracted once and
cached on disk, then read by the SVM and regression solvers).

A store is a ``.npy`` file read as a memory map (rows = regions, columns = feature dims) plus
``<file>.json`` with its shape, dtype and the caller's metadata (image ids, region counts,
...). It is written under a temporary name and renamed when committed, so a half-written store
is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rcnn_cli.errors import DataError
from rcnn_cli.io import atomic_write_json


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


class FeatureStore:
    """``create`` -> ``write`` blocks -> ``commit(meta)``; ``open`` for a read-only memmap."""

    def __init__(self, path: Path, array: np.ndarray, meta: dict, tmp: Path | None = None):
        self.path, self.array, self.meta, self._tmp = Path(path), array, meta, tmp

    @classmethod
    def create(cls, path: Path, rows: int, dim: int, dtype: str = "float32") -> FeatureStore:
        path = Path(path)
        if rows < 0 or dim < 1:
            raise ValueError(f"{path}: a store needs rows >= 0 and dim >= 1, got {rows} x {dim}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype),
                                          shape=(rows, dim))
        return cls(path, array, {}, tmp)

    def write(self, start: int, block: np.ndarray) -> None:
        if self._tmp is None:
            raise RuntimeError(f"{self.path}: the store is committed (read-only)")
        block = np.asarray(block)
        rows, dim = self.array.shape
        if block.ndim != 2 or block.shape[1] != dim or not 0 <= start <= rows - len(block):
            raise ValueError(f"{self.path}: block {block.shape} at row {start} does not fit "
                             f"a {rows} x {dim} store")
        self.array[start:start + len(block)] = block

    def commit(self, meta: dict | None = None) -> FeatureStore:
        """Flush, rename into place, write ``<path>.json``; returns the read-only store."""
        if self._tmp is None:
            raise RuntimeError(f"{self.path}: the store is already committed")
        self.meta = {**(meta or {}), "shape": list(self.array.shape),
                     "dtype": str(self.array.dtype)}
        self.array.flush()
        del self.array
        os.replace(self._tmp, self.path)
        self._tmp = None
        atomic_write_json(meta_path(self.path), self.meta)
        return FeatureStore.open(self.path)

    def discard(self) -> None:
        """Drop an uncommitted store's temporary file."""
        if self._tmp is not None:
            del self.array
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    @classmethod
    def open(cls, path: Path, expect: dict | None = None) -> FeatureStore:
        """Read-only memmap; DataError naming the file when the array does not match its
        ``.json`` or the ``expect``ed metadata (e.g. ``{"dim": 4096, "image_ids": [...]}``)."""
        path = Path(path)
        try:
            meta = json.loads(meta_path(path).read_text())
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read feature store ({e})") from e
        if [*array.shape] != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
            raise DataError(f"{path}: array {list(array.shape)} {array.dtype} does not match "
                            f"its metadata {meta.get('shape')} {meta.get('dtype')}")
        for key, value in (expect or {}).items():
            have = array.shape[1] if key == "dim" else meta.get(key)
            if have != value:
                raise DataError(f"{path}: field {key!r} is {_short(have)}, expected "
                                f"{_short(value)} (stale feature store?)")
        return cls(path, array, meta)

    def __len__(self) -> int:
        return len(self.array)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
