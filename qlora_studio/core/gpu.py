"""GPUs and memory readings: NVML (nvidia-ml-py, imported as pynvml) for the GPUs, psutil for
the process and the system, and a catalogue of common cards for planning without one.

Works with no GPU and no NVML library: readings are then simply absent, never an exception.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from qlora_studio.core.errors import StudioError

GIB = 1024**3
BF16_MIN_MAJOR = 8  # bf16 arithmetic came with compute capability 8.0 (Ampere)
CATALOGUE_FILE = "gpus.json"
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE for a process's used memory
_NOISE_WORDS = re.compile(r"\b(nvidia|geforce|rtx|gtx|tesla|quadro)\b")
_MEMORY_SUFFIX = re.compile(r"[\s-]*(\d+)\s*(?:gb|gib|g)$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(tib|tb|t|gib|gb|g|mib|mb|m)?$")
_UNITS = {"t": 1024**4, "g": GIB, "m": 1024**2}
_MAX_BARE_GB = 1024  # a plain number is read as GB only up to this
_AUTO_HINT = (
    "name a GPU from the catalogue (e.g. 'RTX 4090', 'A100 80GB') or give its memory "
    "(e.g. '24GB') to plan for a GPU this machine lacks"
)


@dataclass
class GpuInfo:
    """A GPU to plan for: one NVML sees, a catalogue card, or a size the user typed."""

    index: int  # NVML index; -1 for catalogue and custom GPUs
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, name, used_bytes
    source: str = "nvml"  # "nvml" | "catalogue" | "custom"
    note: str = ""
    compute_capability: str = ""  # e.g. "8.9" (NVML or the catalogue); "" when unknown

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def bf16_supported(self) -> bool:
        """Whether the GPU computes in bf16 (compute capability 8.0+, Ampere and later); assumed
        so when the capability is unknown (a typed size, a card the catalogue does not rate)."""
        return capability_has_bf16(self.compute_capability)


def capability_has_bf16(capability: str) -> bool:
    """bf16 needs compute capability 8.0 or more; an unknown ("" or unreadable) one counts as
    bf16, the common case for the GPUs people fine-tune on today."""
    try:
        major = int(str(capability).split(".")[0])
    except ValueError:
        return True
    return major >= BF16_MIN_MAJOR


@functools.lru_cache(maxsize=1)
def _nvml_state() -> tuple[Any, str]:
    """(the initialised pynvml module, "") or (None, why NVML is unavailable)."""
    try:
        import pynvml
    except ImportError as exc:
        return None, f"nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver, no device: all mean "no NVML"
        return None, str(exc) or type(exc).__name__
    return pynvml, ""


def _nvml():
    """The initialised pynvml module, or None when there is no NVIDIA driver/library."""
    return _nvml_state()[0]


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


def _nvml_capability(nvml, handle) -> str:
    """ "major.minor" of one GPU via NVML, or "" when the driver does not say."""
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception:  # an old driver, or a device that is not ours to read
        return ""
    return f"{int(major)}.{int(minor)}"


def gpu_bf16_supported(index: int = 0) -> bool:
    """Whether GPU ``index`` computes in bf16, from its NVML compute capability; True when NVML
    cannot say (see :func:`capability_has_bf16`)."""
    nvml = _nvml()
    if nvml is None:
        return True
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return True
    return capability_has_bf16(_nvml_capability(nvml, handle))


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


def _process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):  # gone, or another user's (containers hide them)
        return "?"


def _gpu_processes(nvml, handle) -> list[dict[str, Any]]:
    """Compute and graphics processes on one GPU, once each, with their memory."""
    seen: dict[int, dict[str, Any]] = {}
    getters = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")
    for getter in getters:
        try:
            running = getattr(nvml, getter)(handle)
        except Exception:  # unsupported by the driver or the card
            continue
        for proc in running:
            used = getattr(proc, "usedGpuMemory", None)
            used = 0 if used in (None, _NOT_AVAILABLE) else int(used)
            pid = int(proc.pid)
            if pid in seen:
                seen[pid]["used_bytes"] = max(seen[pid]["used_bytes"], used)
            else:
                seen[pid] = {"pid": pid, "name": _process_name(pid), "used_bytes": used}
    return list(seen.values())


def list_gpus() -> list[GpuInfo]:
    """Every NVIDIA GPU NVML sees, with its memory and the processes using it; [] when there
    is no GPU, driver or NVML library. Never raises."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        return []
    gpus = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:  # a GPU that fell off the bus or is not ours to read
            continue
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        gpus.append(
            GpuInfo(
                index=index,
                name=str(name),
                total_bytes=int(memory.total),
                free_bytes=int(memory.free),
                used_bytes=int(memory.used),
                processes=_gpu_processes(nvml, handle),
                source="nvml",
                compute_capability=_nvml_capability(nvml, handle),
            )
        )
    return gpus


def gpu_status() -> dict[str, Any]:
    """{"gpus": [GpuInfo as dicts], "message": ""}, the message saying why when none is found."""
    gpus = list_gpus()
    message = ""
    if not gpus:
        reason = _nvml_state()[1] or "it sees no device"
        message = f"no NVIDIA GPU found (NVML: {reason})"
    return {"gpus": [gpu.to_dict() for gpu in gpus], "message": message}


