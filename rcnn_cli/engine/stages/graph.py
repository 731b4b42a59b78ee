"""A training run as a graph of keyed, resumable stages, each over the one ``Trainer`` loop.

A program (``stages.alternating``, ``stages.region``) is a list of ``Stage`` records in run
order. ``run_graph`` runs it in ``<run>/stages/<stage>/`` (``stages.store``): a stage whose key
(its config subset and its inputs' hashes) is unchanged and whose outputs verify is reused; a
half-done training stage continues from its checkpoints; a changed stage re-runs with every
later one. py-faster-rcnn's ``train_faster_rcnn_alt_opt.py`` ran such stages as plain
functions over one ``train_net`` loop; the keys and manifests are ours.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from rcnn_cli.console import table_console
from rcnn_cli.data.build import build_dataset, check_same_classes
from rcnn_cli.data.loader import eval_loader
from rcnn_cli.engine import distributed, faults, runtime
from rcnn_cli.engine.checkpoint import CheckpointStore
from rcnn_cli.engine.events import EventLogger
from rcnn_cli.engine.export import export_model
from rcnn_cli.engine.runtime import config_dict, make_progress
from rcnn_cli.engine.stages.store import StageDir, link_tree, stage_key
from rcnn_cli.engine.trainer import Trainer, resume_command
from rcnn_cli.errors import CheckpointError, ConfigError
from rcnn_cli.evaluation.build import build_evaluator, iou_types_for
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.results import log_curves, save_evaluation
from rcnn_cli.io import load_file
from rcnn_cli.modeling import seeded_sampler
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.weights import without_pretrained

log = logging.getLogger("rcnn_cli")

MODEL = "model.pt"  # a stage's full-detector state dict
# Settings that change how a run is watched, placed or searched, never what a stage writes:
# the one key policy of every program (a change reuses every stage).
RUN_ONLY = ("log", "eval", "faults", "device", "threads", "resume", "ckpt_trust", "dist",
            "optimized_metric", "optimized_mode")


def run_config(cfg: DictConfig) -> dict:
    """The config without the run-only settings (``RUN_ONLY``, data-loader and proposal
    workers): what every stage key starts from."""
    out = {k: v for k, v in config_dict(cfg).items() if k not in RUN_ONLY}
    out["dataset"] = {k: v for k, v in out["dataset"].items() if k != "num_workers"}
    if out.get("proposals"):
        out["proposals"] = {k: v for k, v in out["proposals"].items() if k != "workers"}
    return out


@dataclass
class Run:
    """What every stage needs: config, run directory, data, device, the event stream; and
    what each stage did in this process (``status``: ran, continued or reused)."""

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

    def detector(self, name: str | None = None) -> nn.Module:
        """A full detector: stage ``name``'s saved weights when it is given (no pretrained file
        is read then), else ``model.weights`` with its classes mapped to the dataset's."""
        if name is None:
            return build_detector(self.cfg, len(self.classes), self.classes, self.category_ids)
        model = build_detector(without_pretrained(self.cfg), len(self.classes))
        model.load_state_dict(load_state(self.stage(name).path(MODEL)))
        return model


@dataclass(frozen=True)
class Stage:
    """One node: ``run(run, stage_dir) -> (output files, metrics)`` reads the ``inputs``
    (upstream stage -> files) and depends on the config subset ``key``; ``continues``: a
    half-done stage resumes from ``<stage>/checkpoints``."""

    name: str
    run: Callable[[Run, StageDir], tuple[list[str], dict]]
    inputs: dict[str, list[str]]
    key: dict
    continues: bool = False
    iterations: int | None = None  # for the progress table


def load_state(path: Path) -> dict:
    state = load_file(path)
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def resume_source(cfg: DictConfig, run_dir: Path) -> Path:
    """Where finished stages may come from: ``resume=<run dir>``, ``auto`` (latest run beside),
    else this run's own directory."""
    if not cfg.resume:
        return run_dir
    if str(cfg.resume) == "auto":
        runs = [p.parent for p in run_dir.parent.glob("*/stages")
                if p.parent.resolve() != run_dir.resolve()]
        if not runs:
            log.warning("resume=auto: no staged run under %s; starting fresh", run_dir.parent)
            return run_dir
        found = max(runs, key=lambda r: (r / "stages").stat().st_mtime)
        log.info("resume=auto: latest staged run is %s", found)
        return found
    target = Path(cfg.resume).expanduser()
    if not (target / "stages").is_dir():
        raise CheckpointError(f"resume={target}: not a staged run directory (no stages/); a "
                              "staged run resumes from its run directory")
    return target


