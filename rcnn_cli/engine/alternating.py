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
``<run>/stages/<stage>/`` (``stage_store``); on resume finished stages are skipped, a half-done
training stage continues from its last checkpoint, and a changed config re-runs that stage and
all later ones. Frozen parameters are excluded from the optimizer and frozen BatchNorm layers
stay in eval mode, so they do not change by a single bit.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes

from rcnn_cli.config import ScheduleConf
from rcnn_cli.data.build import build_dataset, check_same_classes
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.data.with_proposals import WithProposals
from rcnn_cli.engine import distributed, runtime
from rcnn_cli.engine.checkpoint import CheckpointStore
from rcnn_cli.engine.events import EventLogger
from rcnn_cli.engine.export import export_model
from rcnn_cli.engine.runtime import config_dict, make_progress
from rcnn_cli.engine.stage_store import StageDir, link_tree, stage_key
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.errors import CheckpointError, ConfigError
from rcnn_cli.evaluation.build import build_evaluator, iou_types_for
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.recall import proposal_recall, recall_metrics
from rcnn_cli.evaluation.results import log_curves, save_evaluation
from rcnn_cli.io import atomic_torch_save, load_file
from rcnn_cli.modeling import seeded_sampler
from rcnn_cli.modeling.backbones import eval_frozen_norms
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.fixed_proposals import FixedProposals

log = logging.getLogger("rcnn_cli")

STAGES = ("init", "rpn1", "proposals1", "fast1", "rpn2", "proposals2", "fast2")
TRAINING = ("rpn1", "fast1", "rpn2", "fast2")
PAPER_ITERS = {"rpn1": 80_000, "fast1": 40_000, "rpn2": 80_000, "fast2": 40_000}
PROPOSAL_FORMAT = "rcnn-cli-proposals/1"
MODEL = "model.pt"  # a stage's full-detector state dict (parts it did not train carried along)
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
    import hashlib

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


IGNORED_FOR_KEY = ("log", "eval", "faults", "device", "threads", "resume", "ckpt_trust")
IGNORED_SCHEDULE = ("eval_period", "checkpoint_period", "keep_checkpoints", "stages", "proposals",
                    "rpn2_head_init", "fast2_predictor_init", "name")


def key_config(cfg: DictConfig, stage: str) -> dict:
    """The config a stage's outputs depend on (not logging, paths or checkpoint periods)."""
    full = config_dict(cfg)
    out = {k: v for k, v in full.items() if k not in IGNORED_FOR_KEY and k != "schedule"}
    out["dataset"] = {k: v for k, v in out["dataset"].items() if k != "num_workers"}
    if stage in TRAINING:
        sched = config_dict(stage_cfg(cfg, stage))["schedule"]
        out["schedule"] = {k: v for k, v in sched.items() if k not in IGNORED_SCHEDULE}
    elif stage.startswith("proposals"):
        out["proposals"] = full["schedule"]["proposals"]
        out["proposals"].pop("batch_size")
    out["rpn2_head_init"] = full["schedule"]["rpn2_head_init"] if stage == "rpn2" else None
    out["fast2_predictor_init"] = (full["schedule"]["fast2_predictor_init"]
                                   if stage == "fast2" else None)
    return out


def stage_inputs(cfg: DictConfig, stage: str) -> dict[str, str]:
    """Upstream stage -> the output file it feeds into ``stage``."""
    return {
        "init": {},
        "rpn1": {"init": MODEL},
        "proposals1": {"rpn1": MODEL},
        "fast1": {"init": MODEL, "proposals1": "proposals_train.pt"},
        "rpn2": {"fast1": MODEL, **({"rpn1": MODEL} if _value(cfg.schedule.rpn2_head_init)
                                    == "carry" else {})},
        "proposals2": {"rpn2": MODEL},
        "fast2": {"rpn2": MODEL, "proposals2": "proposals_train.pt",
                  **({"init": MODEL} if _value(cfg.schedule.fast2_predictor_init) == "random"
                     else {})},
    }[stage]


def _value(x):
    return getattr(x, "value", x)


# --- the graph ------------------------------------------------------------------------


@dataclass
class Run:
    """What every stage needs: config, run directory, data, device, the event stream."""

    cfg: DictConfig
    run_dir: Path
    events: EventLogger
    device: torch.device
    train_set: object = None
    val_set: object = None
    classes: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> StageDir:
        return StageDir(self.run_dir, name)

    def detector(self, name: str | None = None) -> GeneralizedRCNN:
        """A full detector, with a stage's saved weights when ``name`` is given."""
        model = build_detector(self.cfg, len(self.classes))
        if name is not None:
            model.load_state_dict(load_state(self.stage(name).path(MODEL)))
        return model


