"""GPU discovery, the catalogue and GPU names, on whatever machine runs the tests (no mocks)."""

from __future__ import annotations

import pytest

from qlora_studio.core import gpu
from qlora_studio.core.errors import StudioError

GIB = 1024**3
HAS_GPU = gpu.nvml_device_memory(0) is not None


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_no_gpu_means_empty_lists_and_a_reason():
    assert gpu.list_gpus() == []
    status = gpu.gpu_status()
    assert status["gpus"] == []
    assert status["message"].startswith("no NVIDIA GPU found (NVML: ")
    with pytest.raises(StudioError) as caught:
        gpu.resolve_gpu("auto")
    assert "no NVIDIA GPU found" in caught.value.message
    assert "24GB" in caught.value.hint and "RTX 4090" in caught.value.hint


@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU here")
def test_gpus_nvml_sees():
    gpus = gpu.list_gpus()
    assert gpus and gpu.gpu_status()["message"] == ""
    for found in gpus:
        assert found.source == "nvml" and found.name
        assert 0 <= found.free_bytes <= found.total_bytes
        assert all({"pid", "name", "used_bytes"} <= set(p) for p in found.processes)
    assert gpu.resolve_gpu("auto").index == gpus[0].index


def test_catalogue():
    catalogue = gpu.load_catalogue()
    assert len(catalogue) >= 30
    names = [entry["name"] for entry in catalogue]
    assert len(set(names)) == len(names)
    for entry in catalogue:
        assert entry["memory_gb"] > 0
        assert entry["kind"] in ("consumer", "workstation", "datacenter")


@pytest.mark.parametrize(
    ("spec", "name", "memory_gb"),
    [
        ("RTX 4090", "GeForce RTX 4090", 24),
        ("4090", "GeForce RTX 4090", 24),
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 24),  # as NVML names it
        ("a100-80gb", "A100 80GB", 80),
        ("A100", "A100 40GB", 40),  # no size given: the smaller variant, the safe choice
        ("3080 12GB", "GeForce RTX 3080 12GB", 12),
        ("4060 Ti", "GeForce RTX 4060 Ti 8GB", 8),
        ("4060", "GeForce RTX 4060", 8),
        ("t4 16gb", "Tesla T4", 16),
        ("h100", "H100 80GB", 80),
        ("A10", "A10", 24),
    ],
)
def test_catalogue_names(spec, name, memory_gb):
    found = gpu.resolve_gpu(spec)
    assert (found.name, found.source) == (name, "catalogue")
    assert found.total_bytes == found.free_bytes == memory_gb * GIB
    assert found.used_bytes == 0 and "not counted" in found.note


def test_rtx_4090_uses_the_catalogue_value():
    entry = next(e for e in gpu.load_catalogue() if e["name"] == "GeForce RTX 4090")
    assert gpu.resolve_gpu("RTX 4090").total_bytes == entry["memory_gb"] * GIB == 24 * GIB


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ("24GB", 24 * GIB),
        ("24 GiB", 24 * GIB),
        ("12g", 12 * GIB),
        ("16000MB", 16000 * 1024**2),
        ("16", 16 * GIB),
    ],
)
def test_sizes_make_custom_gpus(spec, size):
    found = gpu.resolve_gpu(spec)
    assert found.source == "custom"
    assert found.total_bytes == found.free_bytes == size


@pytest.mark.parametrize("spec", ["RTX 9999", "lots", "0GB", "99999"])
def test_unknown_gpus_are_refused_with_a_hint(spec):
    with pytest.raises(StudioError) as caught:
        gpu.resolve_gpu(spec)
    assert "24GB" in caught.value.hint


def test_system_memory_and_process_readings():
    memory = gpu.system_memory()
    assert memory["total_bytes"] > 0
    assert 0 < memory["available_bytes"] <= memory["total_bytes"]
    snapshot = gpu.memory_snapshot("cpu", 3)
    assert snapshot["step"] == 3 and snapshot["rss_bytes"] > 0


@pytest.mark.parametrize(
    ("capability", "bf16"),
    [("8.0", True), ("8.9", True), ("12.0", True), ("7.5", False), ("6.1", False), ("", True)],
)
def test_bf16_needs_compute_capability_8(capability, bf16):
    card = gpu.GpuInfo(-1, "card", 16 * GIB, 16 * GIB, 0, compute_capability=capability)
    assert card.bf16_supported is bf16 and gpu.capability_has_bf16(capability) is bf16


def test_catalogue_cards_carry_their_compute_capability(monkeypatch):
    entries = (
        {"name": "Tesla T4", "memory_gb": 16, "kind": "datacenter", "compute_capability": "7.5"},
        {"name": "GeForce RTX 4090", "memory_gb": 24, "kind": "consumer"},
    )
    monkeypatch.setattr(gpu, "_catalogue", lambda: entries)
    t4 = gpu.resolve_gpu("T4")
    assert (t4.compute_capability, t4.bf16_supported) == ("7.5", False)
    assert gpu.resolve_gpu("4090").bf16_supported  # not rated: bf16 assumed
    assert gpu.resolve_gpu("24GB").bf16_supported  # a typed size: bf16 assumed


def test_a_machine_without_nvml_assumes_bf16():
    if gpu.list_gpus():
        pytest.skip("this machine has a GPU")
    assert gpu.gpu_bf16_supported(0) is True
