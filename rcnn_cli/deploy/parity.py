"""Compare an exported file's detections with the eager model's, detection by detection.

Float rounding differs between runtimes, so two detections of the same class whose scores tie
to ~1e-7 may come out in either order; each eager detection is therefore paired with the
closest unpaired exported detection of the same label (box and score distances in units of
their tolerances), and the differences are those of the pairs.
"""

from __future__ import annotations

import numpy as np

BOX_TOL_PX, SCORE_TOL = 1e-3, 1e-4  # rcnn-export's check and the tests' tolerances


def pair_detections(a: dict, b: dict) -> list[int]:
    """For each detection of ``a``, the index of its partner in ``b`` (same length)."""
    free = np.ones(len(b["labels"]), dtype=bool)
    partners = []
    for label, box, score in zip(a["labels"], a["boxes"], a["scores"]):
        cost = np.maximum(np.abs(b["boxes"] - box).max(axis=1) / BOX_TOL_PX,
                          np.abs(b["scores"] - score) / SCORE_TOL)
        cost[(b["labels"] != label) | ~free] = np.inf
        j = int(np.argmin(cost))
        if not np.isfinite(cost[j]):
            j = int(np.flatnonzero(free)[0])  # no partner of that label: any, labels differ
        free[j] = False
        partners.append(j)
    return partners


def differences(eager: dict, exported: dict) -> dict:
    """``count`` (eager, exported), ``labels_equal``, largest box / score / mask difference."""
    a, b = ({k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for d in (eager, exported))
    out = {"count": [int(len(a["boxes"])), int(len(b["boxes"]))]}
    if out["count"][0] != out["count"][1]:
        return {**out, "labels_equal": False}
    j = pair_detections(a, b)
    out["labels_equal"] = bool(np.array_equal(a["labels"], b["labels"][j]))
    for key in ("boxes", "scores", "masks"):
        if key in a and key in b:
            d = np.abs(a[key] - b[key][j])
            out[f"max_{key}_diff"] = float(d.max()) if d.size else 0.0
    return out


def within_tolerance(diff: dict, box_tol: float = BOX_TOL_PX, score_tol: float = SCORE_TOL,
                     mask_tol: float = 1e-3) -> bool:
    return (diff["labels_equal"] and diff.get("max_boxes_diff", np.inf) <= box_tol
            and diff.get("max_scores_diff", np.inf) <= score_tol
            and diff.get("max_masks_diff", 0.0) <= mask_tol)
