"""benchmarks/joint_vs_four_step.py: a two-iteration joint run writes bench.json, and
``--table`` prints its row."""

import json

from tests.benchmarks.programs import run_program
from tests.conftest import NO_OPTIMIZER_STATE, TINY


def test_joint_run_and_table(tmp_path):
    run_program("joint_vs_four_step", "--schedule", "joint", "--out", str(tmp_path), *TINY,
                *NO_OPTIMIZER_STATE, "schedule.max_iter=2")
    assert json.loads((tmp_path / "joint" / "bench.json").read_text())["schedule"] == "joint"
    out = run_program("joint_vs_four_step", "--table", str(tmp_path / "joint"))
    assert "| joint | 2 |" in out
