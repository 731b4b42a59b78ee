"""4-step alternating training: what each stage trains and freezes, the final network, resume.

One tiny uninterrupted run (session fixture ``full_run``) is compared with an interrupted + resumed one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import pytest
import torch

from rcnn_cli.data.proposal_cache import read_proposal_file
from rcnn_cli.engine.evaluator import evaluate_checkpoint
from rcnn_cli.engine.stages import alternating
from rcnn_cli.engine.stages.graph import train_graph
from rcnn_cli.engine.train import train
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.modeling.build import build_detector
from tests.conftest import BIN, NO_OPTIMIZER_STATE, TINY, compose_cfg, run_cli
from tests.engine.stages.conftest import ALT


def state(run_dir, stage):
    return torch.load(run_dir / "stages" / stage / "model.pt", weights_only=True)


def manifest(run_dir, stage):
    return json.loads((run_dir / "stages" / stage / "manifest.json").read_text())


def changed_keys(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def param_keys(prefix: str, sd: dict) -> set[str]:
    return {k for k in sd if k.startswith(prefix) and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))}


def test_rpn1_and_fast1_start_from_the_same_backbone_and_do_not_share(full_run):
    run_dir, _ = full_run
    rpn1, fast1 = manifest(run_dir, "rpn1")["metrics"], manifest(run_dir, "fast1")["metrics"]
    assert rpn1["start"]["backbone"] == fast1["start"]["backbone"]  # both from `init`
    assert fast1["start"]["backbone"] != rpn1["end"]["backbone"]  # not rpn1's trained one
    init, a, b = state(run_dir, "init"), state(run_dir, "rpn1"), state(run_dir, "fast1")
    convs = {k for k in init if k.startswith("backbone.body.") and "conv" in k}
    assert convs <= changed_keys(init, a) and convs <= changed_keys(init, b)
    assert convs <= changed_keys(a, b)  # every trunk conv ends up different


def test_rpn2_changes_only_rpn_parameters(full_run):
    run_dir, _ = full_run
    start, end = state(run_dir, "fast1"), state(run_dir, "rpn2")  # rpn2_head_init=random
    changed = changed_keys(start, end)
    assert changed == param_keys("rpn.", end)  # BN statistics of the backbone included


def fast2_start(run_dir) -> dict:
    """rpn2's weights with the predictor re-initialised (fast2_predictor_init=random)."""
    start, init = state(run_dir, "rpn2"), state(run_dir, "init")
    start.update({k: v for k, v in init.items() if k.startswith("roi_heads.box_predictor.")})
    return start


def test_fast2_changes_only_fast_rcnn_parameters(full_run):
    run_dir, _ = full_run
    start, fast2 = fast2_start(run_dir), state(run_dir, "fast2")
    assert changed_keys(start, fast2) == param_keys("roi_heads.", fast2)
    recorded = manifest(run_dir, "fast2")["metrics"]["start"]
    assert recorded == alternating.part_digests(start)


def test_final_network_shares_the_fast1_backbone_and_evaluates_like_any_run(full_run, tmp_path):
    run_dir, metrics = full_run
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    fast1, rpn2, fast2 = state(run_dir, "fast1"), state(run_dir, "rpn2"), state(run_dir, "fast2")
    backbone = [k for k in final["model"] if k.startswith("backbone.")]
    assert backbone and all(torch.equal(final["model"][k], fast1[k]) for k in backbone)
    assert all(torch.equal(final["model"][k], rpn2[k]) for k in final["model"]
               if k.startswith("rpn."))
    assert changed_keys(final["model"], fast2) == set()
    assert final["iteration"] == metrics["iteration"] == 10
    again = evaluate_checkpoint(compose_cfg("eval", [f"ckpt={run_dir / 'checkpoints' / 'last.pt'}"]),
                                tmp_path / "eval")
    assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"], abs=1e-9)
    from rcnn_cli.engine.predictor import predict_images

    summary = predict_images(compose_cfg("predict", [
        f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", "input=dataset", "limit=2",
        f"output={tmp_path / 'predict'}"]))
    assert summary["images"] == 2


