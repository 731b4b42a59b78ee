"""The stage graph: skip, continue, invalidate downstream, and the one key policy.

First on toy stages (files of text, no training), then on both programs at tiny sizes: 4-step
alternating training and R-CNN; ``run.status`` says which stages ran, continued or were reused.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rcnn_cli.engine.stages import alternating, graph, region
from rcnn_cli.engine.stages.graph import Run, Stage, run_graph
from rcnn_cli.engine.train import train
from rcnn_cli.engine.trainer import Trainer
from rcnn_cli.io import sha256
from tests.conftest import compose_cfg
from tests.engine.stages.conftest import ALT, overrides

# --- toy stages -----------------------------------------------------------------------


def writer(text: str, ran: list[str]):
    """A stage that appends its name to ``ran`` and writes ``out.txt``: ``text`` plus its
    inputs' contents; a ``checkpoints/`` folder of a half-done run survives when continued."""

    def run(run: Run, stage):
        ran.append(stage.stage)
        ups = "".join((run.stage(up).path("out.txt")).read_text() for up in inputs_of[stage.stage])
        stage.path("out.txt").write_text(text + ups)
        return ["out.txt"], {"continued": (stage.dir / "checkpoints").is_dir()}

    return run


inputs_of = {"a": [], "b": ["a"], "c": ["b"]}


def toy(ran: list[str], key_b: int = 0, text_b: str = "b") -> list[Stage]:
    return [Stage("a", writer("a", ran), {}, {"k": 0}),
            Stage("b", writer(text_b, ran), {"a": ["out.txt"]}, {"k": key_b}, continues=True),
            Stage("c", writer("c", ran), {"b": ["out.txt"]}, {"k": 0})]


def toy_run(run_dir) -> Run:
    return Run(OmegaConf.create({"seed": 0}), run_dir, events=None, device=torch.device("cpu"))


def test_a_finished_graph_is_reused_stage_by_stage(tmp_path):
    ran = []
    run_graph(toy_run(tmp_path), toy(ran), tmp_path)
    assert ran == ["a", "b", "c"]
    again = toy_run(tmp_path)
    run_graph(again, toy(ran), tmp_path)
    assert ran == ["a", "b", "c"] and again.status == {"a": "reused", "b": "reused", "c": "reused"}
    elsewhere = toy_run(tmp_path / "other")  # resume=<run>: the stages are linked, not re-run
    run_graph(elsewhere, toy(ran), tmp_path)
    assert set(elsewhere.status.values()) == {"reused"}
    assert (tmp_path / "other" / "stages" / "c" / "out.txt").read_text() == "cba"


def test_a_changed_key_reruns_that_stage_and_every_later_one(tmp_path):
    ran = []
    run_graph(toy_run(tmp_path), toy(ran), tmp_path)
    changed = toy_run(tmp_path)
    run_graph(changed, toy(ran, key_b=1, text_b="B"), tmp_path)
    assert ran[3:] == ["b", "c"]
    assert changed.status == {"a": "reused", "b": "ran", "c": "ran"}
    assert (tmp_path / "stages" / "c" / "out.txt").read_text() == "cBa"


def test_a_changed_output_file_reruns_its_stage(tmp_path):
    ran = []
    run_graph(toy_run(tmp_path), toy(ran), tmp_path)
    (tmp_path / "stages" / "c" / "out.txt").write_text("edited")
    again = toy_run(tmp_path)
    run_graph(again, toy(ran), tmp_path)
    assert again.status == {"a": "reused", "b": "reused", "c": "ran"}


def crashed(run_dir, name: str, inputs: dict[str, str]) -> None:
    """``name`` started with its current key and left a checkpoint folder, then crashed."""
    stage = graph.StageDir(run_dir, name)
    stage.start(graph.stage_key(name, {"k": 0}, inputs), inputs)
    (stage.dir / "checkpoints").mkdir()


def test_a_half_done_stage_continues_only_where_allowed(tmp_path):
    ran = []
    run_graph(toy_run(tmp_path), toy(ran)[:1], tmp_path)
    crashed(tmp_path, "b", {"a/out.txt": sha256(tmp_path / "stages" / "a" / "out.txt")})
    (tmp_path / "ba.txt").write_text("ba")  # what b writes: c's input once b has finished
    crashed(tmp_path, "c", {"b/out.txt": sha256(tmp_path / "ba.txt")})
    again = toy_run(tmp_path)
    run_graph(again, toy(ran), tmp_path)
    assert again.status == {"a": "reused", "b": "continued", "c": "ran"}  # c: continues=False
    manifests = {n: graph.StageDir(tmp_path, n).manifest()["metrics"] for n in ("b", "c")}
    assert manifests == {"b": {"continued": True}, "c": {"continued": False}}


# --- the key policy -------------------------------------------------------------------


RUN_ONLY_CHANGES = ["optimized_metric=bbox/AP50", "optimized_mode=min", "dist.backend=gloo",
                    "log.period=7", "eval.batch_size=3", "faults.max_nonfinite_steps=9",
                    "threads=1", "ckpt_trust=true", "dataset.num_workers=1", "device=cpu"]


