"""Sweeps (``rcnn-train -m a=1,2 b=x,y``): one ``result.json`` per job, one summary per sweep.

Each job directory gets ``result.json`` (overrides, parameters, status, metrics or the error)
and, with TensorBoard on, an HParams record, so ``tensorboard --logdir <sweep>`` compares the
runs in one view. A failing job is recorded and the sweep goes on; at the end ``summary.md`` and
``summary.csv`` (sorted by ``optimized_metric``) and a rich table list every job, and the exit
code is 1 if any job failed. ``scripts/summarize_sweep.py DIR`` rebuilds the summary from the
job files (e.g. after jobs on a cluster were killed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from rcnn_cli.console import table_console
from rcnn_cli.io import atomic_write_json, atomic_write_text

log = logging.getLogger("rcnn_cli")

RESULT = "result.json"
SHOWN_METRICS = ("bbox/AP", "bbox/AP50", "iteration")


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_params(cfg, overrides: list[str]) -> dict:
    """The swept keys with their composed (typed) values; group choices as given."""
    params = {}
    for item in overrides:
        key, _, raw = item.lstrip("+~").partition("=")
        value = OmegaConf.select(cfg, key, default=raw, throw_on_missing=False)
        if OmegaConf.is_config(value):  # a config group choice such as backbone=r50_fpn
            value = raw
        value = getattr(value, "value", value)
        params[key] = value if isinstance(value, (bool, int, float, str)) or value is None \
            else str(value)
    return params


HEADLINE = ("bbox/AP", "voc/mAP", "voc07/mAP")  # as rcnn_cli.evaluation.build.headline


def resolve_metric(metrics: dict, name: str | None) -> str:
    """``optimized_metric``, or for null the headline AP key these metrics have."""
    if name:
        return name
    return next((k for k in HEADLINE if k in metrics), HEADLINE[0])


def metric_value(metrics: dict, name: str | None) -> float:
    from rcnn_cli.errors import ConfigError

    name = resolve_metric(metrics, name)
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name} is not a final metric; available: "
                          f"{', '.join(sorted(metrics))}")
    value = metrics[name]
    return float("nan") if value is None else float(value)


@contextlib.contextmanager
def record_job(cfg):
    """Around a sweep job: write its ``result.json``; a failure is recorded, not raised.

    Yields a dict for the job's metrics. Outside a multirun it does nothing.
    """
    if not in_multirun():
        yield {}
        return
    from hydra.core.hydra_config import HydraConfig

    from rcnn_cli.engine.distributed import detect_env

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    result = {"job": hc.job.num, "dir": str(job_dir), "overrides": overrides,
              "params": job_params(cfg, overrides), "optimized_metric": cfg.optimized_metric,
              "optimized_mode": getattr(cfg.optimized_mode, "value", cfg.optimized_mode)}
    out: dict = {}
    try:
        yield out
    except Exception as e:
        log.error("job %s failed: %s: %s\n%s", hc.job.num, type(e).__name__, e,
                  traceback.format_exc())
        result.update(status="failed", metrics={}, error=f"{type(e).__name__}: {e}")
    else:
        metrics = out.get("metrics", {})
        result.update(status="completed", metrics=metrics, error=None,
                      optimized_metric=resolve_metric(metrics, cfg.optimized_metric))
    if detect_env().is_main:
        write_result(job_dir, result, cfg.log.tensorboard)


def write_result(job_dir: Path, result: dict, tensorboard: bool) -> None:
    """``result.json`` of one job (and its TensorBoard HParams record if it completed)."""
    atomic_write_json(Path(job_dir) / RESULT, _json_safe(result))
    if result["status"] == "completed" and tensorboard:
        write_hparams(Path(job_dir) / "tb", result)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_hparams(tb_dir: Path, result: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    metrics = {k: float(v) for k, v in result["metrics"].items()
               if k in (result["optimized_metric"], *SHOWN_METRICS) and v is not None}
    params = {k: ("null" if v is None else v) for k, v in result["params"].items()}
    with SummaryWriter(log_dir=str(tb_dir)) as writer:
        writer.add_hparams(params, metrics, run_name="hparams")


# --- summary -----------------------------------------------------------------------------


def load_results(sweep_dir: Path) -> list[dict]:
    """Every job directory's result; a job that left none (killed) is listed as missing."""
    rows = []
    for job_dir in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir()),
                          key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                         else 0, p.name)):
        path = job_dir / RESULT
        if path.is_file():
            rows.append(json.loads(path.read_text()))
        elif (job_dir / ".hydra").is_dir():
            overrides = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" /
                                                              "overrides.yaml"))
            rows.append({"job": job_dir.name, "dir": str(job_dir), "overrides": overrides,
                         "params": {k: v for k, _, v in (o.partition("=") for o in overrides)},
                         "status": "missing", "metrics": {},
                         "error": f"no {RESULT}: the job was killed or is still running"})
    return rows


