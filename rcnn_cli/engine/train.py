"""``train(cfg) -> metrics``: what ``rcnn-train``, sweeps, benchmarks and tests call.

It sits above the programs it chooses between: the joint loop (``trainer.Trainer``, Faster
R-CNN §3.2 approximate joint training), the 4-step alternating graph (Faster R-CNN §3.1.3,
``stages.alternating``) and the R-CNN / SPPNet graph (``stages.region``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from rcnn_cli.config import validate
from rcnn_cli.config.recipe import recipe_in_force
from rcnn_cli.engine import distributed, faults, runtime
from rcnn_cli.engine.checkpoint import resolve_resume
from rcnn_cli.engine.runtime import hydra_run_dir
from rcnn_cli.engine.stages import alternating, region
from rcnn_cli.engine.stages.graph import train_graph
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import check_weights_config

log = logging.getLogger("rcnn_cli")


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train ``cfg`` into ``run_dir`` (Hydra's output dir by default); returns final metrics."""
    validate(cfg)
    env = distributed.setup(cfg)
    if not env.is_main:
        distributed.quiet_logging(env.rank)
    run_dir = distributed.shared_run_dir(Path(run_dir) if run_dir is not None
                                         else hydra_run_dir())
    log.info("run directory: %s", run_dir)
    log.info("recipe: %s", recipe_in_force())
    program = stage_program(cfg, env.enabled)
    # a resumed joint run takes every weight from its checkpoint: the weights files may be gone
    resumed = (resolve_resume(cfg.resume, run_dir, cfg.ckpt_trust)
               if cfg.resume and program is None else None)
    if resumed is None:
        check_weights_config(cfg)  # before any dataset work: a wrong backbone fails in seconds
    resolve_auto_amp(cfg)
    try:
        if program is not None:
            metrics = train_graph(cfg, run_dir, *program)
        else:
            metrics = Trainer.from_config(cfg, run_dir, resumed).run()
    except faults.Interrupted:
        raise  # every rank stopped at the same step (``distributed.any_rank_stopping``)
    except Exception as e:
        distributed.announce_failure()
        if isinstance(e, RuntimeError) and faults.worker_failure(e):  # from torch's SIGCHLD handler
            raise faults.worker_failure(e) from None
        raise
    log.info("run directory: %s", run_dir)
    distributed.shutdown()
    return metrics


def stage_program(cfg: DictConfig, distributed_run: bool) -> tuple | None:
    """``train_graph``'s stages, finish and prepare for a multi-stage program; None for a
    joint run (one Trainer)."""
    if cfg.schedule.name == "alternating":
        if distributed_run:
            raise ConfigError("schedule=alternating (4-step training) runs in one process; "
                              "start it without torchrun/srun, or use schedule=joint")
        return alternating.stages, alternating.finish, None
    if cfg.model.name in ("rcnn", "sppnet"):
        return region.stages, region.finish, region.prepare
    return None


def resolve_auto_amp(cfg: DictConfig) -> None:
    """``schedule.amp=auto`` becomes the concrete choice in ``cfg``, so that the checkpoints'
    and the export's stored config (and so ``rcnn-eval``) say what ran; the choice is logged."""
    if getattr(cfg.schedule.amp, "value", cfg.schedule.amp) != "auto":
        return
    device = distributed.local_device(runtime.select_device(cfg.device))
    choice, reason = runtime.choose_amp(device)
    cfg.schedule.amp = choice
    log.info("schedule.amp=auto -> %s (%s)", choice, reason)
