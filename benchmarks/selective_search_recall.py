"""Proposal recall (AR@N) of cached selective search on a shapes split.

Reads (or computes once) the proposal cache exactly as training does, so no model is needed:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/selective_search_recall.py \
        proposals.cache_dir=outputs/proposal_cache dataset.train_size=1000 dataset.val_size=200

Arguments are rcnn-train overrides (proposals=selective_search is implied). Prints the
``proposals/*`` metrics of ``rcnn-eval eval.proposals=true`` as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the config schemas)
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.proposal_cache import attach_proposals
from rcnn_cli.evaluation.recall import proposal_recall, recall_metrics


def main(overrides: list[str]) -> None:
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("train", ["model=fast", "proposals=selective_search", *overrides])
    view = build_dataset(cfg.dataset, "val", train=False)
    attach_proposals(cfg, "val", view)
    ids = list(view.raw.image_ids)
    props = [torch.from_numpy(view.proposals[i]) for i in ids]
    gts = [torch.as_tensor(view.raw.raw(k)[1]["boxes"], dtype=torch.float32)
           for k in range(len(ids))]
    result = proposal_recall(props, gts, [100, 300, 1000, 2000])
    out = recall_metrics(result)
    out["proposals/mean_per_image"] = float(np.mean([len(p) for p in props]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
