"""The lineage's runs: which stored run counts as the same config."""

from __future__ import annotations

from rcnn_cli.benchmark.lineage import runs, systems


def test_a_run_older_than_a_schema_key_is_reused_while_that_key_is_its_default():
    fpn, shapes = systems.select_systems("FPN")[0], systems.DATASETS["shapes"]
    cfg = systems.compose_system(fpn, shapes)
    saved = runs.config_dict(cfg)
    assert runs.same_config(saved, cfg) and not runs.same_config(None, cfg)
    del saved["dataset"]["vflip_prob"]  # written before vertical flips existed
    assert runs.same_config(saved, cfg)
    assert not runs.same_config(saved, systems.compose_system(
        fpn, shapes, extra=["dataset.vflip_prob=0.5"]))
    # every other key counts, run settings included (they change the wall time)
    assert not runs.same_config(saved, systems.compose_system(fpn, shapes, extra=["threads=1"]))
