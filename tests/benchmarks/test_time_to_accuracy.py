"""benchmarks/time_to_accuracy.py: the budget read from a run, and a smoke run of both loops."""

import json

import pytest

from tests.benchmarks.programs import load_program, run_program


def test_budget_is_the_sum_of_step_windows_without_evaluations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"iteration": 20, "step_time": 0.5}, {"iteration": 40, "step_time": 0.25},
            {"iteration": 40, "bbox/AP": 0.3}, {"iteration": 50, "step_time": 1.0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_program("time_to_accuracy").training_seconds(path) == (20 * 0.5 + 20 * 0.25 + 10 * 1.0, 50)


def test_bare_schedule_fills_what_is_left_of_the_budget():
    program = load_program("time_to_accuracy")
    assert program.planned_steps(100.0, 10.0, 0.3) == 300
    assert program.planned_steps(5.0, 10.0, 0.3) == 1  # over budget already: one step


@pytest.mark.slow
def test_smoke_run_trains_both_loops_and_skips_a_finished_seed(tmp_path):
    out = run_program("time_to_accuracy", "--smoke", "--seeds", "0", "--out", str(tmp_path),
                      timeout=600)
    [rec] = json.loads((tmp_path / "records.json").read_text())
    assert rec["ours"]["iterations"] == 6 and rec["bare"]["iterations"] >= 1
    assert 0 <= rec["bare"]["AP50"] <= 1 and rec["ours"]["train_s"] > 0
    assert "| 0 |" in out and "bare AP50" in out
    again = run_program("time_to_accuracy", "--smoke", "--seeds", "0", "--out", str(tmp_path),
                        timeout=120)
    assert json.loads((tmp_path / "records.json").read_text()) == [rec]
    assert out.endswith(again) and "iter 2/6" not in again  # nothing trained again
