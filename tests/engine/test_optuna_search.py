"""The Optuna driver: Hydra sweep syntax -> Optuna distributions; tiny trials on shapes."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from rcnn_cli.engine import optuna_search
from rcnn_cli.errors import ConfigError
from tests.conftest import TINY

BASE = [o for o in TINY if not o.startswith(("schedule.max_iter", "schedule.checkpoint_period"))] + [
    "schedule.max_iter=2", "schedule.checkpoint_period=100", "dataset.val_size=2", "device=cpu",
    "threads=1", "log.tensorboard=false", "model.box_head.score_thresh=0.0",
    "schedule.optimizer=sgd", "schedule.momentum=0"]


def distributions(specs: list[str]) -> dict:
    space = optuna_search.parse_space(specs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    for key, value in space.items():
        optuna_search.suggest(trial, key, value)
    return trial.distributions


def test_hydra_sweep_syntax_maps_to_optuna_distributions():
    d = distributions(["schedule.lr=tag(log,interval(1e-4,1e-2))",
                       "schedule.momentum=interval(0.8,0.99)",
                       "schedule.batch_size=choice(2,4)", "dataset.image_size=range(64,129,32)",
                       "schedule.warmup_iters=tag(int,interval(0,100))", "backbone=choice(r18_fpn,r50_fpn)"])
    assert d["schedule.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["schedule.momentum"] == optuna.distributions.FloatDistribution(0.8, 0.99)
    assert d["schedule.batch_size"] == optuna.distributions.CategoricalDistribution([2, 4])
    assert d["dataset.image_size"] == optuna.distributions.IntDistribution(64, 128, step=32)
    assert d["schedule.warmup_iters"] == optuna.distributions.IntDistribution(0, 100)
    assert d["backbone"] == optuna.distributions.CategoricalDistribution(["r18_fpn", "r50_fpn"])


@pytest.mark.parametrize("spec", ["schedule.lr=0.1", "schedule.lr=interval(0.1"])
def test_a_search_spec_that_is_not_a_sweep_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="--search"):
        optuna_search.parse_space([spec])


@pytest.mark.slow
def test_three_tiny_trials_report_the_best_parameters(tmp_path, capsys):
    out = tmp_path / "study"
    rc = optuna_search.main(["--trials", "3", "--out", str(out), "--seed", "1",
                             "--search", "schedule.lr=tag(log,interval(1e-3,2e-2))",
                             "--search", "schedule.batch_size=choice(1,2)",
                             "optimized_metric=bbox/AR100", *BASE])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    assert [r["job"] for r in results] == [0, 1, 2]
    assert all(r["status"] == "completed" for r in results)
    for r in results:
        assert set(r["params"]) == {"schedule.lr", "schedule.batch_size"}
        assert 1e-3 <= r["params"]["schedule.lr"] <= 2e-2
        assert json.loads(Path(r["dir"], "metrics.json").read_text())["iteration"] == 2
    best = json.loads((out / "best.json").read_text())
    values = [r["metrics"]["bbox/AR100"] for r in results]
    assert best["value"] == pytest.approx(max(values))
    winners = [(r["job"], r["params"]) for r in results if r["metrics"]["bbox/AR100"] == max(values)]
    assert (best["trial"], best["params"]) in winners
    assert f"best trial {best['trial']}" in printed and "schedule.lr=" in best["command"]
    assert len((out / "summary.csv").read_text().splitlines()) == 4
