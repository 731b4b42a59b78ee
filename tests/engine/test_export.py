"""safetensors export + JSON sidecar; every written file is safe to load; class mismatches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.export import load_export
from rcnn_cli.engine.train import train
from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import load_checkpoint
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg

FLAT = TINY + NO_OPTIMIZER_STATE + ["schedule.max_iter=2", "schedule.eval_period=2", "log.tensorboard=false",
               "model.box_head.score_thresh=0.0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(compose_cfg("train", FLAT), run_dir)
    return run_dir


def test_export_round_trips_the_final_weights_and_metadata(run):
    exported = load_export(run / "export")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(exported["model"]) == set(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert torch.equal(exported["model"][k], v), k
    meta = json.loads((run / "export" / "model.json").read_text())
    assert meta["classes"] == ckpt["classes"] == ["rectangle", "ellipse", "triangle"]
    assert meta["category_ids"] == ckpt["category_ids"] and meta["iteration"] == 2
    assert meta["config"] == ckpt["config"]


def test_rcnn_eval_of_the_export_equals_the_checkpoint(run, tmp_path):
    a = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={run / 'export'}"]), tmp_path / "a")
    b = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={run / 'checkpoints' / 'last.pt'}"]),
                            tmp_path / "b")
    assert a == b and a["iteration"] == 2


def test_a_tampered_export_is_refused(run, tmp_path):
    shutil.copytree(run / "export", tmp_path / "x")
    weights = tmp_path / "x" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors.*sha256 differs"):
        load_export(weights)


# Row 6: every file the tool writes loads with weights_only=True, or is safetensors / JSON.
def test_every_written_file_is_safe_to_load(run):
    from safetensors.torch import load_file

    files = [p for p in run.rglob("*") if p.is_file()]
    assert files
    for p in files:
        if p.suffix == ".pt":
            assert isinstance(torch.load(p, weights_only=True), dict), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".safetensors":
            assert load_file(p)
        elif p.suffix in (".md", ".log", ".yaml", ".csv"):
            p.read_text(encoding="utf-8")  # plain text, nothing to deserialise
        elif p.suffix in (".png", ".jpg"):
            from PIL import Image

            Image.open(p).verify()  # a decoder, not an unpickler
        else:
            pytest.fail(f"{p}: a file type nobody checked")


# Row 9: evaluating with a checkpoint whose classes differ (order or count).
@pytest.mark.parametrize("classes", [["ellipse", "rectangle", "triangle"],
                                     ["rectangle", "ellipse"]])
def test_eval_with_different_classes_lists_both(run, tmp_path, classes):
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["classes"] = classes
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"classes differ.*checkpoint \[.*\], dataset "
                                              r"\['rectangle', 'ellipse', 'triangle'\]"):
        evaluate_checkpoint(compose_cfg("eval", [f"ckpt={tmp_path / 'other.pt'}"]), tmp_path)
