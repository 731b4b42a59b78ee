"""Joint vs 4-step alternating training on the same total iteration budget.

Usage (one schedule per process, so the two can run side by side):
    python benchmarks/joint_vs_four_step.py --schedule joint --out OUT [override ...]
    python benchmarks/joint_vs_four_step.py --schedule alternating --out OUT [override ...]
    python benchmarks/joint_vs_four_step.py --table OUT/joint OUT/alternating
Each run writes OUT/<schedule>/ (a normal run directory) and OUT/<schedule>/bench.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_module

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.benchmark import FP32_PLAIN_STEP
from rcnn_cli.engine.train import train


def run(schedule: str, out: Path, overrides: list[str]) -> dict:
    with initialize_config_module(version_base="1.3", config_module="rcnn_cli.conf"):
        cfg = compose("train", overrides=[f"schedule={schedule}", *FP32_PLAIN_STEP, *overrides])
    run_dir = out / schedule
    t0 = time.perf_counter()
    metrics = train(cfg, run_dir)
    result = {"schedule": schedule, "overrides": overrides, "wall_s": time.perf_counter() - t0,
              "metrics": metrics}
    (run_dir / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def table(run_dirs: list[Path]) -> str:
    stages = ["init", "rpn1", "proposals1", "fast1", "rpn2", "proposals2", "fast2"]
    lines = ["| schedule | iterations | AP | AP50 | " + " | ".join(stages) + " | total wall |",
             "|---" * (len(stages) + 5) + "|"]
    for d in run_dirs:
        r = json.loads((d / "bench.json").read_text())
        m = r["metrics"]
        times = [f"{m[f'time/{s}']:.0f} s" if f"time/{s}" in m else "" for s in stages]
        lines.append(f"| {r['schedule']} | {m['iteration']} | {m['bbox/AP']:.4f} | "
                     f"{m['bbox/AP50']:.4f} | " + " | ".join(times) + f" | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", choices=["joint", "alternating"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", nargs="+", type=Path)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    result = run(args.schedule, args.out, args.overrides)
    print(json.dumps({k: v for k, v in result["metrics"].items() if v is not None}, indent=1))


if __name__ == "__main__":
    main()
