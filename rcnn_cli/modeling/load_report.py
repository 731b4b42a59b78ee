"""The load report of ``model.weights``: a console table, ``<run>/weights_load.json`` (source,
sha256, keys per category, class map) and the class map as TensorBoard text."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rcnn_cli.io import atomic_write_json

log = logging.getLogger("rcnn_cli")

CATEGORIES = {
    "loaded": "copied: same name and shape",
    "mapped": "class layers: matched classes' rows copied",
    "reinitialised": "fresh init (reinit, no match, partial)",
    "skipped": "source tensors unused (weights_partial)",
}


@dataclass
class LoadReport:
    """What happened to every tensor of the model and of the source."""

    source: str
    kind: str
    path: str | None
    sha256: str | None
    loaded: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    class_map: list[dict] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "path": self.path,
                "sha256": self.sha256, "parameters": self.params, "class_map": self.class_map,
                "keys": {name: getattr(self, name) for name in CATEGORIES}}

    def write(self, run_dir: str | Path) -> Path:
        return atomic_write_json(Path(run_dir) / "weights_load.json", self.as_dict())

    def class_map_text(self) -> str:
        """Markdown: one row per class of ours, the source class it starts from."""
        rows = ["| class | from source class (row) |", "|---|---|"]
        rows += [f"| {c['class']} | " + ("fresh initialisation" if c["source_row"] is None
                                        else f"{c['source_class']} ({c['source_row']})") + " |"
                 for c in self.class_map]
        return "\n".join(rows)

    def log_table(self) -> None:
        """One rich table on the console (and the log)."""
        from rich.table import Table

        from rcnn_cli.console import table_console

        log.info("model.weights=%s (%s)", self.source, self.kind)  # a path: no folding
        table = Table(title="model.weights, tensor by tensor")
        for col in ("tensors", "count", "parameters", "meaning"):
            table.add_column(col)
        for name, meaning in CATEGORIES.items():
            table.add_row(name, str(len(getattr(self, name))), f"{self.params.get(name, 0):,}",
                          meaning)
        table_console(stderr=True).print(table)
        for name in CATEGORIES:
            log.info("weights %s: %d tensors, %d parameters", name, len(getattr(self, name)),
                     self.params.get(name, 0))
        if self.class_map:
            log.info("class map: %s", ", ".join(
                f"{c['class']}<-{c['source_class'] or 'fresh'}" for c in self.class_map))

    def publish(self, run_dir: str | Path, writer=None) -> None:
        """Table on the console, ``weights_load.json``, class map to TensorBoard as text."""
        self.log_table()
        self.write(run_dir)
        if writer is not None and self.class_map:
            writer.add_text("weights/class_map", self.class_map_text(), 0)
