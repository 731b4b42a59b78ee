"""benchmarks/svd_vgg16_head.py on a narrow head: parameters shrink and the fc6 change stays
within the truncation bound (the VGG16 shape itself is the benchmark's, docs/benchmarks.md)."""

import re

from tests.benchmarks.programs import run_program


def test_narrow_head_compresses_within_the_bound():
    out = run_program("svd_vgg16_head", "--in-features", "98", "--width", "32", "--fc6", "8",
                      "--fc7", "4", "--rois", "16", "--repeats", "1")
    before, after = (int(n.replace(",", "")) for n in
                     re.search(r"params: ([\d,]+) -> ([\d,]+)", out).groups())
    assert after < before
    assert float(re.search(r"max ([\d.]+) \(<= 1", out).group(1)) <= 1.0 + 1e-4
