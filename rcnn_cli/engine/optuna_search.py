"""Hyper-parameter search with Optuna, driving ``train(cfg)`` in this process.

The Hydra Optuna sweeper (hydra-optuna-sweeper 1.3.0) pins ``optuna<3`` and would downgrade
the current Optuna, so this thin driver replaces it. The search space is written in Hydra's
sweep syntax, one ``--search`` per key::

    schedule.lr=tag(log,interval(1e-4,1e-2))   # float, log-uniform
    schedule.batch_size=choice(2,4,8)          # categorical
    dataset.image_size=range(64,129,32)        # int steps (end exclusive, as in Hydra)
    schedule.warmup_iters=tag(int,interval(0,100))  # int (Hydra's interval is float)

Each trial trains into ``<out>/<trial>/`` and writes the same ``result.json`` as a sweep job,
so ``summary.md``/``summary.csv`` (``rcnn_cli.engine.sweep``) list every trial; ``best.json``
holds the best trial's parameters, value and the command line that reproduces it. The value is
``optimized_metric`` of the final evaluation (default: the headline AP), maximised or
minimised per ``optimized_mode``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from rcnn_cli.engine import sweep
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_json

log = logging.getLogger("rcnn_cli")


def parse_space(specs: list[str]) -> dict:
    """``key=<hydra sweep>`` strings -> {key: sweep object} (Choice/Range/IntervalSweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    space = {}
    for spec in specs:
        try:
            override = OverridesParser.create().parse_overrides([spec])[0]
        except HydraException as e:
            raise ConfigError(f"--search {spec!r}: {e}") from None
        if not override.is_sweep_override():
            raise ConfigError(f"--search {spec!r} is not a sweep; use choice(...), range(...) "
                              "or interval(...) (tag(log, interval(...)) for log scale)")
        space[override.key_or_group] = override.value()
    return space


def suggest(trial, key: str, value):
    """One value for ``key`` from the trial, by the kind of Hydra sweep."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if isinstance(value, ChoiceSweep):
        return trial.suggest_categorical(key, list(value.list))
    if isinstance(value, RangeSweep):
        values = list(value.range())
        if all(isinstance(v, int) for v in values):
            return trial.suggest_int(key, values[0], values[-1], step=value.step)
        return trial.suggest_float(key, values[0], values[-1], step=value.step)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return trial.suggest_int(key, int(value.start), int(value.end), log=log_scale)
        return trial.suggest_float(key, float(value.start), float(value.end), log=log_scale)
    raise ConfigError(f"--search {key}: unsupported sweep {value!r}")


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides=overrides)


def as_override(key: str, value) -> str:
    return f"{key}={'null' if value is None else value}"


def run_trial(trial, space: dict, base: list[str], out: Path, metric: str, mode: str) -> float:
    """Compose, train and record one trial; returns ``optimized_metric``."""
    from rcnn_cli.engine.train import train

    params = {key: suggest(trial, key, value) for key, value in space.items()}
    overrides = [*base, *(as_override(k, v) for k, v in params.items())]
    job_dir = out / str(trial.number)
    job_dir.mkdir(parents=True, exist_ok=True)
    result = {"job": trial.number, "dir": str(job_dir), "overrides": overrides,
              "params": params, "optimized_metric": metric, "optimized_mode": mode}
    try:
        cfg = compose_train(overrides)
        OmegaConf.save(cfg, job_dir / "config.yaml")
        metrics = train(cfg, job_dir)
        value = sweep.metric_value(metrics, metric)
    except Exception as e:
        log.error("trial %d failed: %s: %s\n%s", trial.number, type(e).__name__, e,
                  traceback.format_exc())
        sweep.write_result(job_dir, {**result, "status": "failed", "metrics": {},
                                     "error": f"{type(e).__name__}: {e}"}, False)
        raise
    sweep.write_result(job_dir, {**result, "status": "completed", "metrics": metrics,
                                 "error": None,
                                 "optimized_metric": sweep.resolve_metric(metrics, metric)},
                       cfg.log.tensorboard)
    return value


def search(space_specs: list[str], base: list[str], out: str | Path, trials: int,
           seed: int = 0, storage: str | None = None, study_name: str = "rcnn"):
    """Run ``trials`` trials; returns the Optuna study (failed trials are recorded, not raised)."""
    import optuna

    space = parse_space(space_specs)
    cfg = compose_train(list(base))
    mode = getattr(cfg.optimized_mode, "value", cfg.optimized_mode)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize", study_name=study_name,
        sampler=optuna.samplers.TPESampler(seed=seed), storage=storage,
        load_if_exists=storage is not None)
    study.optimize(lambda t: run_trial(t, space, list(base), out, cfg.optimized_metric, mode),
                   n_trials=trials, catch=(Exception,))
    rows = sweep.write_summary(out, cfg.optimized_metric, mode)
    sweep.print_summary(rows, sweep.summary_metric(rows, cfg.optimized_metric),
                        f"optuna search {out}")
    return study


def best_record(study, base: list[str]) -> dict | None:
    """The best trial as written to ``best.json`` (None when no trial completed)."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    best = study.best_trial
    extra = [as_override(k, v) for k, v in best.params.items()]
    return {"trial": best.number, "value": best.value, "params": best.params,
            "command": " ".join(["rcnn-train", *base, *extra])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optuna_search.py", description=__doc__.split("\n\n")[0],
        epilog="Trailing arguments are rcnn-train overrides shared by every trial.")
    parser.add_argument("--search", action="append", default=[], required=True,
                        metavar="KEY=SWEEP", help="e.g. 'schedule.lr=tag(log,interval(1e-4,1e-2))'")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default="outputs/optuna", help="study directory")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (e.g. sqlite:///study.db) to resume a study")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        study = search(args.search, args.overrides, args.out, args.trials, args.seed,
                       args.storage)
    except ConfigError as e:
        log.error("ConfigError: %s", e)
        return 1
    best = best_record(study, args.overrides)
    if best is None:
        log.error("no trial completed; see %s", Path(args.out) / "summary.md")
        return 1
    atomic_write_json(Path(args.out) / "best.json", best)
    print(f"best trial {best['trial']}: {best['value']:.4f}  params {best['params']}")
    print(f"reproduce: {best['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
