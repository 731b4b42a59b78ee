"""benchmarks/roi_align_kernel.py: one repetition prints a row per kernel (not timed here)."""

from tests.benchmarks.programs import run_program


def test_prints_a_row_per_kernel():
    out = run_program("roi_align_kernel", "--threads", "1", "--reps", "1")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| torchvision", "| rcnn_cli.ops (vectorised)"]
