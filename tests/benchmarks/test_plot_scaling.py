"""benchmarks/plot_scaling.py draws the PNG and prints the tables from the records of a tiny
benchmarks/eval_speed.py run."""

from tests.benchmarks.programs import run_program


def test_plots_the_records_of_a_tag(tmp_path):
    records = str(tmp_path / "r.json")
    run_program("eval_speed", "--images", "8,16", "--dets", "3", "--skip-predict",
                "--json", records, "--tag", "tiny")
    out = run_program("plot_scaling", "--json", records, "--tag", "tiny",
                      "--out", str(tmp_path / "scaling.png"))
    assert (tmp_path / "scaling.png").stat().st_size > 0
    assert "COCO evaluation vs images" in out and "| 16 |" in out
