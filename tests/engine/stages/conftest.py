"""The two programs' tiny runs, shared by this folder's modules (each trains once per session),
and ``graph_runs``: the ``Run`` of every ``run_graph`` call, whose ``status`` says which stages
ran, continued or were reused."""

from __future__ import annotations

import pytest

from rcnn_cli.engine.stages import graph
from rcnn_cli.engine.train import train
from tests.conftest import SESSION_TEMP, TINY, compose_cfg

STAGE_ITERS = ["schedule.stages.rpn1.max_iter=2", "schedule.stages.fast1.max_iter=4",
               "schedule.stages.rpn2.max_iter=2", "schedule.stages.fast2.max_iter=2"]
ALT = TINY + ["schedule=alternating", "log.tensorboard=false",
              "schedule.proposals.post_nms_top_n=300", *STAGE_ITERS]
STAGES = ("finetune", "features", "svms", "box_reg")  # R-CNN with SVMs


def overrides(root, model: str = "rcnn", *extra: str) -> list[str]:
    """A tiny R-CNN / SPPNet run (selective-search proposals cached under ``root``)."""
    return TINY + [f"model={model}", "backbone=alexnet", "proposals=selective_search",
                   f"sampler={model}", f"proposals.cache_dir={root / 'cache'}",
                   "proposals.workers=0", "model.warp_size=64", "model.context=5",
                   "model.box_head.representation_size=64", "model.svm.initial_negatives=50",
                   "log.images_every=0", *extra]


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """An uninterrupted tiny 4-step run: (run dir, final metrics)."""
    run_dir = tmp_path_factory.mktemp(SESSION_TEMP + "alt") / "full"
    metrics = train(compose_cfg("train", ALT), run_dir)
    return run_dir, metrics


@pytest.fixture(scope="session")
def rcnn_run(tmp_path_factory):
    """A tiny R-CNN run: (root holding ``run`` and the proposal cache, final metrics)."""
    root = tmp_path_factory.mktemp(SESSION_TEMP + "rcnn")
    metrics = train(compose_cfg("train", overrides(root)), root / "run")
    return root, metrics


@pytest.fixture
def graph_runs(monkeypatch) -> list[graph.Run]:
    runs = []
    real = graph.run_graph

    def recording(run, stages, source):
        runs.append(run)
        return real(run, stages, source)

    monkeypatch.setattr(graph, "run_graph", recording)
    return runs
