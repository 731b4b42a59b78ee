"""Rebuild a sweep's summary.md / summary.csv (and print the table) from its job directories.

    python scripts/summarize_sweep.py multirun/2026-11-23/14-00-00 [--metric bbox/AP50] [--mode max]

Exit code 1 if any job failed or left no result.json (killed, still running).
"""

import argparse
import sys
from pathlib import Path

from rcnn_cli.engine.sweep import print_summary, summary_metric, write_summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default=None, help="sort key (default: the jobs' "
                        "optimized_metric)")
    parser.add_argument("--mode", choices=["max", "min"], default=None)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    rows = write_summary(args.sweep_dir, args.metric, args.mode)
    if not rows:
        print(f"error: no job directories in {args.sweep_dir}", file=sys.stderr)
        return 2
    print_summary(rows, summary_metric(rows, args.metric), f"sweep {args.sweep_dir}")
    print(f"wrote {args.sweep_dir / 'summary.md'} and {args.sweep_dir / 'summary.csv'}")
    return int(any(r["status"] != "completed" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
