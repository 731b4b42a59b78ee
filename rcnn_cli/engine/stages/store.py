"""Bookkeeping of a stage graph run: ``<run>/stages/<stage>/manifest.json`` per stage.

A manifest holds the stage's key (a hash of its config and of its inputs' bytes), its status
(``running`` from the moment it starts, ``done`` once its outputs are written) and the sha256
of each output file. A stage is reused only if its key matches and its outputs verify.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from rcnn_cli.io import atomic_write_json, sha256

log = logging.getLogger("rcnn_cli")

MANIFEST = "manifest.json"


def stage_key(stage: str, config: dict, inputs: dict[str, str]) -> str:
    """sha256 of the stage name, its config subset and its inputs' content hashes."""
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class StageDir:
    """One stage's directory: its manifest and output files."""

    def __init__(self, run_dir: Path, stage: str):
        self.stage, self.dir = stage, Path(run_dir) / "stages" / stage

    def path(self, name: str) -> Path:
        return self.dir / name

    def manifest(self) -> dict | None:
        try:
            m = json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.dir / MANIFEST, manifest)

    def start(self, key: str, inputs: dict[str, str], wall_time_s: float = 0.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_manifest({"stage": self.stage, "key": key, "status": "running",
                             "inputs": inputs, "wall_time_s": wall_time_s})

    def finish(self, outputs: list[str], metrics: dict, wall_time_s: float) -> dict:
        m = self.manifest() or {}
        m.update(status="done", outputs={name: sha256(self.path(name)) for name in outputs},
                 metrics=metrics, wall_time_s=wall_time_s)
        self.write_manifest(m)
        return m

    def is_done(self, key: str) -> bool:
        """Finished with this key, and every output still has the recorded hash."""
        m = self.manifest()
        if not m or m.get("key") != key or m.get("status") != "done":
            return False
        bad = [name for name, digest in m.get("outputs", {}).items()
               if not self.path(name).is_file() or sha256(self.path(name)) != digest]
        if bad:
            log.warning("stage %s: output(s) %s missing or changed since it finished; "
                        "re-running it", self.stage, ", ".join(bad))
        return not bad

    def output_hash(self, name: str) -> str:
        return (self.manifest() or {}).get("outputs", {})[name]

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a stage directory from another run as hard links (copies across file systems).

    Safe to share: every writer replaces files atomically, never edits one in place."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=link)
