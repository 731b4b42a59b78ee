"""4-step alternating training (Faster R-CNN §3.2) as a resumable stage graph.

    init -> rpn1 -> proposals1 -> fast1 -> rpn2 -> proposals2 -> fast2 -> final network

- ``init``: the detector's initial weights (``backbone.weights`` or a seeded random init);
- ``rpn1``: backbone + RPN from ``init`` (backbone stages frozen per ``backbone.trainable_layers``);
- ``proposalsN``: the stage-N RPN in test mode on the train and val images -> proposal files;
- ``fast1``: backbone + Fast R-CNN head, again from ``init`` (not from ``rpn1``), on the
  ``proposals1`` boxes with the ground truth added;
- ``rpn2``: ``fast1``'s backbone, frozen; only the RPN head trains (random or ``rpn1``'s);
- ``fast2``: backbone and RPN frozen; only fc6/fc7 and the predictor (random or ``fast1``'s) train.

The final network has one backbone shared by the ``rpn2`` RPN and the ``fast2`` head; it is saved
as the run's checkpoint, like a joint run's, for ``rcnn-eval``. Every stage writes to
``<run>/stages/<stage>/`` (``stages.graph``); on resume finished stages are skipped, a half-done
training stage continues from its last checkpoint, and a changed config re-runs that stage and
all later ones. Frozen parameters are excluded from the optimizer and frozen BatchNorm layers
stay in eval mode, so they do not change by a single bit.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import fields

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from rcnn_cli.config import ScheduleConf
from rcnn_cli.config.enums import enum_value
from rcnn_cli.data import proposal_cache
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.proposal_cache import ProposalSet, check_ids, read_proposal_file, save_npz
from rcnn_cli.data.with_proposals import WithProposals
from rcnn_cli.engine import runtime
from rcnn_cli.engine.runtime import config_dict, make_progress
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
from rcnn_cli.errors import ConfigError
from rcnn_cli.evaluation.recall import proposal_recall, recall_metrics
from rcnn_cli.io import atomic_torch_save
from rcnn_cli.modeling.backbones import eval_frozen_norms
from rcnn_cli.modeling.fixed_proposals import FixedProposals
from rcnn_cli.modeling.proposals import configure_for_proposals, rpn_proposals

log = logging.getLogger("rcnn_cli")

STAGES = ("init", "rpn1", "proposals1", "fast1", "rpn2", "proposals2", "fast2")
TRAINING = ("rpn1", "fast1", "rpn2", "fast2")
PAPER_ITERS = {"rpn1": 80_000, "fast1": 40_000, "rpn2": 80_000, "fast2": 40_000}
TRAIN_PROPOSALS = "proposals_train.npz"  # data.proposal_cache's file (the one proposal format)
SHARED = ("backbone.",)
RPN = ("rpn.",)
FAST = ("roi_heads.",)


# --- stage networks -------------------------------------------------------------------


class NoRoIHeads(nn.Module):
    """The RPN stages train the region proposal network alone: no RoI head, no detector loss."""

    def forward(self, features, proposals, image_sizes, targets=None):
        return [], {}


class StageNetwork(GeneralizedRCNN):
    """A stage's network; BatchNorm layers without a trainable parameter stay in eval mode, so
    their running statistics are frozen along with their weights."""

    def train(self, mode: bool = True):
        super().train(mode)
        return eval_frozen_norms(self) if mode else self


def rpn_network(detector: GeneralizedRCNN) -> StageNetwork:
    return StageNetwork(detector.backbone, detector.rpn, NoRoIHeads(), detector.transform)


def fast_network(detector: GeneralizedRCNN) -> StageNetwork:
    return StageNetwork(detector.backbone, FixedProposals(), detector.roi_heads,
                        detector.transform)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def part(state: dict, prefixes: tuple[str, ...]) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def tensor_digest(state: dict) -> str:
    """sha256 over a state dict's names and bytes (order independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def part_digests(state: dict) -> dict[str, str]:
    return {"backbone": tensor_digest(part(state, SHARED)), "rpn": tensor_digest(part(state, RPN)),
            "roi_heads": tensor_digest(part(state, FAST))}


# --- configuration --------------------------------------------------------------------


def stage_iterations(sched) -> dict[str, int]:
    """Each training stage's iterations: its own ``max_iter``, else the paper's share of the
    total ``schedule.max_iter`` (rounded so the shares add up to it)."""
    total, done, out = sum(PAPER_ITERS.values()), 0, {}
    for stage in TRAINING:
        share = PAPER_ITERS[stage] * sched.max_iter
        out[stage] = round((done + share) / total) - round(done / total)
        done += share
    for stage in TRAINING:
        own = sched.stages[stage].max_iter
        out[stage] = int(own) if own is not None else max(1, out[stage])
        if out[stage] < 1:
            raise ConfigError(f"schedule.stages.{stage}.max_iter={own}: must be >= 1")
        lr = sched.stages[stage].lr
        if lr is not None and lr <= 0:
            raise ConfigError(f"schedule.stages.{stage}.lr={lr}: must be > 0")
    return out


