"""Compare an exported file's detections with the eager model's, output by output."""

from __future__ import annotations

import numpy as np

BOX_TOL_PX, SCORE_TOL = 1e-3, 1e-4  # rcnn-export's check and the tests' tolerances


def differences(eager: dict, exported: dict) -> dict:
    """``count`` (eager, exported), ``labels_equal``, largest box / score / mask difference."""
    a, b = ({k: np.asarray(v) for k, v in d.items()} for d in (eager, exported))
    out = {"count": [int(len(a["boxes"])), int(len(b["boxes"]))]}
    same = out["count"][0] == out["count"][1]
    out["labels_equal"] = bool(same and np.array_equal(a["labels"], b["labels"]))
    for key in ("boxes", "scores", "masks"):
        if key in a and key in b and same:
            d = np.abs(a[key].astype(np.float64) - b[key].astype(np.float64))
            out[f"max_{key}_diff"] = float(d.max()) if d.size else 0.0
    return out


def within_tolerance(diff: dict, box_tol: float = BOX_TOL_PX, score_tol: float = SCORE_TOL,
                     mask_tol: float = 1e-3) -> bool:
    return (diff["labels_equal"] and diff.get("max_boxes_diff", np.inf) <= box_tol
            and diff.get("max_scores_diff", np.inf) <= score_tol
            and diff.get("max_masks_diff", 0.0) <= mask_tol)