def sort_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Completed jobs best first by ``metric``; then jobs without it; failed ones last."""
    def key(row):
        v = row["metrics"].get(metric)
        ok = row["status"] == "completed"
        has = ok and v is not None and math.isfinite(v)
        return (not ok, not has, (-v if mode == "max" else v) if has else 0.0)

    return sorted(rows, key=key)


def columns(rows: list[dict], metric: str) -> tuple[list[str], list[str]]:
    """The parameters that differ between jobs (a job records all its overrides, including
    the ones every job shares), then the metrics."""
    params: list[str] = []
    for row in rows:
        params += [k for k in row["params"] if k not in params]
    if len(rows) > 1:
        params = [k for k in params
                  if len({json.dumps(r["params"].get(k), default=str) for r in rows}) > 1]
    metrics = list(dict.fromkeys([metric, *SHOWN_METRICS]))
    return params, metrics


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def table_rows(rows: list[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    params, metrics = columns(rows, metric)
    header = ["job", "status", *params, *metrics, "error"]
    body = [[_fmt(r["job"]), r["status"], *[_fmt(r["params"].get(p)) for p in params],
             *[_fmt(r["metrics"].get(m)) for m in metrics], r.get("error") or ""] for r in rows]
    return header, body


def summary_metric(rows: list[dict], metric: str | None) -> str:
    """The metric to sort by: given, else the one the completed jobs optimised."""
    return metric or next((r["optimized_metric"] for r in rows if r.get("optimized_metric")),
                          HEADLINE[0])


def write_summary(sweep_dir: Path, metric: str | None = None,
                  mode: str | None = None) -> list[dict]:
    """Write ``summary.md`` and ``summary.csv`` in ``sweep_dir``; returns the sorted rows."""
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    metric = summary_metric(rows, metric)
    mode = mode or next((r["optimized_mode"] for r in rows if r.get("optimized_mode")), "max")
    rows = sort_rows(rows, metric, mode)
    header, body = table_rows(rows, metric)
    failed = [r for r in rows if r["status"] != "completed"]
    md = [f"# Sweep {sweep_dir}", "",
          f"{len(rows) - len(failed)} of {len(rows)} jobs completed; sorted by {metric} "
          f"({mode}).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in line) + " |"
           for line in body]
    if failed:
        md += ["", "## Failed jobs", ""]
        md += [f"- job {r['job']} ({' '.join(r['overrides'])}): {r.get('error')}" for r in failed]
    atomic_write_text(sweep_dir / "summary.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    return rows


def print_summary(rows: list[dict], metric: str, title: str,
                  console: Console | None = None) -> None:
    header, body = table_rows(rows, metric)
    table = Table(title=title)
    for name in header:
        table.add_column(name, overflow="fold")
    for line, row in zip(body, rows):
        table.add_row(*line, style=None if row["status"] == "completed" else "red")
    console = console or table_console()
    console.print(table)
    for row in rows:
        if row["status"] != "completed":
            console.print(f"job {row['job']} {row['status']}: {row.get('error')}",
                          soft_wrap=True, markup=False, highlight=False)


class SweepSummary(Callback):
    """Hydra callback: after a sweep, the summary files, the table and the exit code."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        mode = getattr(config.optimized_mode, "value", config.optimized_mode)
        rows = write_summary(sweep_dir, config.optimized_metric, mode)
        print_summary(rows, summary_metric(rows, config.optimized_metric), f"sweep {sweep_dir}")
        failed = [r for r in rows if r["status"] != "completed"]
        log.info("sweep summary: %s", sweep_dir / "summary.md")
        if failed:
            log.error("%d of %d sweep jobs failed: %s", len(failed), len(rows),
                      ", ".join(str(r["job"]) for r in failed))
            raise SystemExit(1)
