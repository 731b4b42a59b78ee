"""Evaluate a checkpoint: rebuild the model from its stored config, then COCO box AP."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rcnn_cli.config import typed_train_config, validate
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.proposal_cache import attach_proposals
from rcnn_cli.engine import runtime
from rcnn_cli.engine.checkpoint import load_checkpoint
from rcnn_cli.engine.compress import compress_and_compare, save_compressed
from rcnn_cli.engine.export import is_export, load_export
from rcnn_cli.engine.trainer import hydra_run_dir, make_progress
from rcnn_cli.errors import CheckpointError
from rcnn_cli.evaluation.coco import CocoEvaluator
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.recall import evaluate_proposal_recall, recall_metrics, write_recall_report
from rcnn_cli.evaluation.report import print_metrics
from rcnn_cli.io import atomic_write_json
from rcnn_cli.modeling.build import build_detector

log = logging.getLogger("rcnn_cli")


def evaluate_checkpoint(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run directory: %s", run_dir)
    ckpt = load_export(cfg.ckpt) if is_export(cfg.ckpt) else load_checkpoint(cfg.ckpt,
                                                                             cfg.ckpt_trust)
    train_cfg = typed_train_config(ckpt["config"], source=cfg.ckpt)
    if cfg.dataset is not None:
        train_cfg.dataset = cfg.dataset
    runtime.set_threads(cfg.threads)
    device = runtime.select_device(cfg.device)
    dataset = build_dataset(train_cfg.dataset, "val", train=False)
    attach_proposals(train_cfg, "val", dataset)
    classes = list(ckpt["classes"])
    if list(dataset.raw.classes) != classes:
        raise CheckpointError(f"{cfg.ckpt}: the checkpoint's classes differ (count or order) "
                              f"from the dataset's: checkpoint {classes}, dataset "
                              f"{list(dataset.raw.classes)}")
    model = build_detector(train_cfg, len(classes))
    model.load_state_dict(ckpt["model"])
    model.to(device)
    loader = eval_loader(dataset, cfg.eval.batch_size, train_cfg.dataset.num_workers)
    with make_progress() as progress:
        dets = predict(model, loader, device, dataset.raw.category_ids, progress)
    metrics = CocoEvaluator(dataset.raw.coco_gt()).evaluate(dets)
    metrics["iteration"] = int(ckpt["iteration"])
    if cfg.eval.proposals:
        result = evaluate_proposal_recall(model, loader, device, list(cfg.eval.proposal_counts))
        metrics.update(recall_metrics(result))
        write_recall_report(result, run_dir, f"proposal recall: {Path(cfg.ckpt).name}")
    if cfg.compress.fc6 is not None or cfg.compress.fc7 is not None:
        svd, small = compress_and_compare(model, cfg.compress.fc6, cfg.compress.fc7, loader,
                                          device, dataset.raw.category_ids, dataset.raw.coco_gt(),
                                          warm_up=False)
        metrics.update(svd)
        if cfg.compress.save:
            save_compressed(ckpt, small, cfg.compress.fc6, cfg.compress.fc7, run_dir)
    atomic_write_json(run_dir / "predictions" / "detections.json", dets)
    atomic_write_json(run_dir / "metrics.json", metrics)
    OmegaConf.save(train_cfg, run_dir / "model_config.yaml")
    print_metrics(metrics, f"{cfg.ckpt} (iteration {metrics['iteration']})")
    log.info("run directory: %s", run_dir)
    return metrics
