"""The lineage's runs side by side: each child's command line, the failures and the stops."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rcnn_cli.benchmark.lineage import jobs
from rcnn_cli.engine import faults


def lineage_args(tmp_path, **changes):
    values = {"out": tmp_path / "out", "dataset": "shapes", "budget_scale": 0.5,
              "time_images": 8, "keep": tmp_path / "keep", "fresh": False,
              "backbone_weights": ["alexnet=a.pt", "r18_fpn=r.pt"],
              "overrides": ["schedule.lr=0.02"]}
    return argparse.Namespace(**{**values, **changes})


def planned(label: str, seed: int, backbone: str, weights: str | None,
            refusal: str | None = None):
    cfg = SimpleNamespace(backbone=SimpleNamespace(name=backbone, weights=weights))
    return SimpleNamespace(label=label), seed, cfg, refusal


def test_each_child_gets_one_run_its_own_trunk_and_the_shared_settings(tmp_path):
    runs = [planned("SPPNet", 0, "alexnet", "a.pt"),
            planned("HTC", 1, "r18_fpn", "r.pt", "no masks"),
            planned("Cascade R-CNN", 1, "r18_fpn", "r.pt"), planned("FPN", 0, "r50_fpn", None)]
    args = lineage_args(tmp_path, fresh=True)
    children = jobs.plan_children(Path("lineage.py"), args, runs)
    assert [c.key for c in children] == [("SPPNet", 0), ("Cascade R-CNN", 1), ("FPN", 0)]
    assert children[1].argv == [sys.executable, "lineage.py", "--out", str(args.out),
                                "--dataset", "shapes", "--systems", "Cascade R-CNN", "--seeds",
                                "1", "--budget-scale", "0.5", "--time-images", "8", "--keep",
                                str(tmp_path / "keep"), "--child", "--backbone-weights", "r18_fpn=r.pt",
                                "--fresh", "schedule.lr=0.02"]
    assert children[0].argv[children[0].argv.index("--backbone-weights") + 1] == "alexnet=a.pt"
    assert "--backbone-weights" not in children[2].argv  # no stand-in for that trunk
    assert children[1].log_path == args.out / "logs" / "cascade_r_cnn_seed1.log"


def script_child(tmp_path, name: str, body: str) -> jobs.Child:
    """A child whose program is ``body`` (Python), logging into tmp_path/logs/NAME.log."""
    return jobs.Child((name, 0), [sys.executable, "-c", textwrap.dedent(body)],
                      tmp_path / "logs" / f"{name}.log")


def test_children_run_jobs_at_a_time_and_failures_are_reported(tmp_path):
    stamp = """
        import os, sys, time
        print("start", time.time(), os.environ["OMP_NUM_THREADS"], flush=True)
        time.sleep(0.3)
        print("end", time.time())
        sys.exit({code})
    """
    children = [script_child(tmp_path, name, stamp.format(code=code))
                for name, code in (("a", 0), ("b", 3), ("c", 0))]
    failed = jobs.run_side_by_side(children, jobs=2)
    assert failed == {("b", 0): f"child exited with 3; see {tmp_path / 'logs' / 'b.log'}"}
    spans = {}
    for child in children:
        _, start, threads, _, end = child.log_path.read_text().split()
        spans[child.key[0]] = (float(start), float(end))
        assert threads == "1"  # one thread each
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]  # side by side
    assert spans["c"][0] >= min(spans["a"][1], spans["b"][1])  # only once one had ended


def test_a_stop_signal_is_handed_to_the_children_and_nothing_more_starts(tmp_path):
    stopping = """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
        os.kill(os.getppid(), signal.SIGTERM)  # the cluster stops the parent
        time.sleep(30)
    """
    children = [script_child(tmp_path, "stopping", stopping),
                script_child(tmp_path, "later", "print('ran')")]
    start = time.monotonic()
    with pytest.raises(faults.Interrupted, match="SIGTERM"):
        jobs.run_side_by_side(children, jobs=1)
    assert time.monotonic() - start < 20  # the child got the SIGTERM, it did not sleep on
    assert not children[1].log_path.exists()


def test_a_child_stopped_on_its_own_stops_the_table_after_the_others(tmp_path):
    children = [script_child(tmp_path, "stopped", "import sys; sys.exit(75)"),
                script_child(tmp_path, "running", "import time; time.sleep(0.3)"),
                script_child(tmp_path, "later", "print('ran')")]
    with pytest.raises(faults.Interrupted, match="stopped"):
        jobs.run_side_by_side(children, jobs=2)
    assert children[1].log_path.exists() and not children[2].log_path.exists()