@pytest.mark.parametrize("program", ["alternating", "region"])
def test_run_only_settings_leave_every_stage_key_unchanged(program, tmp_path):
    base = ALT if program == "alternating" else overrides(tmp_path)
    module = alternating if program == "alternating" else region
    keys = [s.key for s in module.stages(compose_cfg("train", base))]
    for change in RUN_ONLY_CHANGES:
        changed = [s.key for s in module.stages(compose_cfg("train", base + [change]))]
        assert changed == keys, change
    seeded = [s.key for s in module.stages(compose_cfg("train", base + ["seed=1"]))]
    assert seeded[0] != keys[0]  # the seed is not run-only


# --- both programs, end to end ----------------------------------------------------------


@pytest.fixture
def programs(full_run, rcnn_run):
    return {"alternating": (ALT, full_run[0], full_run[1]),
            "region": (overrides(rcnn_run[0]), rcnn_run[0] / "run", rcnn_run[1])}


@pytest.mark.parametrize("program", ["alternating", "region"])
def test_a_run_only_setting_reuses_every_stage(program, programs, graph_runs, tmp_path):
    base, done, metrics = programs[program]
    again = train(compose_cfg("train", base + [f"resume={done}", "optimized_metric=bbox/AP50"]),
                  tmp_path / "again")
    assert set(graph_runs[-1].status.values()) == {"reused"}
    assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"], abs=1e-9)


LAST_STAGE_CHANGE = {"alternating": ("fast2", "schedule.stages.fast2.lr=0.001"),
                     "region": ("box_reg", "model.box_reg.lam=100.0")}


@pytest.mark.parametrize("program", ["alternating", "region"])
def test_a_changed_stage_reruns_and_earlier_ones_are_reused(program, programs, graph_runs,
                                                             tmp_path):
    base, done, _ = programs[program]
    stage, change = LAST_STAGE_CHANGE[program]
    train(compose_cfg("train", base + [f"resume={done}", change]), tmp_path / "changed")
    status = graph_runs[-1].status
    assert status.pop(stage) == "ran" and set(status.values()) == {"reused"}


# the stage that crashes at an iteration with a checkpoint; the 4-step run reuses its first six
# stages and re-runs fast2 (a new lr), R-CNN trains afresh and must match the uninterrupted run
CRASH = {"alternating": ("fast2", 2, ["schedule.stages.fast2.lr=0.001"], True),
         "region": ("finetune", 2, [], False)}


@pytest.mark.parametrize("program", ["alternating", "region"])
def test_a_crashed_training_stage_continues_from_its_checkpoint(program, programs, graph_runs,
                                                                tmp_path, monkeypatch):
    base, done, metrics = programs[program]
    stage, at, change, from_done = CRASH[program]
    base = base + change
    real_after_step = Trainer.after_step

    def crash(self, window, progress):
        real_after_step(self, window, progress)  # checkpoint_period=2: saved at `at`
        if self.label == stage and self.iteration == at:
            raise RuntimeError("simulated crash")

    run = tmp_path / "crashed"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "after_step", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose_cfg("train", base + ([f"resume={done}"] if from_done else [])), run)
    assert graph.StageDir(run, stage).manifest()["status"] == "running"
    again = train(compose_cfg("train", base + [f"resume={run}"]), tmp_path / "resumed")
    status = graph_runs[-1].status
    names = list(status)
    assert status[stage] == "continued"
    assert all(status[n] == "reused" for n in names[:names.index(stage)])
    assert all(status[n] == "ran" for n in names[names.index(stage) + 1:])
    if not change:
        assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"], abs=1e-9)


def test_a_stage_graph_maps_model_weights_to_the_datasets_classes_by_name(tmp_path):
    """The 4-step program's initial detector loads ``model.weights`` as the joint trainer does:
    rows of the class-dependent layers follow ``model.weights_class_names``; a stage's saved
    weights then load without reading the file again."""
    from rcnn_cli.modeling.build import build_architecture

    classes = ["rectangle", "ellipse", "triangle"]
    torch.manual_seed(0)
    source = build_architecture(compose_cfg("train", ALT), 3).state_dict()
    torch.save(source, tmp_path / "detector.pth")
    cfg = compose_cfg("train", ALT + [f"model.weights={tmp_path / 'detector.pth'}",
                                      "model.weights_class_names=[triangle,ellipse,rectangle]"])
    run = Run(cfg=cfg, run_dir=tmp_path / "run", events=None, device=torch.device("cpu"),
              classes=classes, category_ids=[1, 2, 3])
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(run.detector().state_dict()[key], source[key][[0, 3, 2, 1]])

    stage = run.stage("init")
    stage.dir.mkdir(parents=True)
    torch.save(source, stage.path(graph.MODEL))
    (tmp_path / "detector.pth").unlink()
    assert torch.equal(run.detector("init").state_dict()[key], source[key])
