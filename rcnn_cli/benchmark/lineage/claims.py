"""The papers' qualitative claims, checked on the lineage's results and stated as holding or
not, with the numbers: each step from R-CNN to Faster R-CNN is faster at test time (SPPNet §1,
Fast R-CNN §1, Faster R-CNN §4) and at least as accurate; 4-step and joint training agree
(Faster R-CNN §3.2); FPN helps small objects; Cascade helps at high IoU; HTC's masks beat Mask
and Cascade Mask R-CNN's; and every row learned."""

from __future__ import annotations

from rcnn_cli.benchmark.lineage.report import summarize

# The papers' test-time order, slowest first (R-CNN -> SPPNet -> Fast -> Faster R-CNN).
PAPER_ORDER = ["R-CNN", "SPPNet", "Fast R-CNN (SS)", "Faster R-CNN"]


def verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def missing(rows: dict[str, dict], labels: list[str], key: str) -> list[str]:
    return [label for label in labels if rows.get(label, {}).get(key) is None]


def unchecked(rows: dict[str, dict], labels: list[str], key: str, claim: str) -> str | None:
    """The claim's line when a row it needs has no ``key``; None when it can be checked."""
    absent = missing(rows, labels, key)
    return f"- {claim}: not checkable here (no {key} for {', '.join(absent)})" if absent else None


def at_least(rows: dict[str, dict], better: str, than: str, key: str, what: str) -> str:
    """``better``'s mean ``key`` >= ``than``'s (a paper's "each step is more accurate")."""
    claim = f"{better} >= {than} in {what}"
    if absent := unchecked(rows, [better, than], key, claim):
        return absent
    a, b = rows[better][key], rows[than][key]
    return f"- {claim}: {verdict(a >= b)} ({a:.3f} vs {b:.3f})"


def within(rows: dict[str, dict], a: str, b: str, key: str, tolerance: float) -> str:
    """|a - b| <= tolerance (Faster R-CNN §3.2: 4-step and joint training reach the same)."""
    claim = f"{a} within {tolerance} {key} of {b}"
    if absent := unchecked(rows, [a, b], key, claim):
        return absent
    x, y = rows[a][key], rows[b][key]
    gap = abs(x - y)
    return f"- {claim}: {verdict(gap <= tolerance)} ({x:.3f} vs {y:.3f}, gap {gap:.3f})"


def time_falls(rows: dict[str, dict], order: list[str] = PAPER_ORDER) -> list[str]:
    """Test time per image falls at each step from R-CNN to Faster R-CNN (SPPNet: conv once
    per image; Fast R-CNN: one fine-tuned network; Faster R-CNN: proposals from the shared
    map), each ratio stated."""
    total = {label: row["test"]["total_ms"] for label, row in rows.items() if "test" in row}
    present = [label for label in order if label in total]
    claim = "test time falls from R-CNN to Faster R-CNN"
    if len(present) < 2:
        return [f"- {claim}: not checkable here (timed: {', '.join(present) or 'none'})"]
    cpus = {label: rows[label].get("cpus", []) for label in present}
    if len({cpu for c in cpus.values() for cpu in c}) > 1:
        where = "; ".join(f"{label}: {', '.join(c)}" for label, c in cpus.items())
        return [f"- {claim}: not checkable on one machine (timed on several CPUs: {where})"]
    ratios = [(a, b, total[a] / total[b] if total[b] > 0 else float("inf"))
              for a, b in zip(present, present[1:])]
    chain = " -> ".join(f"{label} {total[label]:.1f}" for label in present)
    lines = [f"- {claim}: {verdict(all(r > 1 for *_, r in ratios))} ({chain} ms/img)"]
    lines += [f"  - {a} / {b}: {r:.2f}x per test image" for a, b, r in ratios]
    absent = [label for label in order if label not in total]
    if absent:
        lines.append(f"  - not in this table: {', '.join(absent)}")
    return lines


def learned(records: list[dict], min_ap50: float | None, baseline: dict | None) -> list[str]:
    """Each row learned, none is a placeholder: every run's AP50 >= ``min_ap50`` (shapes), and
    each row's mean AP50 >= the same system's at a smaller budget (``baseline``, a lineage.json
    of this table at --budget-scale < this one's)."""
    lines = []
    done = [r for r in records if r.get("AP50") is not None]
    if min_ap50 is not None:
        low = [f"{r['label']} seed {r['seed']} {r['AP50']:.3f}" for r in done
               if r["AP50"] < min_ap50]
        lowest = min(done, key=lambda r: r["AP50"], default=None)
        numbers = ("below: " + ", ".join(low) if low else "lowest: " + (
            f"{lowest['label']} seed {lowest['seed']} {lowest['AP50']:.3f}" if lowest else "none"))
        lines.append(f"- every run's AP50 >= {min_ap50}: {verdict(not low and bool(done))} "
                     f"({numbers})")
    if baseline is None:
        return lines
    small = {row["label"]: row.get("AP50") for row in baseline["rows"]}
    scale = baseline["budget_scale"]
    pairs = []
    for row in summarize(records):
        if row.get("AP50") is None or small.get(row["label"]) is None:
            continue
        pairs.append((row["label"], row["AP50"], small[row["label"]]))
    worse = [f"{label} {a:.3f} < {b:.3f}" for label, a, b in pairs if a < b]
    numbers = "; ".join(worse) if worse else ", ".join(f"{lb} {a:.3f} vs {b:.3f}"
                                                       for lb, a, b in pairs)
    lines.append(f"- every row's AP50 at budget x{baseline['this_scale']} >= the same system's "
                 f"at x{scale}: {verdict(not worse and bool(pairs))} "
                 f"({numbers or 'no row in both'})")
    return lines


def claims(records: list[dict], min_ap50: float | None = None,
           baseline: dict | None = None) -> list[str]:
    """The papers' qualitative claims, each stated as holding or not with the numbers."""
    rows = {row["label"]: row for row in summarize(records)}
    return [*time_falls(rows),
            at_least(rows, "Fast R-CNN (SS)", "R-CNN", "AP", "AP"),
            at_least(rows, "Faster R-CNN", "Fast R-CNN (SS)", "AP", "AP"),
            within(rows, "Faster R-CNN 4-step", "Faster R-CNN", "AP50", 0.05),
            at_least(rows, "FPN", "Faster R-CNN", "APs", "APs (small objects; Faster R-CNN: "
                     "one stride-16 map)"),
            at_least(rows, "Cascade R-CNN", "FPN", "AP75", "AP75"),
            at_least(rows, "HTC", "Mask R-CNN", "mask AP", "mask AP"),
            at_least(rows, "HTC", "Cascade Mask R-CNN", "mask AP", "mask AP"),
            *learned(records, min_ap50, baseline)]

