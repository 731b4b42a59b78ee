"""Launcher configs in conf/hydra/launcher compose with the plugins the extras install."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_class


def compose_hydra(overrides: list[str]):
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_local_parallel_is_joblib_with_explicit_n_jobs():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    launcher = compose_hydra(["hydra/launcher=local_parallel"]).hydra.launcher
    assert get_class(launcher._target_).__name__ == "JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.backend == "loky"
    launcher = compose_hydra(["hydra/launcher=local_parallel",
                              "hydra.launcher.n_jobs=4"]).hydra.launcher
    assert launcher.n_jobs == 4


def test_slurm_is_one_ddp_job_per_sweep_point():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                         "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=8"])
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.nodes == 2
    assert launcher.tasks_per_node == 8  # one process per GPU, follows gpus_per_node
    assert launcher.timeout_min == 240 and launcher.setup == []
    # the plugin's own schema checks the fields: a misspelt one fails at composition
    with pytest.raises(Exception, match="gpus_per_nod"):
        compose_hydra(["hydra/launcher=slurm", "hydra.launcher.gpus_per_nod=8"])


def test_plugin_configs_stay_reachable():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_hydra(["hydra/launcher=submitit_slurm"])
    assert cfg.hydra.launcher.tasks_per_node == 1


@pytest.mark.slow
def test_submitit_local_runs_each_sweep_point_as_one_ddp_job(tmp_path):
    """The submitit launcher path end to end on this machine: 2 tasks per job -> one 2-process
    gloo DDP run per sweep point (the ranks come from submitit's environment)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from tests.conftest import TINY, run_cli

    sweep_dir = tmp_path / "multirun"
    overrides = [o for o in TINY if not o.startswith("schedule.checkpoint_period")]
    r = run_cli("rcnn-train", "-m", "hydra/launcher=submitit_local",
                "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=15",
                *overrides, "schedule.checkpoint_period=100", "device=cpu", "threads=1",
                "log.tensorboard=false", "backbone.norm=frozen_bn", "seed=0,1",
                f"hydra.sweep.dir={sweep_dir}", timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for job in ("0", "1"):
        result = json.loads((sweep_dir / job / "result.json").read_text())
        assert result["status"] == "completed", result
        log = (sweep_dir / job / "train.log").read_text()
        assert "distributed: 2 processes, backend gloo" in log, log[-2000:]
    assert len((sweep_dir / "summary.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_local_parallel_sweep_runs_and_summarises(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from tests.conftest import TINY, run_cli

    sweep_dir = tmp_path / "multirun"
    overrides = [o for o in TINY if not o.startswith("schedule.checkpoint_period")]
    r = run_cli("rcnn-train", "-m", "hydra/launcher=local_parallel", *overrides,
                "schedule.checkpoint_period=100", "device=cpu", "threads=1",
                "log.tensorboard=false", "seed=0,1", f"hydra.sweep.dir={sweep_dir}",
                timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "result.json").read_text())["status"] == "completed"
    assert len((sweep_dir / "summary.csv").read_text().splitlines()) == 3


def test_slurm_jobs_get_an_advance_warning_that_rcnn_train_stops_on(tmp_path):
    """The sbatch script asks for submitit's preemption signal ``signal_delay_s`` before the
    limit; ``faults.StopSignal`` checkpoints on it and hands it on to submitit's requeue."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import _make_sbatch_string

    from rcnn_cli.engine.faults import advance_warning_signals

    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    script = _make_sbatch_string(command="rcnn-train", folder=tmp_path,
                                 signal_delay_s=launcher.signal_delay_s)
    signal_line = [ln for ln in script.splitlines() if ln.startswith("#SBATCH --signal=")]
    assert signal_line == [f"#SBATCH --signal=USR2@{launcher.signal_delay_s}"]
    assert {s.name for s in advance_warning_signals()} == {"SIGUSR1", "SIGUSR2"}
