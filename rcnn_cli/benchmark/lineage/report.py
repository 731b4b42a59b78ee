"""The lineage's tables (one row per system, means over seeds; one row per run), the notes under
them and the plot of AP against test time per image."""

from __future__ import annotations

import io
import statistics

from rcnn_cli.benchmark.lineage.timing import PARTS

# The table's metric columns -> the evaluator's keys.
METRICS = {"AP": "bbox/AP", "AP50": "bbox/AP50", "AP75": "bbox/AP75", "APs": "bbox/APs",
           "mask AP": "segm/AP"}


UNKNOWN_CPU = "an unrecorded CPU"


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per system (in the records' order): the mean over its finished runs of every
    metric, the training time and each test-time part; ``seeds`` lists the runs averaged. A
    system none of whose runs finished keeps the reason (refused, or the first failure)."""
    rows = {}
    for r in records:
        rows.setdefault(r["label"], []).append(r)
    out = []
    for label, runs in rows.items():
        done = [r for r in runs if "error" not in r and "refused" not in r]
        row = {"label": label, "overrides": runs[0]["overrides"],
               "seeds": [r["seed"] for r in done]}
        if not done:
            row.update({k: runs[0][k] for k in ("refused", "error") if k in runs[0]})
            out.append(row)
            continue
        row["budget"] = done[0]["budget"]
        row.update({k: mean([r.get(k) for r in done]) for k in ("train_s", *METRICS)})
        timed = [r for r in done if "test" in r]
        if timed:
            row["test"] = {k: mean([r["test"][k] for r in timed])
                           for k in ("params", *(f"{p}_ms" for p in (*PARTS, "total")))}
            row["cpus"] = sorted({r.get("cpu", UNKNOWN_CPU) for r in timed})
        out.append(row)
    return out


def _ms(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _ap(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _params(value) -> str:
    return "" if value is None else f"{value / 1e6:.1f} M"


COLUMNS = ("system", "budget (it x img)", "params", "train", "proposals ms/img", "CNN ms/img",
           "region-wise ms/img", "other ms/img", "total ms/img", *METRICS)


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per system (means over seeds), test times in ms per image split into
    parts, the parameters of the trained model, its training wall time and the COCO metrics."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    for row in rows:
        reason = ("refused: " + row["refused"] if "refused" in row
                  else "failed: " + row["error"] if "error" in row else None)
        if reason is not None:
            lines.append(f"| {row['label']} | {reason.splitlines()[0][:160]} |"
                         + " |" * (len(COLUMNS) - 2))
            continue
        t = row.get("test", {})
        cells = [row["label"], row["budget"], _params(t.get("params")),
                 f"{row['train_s'] / 60:.1f} min",
                 *(_ms(t.get(f"{p}_ms")) for p in (*PARTS, "total")),
                 *(_ap(row[m]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_seed_table(records: list[dict]) -> str:
    """Markdown: every run (system x seed) with its metrics, training and total test time."""
    lines = ["| system | seed | train | total ms/img | " + " | ".join(METRICS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(METRICS)]
    for r in records:
        if "error" in r or "refused" in r:
            continue
        total = r.get("test", {}).get("total_ms")
        lines.append(f"| {r['label']} | {r['seed']} | {r['train_s'] / 60:.1f} min | "
                     f"{_ms(total)} | " + " | ".join(_ap(r[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def cache_notes(records: list[dict], before_s: float | None = None) -> list[str]:
    """Selective search over the training and val images, computed once into the cache before
    the first system on external proposals trains (not part of its training time); by the
    parent program (``before_s``) when runs train side by side, the runs then reading it."""
    spent = [(r["label"], r["seed"], r["proposal_cache_s"]) for r in records
             if r.get("proposal_cache_s") is not None]
    notes = [f"- selective search cache made before the runs side by side: {before_s:.1f} s "
             "(the runs' figures below are its reads)"] if before_s is not None else []
    return notes + (["- selective search cache (train + val, not in the train column): "
                     + ", ".join(f"{label} seed {seed} {s:.1f} s" for label, seed, s in spent)
                     ] if spent else [])


def failure_notes(records: list[dict]) -> list[str]:
    return [f"- {r['label']} seed {r['seed']}: {'refused' if 'refused' in r else 'failed'}: "
            f"{(r.get('refused') or r['error']).splitlines()[0]}"
            for r in records if "error" in r or "refused" in r]


def shared_cpu(r: dict) -> dict[str, str]:
    """What showed another job on the CPU during a run's training (the 15-minute load at its
    end above its threads by more than half a core) and its timing (other processes keeping
    more than half a core busy); records kept before these were recorded show nothing."""
    shared = {}
    train = r.get("train_load") or {}
    if train.get("load") is not None and train["load"] > train.get("threads", 1) + 0.5:
        shared["trained"] = f"load {train['load']:g} on {train.get('threads', 1)} thread(s)"
    others = (r.get("test") or {}).get("others")
    if others is not None and others > 0.5:
        shared["timed"] = f"{others:g} cores busy with other work"
    return shared


def machine_notes(records: list[dict]) -> list[str]:
    """The CPU each run was timed on, and how: together (every run interleaved, image by
    image) or alone right after its training (a run kept from another session); and the runs
    trained or timed while another job used the CPU (``shared_cpu``)."""
    where: dict[tuple[str, str], list[str]] = {}
    busy: dict[str, list[str]] = {"trained": [], "timed": []}
    for r in records:
        name = f"{r['label']} seed {r['seed']}"
        for what, seen in shared_cpu(r).items():
            busy[what].append(f"{name} ({seen})")
        if "test" in r:
            key = (r.get("cpu", UNKNOWN_CPU), r.get("timed", "together"))
            where.setdefault(key, []).append(name)
    how = {"together": "timed together, interleaved", "alone": "timed alone after training"}
    notes = [f"- {cpu}, {how[timed]}: {', '.join(runs)}" for (cpu, timed), runs in where.items()]
    return notes + [f"- {what} while another job used the CPU: {', '.join(runs)}"
                    for what, runs in busy.items() if runs]


def setup_notes(records: list[dict]) -> list[str]:
    """Each system's own overrides (on top of the dataset's settings in the header)."""
    seen = {}
    for r in records:
        seen.setdefault(r["label"], r["overrides"])
    return ["", "Systems (their own overrides on top of the dataset's settings; the budget "
            "column sets schedule.max_iter):", ""] + [
        f"- {label}: `{' '.join(o)}`" for label, o in seen.items()]


def plot_png(rows: list[dict], title: str) -> bytes:
    """AP against total test time per image, one labelled point per system, log time axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for row in rows:
        if row.get("AP") is None or "test" not in row:
            continue
        ax.scatter(row["test"]["total_ms"], row["AP"], s=30)
        ax.annotate(row["label"], (row["test"]["total_ms"], row["AP"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("test time per image (ms, log scale)")
    ax.set_ylabel("box AP (COCO, mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()