def load_state(path: Path) -> dict:
    state = load_file(path)
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def train_alternating(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or continue) the stage graph in ``run_dir``; returns the final network's metrics."""
    if cfg.model.name != "faster":
        raise ConfigError(f"schedule=alternating trains Faster R-CNN (model=faster), not "
                          f"model={cfg.model.name}")
    if distributed.current().enabled:
        raise ConfigError("schedule=alternating runs in one process; start it without "
                          "torchrun/SLURM tasks (distributed training is schedule=joint only)")
    if cfg.get("proposals") is not None and cfg.proposals.name != "rpn":
        raise ConfigError(f"schedule=alternating makes its own proposals with the RPN; "
                          f"proposals={cfg.proposals.name} is for model=fast")
    runtime.set_threads(cfg.threads)
    runtime.seed_everything(cfg.seed)
    run = Run(cfg, run_dir, EventLogger(run_dir, cfg.log.tensorboard),
              runtime.select_device(cfg.device))
    run.train_set = build_dataset(cfg.dataset, "train", train=True)
    run.val_set = build_dataset(cfg.dataset, "val", train=False)
    check_same_classes(run.train_set.raw, run.val_set.raw, cfg.dataset.name)
    run.classes = list(run.train_set.raw.classes)
    run.category_ids = list(run.train_set.raw.category_ids)
    source = resume_source(cfg, run_dir)
    log.info("alternating training: %s", "  ".join(
        f"{s}={n} it" for s, n in stage_iterations(cfg.schedule).items()))
    try:
        run_graph(run, source)
        metrics = finish(run)
    finally:
        run.events.close()
    return metrics


def resume_source(cfg: DictConfig, run_dir: Path) -> Path:
    """Where finished stages may come from: ``resume=<run dir>``, ``auto`` (latest run beside),
    else this run's own directory."""
    if not cfg.resume:
        return run_dir
    if str(cfg.resume) == "auto":
        runs = [p.parent for p in run_dir.parent.glob("*/stages")
                if p.parent.resolve() != run_dir.resolve()]
        if not runs:
            log.warning("resume=auto: no alternating run under %s; starting fresh",
                        run_dir.parent)
            return run_dir
        found = max(runs, key=lambda r: (r / "stages").stat().st_mtime)
        log.info("resume=auto: latest alternating run is %s", found)
        return found
    target = Path(cfg.resume).expanduser()
    if not (target / "stages").is_dir():
        raise CheckpointError(f"resume={target}: not an alternating run directory (no stages/); "
                              "a schedule=alternating run resumes from its run directory")
    return target


def run_graph(run: Run, source: Path) -> None:
    invalid_from = None
    for name in STAGES:
        run.status[name] = "pending"
    for name in STAGES:
        inputs = {up: run.stage(up).output_hash(f) for up, f in
                  stage_inputs(run.cfg, name).items()}
        key = stage_key(name, key_config(run.cfg, name), inputs)
        src, dst = StageDir(source, name), run.stage(name)
        old = src.manifest()
        if invalid_from is None and old is not None and old.get("key") != key:
            invalid_from = name
            log.warning("stage %s: its config or inputs changed since %s ran it: re-running %s "
                        "and every later stage (%s)", name, source, name,
                        ", ".join(STAGES[STAGES.index(name):]))
        reusable = invalid_from is None and old is not None
        if reusable and src.is_done(key):
            if src.dir.resolve() != dst.dir.resolve():
                link_tree(src.dir, dst.dir)
            run.status[name] = "done"
            run.timing[name] = float(old.get("wall_time_s", 0.0))
            log.info("stage %s: finished before (key %s...), skipped", name, key[:12])
            continue
        continuing = (reusable and name in TRAINING and old.get("status") == "running"
                      and (src.dir / "checkpoints").is_dir())
        if not continuing:
            dst.clear()
        elif src.dir.resolve() != dst.dir.resolve():
            link_tree(src.dir, dst.dir)
        previous = float(old.get("wall_time_s", 0.0)) if continuing else 0.0
        dst.start(key, inputs, previous)
        run.status[name] = "running"
        show_graph(run)
        runtime.seed_everything(run.cfg.seed + STAGES.index(name))
        t0 = time.perf_counter()
        outputs, metrics = STAGE_FUNCTIONS[name](run, dst)
        run.timing[name] = previous + time.perf_counter() - t0
        dst.finish(outputs, metrics, run.timing[name])
        run.status[name] = "done"
    show_graph(run)


