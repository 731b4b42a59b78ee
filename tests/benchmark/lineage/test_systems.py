"""The lineage's systems: their budgets, the order of the overrides, a clear error for a system
this checkout lacks."""

from __future__ import annotations

import pytest

from rcnn_cli.benchmark.lineage import systems as lineage
from rcnn_cli.benchmark.lineage.claims import PAPER_ORDER
from rcnn_cli.errors import ConfigError

LABELS = [s.label for s in lineage.SYSTEMS]


def test_systems_budgets_and_the_order_of_overrides():
    assert len(set(LABELS)) == len(LABELS) and set(PAPER_ORDER) <= set(LABELS)
    assert {"Cascade Mask R-CNN", "HTC", "DetectoRS"} <= set(LABELS)
    assert all(set(s.iters) == set(lineage.DATASETS) for s in lineage.SYSTEMS)
    assert lineage.split_iterations(2000, (3, 9, 2, 2)) == [375, 1125, 250, 250]
    assert lineage.split_iterations(10, (3, 9, 2, 2)) == [2, 6, 1, 1]
    assert lineage.split_iterations(2, (3, 9, 2, 2)) == [1, 2, 1, 1]  # every stage runs
    assert [s.label for s in lineage.select_systems("fpn,R-CNN")] == ["FPN", "R-CNN"]
    with pytest.raises(ConfigError, match="unknown system 'Yolo'"):
        lineage.select_systems("Yolo")
    shapes, bccd = lineage.DATASETS["shapes"], lineage.DATASETS["bccd"]
    four_step = lineage.select_systems("Faster R-CNN 4-step")[0]
    cfg = lineage.compose_system(four_step, shapes, scale=0.5, seed=3)
    assert (cfg.schedule.max_iter, cfg.seed, cfg.dataset.min_size) == (1000, 3, 320)
    assert lineage.budget_text(cfg) == "1000 x 4 (188/562/125/125)"
    # the dataset's settings < the system's own < its budget < the user's overrides
    fpn = lineage.select_systems("FPN")[0]
    cfg = lineage.compose_system(fpn, shapes, extra=["schedule.max_iter=7"])
    assert (cfg.schedule.max_iter, cfg.dataset.min_size, cfg.dataset.train_size) == (7, 128, 1000)
    assert lineage.budget_text(lineage.compose_system(fpn, bccd, 0.5)) == "300 x 4"
    # BCCD's selective-search settings reach the rows on external proposals only
    fast, faster = lineage.select_systems("Fast R-CNN (SS),Faster R-CNN")
    on_ss = lineage.compose_system(fast, bccd)
    assert (on_ss.proposals.scale, on_ss.proposals.max_proposals) == (0.5, 500)
    assert lineage.compose_system(faster, bccd).proposals.name == "rpn"
    # DetectoRS as the HTC ladder trains it: deformable SAC, two RFP steps
    detectors = lineage.compose_system(lineage.select_systems("DetectoRS")[0], shapes)
    assert (detectors.backbone.sac, detectors.backbone.sac_deformable,
            detectors.backbone.rfp_steps) == (True, True, 2)


def test_a_system_this_checkout_lacks_is_a_clear_error_naming_it():
    tardis = lineage.System("Time machine", ("model=tardis",), {"shapes": 1, "bccd": 1})
    with pytest.raises(ConfigError, match="system 'Time machine' cannot be set up"):
        lineage.compose_system(tardis, lineage.DATASETS["shapes"])
