"""Early stopping with patience (Prechelt, "Early Stopping — But When?", 1998, §2).

Training stops after ``patience`` consecutive evaluations in which ``optimized_metric`` did
not improve on its best value by more than ``min_delta`` (in ``optimized_mode``'s direction);
the run then evaluates and exports the best weights, kept in memory since their evaluation.
"""

from __future__ import annotations

import torch
from torch import nn


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStop:
    def __init__(self, metric: str | None, mode: str, patience: int, min_delta: float):
        self.metric, self.mode = metric, mode
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_iteration, self.bad_evals = 0, 0

    def update(self, value: float, iteration: int) -> bool:
        """Record one evaluation; True when training should stop."""
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_iteration, self.bad_evals = value, iteration, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience

    def reason(self, name: str, iteration: int) -> str:
        return (f"early stop at iteration {iteration}: {name} did not improve by more than "
                f"{self.min_delta:g} in {self.bad_evals} evaluations (schedule.early_stop."
                f"patience={self.patience}); best {self.best:.4f} at iteration "
                f"{self.best_iteration}")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iteration": self.best_iteration,
                "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], int(state["bad_evals"])
        self.best_iteration = int(state["best_iteration"])


def build_early_stop(cfg) -> EarlyStop | None:
    """``schedule.early_stop`` (patience 0 = off) on ``optimized_metric`` / ``optimized_mode``."""
    conf = cfg.schedule.get("early_stop")
    if conf is None or not conf.patience:
        return None
    if not cfg.schedule.eval_period:
        from rcnn_cli.errors import ConfigError

        raise ConfigError("schedule.early_stop.patience needs evaluations during training: set "
                          "schedule.eval_period > 0")
    mode = getattr(cfg.optimized_mode, "value", cfg.optimized_mode)
    return EarlyStop(cfg.get("optimized_metric"), str(mode), int(conf.patience),
                     float(conf.min_delta))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, independent of later training steps."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
