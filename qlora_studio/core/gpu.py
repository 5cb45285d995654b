"""Memory readings: NVML (nvidia-ml-py, imported as pynvml) for the GPU, psutil for the process.

Works with no GPU and no NVML library: readings are then simply absent, never an exception.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.lru_cache(maxsize=1)
def _nvml():
    """The initialised pynvml module, or None when there is no NVIDIA driver/library."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no device: all mean "no NVML"
        return None


def nvml_device_memory(index: int = 0) -> dict[str, int] | None:
    """{'used': bytes, 'total': bytes, 'free': bytes} of GPU ``index`` via NVML, or None."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        return {"used": int(info.used), "total": int(info.total), "free": int(info.free)}
    except Exception:
        return None


def process_rss_bytes() -> int:
    """Resident memory of this process in bytes."""
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def memory_snapshot(device: str, step: int) -> dict[str, Any]:
    """The fields of a ``memory`` event: process RSS always; torch and NVML figures on CUDA."""
    snapshot: dict[str, Any] = {"step": step, "device": device, "rss_bytes": process_rss_bytes()}
    if device.startswith("cuda"):
        import torch

        index = torch.cuda.current_device()
        snapshot["torch_allocated_bytes"] = int(torch.cuda.memory_allocated(index))
        snapshot["torch_reserved_bytes"] = int(torch.cuda.memory_reserved(index))
        snapshot["torch_peak_bytes"] = int(torch.cuda.max_memory_reserved(index))
        nv = nvml_device_memory(index)
        if nv:
            snapshot["nvml_used_bytes"] = nv["used"]
            snapshot["nvml_total_bytes"] = nv["total"]
    return snapshot
