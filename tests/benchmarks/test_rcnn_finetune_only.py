"""benchmarks/rcnn_finetune_only.py evaluates the ``finetune`` stage of a tiny R-CNN run (made
by rcnn-train, so its .hydra/config.yaml is there) through rcnn-eval's path."""

import json

import pytest

from tests.benchmarks.programs import run_program
from tests.conftest import TINY, run_cli


@pytest.mark.slow  # ~20 s of CPU: a whole 4-stage R-CNN run
def test_finetune_stage_alone_is_evaluated(tmp_path):
    run = tmp_path / "run"
    done = run_cli("rcnn-train", *TINY, "model=rcnn", "backbone=alexnet", "sampler=rcnn",
                   "proposals=selective_search", f"proposals.cache_dir={tmp_path / 'cache'}",
                   "proposals.workers=0", "model.warp_size=64", "model.context=5",
                   "model.box_head.representation_size=64", "model.svm.initial_negatives=50",
                   "log.images_every=0", "log.tensorboard=false", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    run_program("rcnn_finetune_only", str(run), str(tmp_path / "ft"))
    metrics = json.loads((tmp_path / "ft" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox/AP50"] <= 1.0
    assert (tmp_path / "ft" / "checkpoints" / "last.pt").is_file()