def test_stage_artifacts_recall_and_scalars(full_run):
    run_dir, metrics = full_run
    for stage in alternating.STAGES:
        assert manifest(run_dir, stage)["status"] == "done"
    props = read_proposal_file(run_dir / "stages" / "proposals1" / "proposals_val.npz", [])
    assert props.image_ids == [1, 2, 3, 4]
    assert all(b.shape[1] == 4 and 0 < len(b) <= 300 for b in props.boxes)
    assert all((b >= 0).all() and (b <= 64).all() for b in props.boxes)
    recall = manifest(run_dir, "proposals2")["metrics"]
    for n in (100, 300, 1000):
        assert 0 <= recall[f"val/AR@{n}"] <= recall[f"val/R@{n}/IoU0.5"] <= 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"rpn1/loss_objectness", "fast1/loss_classifier", "rpn2/loss_rpn_box_reg",
            "fast2/loss_box_reg", "proposals1/val/AR@100", "bbox/AP50"} <= keys
    assert metrics["time/total"] > 0 and all(f"time/{s}" in metrics for s in alternating.STAGES)


def test_a_proposal_stage_feeds_fast_rcnn_on_precomputed_proposals(full_run, tmp_path):
    """One proposal format: the stage's folder (a file per split) is a ``proposals.file``."""
    run_dir, _ = full_run
    folder = run_dir / "stages" / "proposals2"
    cfg = compose_cfg("train", TINY + NO_OPTIMIZER_STATE + ["model=fast", "proposals=precomputed",
                                       f"proposals.file={folder}", "sampler=fast_rcnn",
                                       "log.images_every=0", "schedule.max_iter=2"])
    metrics = train(cfg, tmp_path / "fast")
    assert metrics["iteration"] == 2 and metrics["bbox/AP"] is not None
    boxes = read_proposal_file(folder / "proposals_val.npz", []).by_id()
    from rcnn_cli.data.build import build_dataset
    from rcnn_cli.data.proposal_cache import attach_proposals

    view = build_dataset(cfg.dataset, "val", train=False)
    attach_proposals(cfg, "val", view)  # the val split reads the val file, not the train one
    for image_id, props in view.proposals.items():  # filtered (min_box_size), never invented
        assert 0 < len(props) <= len(boxes[image_id])
        assert (props[:, None, :] == boxes[image_id][None]).all(-1).any(1).all()


