"""rcnn-eval: chosen metric and backend, per-class outputs, one run directory per checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from rcnn_cli.config import validate
from rcnn_cli.errors import ConfigError
from tests.conftest import compose_cfg, run_cli
from tests.evaluation.untrained import make_export


def test_sweep_over_checkpoints_gives_one_run_dir_each(tmp_path):
    a = make_export(tmp_path / "a", seed=0)
    b = make_export(tmp_path / "b", seed=1)
    r = run_cli("rcnn-eval", "-m", f"ckpt={a},{b}", "dataset=shapes", "dataset.val_size=3",
                "dataset.image_size=64", "eval.metric=voc", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stdout + r.stderr
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "s" / job / "metrics.json").read_text())
        assert "voc/mAP" in metrics
        assert (tmp_path / "s" / job / "per_class.md").is_file()
        assert (tmp_path / "s" / job / "pr_curves" / "voc.png").is_file()
    assert "voc per class" in r.stdout


def test_unknown_backend_and_metric_fail_at_start_up():
    with pytest.raises(ConfigError, match="eval.backend=cocoapi"):
        validate(compose_cfg("eval", ["ckpt=x", "eval.backend=cocoapi"]))
    with pytest.raises(Exception, match="voc12"):
        compose_cfg("train", ["eval.metric=voc12"])


def test_an_onnx_file_runs_on_the_commands_thread_count(tmp_path, monkeypatch):
    """rcnn-eval / rcnn-predict set torch's threads from ``threads=``; ONNX Runtime takes the same."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from rcnn_cli.engine.evaluator import build_trained_model

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["boxes"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    model = build_trained_model({"onnx": path}, None, torch.device("cpu"))
    assert model.session.get_session_options().intra_op_num_threads == 1


def test_workers_default_to_the_runs_count_capped_at_this_machines_cpus(tmp_path, monkeypatch):
    """A checkpoint trained with 4 loader processes, evaluated on a 1-CPU machine: 1 process;
    ``workers=`` overrides without naming a dataset; a negative count fails before any work."""
    from rcnn_cli.engine import evaluator

    ckpt = make_export(tmp_path / "run", ["dataset.num_workers=4"])
    used = []
    monkeypatch.setattr(evaluator, "eval_loader",
                        lambda view, batch, workers: used.append(workers) or [])
    monkeypatch.setattr(evaluator, "predict", lambda *a, **k: [])
    monkeypatch.setattr(evaluator.os, "cpu_count", lambda: 1)
    base = [f"ckpt={ckpt}"]  # the checkpoint's own (tiny) dataset config
    for extra, expected in (([], 1), (["workers=0"], 0), (["workers=3"], 3)):
        evaluator.evaluate_checkpoint(compose_cfg("eval", base + extra), tmp_path / "e")
        assert used.pop() == expected
    monkeypatch.setattr(evaluator, "build_dataset", lambda *a, **k: pytest.fail("read data"))
    with pytest.raises(ConfigError, match=r"^workers=-1: must be >= 0"):
        evaluator.evaluate_checkpoint(compose_cfg("eval", base + ["workers=-1"]), tmp_path / "e")
