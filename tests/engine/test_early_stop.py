"""Early stopping: stops at the right evaluation, then evaluates and exports the best weights."""

from __future__ import annotations

import logging

import pytest
import torch

from rcnn_cli.engine import trainer as trainer_mod
from rcnn_cli.engine.early_stop import EarlyStop, snapshot
from rcnn_cli.engine.train import train
from rcnn_cli.errors import ConfigError
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg


def test_patience_counts_evaluations_without_enough_improvement():
    stop = EarlyStop("bbox/AP", "max", patience=2, min_delta=0.05)
    assert [stop.update(v, it) for it, v in enumerate([0.1, 0.3, 0.33, 0.2], 1)] == [
        False, False, False, True]
    assert stop.best == 0.3 and stop.best_iteration == 2
    low = EarlyStop("val/total_loss", "min", patience=1, min_delta=0.0)
    assert not low.update(2.0, 1) and not low.update(1.5, 2) and low.update(1.6, 3)


SCRIPT = [0.1, 0.3, 0.2, 0.25, 0.3]  # AP at evaluations 1-4, then of the restored best


def test_run_stops_at_the_right_evaluation_and_keeps_the_best(tmp_path, monkeypatch, caplog):
    seen: list = []

    def fake_evaluate(self, progress=None):
        seen.append((self.iteration, snapshot(self.eval_model)))
        return {"bbox/AP": SCRIPT[len(seen) - 1], "iteration": self.iteration}, []

    monkeypatch.setattr(trainer_mod.Trainer, "evaluate", fake_evaluate)
    monkeypatch.setattr(trainer_mod, "save_evaluation", lambda *a, **k: None)
    cfg = compose_cfg("train", [*TINY, *NO_OPTIMIZER_STATE, "schedule.max_iter=10",
                                "schedule.eval_period=1",
                                "schedule.checkpoint_period=100", "log.images_every=0",
                                "schedule.early_stop.patience=2", "log.tensorboard=false"])
    with caplog.at_level(logging.INFO, logger="rcnn_cli"):
        train(cfg, tmp_path)
    # evaluations at iterations 1-4; 0.2 and 0.25 do not beat 0.3: stop after the 4th
    assert [it for it, _ in seen] == [1, 2, 3, 4, 4]
    assert "early stop at iteration 4: the headline AP did not improve" in caplog.text
    assert "best 0.3000 at iteration 2" in caplog.text
    best_weights = seen[1][1]
    final = seen[-1][1]
    assert all(torch.equal(final[k], v) for k, v in best_weights.items())
    assert not all(torch.equal(seen[3][1][k], v) for k, v in best_weights.items())
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in best_weights.items())
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == 2 and best["best_ap"] == 0.3


def test_early_stop_needs_evaluations(tmp_path):
    cfg = compose_cfg("train", [*TINY, "schedule.early_stop.patience=2"])
    with pytest.raises(ConfigError, match="schedule.eval_period"):
        train(cfg, tmp_path)