def system_memory() -> dict[str, int]:
    """Total and available system RAM in bytes."""
    import psutil

    memory = psutil.virtual_memory()
    return {"total_bytes": int(memory.total), "available_bytes": int(memory.available)}


@functools.lru_cache(maxsize=1)
def _catalogue() -> tuple[dict[str, Any], ...]:
    from qlora_studio.resources import resources_dir

    path = resources_dir() / CATALOGUE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(
            f"cannot read the GPU catalogue {path}: {exc}", hint="reinstall QLoRA Studio"
        ) from exc
    return tuple(dict(entry) for entry in data["gpus"])


def load_catalogue() -> list[dict[str, Any]]:
    """Common GPUs as dicts: name, memory_gb (binary GB, as sold), kind (consumer |
    workstation | datacenter) and, where given, compute_capability ("8.9"). Read from
    ``resources/gpus.json``."""
    return [dict(entry) for entry in _catalogue()]


def _normalise(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> '4090'; 'A100-80GB' -> 'a10080g'."""
    text = _NOISE_WORDS.sub(" ", name.lower())
    text = re.sub(r"gib|gb", "g", text)
    return re.sub(r"[^a-z0-9]", "", text)


def _base_name(name: str) -> str:
    """The normalised name without a trailing memory size: 'RTX 3080 12GB' -> '3080'."""
    return _normalise(_MEMORY_SUFFIX.sub("", name.strip().lower()))


def _from_catalogue(spec: str) -> dict[str, Any] | None:
    """The catalogue card ``spec`` names: an exact (normalised) name first, else the smallest
    variant of a card named without its size ('3080' -> the 10 GB one: the safe choice), or
    the variant of the size given ('T4 16GB')."""
    wanted = _normalise(spec)
    if not wanted:
        return None
    catalogue = _catalogue()
    for entry in catalogue:
        if _normalise(entry["name"]) == wanted:
            return dict(entry)
    base = _base_name(spec)
    variants = [e for e in catalogue if base and _base_name(e["name"]) == base]
    size = _MEMORY_SUFFIX.search(spec.strip().lower())
    if size:  # "T4 16GB": a card whose catalogue name carries no size
        variants = [e for e in variants if e["memory_gb"] == float(size.group(1))]
    return dict(min(variants, key=lambda e: e["memory_gb"])) if variants else None


def _size_bytes(spec: str) -> int | None:
    """'24GB', '24 GiB', '12g', '16000MB', '24' -> bytes (binary units); None if not a size."""
    match = _SIZE.match(spec.strip().lower())
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    if unit is None and value > _MAX_BARE_GB:
        return None
    size = int(value * _UNITS[(unit or "g")[0]])
    return size if size > 0 else None


def resolve_gpu(spec: str, gpus: list[GpuInfo] | None = None) -> GpuInfo:
    """The GPU ``spec`` names: "auto" (the first GPU NVML sees, with its free memory),
    "cuda:N" (GPU N), a catalogue card ("RTX 4090", "4090", "a100-80gb"; case, spaces and
    "NVIDIA"/"GeForce"/"RTX" do not matter) or a size ("24GB", "24 GiB", "12g", "16000MB").
    Catalogue and custom GPUs count all their memory as free: the desktop and other apps are
    not counted. ``gpus`` are NVML's GPUs when the caller has read them already (default: read
    them now). Raises :class:`StudioError` with a hint when nothing matches."""
    text = (spec or "").strip()
    index = re.fullmatch(r"(?:auto|cuda(?::(\d+))?)", text.lower())
    if not text or index:
        wanted = int(index.group(1)) if index and index.group(1) else 0
        gpus = list_gpus() if gpus is None else gpus
        found = [gpu for gpu in gpus if gpu.index == wanted]
        if found:
            return found[0]
        reason = _nvml_state()[1] or f"it sees {len(gpus)} GPU(s)"
        what = "no NVIDIA GPU found" if not gpus else f"no NVIDIA GPU with index {wanted}"
        raise StudioError(f"{what} (NVML: {reason})", hint=_AUTO_HINT)
    note = "catalogue figure: the desktop and other apps using the GPU are not counted"
    entry = _from_catalogue(text)
    if entry is not None:
        total = int(entry["memory_gb"] * GIB)
        capability = str(entry.get("compute_capability", ""))
        return GpuInfo(-1, entry["name"], total, total, 0, [], "catalogue", note, capability)
    size = _size_bytes(text)
    if size is not None:
        name = f"custom {size / GIB:g} GB"
        return GpuInfo(-1, name, size, size, 0, [], "custom", note.replace("catalogue", "typed"))
    names = [entry["name"] for entry in _catalogue()]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(n) for n in close)}? " if close else ""
    raise StudioError(
        f"unknown GPU {spec!r}",
        hint=hint + "use 'auto', a catalogue name such as 'RTX 4090', or a size such as '24GB'",
    )
