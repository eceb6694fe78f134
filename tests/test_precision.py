"""precision=auto: bf16 only where the device multiplies bf16 in hardware, since emulated bf16 is far slower."""

from __future__ import annotations

import torch

from fromzero.train import loop

CPU = torch.device("cpu")


def test_auto_follows_the_cpus_bf16_support(monkeypatch):
    caps = dict(torch.cpu.get_capabilities())
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**caps, "avx512_bf16": native, "amx_bf16": False})
        assert loop.native_bf16(CPU) is native
        assert loop.resolved_precision("auto", CPU) == ("bf16" if native else "fp32")
        assert loop.resolved_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**caps, "avx512_bf16": False, "amx_bf16": True})
    assert loop.resolved_precision("auto", CPU) == "bf16"


def test_autocast_follows_the_resolved_precision(monkeypatch, capsys):
    cfg = loop.TrainConfig(steps=1)
    assert cfg.precision == "auto"
    caps = dict(torch.cpu.get_capabilities())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**caps, "avx512_bf16": False, "amx_bf16": False})
    monkeypatch.setattr(loop, "_WARNED", set())
    with loop.autocast(cfg, CPU):
        assert not torch.is_autocast_enabled("cpu")
    # asked for by name, bf16 is kept on a CPU without it, with one warning however often it is asked
    for _ in range(2):
        with loop.autocast(cfg, CPU, "bf16"):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert capsys.readouterr().out.count("precision=bf16 on a cpu without native bf16") == 1
