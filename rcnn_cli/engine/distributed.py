"""Data-parallel training on ``torch.distributed``: DistributedDataParallel, started by torchrun
or SLURM (submitit); NCCL on GPUs, gloo on CPU.

- ``schedule.batch_size`` is per process (and per micro-batch): one optimizer step sees
  ``batch_size * accum_steps * world_size`` images. The learning rate is used as given unless
  ``schedule.scale_lr=true`` multiplies it by ``accum_steps * world_size`` (the linear scaling
  rule, Goyal et al. 2017, "Accurate, Large Minibatch SGD").
- Iteration i's global batch is a pure function of (seed, i) (``IterationBatchSampler``); rank r
  takes its contiguous slice, so N processes with batch B train exactly like one process with
  batch N*B (with per-image seeded sampling, ``rcnn_cli.modeling.seeded_sampler``).
- Rank 0 alone creates the run directory and writes logs, TensorBoard and checkpoints.
- Each step has three synchronisation points of the same shape (``_exchange``: one code per
  rank): before the forward pass, after it, and at the step's end; a rank that fails all-reduces its
  failure code (``announce_failure``), which its peers receive at whichever point they wait in,
  so a non-finite loss or an exception on one rank stops all ranks at once. Work done by rank 0
  alone (COCO evaluation) goes through ``on_main``, which passes a failure on too.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.experimental.callback import Callback
from torch import nn
from torch.utils.data import Subset

from rcnn_cli.config.enums import enum_value
from rcnn_cli.data.loader import IterationBatchSampler, collate
from rcnn_cli.data.workers import Loader
from rcnn_cli.errors import ConfigError, RcnnError

log = logging.getLogger("rcnn_cli")


class PeerFailedError(RcnnError):
    """Another rank failed; this rank stops too (the cause is in that rank's output)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env(environ=None) -> DistEnv:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK; else a submitit SLURM job with several tasks
    (its ``TorchDistributedEnvironment`` exports them); else an ``srun`` step with
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and MASTER_ADDR exported by the batch script."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    ntasks = int(env.get("SLURM_NTASKS", env.get("SUBMITIT_LOCAL_NTASKS", 1)))
    if ntasks > 1 and "SUBMITIT_EXECUTOR" in env and environ is None:
        from submitit.helpers import TorchDistributedEnvironment

        te = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return DistEnv(te.rank, te.world_size, te.local_rank)
    if ntasks > 1 and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
        if environ is None:
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(ntasks), LOCAL_RANK=str(local))
            os.environ.setdefault("MASTER_PORT", "29500")
        return DistEnv(rank, ntasks, local)
    return DistEnv()


def current() -> DistEnv:
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


def is_main() -> bool:
    return current().is_main


def setup(cfg) -> DistEnv:
    """Join the process group if this process was started as one of several (idempotent)."""
    env = detect_env()
    if not env.enabled or dist.is_initialized():
        return current() if env.enabled else env
    device = enum_value(cfg.device)
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = enum_value(cfg.dist.backend)
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ConfigError("dist.backend=nccl needs CUDA devices; use dist.backend=gloo on CPU")
    kwargs = {}
    if cuda:
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        kwargs["device_id"] = torch.device("cuda", index)
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=cfg.dist.timeout_s), **kwargs)
    if env.is_main:
        log.info("distributed: %d processes, backend %s", env.world_size, backend)
    return env


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this process's GPU (set by ``setup``)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def effective_lr(schedule, world_size: int) -> float:
    if not schedule.scale_lr:
        return schedule.lr
    lr = schedule.lr * schedule.accum_steps * world_size
    log.info("schedule.scale_lr: lr %.4g x %d (accum_steps x world_size) = %.4g", schedule.lr,
             schedule.accum_steps * world_size, lr)
    return lr


