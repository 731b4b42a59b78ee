"""Evaluate a checkpoint: rebuild the model from its stored config, then ``eval.metric``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rcnn_cli.config import typed_train_config, validate
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.proposal_cache import attach_proposals
from rcnn_cli.deploy.onnx_runtime import OnnxDetector, is_onnx, load_onnx
from rcnn_cli.engine import runtime
from rcnn_cli.engine.compress import compress_and_compare, save_compressed
from rcnn_cli.engine.ema import inference_weights
from rcnn_cli.engine.export import is_export, load_export
from rcnn_cli.engine.runtime import hydra_run_dir, make_progress
from rcnn_cli.errors import CheckpointError, ConfigError
from rcnn_cli.evaluation import tta
from rcnn_cli.evaluation.build import build_evaluator, iou_types_for
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.recall import evaluate_proposal_recall, recall_metrics, write_recall_report
from rcnn_cli.evaluation.results import save_evaluation
from rcnn_cli.io import load_checkpoint
from rcnn_cli.modeling.build import build_architecture, uses_masks
from rcnn_cli.modeling.weights import without_pretrained

log = logging.getLogger("rcnn_cli")


def load_trained(path: str, trust: bool = False) -> tuple[dict, DictConfig]:
    """A checkpoint, an export or an rcnn-export ONNX file, and its typed training config."""
    if is_onnx(path):
        ckpt = load_onnx(path)
    else:
        ckpt = load_export(path) if is_export(path) else load_checkpoint(path, trust)
    return ckpt, typed_train_config(ckpt["config"], source=path)


def build_trained_model(ckpt: dict, train_cfg: DictConfig, device):
    """The checkpoint holds every tensor: build without reading pretrained weights (works
    offline and after those files are gone), then load it."""
    if "onnx" in ckpt:  # an rcnn-export file: ONNX Runtime runs it, on threads= as torch does
        return OnnxDetector(ckpt["onnx"], device, threads=torch.get_num_threads())
    model = build_architecture(without_pretrained(train_cfg), len(ckpt["classes"]))
    model.load_state_dict(inference_weights(ckpt))
    return model.to(device).eval()


def check_classes(ckpt: dict, dataset_classes: list[str], source: str) -> None:
    classes = list(ckpt["classes"])
    if list(dataset_classes) != classes:
        raise CheckpointError(f"{source}: the checkpoint's classes differ (count or order) "
                              f"from the dataset's: checkpoint {classes}, dataset "
                              f"{list(dataset_classes)}")


def eval_workers(cfg: DictConfig, train_cfg: DictConfig) -> int:
    """``workers=``, else the training run's ``dataset.num_workers`` capped at the CPU count."""
    if cfg.workers is None:
        return min(train_cfg.dataset.num_workers, os.cpu_count() or 1)
    if cfg.workers < 0:
        raise ConfigError(f"workers={cfg.workers}: must be >= 0 (0 loads in the main process)")
    return cfg.workers


def evaluate_checkpoint(cfg: DictConfig, run_dir: str | Path | None = None,
                        adjust: Callable[[torch.nn.Module, DictConfig], None] | None = None
                        ) -> dict:
    """``adjust(model, training config)``: called on the built model before it runs (the
    batch-norm diagnostics of ``benchmarks/bn_statistics.py``)."""
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run directory: %s", run_dir)
    ckpt, train_cfg = load_trained(cfg.ckpt, cfg.ckpt_trust)
    if "onnx" in ckpt and (cfg.eval.proposals or cfg.compress.fc6 is not None
                           or cfg.compress.fc7 is not None or cfg.eval.tta != "none"):
        raise ConfigError(f"ckpt={cfg.ckpt}: an ONNX file exposes detections only; "
                          "eval.proposals, eval.tta and compress.* need the checkpoint")
    if cfg.dataset is not None:
        train_cfg.dataset = cfg.dataset
    workers = eval_workers(cfg, train_cfg)
    runtime.set_threads(cfg.threads)
    device = runtime.select_device(cfg.device)
    masks = uses_masks(train_cfg.model.name)
    dataset = build_dataset(train_cfg.dataset, "val", train=False, with_masks=masks)
    check_classes(ckpt, dataset.raw.classes, cfg.ckpt)
    attach_proposals(train_cfg, "val", dataset)
    evaluator = build_evaluator(dataset.raw.coco_gt(), cfg.eval, iou_types_for(train_cfg))
    model = build_trained_model(ckpt, train_cfg, device)
    if adjust is not None:
        adjust(model, train_cfg)
    e = cfg.eval
    detector = tta.wrap(model, e.tta, list(e.tta_scales), e.tta_merge, e.tta_iou, masks)
    loader = eval_loader(dataset, cfg.eval.batch_size, workers)
    with make_progress() as progress:
        dets = predict(detector, loader, device, dataset.raw.category_ids, progress)
    metrics = evaluator.evaluate(dets)
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
    OmegaConf.save(train_cfg, run_dir / "model_config.yaml")
    save_evaluation(run_dir, evaluator, metrics, dets,
                    f"{cfg.ckpt} (iteration {metrics['iteration']})", cfg.eval.confusion_score)
    log.info("run directory: %s", run_dir)
    return metrics