def show_graph(run: Run) -> None:
    table = Table(title="4-step alternating training")
    for col in ("stage", "status", "iterations", "wall time"):
        table.add_column(col)
    iters = stage_iterations(run.cfg.schedule)
    style = {"done": "green", "running": "bold yellow", "pending": "dim"}
    for name in STAGES:
        st = run.status.get(name, "pending")
        wall = f"{run.timing[name]:.1f} s" if name in run.timing else ""
        table.add_row(name, f"[{style[st]}]{st}[/]", str(iters.get(name, "")), wall)
    Console(file=sys.stderr).print(table)


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
    if _value(run.cfg.schedule.rpn2_head_init) == "carry":
        detector.load_state_dict(part(load_state(run.stage("rpn1").path(MODEL)), RPN),
                                 strict=False)
    freeze(detector.backbone)
    return train_stage(run, stage, detector, rpn_network(detector))


def fast2_stage(run: Run, stage: StageDir):
    detector = run.detector("rpn2")
    if _value(run.cfg.schedule.fast2_predictor_init) == "random":
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
    return ["proposals_train.pt", "proposals_val.pt"], metrics


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
        for images, targets in loader:
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


# --- training a stage with the joint loop's machinery -----------------------------------


class StageEvents:
    """The run's event stream with a stage prefix (``rpn1/loss_objectness``)."""

    def __init__(self, events: EventLogger, prefix: str):
        self.events, self.prefix, self.latest = events, prefix, {}

    def scalars(self, iteration: int, values: dict, prefix: str = "") -> None:
        self.latest.update({f"{prefix}{k}": float(v) for k, v in values.items()})
        self.events.scalars(iteration, values, self.prefix + prefix)

    @property
    def tensorboard(self):
        return self.events.tensorboard

    def close(self) -> None:
        self.events.close()


def stage_trainer(run: Run, stage: StageDir, cfg: DictConfig, network: nn.Module,
                  train_set) -> Trainer:
    """The joint loop (steps, faults, checkpoints, exact resume) on one stage's network, data
    and schedule, in one process; checkpoints in ``<stage>/checkpoints``, scalars prefixed with
    the stage's name; continued from its last checkpoint when one is there."""
    network.to(run.device)
    seeded_sampler.install(network)
    trainer = Trainer(cfg, run.run_dir, model=network, train_set=train_set,
                      store_dir=stage.dir / "checkpoints",
                      events=StageEvents(run.events, f"{stage.stage}/"), lr=cfg.schedule.lr,
                      label=stage.stage)
    if trainer.store.candidates():
        trainer.resume(str(stage.dir))
    return trainer


# --- the final network ----------------------------------------------------------------


def finish(run: Run) -> dict:
    """One network: ``fast2``'s weights (backbone shared with the ``rpn2`` RPN). Saved as the
    run's checkpoint, exported, evaluated on the val split."""
    iterations = sum(stage_iterations(run.cfg.schedule).values())
    return finish_network(run, run.detector("fast2").to(run.device), iterations,
                          f"final network after 4-step training ({iterations} iterations)")


def finish_network(run, model: nn.Module, iterations: int, title: str) -> dict:
    """The end of a stage graph (4-step here, R-CNN/SPPNet in region_stages): the final network
    saved as the run's checkpoint, evaluated on the val split, exported."""
    state = {"model": model.state_dict(), "iteration": iterations, "classes": run.classes,
             "category_ids": run.category_ids, "config": config_dict(run.cfg),
             "stage_wall_time_s": dict(run.timing)}
    CheckpointStore(run.run_dir / "checkpoints", run.cfg.schedule.keep_checkpoints).save(state)
    loader = eval_loader(run.val_set, run.cfg.eval.batch_size, run.cfg.dataset.num_workers)
    with make_progress() as progress:
        dets = predict(model, loader, run.device, run.category_ids, progress)
    evaluator = build_evaluator(run.val_set.raw.coco_gt(), run.cfg.eval, iou_types_for(run.cfg))
    metrics = evaluator.evaluate(dets)
    run.events.scalars(iterations, {k: v for k, v in metrics.items() if v is not None})
    log_curves(run.events.tensorboard, evaluator, iterations)
    metrics = {**metrics, "iteration": iterations,
               **{f"time/{k}": v for k, v in run.timing.items()},
               "time/total": sum(run.timing.values())}
    save_evaluation(run.run_dir, evaluator, metrics, dets, title)
    export_model(run.run_dir / "export", model.state_dict(), run.classes, run.category_ids,
                 config_dict(run.cfg), iterations)
    return metrics
