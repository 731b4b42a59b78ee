"""Learning-rate schedule: linear warm-up, step and cosine decay."""

from __future__ import annotations

import math

import pytest

from rcnn_cli.engine.optim import lr_factor


def test_warmup_is_linear_from_the_factor():
    assert lr_factor(0, 100, 10, 0.001, "step", [], 0.1) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, 0.001, "step", [], 0.1) == pytest.approx(0.5005)
    assert lr_factor(10, 100, 10, 0.001, "step", [], 0.1) == 1.0


def test_step_decay_at_fractions_of_max_iter():
    f = [lr_factor(i, 100, 0, 1.0, "step", [0.5, 0.8], 0.1) for i in (49, 50, 79, 80)]
    assert f == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_cosine_decay():
    assert lr_factor(50, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, 100, 0, 1.0, "cosine", [], 0.1) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))
