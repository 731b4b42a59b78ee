"""rcnn-export end to end: the files and model.json, the README snippet without rcnn-cli or
torch, rcnn-predict / rcnn-eval of the .onnx file, and the clear refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.deploy.export import export_deployable
from rcnn_cli.deploy.graph import build_deploy_graph, check_exportable
from rcnn_cli.deploy.onnx_runtime import load_onnx
from rcnn_cli.deploy.parity import within_tolerance
from rcnn_cli.engine.evaluator import evaluate_checkpoint, load_trained
from rcnn_cli.engine.predictor import predict_images
from rcnn_cli.errors import CheckpointError, ConfigError, ExportError
from rcnn_cli.evaluation.draw import write_image
from rcnn_cli.io import sha256
from tests.conftest import REPO, compose_cfg, run_cli
from tests.deploy.graphs import eager, train_config
from tests.evaluation.untrained import make_export

NO_FRAMEWORK = "import sys; banned = [m for m in sys.modules if m.split('.')[0] in " \
               "('rcnn_cli', 'torchvision', 'torch')]; assert not banned, banned"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """An export directory, its rcnn-export ONNX file (through the console script) and two
    shapes validation images as PNG files."""
    root = tmp_path_factory.mktemp("deploy")
    source = make_export(root / "export")
    r = run_cli("rcnn-export", f"ckpt={source}", "format=onnx", f"output={root / 'onnx'}",
                f"hydra.run.dir={root / 'run'}")
    assert r.returncode == 0, r.stdout + r.stderr
    raw = ShapesDataset("val", 2, 64, seed=7)
    for i in range(2):
        write_image(root / "images" / f"{i}.png",
                    torch.from_numpy(raw.raw(i)[0]).permute(2, 0, 1).contiguous())
    return {"export": source, "onnx": root / "onnx" / "model.onnx", "images": root / "images"}


def test_model_json_records_what_a_user_needs(exported):
    meta = json.loads(exported["onnx"].with_name("model.json").read_text())
    assert meta["classes"] == ["rectangle", "ellipse", "triangle"]
    assert meta["category_ids"] == [1, 2, 3]
    assert meta["source"]["sha256"] == sha256(exported["export"] / "model.safetensors")
    assert meta["sha256"] == sha256(exported["onnx"])
    assert "dynamo=False" in meta["exporter"] and meta["opset"] == 17
    assert meta["input"]["name"] == "image" and meta["input"]["value_range"] == [0.0, 1.0]
    assert meta["preprocessing"]["inside_graph"] and meta["score_thresh"] == 0.05
    assert set(meta["outputs"]) == {"boxes", "labels", "scores"}
    assert len(meta["parity"]) == 2 and all(within_tolerance(p) for p in meta["parity"])


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    deploy = text[text.index("\n## Deploy"):]
    return re.search(r"```python\n(.*?)```", deploy, re.S).group(1)


def test_readme_snippet_runs_with_onnxruntime_and_numpy_only(exported, tmp_path):
    """The README's snippet, in a fresh interpreter that never imports torch, torchvision or
    rcnn_cli, prints the eager model's detections."""
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet())
    picture = exported["images"] / "0.png"
    code = (f"import runpy, sys; sys.argv = ['snippet', {str(exported['onnx'])!r}, "
            f"{str(picture)!r}]; runpy.run_path({str(script)!r}); {NO_FRAMEWORK}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    ckpt, cfg = load_trained(str(exported["export"]))
    from PIL import Image

    rgb = np.asarray(Image.open(picture).convert("RGB"), dtype=np.float32) / 255
    ref = eager(build_deploy_graph(ckpt, cfg, "test"), torch.from_numpy(rgb).permute(2, 0, 1))
    assert len(lines) == len(ref["boxes"]) > 0
    for (name, score, *box), label, s, b in zip(lines, ref["labels"], ref["scores"],
                                                ref["boxes"]):
        assert name == ckpt["classes"][label - 1]
        assert abs(float(score) - s) <= 1e-4 and np.abs(np.float32(box) - b).max() <= 6e-3


def detections(cfg_overrides: list[str], out: Path) -> list[dict]:
    predict_images(compose_cfg("predict", cfg_overrides + [f"output={out}"]))
    return json.loads((out / "detections.json").read_text())


def test_rcnn_predict_of_the_onnx_file_gives_the_checkpoints_detections(exported, tmp_path):
    common = [f"input={exported['images']}", "speed.fold_bn=false",
              "speed.channels_last=false", "device=cpu"]
    a = detections([f"ckpt={exported['onnx']}", *common], tmp_path / "onnx")
    b = detections([f"ckpt={exported['export']}", *common], tmp_path / "eager")
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert abs(x["score"] - y["score"]) <= 1e-4
        assert np.abs(np.subtract(x["bbox"], y["bbox"])).max() <= 1e-3


def test_rcnn_eval_of_the_onnx_file_matches_the_checkpoint(exported, tmp_path):
    a = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={exported['onnx']}"]), tmp_path / "a")
    b = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={exported['export']}"]), tmp_path / "b")
    assert a["iteration"] == b["iteration"]
    assert abs(a["bbox/AP"] - b["bbox/AP"]) <= 1e-3 and abs(a["bbox/AP50"] - b["bbox/AP50"]) <= 1e-3
    with pytest.raises(ConfigError, match="ONNX file exposes detections only"):
        evaluate_checkpoint(compose_cfg("eval", [f"ckpt={exported['onnx']}",
                                                 "eval.proposals=true"]), tmp_path / "c")


def test_a_replaced_onnx_file_is_refused(exported, tmp_path):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(exported["onnx"].read_bytes() + b"\0")
    (tmp_path / "model.json").write_text(exported["onnx"].with_name("model.json").read_text())
    with pytest.raises(CheckpointError, match="model.onnx: sha256 differs"):
        load_onnx(copy)


def test_output_holding_another_export_is_refused(exported):
    cfg = compose_cfg("export", [f"ckpt={exported['export']}", f"output={exported['export']}"])
    with pytest.raises(ConfigError, match="already holds .*model.json of another export"):
        export_deployable(cfg)


def test_torchscript_file_runs_with_torch_and_torchvision_without_rcnn_cli(exported, tmp_path):
    cfg = compose_cfg("export", [f"ckpt={exported['export']}", "format=torchscript",
                                 f"output={tmp_path}"])
    result = export_deployable(cfg)
    assert all(within_tolerance(p) for p in result["parity"])
    code = ("import sys, torch, torchvision; m = torch.jit.load(sys.argv[1]); "
            "boxes, labels, scores = m(torch.rand(3, 70, 50)); assert boxes.shape[1] == 4; "
            "assert 'rcnn_cli' not in sys.modules; print(len(boxes))")
    r = subprocess.run([sys.executable, "-c", code, result["file"]], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and int(r.stdout) > 0, r.stderr


@pytest.mark.parametrize(("overrides", "model"), [
    (["experiment=rcnn_alexnet_shapes"], "rcnn"),
    (["experiment=sppnet_alexnet_shapes"], "sppnet"),
])
def test_region_models_are_refused_by_name(overrides, model):
    with pytest.raises(ConfigError, match=f"model={model} cannot be exported"):
        check_exportable(train_config(overrides), "ckpt.pt")


def test_ckpt_may_be_a_run_directory(tmp_path):
    from rcnn_cli.deploy.export import resolve_source

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resolve_source(str(run)) == run / "checkpoints" / "last.pt"
    (run / "export").mkdir()
    (run / "export" / "model.json").write_text("{}")
    assert resolve_source(str(run)) == run / "export"
    assert resolve_source(str(run / "export")) == run / "export"
    with pytest.raises(CheckpointError, match="without model.json"):
        resolve_source(str(tmp_path))


def test_a_file_that_differs_from_the_model_is_refused_and_removed(exported, tmp_path,
                                                                   monkeypatch):
    import rcnn_cli.deploy.export as export

    real = export.run_exported

    def shifted(*args):
        out = real(*args)
        out["boxes"] = out["boxes"] + 0.01  # 10x the box tolerance
        return out

    monkeypatch.setattr(export, "run_exported", shifted)
    with pytest.raises(ExportError, match="differs from the eager model"):
        export_deployable(compose_cfg("export", [f"ckpt={exported['export']}",
                                                 f"output={tmp_path / 'out'}"]))
    assert not list((tmp_path / "out").iterdir())


def test_an_operator_without_onnx_form_is_a_clear_error(tmp_path):
    """DetectoRS' deformable SAC convolutions (torchvision::deform_conv2d) have no ONNX form."""
    source = make_export(tmp_path / "export", [  # narrow heads: the trunk is what fails
        "model=detectors", "anchors=fpn_small", "backbone.sac=true",
        "backbone.sac_deformable=true", "backbone.rfp_steps=2",
        "model.box_head.representation_size=64", "model.mask_head.layers=[32,32]",
        "model.mask_head.dim_reduced=32"])
    cfg = compose_cfg("export", [f"ckpt={source}", f"output={tmp_path / 'out'}"])
    with pytest.raises(ExportError, match="model=detectors backbone=r18_fpn: an operator has "
                                          "no ONNX form .*deform_conv2d"):
        export_deployable(cfg)
