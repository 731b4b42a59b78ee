"""benchmarks/bn_statistics.py on a tiny trained checkpoint: the three evaluations, the gap
table, the record; and a clear refusal of what is not a training checkpoint."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from rcnn_cli.errors import ConfigError
from tests.benchmarks.programs import load_program, run_program
from tests.conftest import NO_OPTIMIZER_STATE, TINY, run_cli


def test_a_checkpoint_is_evaluated_three_ways_with_its_gap(tmp_path):
    done = run_cli("rcnn-train", *TINY, *NO_OPTIMIZER_STATE, "backbone.norm=bn",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    out = tmp_path / "bn"
    printed = run_program("bn_statistics", str(ckpt), "--out", str(out), "--batch", "2",
                          "--precise-batches", "1", "--threads", "1")
    [record] = json.loads((out / "bn_statistics.json").read_text())
    assert {m: record[m]["box_AP"] is not None for m in ("running", "batch", "precise")} == {
        "running": True, "batch": True, "precise": True}
    assert record["precise"]["precise_batches"] == 1 and record["running"]["mask_AP"] is None
    top = record["running"]["layers"][0]
    assert top["layer"].startswith("body.") and top["mean_shift"] >= 0
    assert f"| {ckpt} | " in printed and "(1 batches) | " in printed
    assert all((out / "ckpt0" / mode / "metrics.json").is_file()
               for mode in ("running", "batch", "precise"))


def test_what_is_not_a_training_checkpoint_or_detector_is_refused(tmp_path, capsys):
    program = load_program("bn_statistics")
    assert program.main([str(tmp_path / "model.onnx"), "--out", str(tmp_path)]) == 1
    assert "model.onnx: not a training checkpoint file" in capsys.readouterr().err
    region_model = OmegaConf.create({"model": {"name": "rcnn"}})
    with pytest.raises(ConfigError, match="model=rcnn: the batch-norm diagnostics need"):
        program.adjuster("running", 2, 1, {})(torch.nn.Linear(2, 2), region_model)
