"""The lineage's runs: each one trained (or reused, or continued after a stop), evaluated,
timed and kept; all of them planned before anything trains, and timed together at the end when
their checkpoints are all on this machine (``benchmarks/lineage.py`` runs them)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rcnn_cli.benchmark.lineage.report import METRICS
from rcnn_cli.benchmark.lineage.systems import (
    Dataset,
    System,
    budget_text,
    compose_system,
    mask_refusal,
    select_systems,
    slug,
)
from rcnn_cli.benchmark.lineage.timing import machine_load, time_systems
from rcnn_cli.engine import faults
from rcnn_cli.engine.resume import saved_config_differences
from rcnn_cli.engine.runtime import config_dict, cpu_model
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_json

log = logging.getLogger("rcnn_cli")

PROGRESS = "lineage_progress.json"  # an unfinished run's config, starts and kept seconds

def run_dir_record(out: Path, label: str, seed: int) -> Path:
    return out / slug(label) / f"seed{seed}" / "lineage_record.json"


def warm_proposal_cache(cfg: DictConfig) -> float:
    """Selective search over the train and val splits into the cache (once for all systems on
    external proposals), so that their training time does not include it; returns seconds."""
    from rcnn_cli.data.build import build_dataset
    from rcnn_cli.data.proposal_cache import load_proposals

    start = time.perf_counter()
    for split in ("train", "val"):
        view = build_dataset(cfg.dataset, split, train=split == "train")
        load_proposals(cfg.proposals, cfg.dataset, split, view.raw)
    return time.perf_counter() - start


def warm_caches(runs) -> float | None:
    """The selective search cache of every planned run on external proposals, made here once
    (seconds; None: no such run) before runs train side by side, each of which would otherwise
    compute the same cache; ``runs`` as ``plan`` makes them."""
    configs = [cfg for _, _, cfg, refusal in runs
               if refusal is None and cfg.proposals.name == "selective_search"]
    return sum(warm_proposal_cache(cfg) for cfg in configs) if configs else None


def same_config(saved: dict | None, cfg: DictConfig) -> bool:
    """Whether a stored run's config is ``cfg``'s, every key included but the folder of the
    selective search cache (inside ``--out``: its content depends only on the images and the
    search's settings); a key the stored config lacks (added to the schemas since) counts as
    its schema default."""
    return saved is not None and not saved_config_differences(
        saved, cfg, may_change=("proposals.cache_dir",))


def metric(metrics: dict, key: str) -> float | None:
    """A COCO statistic, None where the evaluator has none (-1: e.g. no small object)."""
    value = metrics.get(key)
    return None if value is None or value < 0 else float(value)


def stopped_progress(run_dir: Path, cfg: DictConfig) -> dict | None:
    """A stopped run that can continue: its ``PROGRESS`` with ``kept_s`` brought up to date,
    the training seconds its starts kept. Each start counts up to its newest checkpoint or
    stage manifest (what it did after that is trained again). None: no progress file, another
    config, or nothing saved to continue from."""
    try:
        progress = json.loads((run_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    saved = [p.stat().st_mtime for p in run_dir.rglob("*")
             if p.suffix == ".pt" or p.name == "manifest.json"]
    if not saved or not same_config(progress.get("config"), cfg):
        return None
    return {**progress, "kept_s": progress["kept_s"] + max(0.0, max(saved) - progress["started"])}


def run_system(label: str, seed: int, overrides: list[str], cfg: DictConfig, out: Path,
               fresh: bool) -> dict:
    """Train one system at one seed (its wall time includes rcnn-train's final evaluation on
    the val images; rcnn-eval's ``evaluate_checkpoint`` if it has none); reuse a finished
    record whose config is the same."""
    from rcnn_cli.engine.evaluator import evaluate_checkpoint
    from rcnn_cli.engine.train import train

    record_path = run_dir_record(out, label, seed)
    run_dir = record_path.parent
    config = config_dict(cfg)
    if record_path.exists() and not fresh:
        record = json.loads(record_path.read_text())
        if same_config(record.get("config"), cfg):
            log.info("lineage: %s seed %d: reusing %s", label, seed, record_path)
            return record
    progress = None if fresh else stopped_progress(run_dir, cfg)
    if run_dir.exists() and progress is None:  # outdated, or stopped before saving anything
        log.info("lineage: %s seed %d: removing the unfinished run %s", label, seed, run_dir)
        shutil.rmtree(run_dir)
    proposal_cache_s = None
    if cfg.proposals.name == "selective_search":
        proposal_cache_s = warm_proposal_cache(cfg)
    train_cfg, kept_s, starts = cfg, 0.0, 1
    if progress is not None:
        kept_s, starts = progress["kept_s"], progress["starts"] + 1
        log.info("lineage: %s seed %d: continuing %s (start %d; %.0f s of training kept)",
                 label, seed, run_dir, starts, kept_s)
        train_cfg = copy.deepcopy(cfg)
        train_cfg.resume = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / PROGRESS, {"config": config, "kept_s": kept_s,
                                           "starts": starts, "started": time.time()})
    start = time.perf_counter()
    metrics = train(train_cfg, run_dir)
    train_s = kept_s + time.perf_counter() - start
    train_load = {"load": machine_load(15), "threads": torch.get_num_threads()}
    ckpt = run_dir / "checkpoints" / "last.pt"
    ap_source = "rcnn-train's final evaluation"
    if "bbox/AP" not in metrics:  # no final evaluation in training: rcnn-eval's path
        with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
            eval_cfg = compose("eval", overrides=[f"ckpt={ckpt}"])
        metrics = evaluate_checkpoint(eval_cfg, run_dir / "eval")
        ap_source = "rcnn-eval"
    record = {"label": label, "seed": seed, "overrides": overrides, "budget": budget_text(cfg),
              "run_dir": str(run_dir), "proposals": cfg.proposals.name,
              "backbone": cfg.backbone.name, "train_s": train_s,
              "proposal_cache_s": proposal_cache_s,
              **{name: metric(metrics, key) for name, key in METRICS.items()},
              "ap_source": ap_source, "iteration": metrics.get("iteration"), "ckpt": str(ckpt),
              "train_load": train_load,
              "starts": starts, "cpu": cpu_model(), "config": config}
    atomic_write_json(record_path, record)
    return record


def kept_path(keep: Path, label: str, seed: int) -> Path:
    return keep / f"{slug(label)}_seed{seed}.json"


def run_kept(label: str, seed: int, overrides: list[str], cfg: DictConfig, out: Path,
             keep: Path, fresh: bool, images: int) -> dict:
    """``run_system``, unless a run with the same config is kept; a new record is timed alone
    (``images`` val images) on the machine it trained on and kept with that CPU's name (one
    that could not be timed is not kept: it runs again)."""
    path = kept_path(keep, label, seed)
    if path.is_file() and not fresh:
        record = json.loads(path.read_text())
        if same_config(record.get("config"), cfg):
            log.info("lineage: %s seed %d: kept in %s", label, seed, path)
            return record
    record = run_system(label, seed, overrides, cfg, out, fresh)
    if "test" not in record:
        [test] = time_systems({(label, seed): Path(record["ckpt"])}, images).values()
        record.update({"test": test, "timed": "alone"} if "error" not in test
                      else {"error": f"timing: {test['error']}"})
    record.setdefault("cpu", cpu_model())
    atomic_write_json(run_dir_record(out, label, seed), record)
    if "error" not in record:
        atomic_write_json(path, record)
    return record


def plan(args, data: Dataset) -> list[tuple[System, int, DictConfig, str | None]]:
    """Every run's config (composed once per system, then one copy per seed) and the reason
    its system is refused on this data, if it is; all before anything trains, so that a missing
    system or a bad override fails in seconds, not hours later."""
    weights = dict(item.split("=", 1) for item in args.backbone_weights)
    systems = [(s, compose_system(s, data, args.budget_scale, args.seeds[0], args.overrides))
               for s in select_systems(args.systems)]
    unused = set(weights) - {cfg.backbone.name for _, cfg in systems}
    if unused:
        raise ConfigError(f"lineage: --backbone-weights {', '.join(sorted(unused))}: no "
                          "selected system uses that backbone")
    runs = []
    for system, cfg in systems:
        if cfg.backbone.name in weights:
            cfg.backbone.weights = weights[cfg.backbone.name]
        if cfg.proposals.name == "selective_search":  # one cache for all, inside --out
            cfg.proposals.cache_dir = str(args.out / "proposal_cache")
        refusal = mask_refusal(cfg)
        for seed in args.seeds:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.seed = seed
            runs.append((system, seed, run_cfg, refusal))
    return runs


def train_all(runs, out: Path, keep: Path, fresh: bool, images: int,
              report: Callable[[list[dict]], None], failed: dict | None = None) -> list[dict]:
    """Train (or reuse) every run in turn; a refused system (no masks in the data) or a failed
    run is recorded and the others go on; the report is rewritten after each run. ``failed``:
    the runs that failed side by side, by (label, seed), recorded without training again."""
    records, failed = [], failed or {}
    for system, seed, cfg, refusal in runs:
        base = {"label": system.label, "seed": seed, "overrides": list(system.overrides)}
        if refusal is not None:
            records.append({**base, "refused": refusal})
        elif (system.label, seed) in failed:
            records.append({**base, "error": failed[system.label, seed]})
        else:
            try:
                records.append(run_kept(system.label, seed, list(system.overrides), cfg, out,
                                        keep, fresh, images))
            except faults.Interrupted:
                raise  # SIGTERM / Ctrl-C stop the table; a re-run continues from the finished
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                log.exception("lineage: %s seed %d failed", system.label, seed)
                records.append({**base, "error": f"{type(e).__name__}: {e}"})
        report(records)
    return records


def time_all(records: list[dict], images: int, keep: Path) -> None:
    """Every finished run timed together, interleaved, when all their checkpoints are on this
    machine; the result (or the failure) into its record, kept. Otherwise (runs kept from
    other machines) each keeps the timing of its own machine."""
    trained = {(r["label"], r["seed"]): Path(r["ckpt"]) for r in records
               if "error" not in r and "refused" not in r}
    if not all(ckpt.is_file() for ckpt in trained.values()):
        log.info("lineage: runs kept from other machines: each keeps its own test time")
        return
    for key, test in time_systems(trained, images).items():
        record = next(r for r in records if (r["label"], r["seed"]) == key)
        if "error" in test:
            record["error"] = f"timing: {test['error']}"
        else:
            record.update({"test": test, "timed": "together", "cpu": cpu_model()})
            atomic_write_json(kept_path(keep, *key), record)
