"""model=fast end to end: train on cached selective-search proposals, proposal recall at eval,
truncated SVD at eval, and the compressed checkpoint evaluated like any other."""

from __future__ import annotations

import json

import pytest
import torch

from rcnn_cli.config import typed_train_config
from rcnn_cli.data import proposal_cache as pc
from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.predictor import predict_images
from rcnn_cli.engine.train import train
from rcnn_cli.evaluation.draw import write_image
from rcnn_cli.modeling.build import build_detector
from rcnn_cli.modeling.svd import LowRankLinear
from tests.conftest import NO_OPTIMIZER_STATE, TINY, compose_cfg


def count_calls(patch: pytest.MonkeyPatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call; the list of calls."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    patch.setattr(module, name, counted)
    return calls


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    root = tmp_path_factory.mktemp("fast")
    overrides = TINY + NO_OPTIMIZER_STATE + [
        "model=fast", "proposals=selective_search", "sampler=fast_rcnn",
        f"proposals.cache_dir={root / 'cache'}", "proposals.workers=0",
        "model.box_head.score_thresh=0.0", "log.images_every=2"]
    with pytest.MonkeyPatch.context() as m:
        computed = count_calls(m, pc, "compute_selective_search")
        metrics = train(compose_cfg("train", overrides), root / "run")
    GlobalHydra.instance().clear()
    assert len(computed) == 2  # train and val split, once each
    return root, metrics


def test_fast_rcnn_trains_on_cached_selective_search(fast_run):
    root, metrics = fast_run
    caches = sorted(p.name for p in (root / "cache").glob("*.npz"))
    assert len(caches) == 2 and any("-train-" in c for c in caches)
    assert metrics["bbox/AP"] is not None


def test_eval_reuses_the_cache_and_reports_proposal_recall(fast_run):
    root, metrics = fast_run
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "cache").glob("*.npz")}
    cfg = compose_cfg("eval", [f"ckpt={root / 'run' / 'checkpoints' / 'last.pt'}",
                               "eval.proposals=true", "eval.proposal_counts=[10,100,2000]"])
    with pytest.MonkeyPatch.context() as m:
        computed = count_calls(m, pc, "compute_selective_search")
        out = evaluate_checkpoint(cfg, root / "eval")
    assert computed == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert out["bbox/AP"] == pytest.approx(metrics["bbox/AP"], abs=1e-6)
    ar = [out[f"proposals/AR@{n}"] for n in (10, 100, 2000)]
    assert 0 <= ar[0] <= ar[1] <= ar[2] <= 1 and ar[2] > 0.3
    assert out["proposals/R@2000/IoU0.5"] >= out["proposals/R@2000/IoU0.7"]
    saved = json.loads((root / "eval" / "metrics.json").read_text())
    assert saved["proposals/AR@100"] == pytest.approx(ar[1])
    assert (root / "eval" / "proposal_recall.png").stat().st_size > 1000
    assert list((root / "eval" / "tb").glob("events.out.tfevents.*"))


def test_svd_compression_reports_both_and_the_saved_checkpoint_evaluates(fast_run):
    root, _ = fast_run
    cfg = compose_cfg("eval", [f"ckpt={root / 'run' / 'checkpoints' / 'last.pt'}",
                               "compress.fc6=64", "compress.fc7=32", "compress.save=true"])
    out = evaluate_checkpoint(cfg, root / "svd")
    assert out["svd/params_after"] < out["svd/params_before"]
    for k in ("roi_head_ms", "total_ms", "AP50"):
        assert out[f"svd/{k}_before"] is not None and out[f"svd/{k}_after"] is not None
    path = root / "svd" / "checkpoints" / "compressed.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"]["model"]["box_head"]["fc6_rank"] == 64
    model = build_detector(typed_train_config(ckpt["config"]), 3)
    model.load_state_dict(ckpt["model"])
    assert isinstance(model.roi_heads.box_head.fc7, LowRankLinear)
    assert model.roi_heads.box_head.fc7.rank == 32
    again = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={path}"]), root / "svd_eval")
    assert again["bbox/AP50"] == pytest.approx(out["svd/AP50_after"], abs=1e-6)
    assert out["svd/AP50_before"] == pytest.approx(out["bbox/AP50"], abs=1e-6)
    # rcnn-predict loads it too; selective search runs per image on files outside the cache
    img = torch.from_numpy(ShapesDataset("val", 1, 64).raw(0)[0]).permute(2, 0, 1).contiguous()
    write_image(root / "in" / "photo.png", img)
    pred = predict_images(compose_cfg("predict", [f"ckpt={path}", f"input={root / 'in'}/*.png",
                                                  f"output={root / 'pred'}",
                                                  "score_thresh=0.0"]))
    assert pred["images"] == 1 and (root / "pred" / "photo.png").is_file()