def run_graph(run: Run, stages: Sequence[Stage], source: Path) -> None:
    """Run ``stages`` in order into ``run.run_dir``, reusing or continuing those of
    ``source`` that are still valid; ``run.status[name]``: ran, continued or reused."""
    names = [s.name for s in stages]
    run.status = {n: "pending" for n in names}
    invalid_from = None
    for index, stage in enumerate(stages):
        faults.stop_point()  # a stop that came during the previous stage
        name = stage.name
        inputs = {f"{up}/{f}": run.stage(up).output_hash(f)
                  for up, files in stage.inputs.items() for f in files}
        key = stage_key(name, stage.key, inputs)
        src, dst = StageDir(source, name), run.stage(name)
        old = src.manifest()
        if invalid_from is None and old is not None and old.get("key") != key:
            invalid_from = name
            log.warning("stage %s: its config or inputs changed since %s ran it: re-running %s "
                        "and every later stage (%s)", name, source, name,
                        ", ".join(names[index:]))
        reusable = invalid_from is None and old is not None
        if reusable and src.is_done(key):
            if src.dir.resolve() != dst.dir.resolve():
                link_tree(src.dir, dst.dir)
            run.status[name], run.timing[name] = "reused", float(old.get("wall_time_s", 0.0))
            log.info("stage %s: finished before (key %s...), skipped", name, key[:12])
            continue
        continuing = (reusable and stage.continues and old.get("status") == "running"
                      and (src.dir / "checkpoints").is_dir())
        if not continuing:
            dst.clear()
        elif src.dir.resolve() != dst.dir.resolve():
            link_tree(src.dir, dst.dir)
        previous = float(old.get("wall_time_s", 0.0)) if continuing else 0.0
        dst.start(key, inputs, previous)
        run.status[name] = "running"
        show(run, stages)
        runtime.seed_everything(run.cfg.seed + index)
        t0 = time.perf_counter()
        outputs, metrics = stage.run(run, dst)
        run.timing[name] = previous + time.perf_counter() - t0
        dst.finish(outputs, metrics, run.timing[name])
        run.status[name] = "continued" if continuing else "ran"
    show(run, stages)


def show(run: Run, stages: Sequence[Stage]) -> None:
    """The progress table (stderr)."""
    table = Table(title="staged training: " + " -> ".join(s.name for s in stages))
    for col in ("stage", "status", "iterations", "wall time"):
        table.add_column(col)
    style = {"ran": "green", "continued": "green", "reused": "cyan", "running": "bold yellow",
             "pending": "dim"}
    for s in stages:
        st = run.status.get(s.name, "pending")
        wall = f"{run.timing[s.name]:.1f} s" if s.name in run.timing else ""
        iters = "" if s.iterations is None else str(s.iterations)
        table.add_row(s.name, f"[{style[st]}]{st}[/]", iters, wall)
    table_console(stderr=True).print(table)


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
    and schedule, in one process, without evaluation (the graph evaluates its final network);
    checkpoints in ``<stage>/checkpoints``, continued from the last one when there is one."""
    network.to(run.device)
    if cfg.schedule.channels_last:
        runtime.convs_channels_last(network)
    seeded_sampler.install(network)
    trainer = Trainer(cfg, run.run_dir, model=network, train_set=train_set,
                      store_dir=stage.dir / "checkpoints",
                      events=StageEvents(run.events, f"{stage.stage}/"), lr=cfg.schedule.lr,
                      label=stage.stage)
    if trainer.store.candidates():
        trainer.resume(str(stage.dir))
    return trainer


def train_graph(cfg: DictConfig, run_dir: Path, stages_of: Callable[[DictConfig], list[Stage]],
                finish: Callable[[Run], dict],
                prepare: Callable[[Run], None] | None = None) -> dict:
    """Run (or continue) a program in ``run_dir``: its stages, then ``finish`` (the final
    network's metrics). ``prepare`` runs once the datasets are loaded, before any stage."""
    stages = stages_of(cfg)  # refuses unsupported settings before any work
    if distributed.current().enabled:
        raise ConfigError(f"staged training ({' -> '.join(s.name for s in stages)}) runs in one "
                          "process; start it without torchrun/SLURM tasks")
    runtime.set_threads(cfg.threads)
    runtime.seed_everything(cfg.seed)
    run = Run(cfg, run_dir, EventLogger(run_dir, cfg.log.tensorboard),
              runtime.select_device(cfg.device))
    try:
        run.train_set = build_dataset(cfg.dataset, "train", train=True)
        run.val_set = build_dataset(cfg.dataset, "val", train=False)
        check_same_classes(run.train_set.raw, run.val_set.raw, cfg.dataset.name)
        run.classes = list(run.train_set.raw.classes)
        run.category_ids = list(run.train_set.raw.category_ids)
        if prepare is not None:
            prepare(run)
        with faults.StopSignal(), stops_between_stages(run):
            run_graph(run, stages, resume_source(cfg, run_dir))
            return finish(run)
    finally:
        run.events.close()


@contextlib.contextmanager
def stops_between_stages(run: Run):
    """A stop signal met where no checkpoint is kept (``faults.StopRequested``: between stages,
    inside a proposals, features or final-evaluation loop) exits like a training stage's
    stop: finished stages and training checkpoints stay, the stopped stage re-runs on resume."""
    try:
        yield
    except faults.StopRequested as e:
        running = [n for n, st in run.status.items() if st == "running"]
        pending = [n for n, st in run.status.items() if st == "pending"]
        where = (f"during stage {running[0]}" if running else
                 f"before stage {pending[0]}" if pending else "during the final evaluation")
        raise faults.Interrupted(
            f"{e.signal} {where}: the finished stages and the training checkpoints in "
            f"{run.run_dir / 'stages'} are kept. Resume with: {resume_command(run.run_dir)}"
        ) from None


def finish_network(run: Run, model: nn.Module, iterations: int, title: str) -> dict:
    """The end of every program: the final network saved as the run's checkpoint, evaluated
    on the val split, exported."""
    state = {"model": model.state_dict(), "iteration": iterations, "classes": run.classes,
             "category_ids": run.category_ids, "config": config_dict(run.cfg),
             "stage_wall_time_s": dict(run.timing)}
    CheckpointStore(run.run_dir / "checkpoints", run.cfg.schedule.keep_checkpoints).save(state)
    loader = eval_loader(run.val_set, run.cfg.eval.batch_size, run.cfg.dataset.num_workers)
    with make_progress() as progress:
        dets = predict(model, faults.UntilStop(loader, raising=True), run.device,
                       run.category_ids, progress)
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