def stage_cfg(cfg: DictConfig, stage: str) -> DictConfig:
    """``cfg`` with a plain schedule for one training stage (its iterations, lr, decay)."""
    sched = cfg.schedule
    base = {f.name: sched[f.name] for f in fields(ScheduleConf)}
    own = sched.stages[stage]
    base.update(name=f"alternating/{stage}", max_iter=stage_iterations(sched)[stage],
                lr=own.lr if own.lr is not None else sched.lr,
                decay_steps=list(own.decay_steps), eval_period=0)
    out = cfg.copy()
    out.schedule = OmegaConf.merge(OmegaConf.structured(ScheduleConf), base)
    return out


IGNORED_SCHEDULE = ("eval_period", "checkpoint_period", "keep_checkpoints", "stages", "proposals",
                    "rpn2_head_init", "fast2_predictor_init", "name")


def key_config(cfg: DictConfig, stage: str) -> dict:
    """The config a stage's outputs depend on (``graph.run_config``, and of the schedule only
    the stage's own part)."""
    full = config_dict(cfg)
    out = {k: v for k, v in run_config(cfg).items() if k != "schedule"}
    if stage in TRAINING:
        sched = config_dict(stage_cfg(cfg, stage))["schedule"]
        out["schedule"] = {k: v for k, v in sched.items() if k not in IGNORED_SCHEDULE}
    elif stage.startswith("proposals"):
        out["proposals"] = full["schedule"]["proposals"]
        out["proposals"].pop("batch_size")
        # the file format: a run directory of the older .pt files re-runs from proposals1
        out["proposal_file"] = f"{TRAIN_PROPOSALS} {proposal_cache.FORMAT}"
    out["rpn2_head_init"] = full["schedule"]["rpn2_head_init"] if stage == "rpn2" else None
    out["fast2_predictor_init"] = (full["schedule"]["fast2_predictor_init"]
                                   if stage == "fast2" else None)
    return out


def stage_inputs(cfg: DictConfig, stage: str) -> dict[str, list[str]]:
    """Upstream stage -> the output files it feeds into ``stage``."""
    return {
        "init": {},
        "rpn1": {"init": [MODEL]},
        "proposals1": {"rpn1": [MODEL]},
        "fast1": {"init": [MODEL], "proposals1": [TRAIN_PROPOSALS]},
        "rpn2": {"fast1": [MODEL], **({"rpn1": [MODEL]} if enum_value(cfg.schedule.rpn2_head_init)
                                      == "carry" else {})},
        "proposals2": {"rpn2": [MODEL]},
        "fast2": {"rpn2": [MODEL], "proposals2": [TRAIN_PROPOSALS],
                  **({"init": [MODEL]} if enum_value(cfg.schedule.fast2_predictor_init) == "random"
                     else {})},
    }[stage]


# --- the program ----------------------------------------------------------------------


def stages(cfg: DictConfig) -> list[Stage]:
    """init -> rpn1 -> proposals1 -> fast1 -> rpn2 -> proposals2 -> fast2."""
    if cfg.model.name != "faster":
        raise ConfigError(f"schedule=alternating trains Faster R-CNN (model=faster), not "
                          f"model={cfg.model.name}")
    if cfg.get("proposals") is not None and cfg.proposals.name != "rpn":
        raise ConfigError(f"schedule=alternating makes its own proposals with the RPN; "
                          f"proposals={cfg.proposals.name} is for model=fast")
    iters = stage_iterations(cfg.schedule)
    log.info("alternating training: %s", "  ".join(f"{s}={n} it" for s, n in iters.items()))
    return [Stage(name, STAGE_FUNCTIONS[name], stage_inputs(cfg, name), key_config(cfg, name),
                  continues=name in TRAINING, iterations=iters.get(name))
            for name in STAGES]


# --- stages ---------------------------------------------------------------------------


def init_stage(run: Run, stage: StageDir):
    """Initial detector weights: ``rpn1`` and ``fast1`` both start from these."""
    runtime.seed_everything(run.cfg.seed)
    atomic_torch_save(stage.path(MODEL), run.detector().state_dict())
    return [MODEL], {}


def rpn1_stage(run: Run, stage: StageDir):
    detector = run.detector("init")
    return train_stage(run, stage, detector, rpn_network(detector))


def fast1_stage(run: Run, stage: StageDir):
    detector = run.detector("init")
    data = WithProposals(run.train_set, load_proposals(run, "proposals1", "train"))
    return train_stage(run, stage, detector, fast_network(detector), data)


def rpn2_stage(run: Run, stage: StageDir):
    detector = run.detector("fast1")
    if enum_value(run.cfg.schedule.rpn2_head_init) == "carry":
        detector.load_state_dict(part(load_state(run.stage("rpn1").path(MODEL)), RPN),
                                 strict=False)
    freeze(detector.backbone)
    return train_stage(run, stage, detector, rpn_network(detector))


