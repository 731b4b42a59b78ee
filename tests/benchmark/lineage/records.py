"""Made-up lineage run records for the table and claim tests."""

from __future__ import annotations


def run_record(label: str, seed: int = 0, ap=0.5, total=100.0, **metrics) -> dict:
    values = {"AP": ap, "AP50": 0.8, "AP75": 0.5, "APs": 0.3, "mask AP": None, **metrics}
    return {"label": label, "seed": seed, "overrides": [f"x={label}"], "budget": "10 x 2",
            "train_s": 120.0, "proposal_cache_s": None, **values,
            "test": {"params": 2e6, "proposals_ms": 1.0, "cnn_ms": 2.0, "region_ms": 3.0,
                     "other_ms": total - 6.0, "total_ms": total}}


def lineage_records(**changes) -> list[dict]:
    """One run per system in the papers' story (each step faster and more accurate)."""
    values = {"R-CNN": (0.40, 900.0), "SPPNet": (0.35, 300.0), "Fast R-CNN (SS)": (0.45, 80.0),
              "Faster R-CNN": (0.50, 60.0), "Faster R-CNN 4-step": (0.49, 60.0),
              "FPN": (0.60, 40.0), "Mask R-CNN": (0.60, 110.0), "Cascade R-CNN": (0.65, 80.0),
              "Cascade Mask R-CNN": (0.66, 150.0), "HTC": (0.68, 300.0),
              "DetectoRS": (0.70, 600.0)}
    records = []
    for label, (ap, total) in values.items():
        change = dict(changes.get(label, {}))
        total = change.pop("total", total)
        extra = {"AP50": ap + 0.3, "AP75": ap, "APs": ap - 0.1,
                 "mask AP": ap - 0.05 if label in ("Mask R-CNN", "Cascade Mask R-CNN", "HTC",
                                                   "DetectoRS") else None}
        records.append(run_record(label, ap=ap, total=total, **{**extra, **change}))
    return records

