"""The parsed, validated index of a COCO / VOC split, cached as one ``.npz`` file.

The key hashes the annotation files' paths, sizes and modification times, the image
folder's modification time, the parse/validation parameters and a format version; a changed
file gives a new key. The file is written atomically; an unreadable cache is rebuilt.
Location: ``dataset.cache_dir``, else ``$RCNN_CLI_CACHE``, else ``~/.cache/rcnn-cli/index``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from rcnn_cli.data.annotations import AnnotationStore
from rcnn_cli.io import atomic_write_bytes

log = logging.getLogger("rcnn_cli")
VERSION = 2


def cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("RCNN_CLI_CACHE"):
        return Path(os.environ["RCNN_CLI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rcnn-cli" / "index"


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(kind: str, files: list[Path], params: dict) -> str:
    blob = json.dumps({"version": VERSION, "kind": kind, "params": params,
                       "files": [_stat(Path(f)) for f in files]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_store(kind: str, files: list[Path], params: dict,
                 build: Callable[[], AnnotationStore], enabled: bool = True,
                 directory: str | None = None) -> AnnotationStore:
    """``build()`` once per (files, params); later calls load the saved arrays."""
    if not enabled:
        return build()
    path = cache_dir(directory) / f"{kind}-{cache_key(kind, files, params)}.npz"
    if path.is_file():
        try:
            store = AnnotationStore.from_file(path)
            log.debug("index cache hit: %s", path)
            return store
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("index cache %s is unreadable (%s): rebuilding it", path, e)
    store = build()
    try:
        atomic_write_bytes(path, store.to_bytes())
    except OSError as e:
        log.warning("could not write the index cache %s: %s", path, e)
    return store
