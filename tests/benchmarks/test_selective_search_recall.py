"""benchmarks/selective_search_recall.py on four tiny val images prints the recall keys of
``rcnn-eval eval.proposals=true``."""

import json

from tests.benchmarks.programs import run_program


def test_prints_recall_of_the_cached_proposals(tmp_path):
    out = run_program("selective_search_recall", f"proposals.cache_dir={tmp_path}",
                      "proposals.workers=0", "dataset.train_size=4", "dataset.val_size=4",
                      "dataset.image_size=64")
    result = json.loads(out[out.index("{"):])  # after the progress bar
    assert 0.0 <= result["proposals/AR@100"] <= 1.0
    assert result["proposals/mean_per_image"] > 0
