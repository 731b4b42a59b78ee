"""``rcnn-train`` for the stop-signal tests: ``python stop_worker.py OVERRIDES...``.

With ``$STOP_GATE=<kind>:<n>:<dir>`` (kind ``train`` or ``eval``), a DataLoader worker that
loads its n-th item of that kind writes ``<dir>/reached.<pid>`` and waits until
``<dir>/go`` exists (or its parent is gone), so a test signals the run at a known point without
fixed sleeps. With ``$STOP_EXIT_DIR``, the exit code is written to ``<dir>/rank<RANK>``.
"""

import os
import sys
import time
from pathlib import Path


def install_gate(kind: str, n: int, gate: Path) -> None:
    from torch.utils.data import get_worker_info

    from rcnn_cli.data.loader import DetectionView

    real_get = DetectionView.__getitem__
    seen = {"n": 0}

    def gated(self, item):
        in_worker = get_worker_info() is not None
        if in_worker and isinstance(item, tuple) == (kind == "train"):  # train: (index, seed)
            seen["n"] += 1
            if seen["n"] == n:
                parent = os.getppid()
                (gate / f"reached.{os.getpid()}").write_text(str(parent))
                deadline = time.monotonic() + 900
                while not (gate / "go").exists() and time.monotonic() < deadline:
                    if os.getppid() != parent:
                        os._exit(1)
                    time.sleep(0.05)
        return real_get(self, item)

    DetectionView.__getitem__ = gated


def main() -> int:
    if os.environ.get("STOP_GATE"):
        kind, n, gate = os.environ["STOP_GATE"].split(":", 2)
        install_gate(kind, int(n), Path(gate))
    from rcnn_cli.train import main as train_main

    sys.argv = ["rcnn-train", *sys.argv[1:]]
    try:
        train_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if os.environ.get("STOP_EXIT_DIR"):
        Path(os.environ["STOP_EXIT_DIR"], f"rank{os.environ.get('RANK', '0')}").write_text(
            str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
