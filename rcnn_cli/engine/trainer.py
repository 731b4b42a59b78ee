"""The joint training loop (Faster R-CNN §3.2, approximate joint training).

``engine.train.train(cfg)`` chooses this loop or a stage graph; the stages run this loop too.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.progress import Progress

from rcnn_cli.data.build import build_dataset, check_same_classes
from rcnn_cli.data.loader import eval_loader, sample_seed
from rcnn_cli.data.proposal_cache import attach_proposals
from rcnn_cli.engine import distributed, faults, runtime
from rcnn_cli.engine.checkpoint import CheckpointStore, resolve_resume, rng_state, set_rng_state
from rcnn_cli.engine.early_stop import build_early_stop, improves, snapshot
from rcnn_cli.engine.ema import build_ema, restore_ema
from rcnn_cli.engine.events import EventLogger
from rcnn_cli.engine.export import export_model
from rcnn_cli.engine.faults import NonFiniteLossError  # noqa: F401  (re-exported)
from rcnn_cli.engine.optim import build_optimizer, build_scheduler, check_groups
from rcnn_cli.engine.resume import check_resume_config
from rcnn_cli.engine.runtime import config_dict, make_progress
from rcnn_cli.engine.val_loss import validation_loss
from rcnn_cli.engine.visuals import ValImages
from rcnn_cli.evaluation import confusion
from rcnn_cli.evaluation.build import build_evaluator, headline, iou_types_for
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.evaluation.results import log_curves, save_evaluation
from rcnn_cli.modeling import seeded_sampler
from rcnn_cli.modeling.anchors import resolve_auto_anchors
from rcnn_cli.modeling.backbones import eval_frozen_norms
from rcnn_cli.modeling.build import build_detector, uses_masks
from rcnn_cli.modeling.weights import load_pretrained, without_pretrained

log = logging.getLogger("rcnn_cli")


class Trainer:
    """The loop over one model's training steps; ``run()`` trains to ``schedule.max_iter``,
    evaluates (when given an ``evaluator``) and saves.

    Built from parts, so every program runs the same loop: ``from_config`` builds a joint
    run's parts; a stage of a stage graph passes its network, data, checkpoint folder and
    event stream, and no evaluator (the graph evaluates its final network once).
    """

    @property
    def eval_model(self):
        """What is evaluated, kept as best and exported: the weight average when on."""
        ema = getattr(self, "ema", None)
        return self.model if ema is None else ema.module

    def __init__(self, cfg: DictConfig, run_dir: Path, *, model, train_set, store_dir: Path,
                 events, lr: float, train_model=None, val_set=None, evaluator=None,
                 val_images: ValImages | None = None, label: str = "train",
                 is_main: bool = True):
        self.cfg, self.run_dir, self.label, self.is_main = cfg, run_dir, label, is_main
        self.sched = cfg.schedule
        self.model = model
        self.device = next(model.parameters()).device
        self.amp = runtime.amp_dtype(self.sched.amp, self.device)
        self.train_model = train_model if train_model is not None else model
        self.train_set, self.val_set = train_set, val_set
        self.classes = list(train_set.raw.classes)
        self.category_ids = list(train_set.raw.category_ids)
        self.evaluator, self.val_images, self.events = evaluator, val_images, events
        self.optimizer = build_optimizer(model, self.sched.optimizer, lr, self.sched.momentum,
                                         self.sched.weight_decay, self.sched.fused_optimizer,
                                         self.sched.offset_lr_mult)
        self.scheduler = build_scheduler(self.optimizer, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.store = CheckpointStore(store_dir, self.sched.keep_checkpoints)
        self.grad_guard = faults.GradGuard(cfg.faults.max_nonfinite_steps)
        self.saved_iteration, self.iteration, self.best_ap = -1, 0, None
        self.ema = build_ema(self.model, self.sched)
        # early stopping needs evaluations: a stage of a stage graph has no evaluator
        self.early_stop = build_early_stop(cfg) if evaluator is not None else None
        self.best_weights = None
        self.stop_reason: str | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path,
                    resumed: tuple[Path, dict] | None = None) -> Trainer:
        """A joint run's parts: seeds, datasets (with proposals), detector, DDP wrapper,
        evaluator, validation pictures, event stream; continued from ``resumed`` (a checkpoint
        ``resolve_resume`` found), whose weights replace ``model.weights``/``backbone.weights``:
        a resumed run never reads those files again."""
        device = distributed.local_device(runtime.select_device(cfg.device))
        is_main = distributed.is_main()
        runtime.set_threads(cfg.threads)
        runtime.seed_everything(cfg.seed)
        masks = uses_masks(cfg.model.name)
        train_set = build_dataset(cfg.dataset, "train", train=True, with_masks=masks)
        val_set = build_dataset(cfg.dataset, "val", train=False, with_masks=masks)
        check_same_classes(train_set.raw, val_set.raw, cfg.dataset.name)
        attach_proposals(cfg, "train", train_set)
        attach_proposals(cfg, "val", val_set)
        classes, category_ids = list(train_set.raw.classes), list(train_set.raw.category_ids)
        resolve_auto_anchors(cfg, train_set.raw)
        model = build_detector(without_pretrained(cfg, trunk=resumed is not None), len(classes))
        report = (load_pretrained(model, cfg, classes, category_ids)
                  if cfg.model.weights and resumed is None else None)
        model.to(device)
        if cfg.schedule.channels_last:
            runtime.convs_channels_last(model)  # before DDP builds its gradient buckets
        seeded_sampler.install(model)
        trainer = cls(
            cfg, run_dir, model=model, train_set=train_set, val_set=val_set,
            train_model=distributed.wrap_model(model, device, cfg.dist),
            store_dir=run_dir / "checkpoints",
            lr=distributed.effective_lr(cfg.schedule, distributed.current().world_size),
            evaluator=build_evaluator(val_set.raw.coco_gt(), cfg.eval, iou_types_for(cfg)),
            val_images=(ValImages(val_set, classes, cfg.log.images_count,
                                  cfg.log.images_score_thresh)
                        if cfg.log.images_every else None),
            events=None, is_main=is_main)
        if resumed is not None:
            trainer.restore(*resumed)
        trainer.events = EventLogger(run_dir, cfg.log.tensorboard, enabled=is_main)
        if report is not None and is_main:
            report.publish(run_dir, trainer.events.tensorboard)
        return trainer

    def resume(self, target: str) -> None:
        found = resolve_resume(target, self.run_dir, self.cfg.ckpt_trust)
        if found is not None:
            self.restore(*found)

    def restore(self, path: Path, ckpt: dict) -> None:
        """Continue from checkpoint ``ckpt`` (read from ``path``): weights, EMA, optimizer,
        schedule, scaler, RNG and the data position."""
        check_resume_config(ckpt["config"], self.cfg, path)
        self.model.load_state_dict(ckpt["model"])
        restore_ema(self.ema, ckpt, path)
        if self.early_stop is not None and "early_stop" in ckpt:
            self.early_stop.load_state_dict(ckpt["early_stop"])
            self.best_weights = best_beside(path, self.cfg.ckpt_trust)
        check_groups(ckpt["optimizer"], self.optimizer, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.iteration, self.best_ap = int(ckpt["iteration"]), ckpt.get("best_ap")
        world = distributed.current().world_size
        if ckpt.get("world_size", 1) != world:
            log.warning("resuming a %s-process checkpoint with %d process(es): the global batch "
                        "(schedule.batch_size x accum_steps x processes) changes",
                        ckpt.get("world_size", 1), world)
        global_batch = self.sched.batch_size * self.sched.accum_steps * world
        epoch, pos = divmod(self.iteration, max(1, len(self.train_set) // global_batch))
        log.info("resumed from %s at iteration %d (epoch %d, batch %d of the epoch): model, "
                 "optimizer, scheduler, scaler, RNG states, best AP %s", path, self.iteration,
                 epoch, pos, self.best_ap)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "rng": rng_state(), "best_ap": self.best_ap,
                "classes": self.classes, "category_ids": self.category_ids,
                "config": config_dict(self.cfg), "world_size": distributed.current().world_size,
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                **({"early_stop": self.early_stop.state_dict()} if self.early_stop else {})}

    def step(self, batches: list) -> dict[str, float]:
        """One optimizer step over ``accum_steps`` micro-batches (losses averaged over them)."""
        for _, targets in batches:
            faults.check_targets(targets)
        # before DDP's forward (which has collectives of its own at iteration 2): a peer that
        # failed loading its data is heard of here
        distributed.stop_if_peers_failed(f"before iteration {self.iteration + 1}")
        eval_frozen_norms(self.model.train())
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        for m, (images, targets) in enumerate(batches):
            last = m == len(batches) - 1
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()}
                       for t in targets]
            with distributed.grad_sync(self.train_model, last), \
                    faults.oom_guard(images, targets, self.iteration + 1):
                losses = self.forward(images, targets)
                values = {k: float(v.detach()) for k, v in losses.items()}
                if last or not all(math.isfinite(v) for v in values.values()):
                    self.check_finite(losses, values, images, targets)
                total = sum(losses.values())
                self.scaler.scale(total / len(batches)).backward()
            values["total_loss"] = float(total.detach())
            for name, v in values.items():
                sums[name] += v / len(batches)
        self.apply_gradients()
        if self.ema is not None:
            self.ema.update(self.model)
        self.scheduler.step()
        return distributed.mean_over_ranks(dict(sums))

    def forward(self, images, targets) -> dict[str, torch.Tensor]:
        """The loss terms; fg/bg sampling seeded per image (``seeded_sampler``)."""
        seeded_sampler.set_seeds(self.model, [sample_seed(self.cfg.seed, self.iteration,
                                                          int(t["image_id"])) for t in targets])
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                            enabled=self.amp is not None):
            return self.train_model(images, targets)

    def check_finite(self, losses: dict, values: dict, images, targets) -> None:
        """Every rank calls this once per step (after its last micro-batch's forward, or at a
        non-finite loss): a non-finite loss on any rank stops all ranks at this step."""
        finite = all(math.isfinite(v) for v in values.values())
        failed = distributed.check_peers(not finite)
        if not finite:
            faults.check_loss(losses, self.iteration + 1, images, targets, self.run_dir)
        if failed:
            raise distributed.PeerFailedError(
                f"rank(s) {failed} had a non-finite loss or failed at iteration "
                f"{self.iteration + 1}; stopping (see their output)")

    def apply_gradients(self) -> None:
        """Optimizer step unless a gradient is non-finite (GradScaler skips those itself)."""
        clip = self.sched.clip_grad_norm
        if self.scaler.is_enabled():
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
            detail = f"; loss scale now {self.scaler.get_scale():.3g}"
        else:
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                skipped = not bool(torch.isfinite(norm))
            else:
                skipped = not faults.grads_finite(self.model.parameters())
            if not skipped:
                self.optimizer.step()
            detail = ""
        self.grad_guard.update(skipped, self.iteration + 1, detail)

    def evaluate(self, progress: Progress | None = None) -> tuple[dict, list[dict]]:
        if self.evaluator is None:  # a stage's partial network: the graph evaluates the end
            return {"iteration": self.iteration}, []
        shard = distributed.eval_shard(self.val_set)
        loader = eval_loader(shard, self.cfg.eval.batch_size, self.cfg.dataset.num_workers)
        dets = predict(self.eval_model, faults.UntilStop(loader), self.device, self.category_ids,
                       progress)
        self.stop_if_requested("during evaluation ")
        dets = distributed.gather_detections(dets, list(self.val_set.raw.image_ids))
        metrics = distributed.on_main(lambda: self.evaluator.evaluate(dets))
        if self.cfg.eval.val_loss:
            val = distributed.image_weighted_mean(validation_loss(
                self.eval_model, faults.UntilStop(loader), self.device, self.cfg.seed), len(shard))
            self.stop_if_requested("during the validation loss ")
            metrics = {**metrics, **val}
            if val:
                log.info("iter %d: validation loss %.4f", self.iteration, val["val/total_loss"])
        self.events.scalars(self.iteration, {k: v for k, v in metrics.items() if v is not None})
        if self.is_main:
            log_curves(self.events.tensorboard, self.evaluator, self.iteration)
        return {**metrics, "iteration": self.iteration}, dets

    def run(self) -> dict:
        max_iter = self.sched.max_iter
        loader = distributed.train_loader(self.train_set, self.sched.batch_size,
                                          self.sched.accum_steps, self.cfg.seed, self.iteration,
                                          max_iter, self.cfg.dataset.num_workers)
        window: dict[str, list[float]] = defaultdict(list)
        with make_progress(disable=not self.is_main) as progress, faults.StopSignal():
            task = progress.add_task(self.label, total=max_iter, completed=self.iteration,
                                     speed="", losses="")
            t_data = time.perf_counter()
            batches_iter = faults.guarded_batches(loader, self.cfg.faults.dataloader_timeout)
            for batches in distributed.iteration_batches(batches_iter, self.sched.accum_steps):
                t0 = time.perf_counter()
                values = self.step(batches)
                self.iteration += 1
                t1 = time.perf_counter()
                values.update(data_time=t0 - t_data, step_time=t1 - t_data)
                for k, v in values.items():
                    window[k].append(v)
                progress.update(task, advance=1, speed=f"{1 / (t1 - t_data):.2f} it/s",
                                losses=f"loss {values['total_loss']:.3f}")
                self.after_step(window, progress)
                if self.stop_reason:
                    break
                self.stop_if_requested()
                t_data = time.perf_counter()
            if self.saved_iteration != self.iteration:
                self.save_checkpoint()
            if self.stop_reason:
                self.restore_best()
            metrics, dets = self.evaluate(progress)
            self.log_images()
        self.finish(metrics, dets)
        return metrics

    def after_step(self, window: dict, progress: Progress) -> None:
        it, period = self.iteration, self.cfg.log.period
        if it % period == 0 or it == self.sched.max_iter:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            means["lr"] = self.optimizer.param_groups[0]["lr"]
            self.events.scalars(it, means)
            log.info("iter %d/%d  %s", it, self.sched.max_iter,
                     "  ".join(f"{k}={v:.4g}" for k, v in means.items()))
            window.clear()
        if it % self.sched.checkpoint_period == 0:
            self.save_checkpoint()
        if self.cfg.log.images_every and it % self.cfg.log.images_every == 0:
            self.log_images()
        if self.sched.eval_period and it % self.sched.eval_period == 0 and it < self.sched.max_iter:
            metrics, _ = self.evaluate(progress)
            log.info("iter %d: AP=%.4f (%s)", it, headline(metrics),
                     getattr(self.cfg.eval.metric, "value", self.cfg.eval.metric))
            value = self.keep_best(metrics)
            if self.early_stop is not None and value is not None and \
                    self.early_stop.update(value, it):
                self.stop_reason = self.early_stop.reason(
                    self.best_metric_name(metrics) or "the headline AP", it)
                log.info("%s", self.stop_reason)

    def log_images(self) -> None:
        if self.val_images is not None and self.is_main:
            self.val_images.log(self.eval_model, self.device, self.events.tensorboard, self.iteration)

    def best_metric_name(self, metrics: dict) -> str | None:
        """``optimized_metric`` when these metrics have it, else None (the headline AP)."""
        name = self.cfg.get("optimized_metric")
        return name if name and name in metrics else None

    def keep_best(self, metrics: dict) -> float | None:
        """``best`` by ``optimized_metric`` / ``optimized_mode`` (default: the headline AP,
        higher is better); returns the value it compared."""
        name = self.best_metric_name(metrics)
        value = metrics[name] if name else headline(metrics)
        mode = getattr(self.cfg.optimized_mode, "value", "max") if name else "max"
        if value is not None and improves(float(value), self.best_ap, mode):
            self.best_ap = float(value)
            self.save_named("best", {**self.state(), "metrics": metrics})
            if self.early_stop is not None:
                self.best_weights = snapshot(self.eval_model)
        return None if value is None else float(value)

    def restore_best(self) -> None:
        """After an early stop: the best evaluated weights into the evaluated model."""
        if self.best_weights is None:
            log.warning("early stop: the best weights are not known (resumed without best.pt); "
                        "evaluating the current weights")
            return
        self.eval_model.load_state_dict(self.best_weights)

    def save_checkpoint(self) -> Path:
        """Rank 0 writes; every rank records the iteration as saved."""
        path = self.store.save(self.state()) if self.is_main else self.store.path("last")
        self.saved_iteration = self.iteration
        return path

    def save_named(self, name: str, state: dict) -> None:
        if self.is_main:
            self.store.save_named(name, state)

    def stop_if_requested(self, where: str = "") -> None:
        """At a step boundary (every rank calls it): stop if a signal reached any rank."""
        requested = faults.stop_requested()
        if distributed.any_rank_stopping(requested is not None):
            self.stop_for(requested or "a stop signal on another rank", where)

    def stop_for(self, signal_name: str, where: str = "") -> None:
        """Signal received: checkpoint at this step boundary, then ``faults.Interrupted``."""
        if self.saved_iteration != self.iteration:
            self.save_checkpoint()
        self.events.close()
        raise faults.Interrupted(
            f"{signal_name} {where}at iteration {self.iteration}: checkpoint {self.store.path('last')} "
            f"written. Resume with: {resume_command(self.run_dir)}")

    def finish(self, metrics: dict, dets: list[dict]) -> None:
        if self.evaluator is None:  # a stage: the graph saves and exports its final network
            return
        self.keep_best(metrics)
        if not self.is_main:
            return
        matrix = save_evaluation(self.run_dir, self.evaluator, metrics, dets,
                                 f"final evaluation (iteration {self.iteration})",
                                 self.cfg.eval.confusion_score)
        confusion.add_to_tensorboard(self.events.tensorboard, matrix, self.iteration)
        export_model(self.run_dir / "export", self.eval_model.state_dict(), self.classes,
                     self.category_ids, config_dict(self.cfg), self.iteration)
        self.events.close()


def resume_command(run_dir: Path) -> str:
    """The command line that continues this run: its overrides plus ``resume=<run_dir>``."""
    from hydra.core.hydra_config import HydraConfig

    args = []
    if HydraConfig.initialized():
        args = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    return " ".join(["rcnn-train", *args, f"resume={run_dir}"])


def best_beside(path: Path, trust: bool) -> dict | None:
    """The evaluated weights of the ``best.pt`` next to a resumed checkpoint, if any."""
    from rcnn_cli.engine.ema import inference_weights
    from rcnn_cli.io import load_checkpoint

    best = Path(path).parent / "best.pt"
    return inference_weights(load_checkpoint(best, trust)) if best.exists() else None
