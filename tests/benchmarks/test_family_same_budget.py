"""benchmarks/family_same_budget.py: a two-iteration Faster R-CNN writes its result, and
``--report`` prints the table from it."""

import json

from tests.benchmarks.programs import run_program
from tests.conftest import NO_OPTIMIZER_STATE

TINY = ["dataset.train_size=8", "dataset.val_size=4", "dataset.image_size=64",
        "schedule.batch_size=2", "schedule.warmup_iters=1", "schedule.checkpoint_period=2",
        "schedule.eval_period=0", "dataset.num_workers=0", *NO_OPTIMIZER_STATE]


def test_one_model_then_the_report(tmp_path):
    run_program("family_same_budget", "--out", str(tmp_path), "--max-iter", "2", "--models",
                "faster", *TINY)
    result = json.loads((tmp_path / "faster" / "bench_result.json").read_text())
    assert result["model"] == "faster" and "bbox/AP50" in result
    out = run_program("family_same_budget", "--out", str(tmp_path), "--report")
    assert "| faster | 2 |" in out
