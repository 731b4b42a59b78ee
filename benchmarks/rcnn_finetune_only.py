"""Evaluate an R-CNN / SPPNet run's ``finetune`` stage alone: the fine-tuned network's softmax
(R-CNN Appendix B), no SVMs, no box regression, through rcnn-eval's path. RUN is the run's
directory (``rcnn-train``'s or a lineage run's); its config is read from its last checkpoint.

    python benchmarks/rcnn_finetune_only.py outputs/bench/rcnn_sppnet/rcnn outputs/bench/rcnn_sppnet/rcnn_ft

Writes ``OUT/checkpoints/last.pt`` (the detector with ``model.classifier=softmax`` and zero ridge
weights) and ``OUT/eval/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.config import typed_train_config
from rcnn_cli.data.build import build_raw_dataset
from rcnn_cli.engine.checkpoint import CheckpointStore
from rcnn_cli.engine.evaluator import evaluate_checkpoint, load_trained
from rcnn_cli.engine.runtime import config_dict
from rcnn_cli.engine.stages.graph import load_state
from rcnn_cli.modeling.build import build_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    _, trained = load_trained(str(args.run / "checkpoints" / "last.pt"))
    stored = OmegaConf.to_container(trained, resolve=True)
    stored["model"]["classifier"] = "softmax"
    cfg = typed_train_config(stored, source=str(args.run))
    raw = build_raw_dataset(cfg.dataset, "train")
    model = build_detector(cfg, len(raw.classes))
    model.load_state_dict(load_state(args.run / "stages" / "finetune" / "model.pt"))
    CheckpointStore(args.out / "checkpoints").save({
        "model": model.state_dict(), "iteration": int(cfg.schedule.max_iter),
        "classes": list(raw.classes), "category_ids": list(raw.category_ids),
        "config": config_dict(cfg)})
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        eval_cfg = compose("eval", [f"ckpt={args.out / 'checkpoints' / 'last.pt'}"])
    metrics = evaluate_checkpoint(eval_cfg, args.out / "eval")
    print(json.dumps({k: v for k, v in metrics.items() if k.startswith("bbox/AP")}, indent=1))


if __name__ == "__main__":
    main()
