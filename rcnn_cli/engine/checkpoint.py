"""Checkpoints: atomic writes, a verified index of sizes and hashes, RNG states.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it; the reads (the trust boundary) are in
``rcnn_cli.io``.

Layout of ``<run>/checkpoints``: ``model_<iter>.pt`` (the newest ``keep`` are kept),
``last.pt`` (a hard link to the newest, or a copy), ``best.pt`` and ``index.json``
(file, iteration, size, sha256 of each). A new checkpoint is verified (size and hash of the
bytes on disk) before the index points at it and before any old one is pruned.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import FORMAT, atomic_write_bytes, atomic_write_json, load_checkpoint, sha256

log = logging.getLogger("rcnn_cli")

INDEX = "index.json"


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


def serialize(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


class CheckpointStore:
    """``<run>/checkpoints``: verified ``model_<iter>.pt`` files, ``last.pt``, ``best.pt``."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.dir, self.keep = Path(directory), keep
        self.remove_stale_temp_files()

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def index(self) -> dict:
        try:
            index = json.loads((self.dir / INDEX).read_text())
        except (OSError, ValueError):
            return {"checkpoints": []}
        return index if isinstance(index, dict) else {"checkpoints": []}

    def remove_stale_temp_files(self) -> None:
        """Temp files of a writer that was killed: never read, removed when a store opens."""
        stale = sorted(self.dir.glob(".*.tmp")) if self.dir.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.warning("removed %d stale temp file(s) of an interrupted checkpoint write in %s",
                        len(stale), self.dir)

    def save(self, state: dict) -> Path:
        """Periodic checkpoint: write + verify ``model_<iter>.pt``, point ``last.pt`` and the
        index at it, then prune the oldest beyond ``keep``. Returns the new file."""
        iteration = int(state["iteration"])
        data = serialize(state)
        entry = self._write(self.dir / f"model_{iteration:07d}.pt", data, iteration)
        last = self._link_last(self.dir / entry["file"], data)
        index = self.index()
        entries = [e for e in index.get("checkpoints", []) if e["file"] != entry["file"]]
        entries = sorted(entries + [entry], key=lambda e: e["iteration"])
        kept, pruned = entries[-self.keep:], entries[:-self.keep]
        index.update(checkpoints=kept, last={**entry, "file": last.name})
        self._write_index(index)
        for old in pruned:
            (self.dir / old["file"]).unlink(missing_ok=True)
        return self.dir / entry["file"]

    def save_named(self, name: str, state: dict) -> Path:
        """A named checkpoint (``best``), written and verified the same way."""
        entry = self._write(self.path(name), serialize(state), int(state.get("iteration", -1)))
        index = self.index()
        index[name] = entry
        self._write_index(index)
        return self.path(name)

    def _write(self, path: Path, data: bytes, iteration: int) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint {path} ({len(data)} bytes): {e.strerror or e}; "
                f"nothing was pruned and the previous checkpoints are intact") from None
        entry = {"file": path.name, "iteration": iteration, "size": len(data), "sha256": digest}
        if not self.verify(entry):
            raise CheckpointError(f"checkpoint {path} does not read back as written (size or "
                                  "sha256 differ); nothing was pruned")
        return entry

    def _link_last(self, target: Path, data: bytes) -> Path:
        last = self.path("last")
        tmp = self.dir / f".last.pt.{os.getpid()}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.link(target, tmp)
            os.replace(tmp, last)
        except OSError:
            tmp.unlink(missing_ok=True)
            atomic_write_bytes(last, data)
        return last

    def _write_index(self, index: dict) -> None:
        try:
            atomic_write_json(self.dir / INDEX, index)
        except OSError as e:
            raise CheckpointError(f"could not write {self.dir / INDEX}: {e.strerror or e}; "
                                  "nothing was pruned") from None

    def verify(self, entry: dict) -> bool:
        path = self.dir / entry["file"]
        try:
            return path.stat().st_size == entry["size"] and sha256(path) == entry["sha256"]
        except OSError:
            return False

    def candidates(self) -> list[Path]:
        """Checkpoints newest first whose size and hash match the index; others are named."""
        index = self.index()
        entries = sorted(index.get("checkpoints", []), key=lambda e: -e["iteration"])
        if "last" in index:
            entries.append(index["last"])
        if not entries and self.path("last").is_file():
            return [self.path("last")]  # a run without an index: trust the atomic write
        good = []
        for e in entries:
            if self.verify(e):
                good.append(self.dir / e["file"])
            else:
                log.warning("skipping checkpoint %s: missing, or its size/sha256 differ from "
                            "%s (corrupt or partial)", self.dir / e["file"], INDEX)
        return list(dict.fromkeys(good))


def load_latest(run_dir: Path, trust: bool = False) -> tuple[Path, dict]:
    """The newest checkpoint of a run that verifies and loads, walking back past bad ones."""
    store = CheckpointStore(run_dir / "checkpoints")
    tried = []
    for path in store.candidates():
        try:
            return path, load_checkpoint(path, trust)
        except CheckpointError as e:
            log.warning("cannot resume from %s (%s); trying the previous checkpoint", path, e)
            tried.append(path.name)
    raise CheckpointError(f"resume={run_dir}: no loadable checkpoint in {run_dir / 'checkpoints'}"
                          + (f" (tried {', '.join(tried)})" if tried else ""))


def latest_run(search_dir: Path, exclude: Path | None = None) -> Path | None:
    """The most recently checkpointed run directory directly under ``search_dir``."""
    runs = [p.parent.parent for p in search_dir.glob(f"*/checkpoints/{INDEX}")
            if exclude is None or p.parent.parent.resolve() != exclude.resolve()]
    return max(runs, key=lambda r: (r / "checkpoints" / INDEX).stat().st_mtime, default=None)


def resolve_resume(target: str | Path, run_dir: Path | None = None,
                   trust: bool = False) -> tuple[Path, dict] | None:
    """``resume=``: a file is loaded as is; a run directory walks back to its newest good
    checkpoint; ``auto`` does that for ``run_dir`` itself when it has checkpoints (a requeued
    job writing into the same directory), else for the latest run next to it (None: none)."""
    if str(target) == "auto":
        if run_dir is None:
            raise CheckpointError("resume=auto needs the run directory to search beside")
        own = (run_dir / "checkpoints" / INDEX).is_file()
        found = run_dir if own else latest_run(run_dir.parent, exclude=run_dir)
        if found is None:
            log.warning("resume=auto: no checkpointed run under %s; STARTING FRESH from "
                        "iteration 0", run_dir.parent)
            return None
        log.info("resume=auto: latest run is %s", found)
        return load_latest(found, trust)
    target = Path(target).expanduser()
    if target.is_dir():
        if not (target / "checkpoints").is_dir():
            raise CheckpointError(f"resume={target}: no checkpoints/ in that run directory")
        return load_latest(target, trust)
    if not target.is_file():
        raise CheckpointError(f"resume={target}: no such file or run directory")
    return target, load_checkpoint(target, trust)