def fast2_stage(run: Run, stage: StageDir):
    detector = run.detector("rpn2")
    if enum_value(run.cfg.schedule.fast2_predictor_init) == "random":
        fresh = part(load_state(run.stage("init").path(MODEL)), ("roi_heads.box_predictor.",))
        detector.load_state_dict(fresh, strict=False)
    freeze(detector.backbone)
    freeze(detector.rpn)
    data = WithProposals(run.train_set, load_proposals(run, "proposals2", "train"))
    return train_stage(run, stage, detector, fast_network(detector), data)


def train_stage(run: Run, stage: StageDir, detector: GeneralizedRCNN, network: StageNetwork,
                data=None):
    """Train ``network`` (sharing modules with ``detector``) for the stage's iterations, then
    save the whole detector's weights as the stage's ``model.pt``."""
    start = part_digests(detector.state_dict())
    trainer = stage_trainer(run, stage, stage_cfg(run.cfg, stage.stage), network,
                            data if data is not None else run.train_set)
    trainer.run()
    state = detector.state_dict()
    atomic_torch_save(stage.path(MODEL), state)
    metrics = {"iterations": trainer.iteration, "start": start, "end": part_digests(state),
               **{k: v for k, v in trainer.events.latest.items()}}
    return [MODEL], metrics


def proposals_stage(run: Run, stage: StageDir):
    """The previous RPN in test mode with the paper's settings on the train and val images;
    written as rcnn-cli proposal files (``data.proposal_cache``), which ``model=fast
    proposals=precomputed`` also reads."""
    rpn_stage = "rpn1" if stage.stage == "proposals1" else "rpn2"
    detector = run.detector(rpn_stage).to(run.device)
    p = run.cfg.schedule.proposals
    configure_for_proposals(detector, p.nms_thresh,
                            max(1e-3, p.min_size * run.cfg.dataset.min_size / 600))
    metrics = {}
    for split in ("train", "val"):
        view = build_dataset(run.cfg.dataset, split, train=False)
        pset, gt = compute_proposals(detector, view, run)
        pset.meta = {"source": "rpn", "stage": stage.stage, "split": split}
        save_npz(stage.path(proposal_file(split)), pset)
        boxes = [torch.from_numpy(b) for b in pset.boxes]
        recall = recall_metrics(proposal_recall(boxes, gt, [100, 300, 1000]), prefix="")
        recall = {k: v for k, v in recall.items() if v is not None}
        metrics.update({f"{split}/{k}": v for k, v in recall.items()})
        log.info("%s %s proposal recall: %s", stage.stage, split,
                 "  ".join(f"{k}={v:.4f}" for k, v in recall.items()))
    run.events.scalars(0, metrics, prefix=f"{stage.stage}/")
    return [proposal_file("train"), proposal_file("val")], metrics


def proposal_file(split: str) -> str:
    return f"proposals_{split}.npz"


def compute_proposals(detector: GeneralizedRCNN, view, run: Run) -> tuple[ProposalSet, list]:
    """Every image's proposals (best first, original image coordinates; scores = rank, as
    the RPN returns no objectness); and the ground-truth boxes."""
    p = run.cfg.schedule.proposals
    loader = eval_loader(view, p.batch_size, run.cfg.dataset.num_workers)
    ids, boxes, gt = [], [], []
    with make_progress() as progress:
        task = progress.add_task("proposals", total=len(loader), speed="", losses="")
        for images, targets in loader:
            props = rpn_proposals(detector, [im.to(run.device) for im in images],
                                  p.post_nms_top_n, p.pre_nms_top_n or sys.maxsize)
            for b, t in zip(props, targets):
                ids.append(int(t["image_id"]))
                boxes.append(b.cpu().numpy())
                gt.append(t["boxes"])
            progress.advance(task)
    scores = [1.0 / (1.0 + np.arange(len(b), dtype=np.float32)) for b in boxes]
    return ProposalSet(ids, boxes, scores, {}), gt


def load_proposals(run: Run, stage: str, split: str) -> dict[int, np.ndarray]:
    """A proposal stage's boxes for ``split``, by image id."""
    path = run.stage(stage).path(proposal_file(split))
    ids = list(run.train_set.raw.image_ids if split == "train" else run.val_set.raw.image_ids)
    return check_ids(path, read_proposal_file(path, ids), ids, exact=False).by_id()


STAGE_FUNCTIONS = {"init": init_stage, "rpn1": rpn1_stage, "proposals1": proposals_stage,
                   "fast1": fast1_stage, "rpn2": rpn2_stage, "proposals2": proposals_stage,
                   "fast2": fast2_stage}


# --- the final network ----------------------------------------------------------------


def finish(run: Run) -> dict:
    """One network: ``fast2``'s weights (backbone shared with the ``rpn2`` RPN). Saved as the
    run's checkpoint, exported, evaluated on the val split."""
    iterations = sum(stage_iterations(run.cfg.schedule).values())
    return finish_network(run, run.detector("fast2").to(run.device), iterations,
                          f"final network after 4-step training ({iterations} iterations)")