def wrap_model(model: nn.Module, device: torch.device, dist_cfg) -> nn.Module:
    """The module training steps call: DDP (optionally with SyncBatchNorm) or the model itself.
    SyncBatchNorm layers replace BatchNorm in place, so ``model``'s state-dict keys stay."""
    if not current().enabled:
        return model
    if dist_cfg.sync_bn:
        if device.type != "cuda":
            raise ConfigError("dist.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU "
                              "kernel); use backbone.norm=gn or frozen_bn on CPU")
        for name, child in model.named_children():
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast in forward: frozen BN buffers are equal on every rank anyway, and a
    # collective inside forward would not line up with a failed peer's ``announce_failure``.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, broadcast_buffers=False,
        find_unused_parameters=dist_cfg.find_unused_parameters)


def grad_sync(train_model: nn.Module, sync: bool):
    """DDP's ``no_sync`` for micro-batches before the last one of an accumulated step."""
    if sync or not isinstance(train_model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return train_model.no_sync()


# --- data ---------------------------------------------------------------------------------


class ShardedBatchSampler:
    """Rank r's micro-batches of iteration i: its contiguous slice of the global batch, in
    ``accum_steps`` pieces of ``batch_size``."""

    def __init__(self, base: IterationBatchSampler, batch_size: int, accum_steps: int,
                 rank: int):
        self.base, self.bs, self.accum, self.rank = base, batch_size, accum_steps, rank

    def __len__(self) -> int:
        return len(self.base) * self.accum

    def __iter__(self):
        per_rank = self.bs * self.accum
        for batch in self.base:
            mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            for m in range(self.accum):
                yield mine[m * self.bs:(m + 1) * self.bs]


def train_loader(view, batch_size: int, accum_steps: int, seed: int, start_iter: int,
                 max_iter: int, num_workers: int) -> Loader:
    env = current()
    groups = view.group_ids() if hasattr(view, "group_ids") else None  # aspect-ratio groups
    factors = view.repeat_factors() if hasattr(view, "repeat_factors") else None
    base = IterationBatchSampler(len(view), batch_size * accum_steps * env.world_size, seed,
                                 start_iter, max_iter, groups, factors)
    sampler = ShardedBatchSampler(base, batch_size, accum_steps, env.rank)
    return Loader(view, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                  generator=torch.Generator().manual_seed(seed))


def iteration_batches(loader, accum_steps: int):
    """Group the loader's micro-batches: one list of ``accum_steps`` per optimizer step."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []


def eval_shard(view):
    """Rank r evaluates images r, r+W, r+2W...: no padding, so no duplicates to drop."""
    env = current()
    if not env.enabled:
        return view
    return Subset(view, range(env.rank, len(view), env.world_size))


# --- collectives --------------------------------------------------------------------------

_announced = False  # this rank's failure is already known to the others
OK, FAILED, STOP = 0, 1, 2  # what a rank reports at a synchronisation point


def _exchange(code: int) -> list[int]:
    """All-reduce one code per rank (same shape at every call site, so a failed rank's
    ``announce_failure`` lines up with whichever check its peers are in)."""
    env = current()
    flags = torch.zeros(env.world_size, dtype=torch.int32, device=_comm_device())
    flags[env.rank] = code
    dist.all_reduce(flags)
    codes = [int(c) for c in flags.tolist()]
    if FAILED in codes:
        global _announced
        _announced = True
    return codes


def check_peers(failed: bool = False) -> list[int]:
    """The ranks that failed (all ranks agree); this rank reports ``failed``."""
    if not current().enabled:
        return [0] if failed else []
    return [r for r, c in enumerate(_exchange(FAILED if failed else OK)) if c == FAILED]


def any_rank_stopping(requested: bool) -> bool:
    """True on every rank if a stop signal reached any rank; a peer's failure raises."""
    if not current().enabled:
        return requested
    codes = _exchange(STOP if requested else OK)
    bad = [r for r, c in enumerate(codes) if c == FAILED]
    if bad:
        raise PeerFailedError(f"rank(s) {bad} failed; stopping (see their output)")
    return STOP in codes


def stop_if_peers_failed(where: str) -> None:
    bad = check_peers(False)
    if bad:
        raise PeerFailedError(f"rank(s) {bad} failed {where}; stopping (see their output)")


def announce_failure(timeout_s: float = 30.0) -> None:
    """On an exception: tell the other ranks (they are waiting in ``_exchange``)."""
    global _announced
    env = current()
    if not env.enabled or _announced:
        return
    _announced = True
    flags = torch.zeros(env.world_size, dtype=torch.int32, device=_comm_device())
    flags[env.rank] = FAILED
    with contextlib.suppress(Exception):
        dist.all_reduce(flags, async_op=True).wait(datetime.timedelta(seconds=timeout_s))


def on_main(fn):
    """``fn()`` on rank 0, its result on every rank; if it raises there, every rank raises
    (the others a ``PeerFailedError``) instead of waiting for a result that never comes."""
    env = current()
    if not env.enabled:
        return fn()
    box, error = [None], None
    if env.is_main:
        try:
            box = [(OK, fn())]
        except Exception as e:
            box, error = [(FAILED, None)], e
    dist.broadcast_object_list(box, src=0)
    code, value = box[0]
    if code == FAILED:
        global _announced
        _announced = True
        if error is not None:
            raise error
        raise PeerFailedError("rank 0 failed; stopping (see its output)")
    return value


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    env = current()
    if not env.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def image_weighted_mean(values: dict[str, float], images: int) -> dict[str, float]:
    """Each rank's ``values`` (means over its ``images`` validation images) as one mean over
    all of them, on every rank: evaluation shards differ by an image, and a rank with none
    (fewer images than ranks) has no keys at all."""
    env = current()
    if not env.enabled:
        return values
    parts: list = [None] * env.world_size
    dist.all_gather_object(parts, (values, images))
    total = sum(n for _, n in parts)
    keys = sorted({k for v, n in parts if n for k in v})
    return {k: sum(v[k] * n for v, n in parts if n) / total for k in keys}


def gather_detections(dets: list[dict], image_ids: list) -> list[dict]:
    """Rank 0 gets every rank's detections in dataset order (others get []).
    ``image_ids`` is the dataset's image order."""
    env = current()
    if not env.enabled:
        return dets
    stop_if_peers_failed("during evaluation")
    parts = [None] * env.world_size if env.is_main else None
    dist.gather_object(dets, parts, dst=0)
    if not env.is_main:
        return []
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    merged = [d for part in parts for d in part]
    return sorted(merged, key=lambda d: position[d["image_id"]])


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- rank 0 writes, other ranks stay quiet -----------------------------------------------


def quiet_logging(rank: int) -> None:
    """Ranks > 0: warnings and errors only, on the console, prefixed with the rank."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
    root.setLevel(logging.WARNING)
    logging.getLogger("rcnn_cli").setLevel(logging.WARNING)


def quiet_hydra_logging(rank: int) -> dict:
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"rank": {"format": f"[rank {rank}] %(levelname)s %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "rank",
                                     "stream": "ext://sys.stderr"}},
            "root": {"level": "WARNING", "handlers": ["console"]}}


def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run directory, created by rank 0 only, known to every rank."""
    def create() -> str:
        run_dir.mkdir(parents=True, exist_ok=True)
        return str(run_dir.resolve())

    return Path(on_main(create))


class SharedRunDir(Callback):
    """Hydra callback for ``torchrun ... -m rcnn_cli.train``: every rank runs Hydra, so the
    run directory (``${now:}``) would differ per rank. Rank 0 resolves it and broadcasts it;
    ranks > 0 write no ``.hydra/`` files and no log file."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import open_dict, read_write

        env = setup(config)
        if not env.enabled:
            return
        run_dir = broadcast(os.path.abspath(str(config.hydra.run.dir)) if env.is_main else None)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
            if not env.is_main:
                config.hydra.output_subdir = None
                config.hydra.job_logging = quiet_hydra_logging(env.rank)

    def on_multirun_start(self, config, **kwargs) -> None:
        if detect_env().enabled:
            raise ConfigError("a sweep (-m) cannot run under torchrun: each sweep point is one "
                              "DDP job; use hydra/launcher=submitit_slurm with tasks_per_node")

    def on_job_start(self, config, **kwargs) -> None:
        env = detect_env()
        if env.enabled and not env.is_main:  # a submitit task of a multi-task sweep job
            quiet_logging(env.rank)
