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

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes

from rcnn_cli.config import ScheduleConf
from rcnn_cli.config.enums import enum_value
from rcnn_cli.data.build import build_dataset
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.with_proposals import WithProposals
from rcnn_cli.engine import faults, runtime
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
from rcnn_cli.errors import CheckpointError, ConfigError
from rcnn_cli.evaluation.recall import proposal_recall, recall_metrics
from rcnn_cli.io import atomic_torch_save, load_file
from rcnn_cli.modeling.backbones import eval_frozen_norms
from rcnn_cli.modeling.fixed_proposals import FixedProposals

log = logging.getLogger("rcnn_cli")

STAGES = ("init", "rpn1", "proposals1", "fast1", "rpn2", "proposals2", "fast2")
TRAINING = ("rpn1", "fast1", "rpn2", "fast2")
PAPER_ITERS = {"rpn1": 80_000, "fast1": 40_000, "rpn2": 80_000, "fast2": 40_000}
PROPOSAL_FORMAT = "rcnn-cli-proposals/1"
TRAIN_PROPOSALS = "proposals_train.pt"
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
        out["proposal_format"] = PROPOSAL_FORMAT
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
    data = WithProposals(run.train_set, load_proposals(run.stage("proposals1"), "train"))
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
    data = WithProposals(run.train_set, load_proposals(run.stage("proposals2"), "train"))
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
    """The previous RPN in test mode with the paper's settings on the train and val images."""
    rpn_stage = "rpn1" if stage.stage == "proposals1" else "rpn2"
    detector = run.detector(rpn_stage).to(run.device)
    configure_for_proposals(detector, run.cfg)
    metrics = {}
    for split in ("train", "val"):
        view = build_dataset(run.cfg.dataset, split, train=False)
        boxes, gt = compute_proposals(detector, view, run)
        atomic_torch_save(stage.path(f"proposals_{split}.pt"),
                          {"format": PROPOSAL_FORMAT, "split": split, "image_ids": list(boxes),
                           "boxes": list(boxes.values())})
        recall = recall_metrics(proposal_recall(list(boxes.values()), gt, [100, 300, 1000]),
                                prefix="")
        recall = {k: v for k, v in recall.items() if v is not None}
        metrics.update({f"{split}/{k}": v for k, v in recall.items()})
        log.info("%s %s proposal recall: %s", stage.stage, split,
                 "  ".join(f"{k}={v:.4f}" for k, v in recall.items()))
    run.events.scalars(0, metrics, prefix=f"{stage.stage}/")
    return [TRAIN_PROPOSALS, "proposals_val.pt"], metrics


def configure_for_proposals(detector: GeneralizedRCNN, cfg: DictConfig) -> None:
    """Test-mode RPN settings of the proposal stages (``schedule.proposals``)."""
    p, rpn = cfg.schedule.proposals, detector.rpn
    rpn._pre_nms_top_n = dict(rpn._pre_nms_top_n, testing=p.pre_nms_top_n or sys.maxsize)
    rpn._post_nms_top_n = dict(rpn._post_nms_top_n, testing=p.post_nms_top_n)
    rpn.nms_thresh = p.nms_thresh
    rpn.min_size = max(1e-3, p.min_size * cfg.dataset.min_size / 600)


@torch.inference_mode()
def compute_proposals(detector: GeneralizedRCNN, view, run: Run):
    """Image id -> proposals (best first, original image coordinates); and the gt boxes."""
    detector.eval()
    loader = eval_loader(view, run.cfg.schedule.proposals.batch_size,
                         run.cfg.dataset.num_workers)
    boxes, gt = {}, []
    with make_progress() as progress:
        task = progress.add_task("proposals", total=len(loader), speed="", losses="")
        for images, targets in faults.UntilStop(loader, raising=True):
            images = [im.to(run.device) for im in images]
            sizes = [tuple(im.shape[-2:]) for im in images]
            batch, _ = detector.transform(images)
            features = detector.backbone(batch.tensors)
            props, _ = detector.rpn(batch, features)
            for p, s, o, t in zip(props, batch.image_sizes, sizes, targets):
                boxes[int(t["image_id"])] = resize_boxes(p, s, o).cpu()
                gt.append(t["boxes"])
            progress.advance(task)
    return boxes, gt


def load_proposals(stage: StageDir, split: str) -> dict[int, torch.Tensor]:
    path = stage.path(f"proposals_{split}.pt")
    obj = load_file(path)
    if obj.get("format") != PROPOSAL_FORMAT:
        raise CheckpointError(f"{path} is not an rcnn-cli proposal file ({PROPOSAL_FORMAT})")
    return {int(i): b for i, b in zip(obj["image_ids"], obj["boxes"])}


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
