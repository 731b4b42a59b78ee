"""Choice types of the config schemas (a value outside an enum fails at start-up)."""

from __future__ import annotations

from enum import Enum


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Norm(Enum):
    frozen_bn = "frozen_bn"
    bn = "bn"
    gn = "gn"
    none = "none"  # no normalisation layers (the original VGG16)


class Amp(Enum):
    auto = "auto"  # bf16 on AMX-BF16 CPUs and bf16 GPUs, fp16 on older CUDA, else fp32
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class RoIAlignKernel(Enum):
    auto = "auto"
    torchvision = "torchvision"
    vectorised = "vectorised"


class FcInit(Enum):
    """Where Fast R-CNN's fc6/fc7 start: random, or the pre-trained classifier's fc6/fc7."""

    random = "random"
    backbone = "backbone"


class Optimizer(Enum):
    sgd = "sgd"
    adamw = "adamw"


class Decay(Enum):
    step = "step"
    cosine = "cosine"


class EvalMetric(Enum):
    """COCO's 12 stats, or Pascal VOC AP at IoU 0.5 (VOC07 11-point or VOC2010+ area)."""

    coco = "coco"
    voc07 = "voc07"
    voc = "voc"


class Validation(Enum):
    strict = "strict"
    lenient = "lenient"


class DistBackend(Enum):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class MetricMode(Enum):
    max = "max"
    min = "min"


def enum_value(x):
    """A choice's string: an enum member's ``value``, or ``x`` itself (a plain string from an
    untyped config)."""
    return getattr(x, "value", x)


class WeightsClasses(Enum):
    """Class-dependent tensors of ``model.weights``: copy matching classes' rows, or none."""

    map = "map"
    reinit = "reinit"
