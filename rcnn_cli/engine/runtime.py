"""Process set-up and helpers every command shares: device choice, threads, seeds, the
resolved config as a dict, the Hydra run directory and the console progress bar."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rcnn_cli.errors import ConfigError


def convs_channels_last(model: torch.nn.Module) -> None:
    """The backbone (with its FPN) and the RPN head hold NHWC weights, so their convolutions
    run on NHWC maps: the layout oneDNN (x86 CPUs, most of all with bf16 on AMX) and cuDNN's
    tensor-core kernels prefer. Values are those of NCHW up to float rounding. R-CNN / SPPNet
    (no ``backbone``) are left as they are."""
    for part in (getattr(model, "backbone", None),
                 getattr(getattr(model, "rpn", None), "head", None)):
        if part is not None:
            part.to(memory_format=torch.channels_last)


def select_device(name) -> torch.device:
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


# oneDNN's instruction-set bit masks (``dnnl_cpu_isa_t``); a cap set with ONEDNN_MAX_CPU_ISA
# allows an instruction set when it holds all of that set's bits.
ONEDNN_ISA_BITS = {
    "SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF, "AVX10_1_512_AMX": 0xFEF,
    "AVX512_CORE_AMX": 0xFEF, "AVX10_1_512_AMX_FP16": 0x1FEF, "AVX512_CORE_AMX_FP16": 0x1FEF}


def cpu_bf16_feature() -> str | None:
    """The CPU feature that runs bf16 matrix work natively (AMX-BF16 or AVX512-BF16), or None.

    Without one, bf16 autocast on the CPU converts in software and is slower than fp32. A
    feature the CPU has but oneDNN is told not to use (``ONEDNN_MAX_CPU_ISA=AVX2``) counts as
    absent: there bf16 convolutions ran about 100x slower than fp32."""
    probes = (("AMX-BF16", "_is_amx_tile_supported", "amx_bf16", "AVX512_CORE_AMX"),
              ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16", "AVX512_CORE_BF16"))
    flags = _cpuinfo_flags()
    for name, probe, flag, isa in probes:
        check = getattr(torch.cpu, probe, None)
        if (check() if check is not None else flag in flags) and onednn_allows(isa):
            return name
    return None


def onednn_allows(isa: str) -> bool:
    """Whether oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``; unset or
    ``ALL``: no cap) lets it use ``isa``."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "")
    cap_bits = ONEDNN_ISA_BITS.get(cap.strip().upper())
    need = ONEDNN_ISA_BITS[isa]
    return cap_bits is None or cap_bits & need == need


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` shows it (``platform.machine()`` where /proc/cpuinfo
    has none), for the records of timed runs."""
    return _cpuinfo_field("model name").strip() or platform.machine()


def _cpuinfo_flags() -> set[str]:
    return set(_cpuinfo_field("flags").split())


def _cpuinfo_field(name: str) -> str:
    """The value of /proc/cpuinfo's first ``name`` line ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(name)), "")
    return line.partition(":")[2]


def choose_amp(device: torch.device) -> tuple[str, str]:
    """``schedule.amp=auto``: the precision this device trains fastest in, and why. On the CPU
    that is bf16 with AMX-BF16 only: with AVX512-BF16 alone a bf16 step took 1.17x the fp32
    step (the default model, the Xeon with oneDNN capped to AVX512_CORE_BF16)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{name} supports bf16"
        return "fp16", f"{name} has no bf16: fp16 with a loss scaler"
    if device.type == "cpu":
        feature = cpu_bf16_feature()
        if feature == "AMX-BF16":
            return "bf16", "the CPU has AMX-BF16"
        if feature:  # measured with oneDNN capped to AVX512_CORE_BF16 (docs/benchmarks.md)
            return "none", (f"the CPU has {feature} but no AMX-BF16, where a bf16 training step "
                            "was slower than fp32: fp32")
        return "none", "the CPU has no native bf16 (AMX-BF16 or AVX512-BF16): fp32"
    return "none", f"no mixed precision chosen for device {device.type}: fp32"


def amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    amp = getattr(amp, "value", amp)
    if amp == "auto":
        amp = choose_amp(device)[0]
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("schedule.amp=fp16 needs device=cuda; on the CPU use schedule.amp=bf16")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def config_dict(cfg: DictConfig) -> dict:
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True,
                                  enum_to_str=True)


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def make_progress(disable: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), disable=disable)
