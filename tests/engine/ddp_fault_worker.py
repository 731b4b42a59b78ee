"""One rank of a test DDP job: ``python ddp_fault_worker.py MODE OVERRIDES...``.

On rank 1 only, from its second training batch on, MODE ``nan`` feeds NaN images (a
non-finite loss), MODE ``raise`` makes the dataset raise and MODE ``term`` sends rank 1 a
SIGTERM (once). The time of the fault is written to ``$FAULT_TIME_FILE``. Then it runs
``rcnn-train`` with the overrides.
"""

import os
import signal
import sys
import time


def mark_fault() -> None:
    with open(os.environ["FAULT_TIME_FILE"], "w") as f:
        f.write(str(time.time()))


def inject(mode: str) -> None:
    from rcnn_cli.data.loader import DetectionView

    real_get = DetectionView.__getitem__
    calls = {"n": 0}

    def faulty(self, item):
        image, target = real_get(self, item)
        if isinstance(item, tuple):  # a training item (index, seed)
            calls["n"] += 1
            if calls["n"] > 2:  # rank 1's second batch of 2
                if mode == "term":
                    if calls["n"] == 3:
                        mark_fault()
                        os.kill(os.getpid(), signal.SIGTERM)
                    return image, target
                mark_fault()
                if mode == "raise":
                    raise RuntimeError("injected failure on rank 1")
                image = image.fill_(float("nan"))
        return image, target

    DetectionView.__getitem__ = faulty


if __name__ == "__main__":
    mode, overrides = sys.argv[1], sys.argv[2:]
    if os.environ.get("RANK") == "1":
        inject(mode)
    from rcnn_cli.train import main

    sys.argv = ["rcnn-train", *overrides]
    main()
