"""The papers' claims on the lineage's results: each holds or not, with its numbers."""

from __future__ import annotations

from rcnn_cli.benchmark.lineage import claims as lineage
from tests.benchmark.lineage.records import lineage_records, run_record


def test_the_papers_claims_hold_or_not_with_their_numbers():
    lines = lineage.claims(lineage_records(), min_ap50=0.5)
    assert lines[0] == ("- test time falls from R-CNN to Faster R-CNN: holds (R-CNN 900.0 -> "
                        "SPPNet 300.0 -> Fast R-CNN (SS) 80.0 -> Faster R-CNN 60.0 ms/img)")
    assert lines[1:4] == ["  - R-CNN / SPPNet: 3.00x per test image",
                          "  - SPPNet / Fast R-CNN (SS): 3.75x per test image",
                          "  - Fast R-CNN (SS) / Faster R-CNN: 1.33x per test image"]
    assert lines[4:] == [
        "- Fast R-CNN (SS) >= R-CNN in AP: holds (0.450 vs 0.400)",
        "- Faster R-CNN >= Fast R-CNN (SS) in AP: holds (0.500 vs 0.450)",
        "- Faster R-CNN 4-step within 0.05 AP50 of Faster R-CNN: holds (0.790 vs 0.800, gap 0.010)",
        "- FPN >= Faster R-CNN in APs (small objects; Faster R-CNN: one stride-16 map): holds "
        "(0.500 vs 0.400)",
        "- Cascade R-CNN >= FPN in AP75: holds (0.650 vs 0.600)",
        "- HTC >= Mask R-CNN in mask AP: holds (0.630 vs 0.550)",
        "- HTC >= Cascade Mask R-CNN in mask AP: holds (0.630 vs 0.610)",
        "- every run's AP50 >= 0.5: holds (lowest: SPPNet seed 0 0.650)"]
    broken = lineage.claims(lineage_records(**{
        "SPPNet": {"total": 1000.0, "AP50": 0.3},
        "Faster R-CNN 4-step": {"AP50": 0.6}, "HTC": {"mask AP": None}}), min_ap50=0.5)
    assert broken[0].startswith("- test time falls from R-CNN to Faster R-CNN: does not hold")
    assert "  - R-CNN / SPPNet: 0.90x per test image" in broken
    assert ("- Faster R-CNN 4-step within 0.05 AP50 of Faster R-CNN: does not hold "
            "(0.600 vs 0.800, gap 0.200)") in broken
    assert ("- HTC >= Mask R-CNN in mask AP: not checkable here (no mask AP for HTC)") in broken
    assert broken[-1] == "- every run's AP50 >= 0.5: does not hold (below: SPPNet seed 0 0.300)"
    few = lineage.claims([run_record("FPN")])
    assert few[0] == ("- test time falls from R-CNN to Faster R-CNN: not checkable here "
                      "(timed: none)")
    assert all("not checkable" in line for line in few)


def test_test_times_from_several_cpus_are_not_compared():
    records = lineage_records(**{"R-CNN": {"cpu": "CPU A"}, "Faster R-CNN": {"cpu": "CPU B"}})
    [line] = [x for x in lineage.claims(records) if "test time" in x]
    assert line == ("- test time falls from R-CNN to Faster R-CNN: not checkable on one machine "
                    "(timed on several CPUs: R-CNN: CPU A; SPPNet: an unrecorded CPU; "
                    "Fast R-CNN (SS): an unrecorded CPU; Faster R-CNN: CPU B)")
    same = lineage_records(**{label: {"cpu": "CPU A"} for label in ("R-CNN", "SPPNet",
                                                                     "Fast R-CNN (SS)",
                                                                     "Faster R-CNN")})
    assert lineage.claims(same)[0].startswith("- test time falls from R-CNN to Faster R-CNN: holds")