def test_crash_in_fast1_then_resume_skips_done_stages_and_matches(full_run, tmp_path,
                                                                   monkeypatch, caplog):
    full_dir, full_metrics = full_run
    real_after_step = Trainer.after_step

    def crash_at_3(self, window, progress):
        real_after_step(self, window, progress)
        if self.label == "fast1" and self.iteration == 3:
            raise RuntimeError("simulated crash")  # no checkpoint: the last one is iteration 2

    with monkeypatch.context() as m:
        m.setattr(Trainer, "after_step", crash_at_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose_cfg("train", ALT), tmp_path / "crashed")
    assert manifest(tmp_path / "crashed", "fast1")["status"] == "running"

    def must_not_run(run, stage):
        raise AssertionError(f"stage {stage.stage} ran again")

    for stage in ("init", "rpn1", "proposals1"):
        monkeypatch.setitem(alternating.STAGE_FUNCTIONS, stage, must_not_run)
    caplog.set_level(logging.INFO, logger="rcnn_cli")
    resumed = train(compose_cfg("train", ALT + [f"resume={tmp_path / 'crashed'}"]),
                    tmp_path / "resumed")
    assert "stage rpn1: finished before" in caplog.text
    assert "at iteration 2" in caplog.text  # fast1 continued from its checkpoint
    a = torch.load(full_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert changed_keys(a, b) == set()
    assert resumed["bbox/AP"] == full_metrics["bbox/AP"]


def test_changed_stage_config_reruns_that_stage_and_later_ones(full_run, tmp_path, monkeypatch,
                                                               caplog):
    full_dir, _ = full_run
    ran = []
    for stage in alternating.STAGES:
        real = alternating.STAGE_FUNCTIONS[stage]

        def spy(run, st, real=real):
            ran.append(st.stage)
            return real(run, st)

        monkeypatch.setitem(alternating.STAGE_FUNCTIONS, stage, spy)
    caplog.set_level(logging.INFO, logger="rcnn_cli")
    train(compose_cfg("train", ALT + [f"resume={full_dir}", "schedule.stages.rpn2.lr=0.001"]),
          tmp_path / "changed")
    assert ran == ["rpn2", "proposals2", "fast2"]
    assert "stage rpn2: its config or inputs changed" in caplog.text
    assert changed_keys(state(full_dir, "fast1"), state(tmp_path / "changed", "fast1")) == set()


@pytest.mark.slow
def test_kill_9_during_fast1_then_cli_resume_in_place_matches(full_run, tmp_path):
    full_dir, _ = full_run
    run, marker = tmp_path / "run", tmp_path / "paused"
    # rpn1/rpn2/fast2 run 2 iterations: the first model_0000004.pt written is fast1's
    env = {**os.environ, "RCNN_CLI_TEST_PAUSE_WRITE": f"model_0000004.pt:{marker}"}
    cmd = [str(BIN / "rcnn-train"), *ALT, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "fast1 never wrote its iteration-4 checkpoint"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert manifest(run, "fast1")["status"] == "running"
    done = run_cli("rcnn-train", *ALT, f"resume={run}", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr + (run / "train.log").read_text()
    assert "stage proposals1: finished before" in out and "at iteration 2" in out
    a = torch.load(full_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert changed_keys(a, b) == set()


def test_stage_iterations_follow_the_paper_split_unless_set():
    cfg = compose_cfg("train", ["schedule=four_step", "schedule.max_iter=1000"])
    assert cfg.schedule.name == "alternating"
    iters = alternating.stage_iterations(cfg.schedule)
    assert iters == {"rpn1": 333, "fast1": 167, "rpn2": 333, "fast2": 167}
    cfg = compose_cfg("train", ["schedule=alternating", "schedule.stages.fast1.max_iter=50",
                                "schedule.stages.fast1.lr=0.5"])
    assert alternating.stage_iterations(cfg.schedule)["fast1"] == 50
    stage = alternating.stage_cfg(cfg, "fast1").schedule
    assert (stage.max_iter, stage.lr, list(stage.decay_steps)) == (50, 0.5, [0.75])


def test_misspelt_stage_key_fails_at_start(tmp_path):
    from rcnn_cli.errors import ConfigError

    with pytest.raises(Exception, match="rpn3"):
        cfg = compose_cfg("train", ALT + ["+schedule.stages.rpn3.max_iter=2"])
        train(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"schedule.stages.rpn2.lr=-1.0: must be > 0"):
        train(compose_cfg("train", ALT + ["schedule.stages.rpn2.lr=-1"]), tmp_path)
    with pytest.raises(ConfigError, match="schedule=alternating trains Faster R-CNN"):
        cfg = compose_cfg("train", ALT)
        cfg.model.name = "fast"
        train_graph(cfg, tmp_path, alternating.stages, alternating.finish)


def test_frozen_batchnorm_stays_in_eval_mode_in_train():
    cfg = compose_cfg("train", ALT)
    detector = build_detector(cfg, 3)
    alternating.freeze(detector.backbone)
    net = alternating.rpn_network(detector).train()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and net.rpn.training


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "r50_c4"])
def test_single_map_backbones_train_and_freeze_the_same_way(tmp_path, backbone):
    overrides = ALT + [f"backbone={backbone}", "anchors=paper_small",
                       *[f"schedule.stages.{s}.max_iter=1" for s in alternating.TRAINING]]
    metrics = train(compose_cfg("train", overrides), tmp_path)
    assert metrics["iteration"] == 4
    fast1, rpn2, fast2 = (state(tmp_path, s) for s in ("fast1", "rpn2", "fast2"))
    assert changed_keys(fast1, rpn2) == param_keys("rpn.", rpn2)
    changed = changed_keys(fast2_start(tmp_path), fast2)
    assert param_keys("roi_heads.box_predictor.", fast2) <= changed
    assert all(k.startswith("roi_heads.") for k in changed)  # C4: res5 is the RoI head's
