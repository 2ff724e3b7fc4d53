"""What the machine computes natively: the CPU flags that decide oneDNN's kernels, and whether a
device does bf16 in hardware (elsewhere bf16 is emulated, and slow)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not say)."""
    info = Path("/proc/cpuinfo")
    for line in (info.read_text().splitlines() if info.is_file() else []):
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def training_device() -> torch.device:
    """The device Accelerate would train on here, without starting Accelerate (whose settings, the
    precision among them, hold for the whole process once made): a GPU unless there is none or
    ACCELERATE_USE_CPU is set."""
    from accelerate.utils import parse_flag_from_env

    if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU"):
        return torch.device("cuda")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively (False for devices this does not know)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_flags() & set(BF16_FLAGS))


def describe_bf16(device: torch.device) -> str:
    """The device's name for its native bf16, for a hint: the GPU's name, or the CPU's flags."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "this CPU (" + ", ".join(sorted(cpu_flags() & set(BF16_FLAGS))) + ")"


def device_name(device: torch.device) -> str:
    """What a benchmark ran on: the GPU's name, or the CPU with the flags that decide its kernels."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else machine()


def machine() -> str:
    """The CPU and the flags that decide its kernels (benchmarks name what they ran on)."""
    shown = [f for f in SHOWN_FLAGS if f in cpu_flags()]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}, ATen {torch.backends.cpu.get_cpu_capability()}")
