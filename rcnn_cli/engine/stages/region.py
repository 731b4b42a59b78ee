"""R-CNN (Girshick et al. 2014, §2.3) and SPPNet (He et al. 2014, §4) training as a resumable
stage graph:

    finetune -> features -> svms -> box_reg -> final detector

- ``finetune``: the network as an (N+1)-way softmax classifier of regions (R-CNN: the whole
  CNN on warped crops; SPPNet: fc6/fc7 on pyramid-pooled conv5, conv frozen), minibatches of
  ``sampler.roi`` (R-CNN: 32 foreground + 96 background per 128), the joint loop's ``Trainer``
  (checkpoints, exact resume, faults);
- ``features``: pool5 and fc7 of every training region (ground truth + proposals) computed once
  and cached on disk as memory maps (``stages.feature_store``); fc7 of all regions for
  the SVMs, pool5 of the regions with IoU >= ``model.box_reg.min_iou`` for the regressor;
- ``svms`` (``model.classifier=svm``): one linear SVM per class with hard-negative mining
  (``modeling.region.svm``) on fc7 scaled to a mean norm of 20;
- ``box_reg``: class-specific ridge regression of the box from pool5 (R-CNN Appendix C).

The final detector (fine-tuned network + SVM and ridge buffers) is saved as the run's
checkpoint, exported and evaluated, like any other model. Each stage writes under
``<run>/stages/<stage>/`` with a manifest (``stages.graph``); on resume a stage whose config and
inputs are unchanged and whose outputs verify is skipped; a changed stage re-runs with every
later one.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.ops import box_iou

from rcnn_cli.config.enums import enum_value
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.proposal_cache import attach_proposals
from rcnn_cli.engine import faults
from rcnn_cli.engine.runtime import config_dict, make_progress
from rcnn_cli.engine.stages.feature_store import FeatureStore
from rcnn_cli.engine.stages.graph import (
    MODEL,
    Run,
    Stage,
    finish_network,
    load_state,
    run_config,
    stage_trainer,
)
from rcnn_cli.engine.stages.store import StageDir
from rcnn_cli.errors import DataError
from rcnn_cli.io import atomic_torch_save, atomic_write_bytes, load_file
from rcnn_cli.modeling.region.box_ridge import fit_box_ridge, paired_iou
from rcnn_cli.modeling.region.svm import SVMParams, feature_scale, train_class_svms

log = logging.getLogger("rcnn_cli")

REGIONS, FC7, POOL5 = "regions.npz", "fc7.npy", "pool5.npy"
SVMS, RIDGE = "svms.pt", "box_ridge.pt"


def store_files(name: str) -> list[str]:
    return [name, f"{name}.json"]


# --- configuration --------------------------------------------------------------------

TEST_ONLY = ("score_thresh", "nms_thresh", "detections_per_img", "fc6_rank", "fc7_rank")
RUN_SCHEDULE = ("eval_period", "checkpoint_period", "keep_checkpoints")


def network_config(cfg: DictConfig) -> dict:
    """What the fine-tuned network and its features depend on (``graph.run_config`` without
    the schedule, the sampler and the SVM, ridge or test-time settings)."""
    out = {k: v for k, v in run_config(cfg).items() if k not in ("schedule", "sampler", "model")}
    model = {k: v for k, v in config_dict(cfg)["model"].items()
             if k not in ("svm", "box_reg", "classifier", "region_batch")}
    model["box_head"] = {k: v for k, v in model["box_head"].items() if k not in TEST_ONLY}
    out["model"] = model
    return out


def key_config(cfg: DictConfig, stage: str) -> dict:
    full = config_dict(cfg)
    if stage == "finetune":
        return {**network_config(cfg), "sampler": full["sampler"]["roi"],
                "schedule": {k: v for k, v in full["schedule"].items() if k not in RUN_SCHEDULE}}
    if stage == "features":
        return {**network_config(cfg), "min_iou": full["model"]["box_reg"]["min_iou"],
                "classifier": full["model"]["classifier"]}
    if stage == "svms":
        return {"svm": full["model"]["svm"]}
    return {"box_reg": full["model"]["box_reg"]}


def stage_inputs(stage: str) -> dict[str, list[str]]:
    """Upstream stage -> the output files this stage reads."""
    return {"finetune": {}, "features": {"finetune": [MODEL]},
            "svms": {"features": [REGIONS, FC7]},
            "box_reg": {"features": [REGIONS, POOL5]}}[stage]


# --- the program ----------------------------------------------------------------------


def stages(cfg: DictConfig) -> list[Stage]:
    """finetune -> features -> [svms ->] box_reg (svms only for ``model.classifier=svm``)."""
    names = ["finetune", "features", "svms", "box_reg"]
    if enum_value(cfg.model.classifier) != "svm":
        names.remove("svms")
    return [Stage(name, STAGE_FUNCTIONS[name], stage_inputs(name), key_config(cfg, name),
                  continues=name == "finetune",
                  iterations=int(cfg.schedule.max_iter) if name == "finetune" else None)
            for name in names]


def prepare(run: Run) -> None:
    """Refuse unsupported combinations (by building the detector) before any proposal is
    computed, then attach the train and val proposals."""
    run.detector()
    attach_proposals(run.cfg, "train", run.train_set)
    attach_proposals(run.cfg, "val", run.val_set)


# --- stage 1: fine-tuning -------------------------------------------------------------


def finetune_stage(run: Run, stage: StageDir):
    model = run.detector()
    cfg = copy.deepcopy(run.cfg)
    cfg.schedule.eval_period = 0  # the detector is complete only after the last stage
    trainer = stage_trainer(run, stage, cfg, model, run.train_set)
    trainer.run()
    atomic_torch_save(stage.path(MODEL), model.state_dict())
    return [MODEL], {"iterations": trainer.iteration, **trainer.events.latest}


# --- stage 2: features ----------------------------------------------------------------


def region_table(view) -> dict[str, np.ndarray]:
    """Every training region (ground truth first, then proposals) of every image, labelled
    by its best ground truth: class (0 = no overlap), IoU, that ground-truth box."""
    parts = {k: [] for k in ("image", "boxes", "labels", "ious", "is_gt", "gt_boxes")}
    for index in range(len(view)):
        _, target = view[index]
        gt, gt_labels = target["boxes"].float(), target["labels"]
        props = target["proposals"].float()
        regions = torch.cat([gt, props])
        if len(gt):
            iou, best = box_iou(regions, gt).max(dim=1)
            labels = torch.where(iou > 0, gt_labels[best], 0)
            gt_boxes = gt[best]
        else:
            iou, labels = torch.zeros(len(regions)), torch.zeros(len(regions), dtype=torch.int64)
            gt_boxes = torch.zeros_like(regions)
        parts["image"].append(np.full(len(regions), index, np.int64))
        parts["boxes"].append(regions.numpy())
        parts["labels"].append(labels.numpy())
        parts["ious"].append(iou.numpy())
        parts["is_gt"].append(np.arange(len(regions)) < len(gt))
        parts["gt_boxes"].append(gt_boxes.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def features_stage(run: Run, stage: StageDir):
    """pool5 / fc7 of every training region, extracted once (R-CNN §2.3)."""
    cfg = run.cfg
    model = run.detector()
    model.load_state_dict(load_state(run.stage("finetune").path(MODEL)))
    model.to(run.device).eval()
    view = build_dataset(cfg.dataset, "train", train=False)
    attach_proposals(cfg, "train", view)
    table = region_table(view)
    reg_rows = np.flatnonzero(table["ious"] >= cfg.model.box_reg.min_iou)
    table["reg_rows"] = reg_rows
    with_svm = enum_value(cfg.model.classifier) == "svm"
    fc7_dim = model.roi_heads.cls_score.in_features
    pool5_dim = model.roi_heads.ridge_weight.shape[1] - 1
    fc7 = FeatureStore.create(stage.path(FC7), len(table["image"]), fc7_dim) if with_svm else None
    pool5 = FeatureStore.create(stage.path(POOL5), len(reg_rows), pool5_dim)
    is_reg = np.zeros(len(table["image"]), bool)
    is_reg[reg_rows] = True
    starts = np.searchsorted(table["image"], np.arange(len(view) + 1))
    loader = eval_loader(view, cfg.eval.batch_size, cfg.dataset.num_workers)
    row, reg_row, done = 0, 0, 0
    with make_progress() as progress:
        task = progress.add_task("features", total=len(view), speed="", losses="")
        for images, _ in faults.UntilStop(loader, raising=True):
            idx = range(done, done + len(images))
            boxes = [torch.from_numpy(table["boxes"][starts[i]:starts[i + 1]]).to(run.device)
                     for i in idx]
            p5, f7 = model.region_features([im.to(run.device) for im in images], boxes)
            n = len(f7)
            if fc7 is not None:
                fc7.write(row, f7.cpu().numpy())
            keep = is_reg[row:row + n]
            pool5.write(reg_row, p5[torch.from_numpy(keep).to(p5.device)].cpu().numpy())
            row, reg_row, done = row + n, reg_row + int(keep.sum()), done + len(images)
            progress.update(task, completed=done)
    meta = {"images": len(view), "regions": int(row)}
    outputs = [REGIONS, *store_files(POOL5)]
    pool5.commit({**meta, "rows": "regions with IoU >= model.box_reg.min_iou"})
    if fc7 is not None:
        fc7.commit({**meta, "rows": "every region"})
        outputs += store_files(FC7)
    save_npz(stage.path(REGIONS), table)
    metrics = {"images": len(view), "regions": int(row), "ground_truth": int(table["is_gt"].sum()),
               "regression_regions": int(len(reg_rows)),
               "fg_regions": int(((table["ious"] >= 0.5) & ~table["is_gt"]).sum())}
    run.events.scalars(0, metrics, prefix="features/")
    return outputs, metrics


# --- stage 3: SVMs --------------------------------------------------------------------


class ScaledRows:
    """Rows of a (memory-mapped) array times ``scale``, read only when indexed."""

    def __init__(self, array, scale: float):
        self.array, self.scale, self.shape = array, np.float32(scale), array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, item):
        return np.asarray(self.array[item], np.float32) * self.scale


def svm_params(cfg) -> SVMParams:
    s = cfg.model.svm
    return SVMParams(C=s.C, rounds=s.rounds, initial_negatives=s.initial_negatives,
                     hard_threshold=s.hard_threshold, easy_threshold=s.easy_threshold,
                     pos_weight=s.pos_weight, bias_scale=s.bias_scale, max_cache=s.max_cache,
                     seed=s.seed)


def svms_stage(run: Run, stage: StageDir):
    """One linear SVM per class, hard-negative mining over the cached fc7 (R-CNN §2.3)."""
    features = run.stage("features")
    table = load_npz(features.path(REGIONS))
    store = FeatureStore.open(features.path(FC7), expect={"regions": len(table["image"])})
    scale = feature_scale(store.array, run.cfg.model.svm.feature_norm)
    k = len(run.classes)
    with make_progress() as progress:
        task = progress.add_task("svms", total=k, speed="", losses="")
        weight, bias, history = train_class_svms(
            ScaledRows(store.array, scale), table["labels"], table["ious"], table["is_gt"], k,
            svm_params(run.cfg), neg_iou=run.cfg.model.svm.neg_iou,
            progress=lambda done, total: progress.update(task, completed=done))
    for cls, name in enumerate(run.classes, start=1):
        rounds = [h for h in history if h["class"] == cls]
        for h in rounds:
            run.events.scalars(h["round"], {k: h[k] for k in ("cache_size", "added", "evicted",
                                                              "left_out", "objective",
                                                              "accuracy")},
                               prefix=f"svms/{name}/")
        mined = [h for h in rounds if h["round"] < run.cfg.model.svm.rounds]
        if mined and mined[-1]["left_out"]:
            log.warning("svms: class %r: %d margin-violating negatives did not fit the cache of "
                        "model.svm.max_cache=%d; its SVM saw only the hardest ones (raise "
                        "model.svm.max_cache)", name, mined[-1]["left_out"],
                        run.cfg.model.svm.max_cache)
    atomic_torch_save(stage.path(SVMS), {"weight": torch.from_numpy(weight).float(),
                                         "bias": torch.from_numpy(bias).float(),
                                         "scale": float(scale)})
    return [SVMS], {"scale": float(scale), "history": history}


# --- stage 4: box regression ----------------------------------------------------------


def box_reg_stage(run: Run, stage: StageDir):
    """Class-specific ridge regression from pool5 (R-CNN Appendix C)."""
    features = run.stage("features")
    table = load_npz(features.path(REGIONS))
    rows = table["reg_rows"]
    store = FeatureStore.open(features.path(POOL5), expect={"regions": len(table["image"])})
    if len(store) != len(rows):
        raise DataError(f"{store.path}: {len(store)} rows for {len(rows)} regression regions")
    b = run.cfg.model.box_reg
    scale = feature_scale(store.array, b.feature_norm)
    x = np.asarray(store.array, np.float32) * np.float32(scale)
    boxes, gt, labels = table["boxes"][rows], table["gt_boxes"][rows], table["labels"][rows]
    with make_progress() as progress:
        task = progress.add_task("box_reg", total=1, speed="", losses="")
        ridge = fit_box_ridge(x, boxes, gt, labels, len(run.classes), lam=b.lam,
                              min_iou=b.min_iou)
        progress.update(task, completed=1)
    moved = ridge.apply(torch.from_numpy(x), torch.from_numpy(boxes),
                        torch.from_numpy(labels).long())
    gt_t = torch.from_numpy(gt)
    before = paired_iou(torch.from_numpy(boxes), gt_t).mean().item() if len(gt) else 0.0
    after = paired_iou(moved.float(), gt_t).mean().item() if len(gt) else 0.0
    metrics = {"regions": int(len(rows)), "train_iou_before": before, "train_iou_after": after,
               "scale": float(scale)}
    run.events.scalars(0, metrics, prefix="box_reg/")
    atomic_torch_save(stage.path(RIDGE), {"weight": ridge.weights.float(), "scale": float(scale)})
    return [RIDGE], metrics


STAGE_FUNCTIONS = {"finetune": finetune_stage, "features": features_stage, "svms": svms_stage,
                   "box_reg": box_reg_stage}


# --- the final detector ---------------------------------------------------------------


def assemble(run: Run):
    """The fine-tuned network with the SVM and ridge parameters in its buffers."""
    model = run.detector()
    state = load_state(run.stage("finetune").path(MODEL))
    heads = "roi_heads."
    if enum_value(run.cfg.model.classifier) == "svm":
        svm = load_file(run.stage("svms").path(SVMS))
        state.update({heads + "svm_weight": svm["weight"], heads + "svm_bias": svm["bias"],
                      heads + "fc7_scale": torch.tensor(svm["scale"])})
    ridge = load_file(run.stage("box_reg").path(RIDGE))
    state.update({heads + "ridge_weight": ridge["weight"],
                  heads + "pool5_scale": torch.tensor(ridge["scale"])})
    model.load_state_dict(state)
    return model


def finish(run: Run) -> dict:
    """Save the final detector as the run's checkpoint, export and evaluate it on val."""
    return finish_network(run, assemble(run).to(run.device), int(run.cfg.schedule.max_iter),
                          f"model={run.cfg.model.name} after staged training")
