"""benchmarks/gpu_check.py's dry run: the same program on the CPU at tiny sizes (what CI can
run); on a GPU machine it is one command."""

import json

from tests.benchmarks.programs import run_program

MODELS = ("r18_fpn (default)", "r50_fpn")


def test_dry_run_measures_every_section_and_writes_one_record(tmp_path):
    out = tmp_path / "gpu_check.json"
    printed = run_program("gpu_check", "--dry-run", "--out", str(out), timeout=600)
    [record] = json.loads(out.read_text())
    rows = record["rows"]
    train = [r for r in rows if r["section"] == "train"]
    assert {(r["model"], r["precision"]) for r in train} == {
        (m, p) for m in MODELS for p in ("fp32", "bf16")}
    assert all(r["ours_step_s"] > 0 and r["bare_step_s"] > 0 for r in train)
    infer = [r for r in rows if r["section"] == "infer"]
    assert {(r["model"], r["speed_switches"]) for r in infer} == {
        (m, s) for m in MODELS for s in ("on", "off")}
    [ddp] = [r for r in rows if r["section"] == "ddp"]
    assert ddp["returncode"] == 0, ddp.get("stderr_tail")
    assert ddp["metrics_written"] and ddp["backend"] == "gloo"
    assert record["dry_run"] and record["amp_auto"] in ("bf16", "none")
    assert "| torchrun x1 | gloo |" in printed and "schedule.amp=auto on this device" in printed
