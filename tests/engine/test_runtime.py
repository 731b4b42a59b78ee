"""``schedule.amp=auto``: the choice per device, with the hardware probes mocked."""

import pytest
import torch
from omegaconf import OmegaConf

from rcnn_cli.engine import runtime
from rcnn_cli.engine.train import resolve_auto_amp
from tests.conftest import compose_cfg


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [
    (True, False, "bf16"), (False, True, "none"), (True, True, "bf16"), (False, False, "none")])
def test_auto_on_cpu_is_bf16_with_amx_only(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    choice, reason = runtime.choose_amp(torch.device("cpu"))
    assert choice == expected
    assert ("AMX" in reason or "AVX512-BF16" in reason)
    assert runtime.amp_dtype("auto", torch.device("cpu")) == (
        torch.bfloat16 if expected == "bf16" else None)


def test_cpuinfo_flags_when_torch_has_no_probe(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert runtime.cpu_bf16_feature() == "AVX512-BF16"
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert runtime.cpu_bf16_feature() is None


@pytest.mark.parametrize(("variable", "cap", "expected"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", None), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI", None),
    ("DNNL_MAX_CPU_ISA", "avx512_core_bf16", "AVX512-BF16"),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", "AMX-BF16"),
    ("ONEDNN_MAX_CPU_ISA", "AVX10_1_512_AMX_FP16", "AMX-BF16"),
    ("ONEDNN_MAX_CPU_ISA", "ALL", "AMX-BF16")])
def test_a_onednn_isa_cap_below_bf16_means_fp32(monkeypatch, variable, cap, expected):
    """A CPU with AMX whose oneDNN is capped below the bf16 instructions trains in fp32."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setenv(variable, cap)
    assert runtime.cpu_bf16_feature() == expected
    assert runtime.choose_amp(torch.device("cpu"))[0] == ("bf16" if expected == "AMX-BF16" else "none")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_prefers_bf16_then_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    choice, reason = runtime.choose_amp(torch.device("cuda", 0))
    assert choice == expected and "Fake GPU" in reason


def test_resolve_writes_the_choice_into_the_config(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "choose_amp", lambda device: ("bf16", "the CPU has AMX-BF16"))
    cfg = compose_cfg(overrides=["schedule.amp=auto", "device=cpu"])
    with caplog.at_level("INFO", logger="rcnn_cli"):
        resolve_auto_amp(cfg)
    assert OmegaConf.to_container(cfg.schedule, enum_to_str=True)["amp"] == "bf16"
    assert "schedule.amp=auto -> bf16 (the CPU has AMX-BF16)" in caplog.text


def test_channels_last_training_computes_what_nchw_computes(tmp_path):
    """schedule.channels_last: NHWC backbone and RPN head, the same step up to rounding."""
    from rcnn_cli.data.loader import train_loader
    from rcnn_cli.engine.trainer import Trainer
    from tests.conftest import TINY

    trainers = []
    for on in (False, True):
        (tmp_path / str(on)).mkdir()
        cfg = compose_cfg("train", TINY + [f"schedule.channels_last={on}",
                                           "log.tensorboard=false"])
        trainers.append(Trainer.from_config(cfg, tmp_path / str(on)))
    plain, nhwc = trainers
    convs = [m.weight for m in nhwc.model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                   for m in plain.model.backbone.modules() if isinstance(m, torch.nn.Conv2d)
                   for w in [m.weight])
    batch = next(iter(train_loader(plain.train_set, 2, 0, 0, 1, 0)))
    losses = [t.step([batch])["total_loss"] for t in trainers]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for (k, a), b in zip(plain.model.state_dict().items(), nhwc.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5), k
