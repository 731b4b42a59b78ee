"""Launcher configs in conf/hydra/launcher compose with the plugins the extras install."""

from __future__ import annotations

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
