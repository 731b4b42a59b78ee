"""Benchmark records: one JSON list per file, each run appended atomically."""

from __future__ import annotations

import json
from pathlib import Path

from rcnn_cli.io import atomic_write_json


def append_record(path: Path, record: dict) -> None:
    records = json.loads(path.read_text()) if path.exists() else []
    atomic_write_json(path, records + [record])
