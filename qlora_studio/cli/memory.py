"""`qlora-studio estimate` and `qlora-studio probe`: will it fit, and what it really takes."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from qlora_studio.cli.common import EXIT_OK, print_failure
from qlora_studio.config import METHOD_LABELS
from qlora_studio.core.events import format_gb

_EVENT_KEYS = ("type", "time", "step", "run_dir", "adapter_dir")  # the done event around a probe


def _load_config(path: str | None, source: str):
    from qlora_studio.config import RunConfig
    from qlora_studio.resources import resources_dir

    if path:
        return RunConfig.load(path)
    # the config defaults (the probe trains on the demo dataset)
    cfg = RunConfig()
    cfg.model.source = source
    cfg.data.path = str(resources_dir() / "datasets" / "dates-train.jsonl")
    return cfg.validate()


def _target(spec: str) -> tuple[str, Any, int, str]:
    """(device, gpu or None, available bytes or 0, a line saying what the estimate is judged
    against)."""
    from qlora_studio.core.gpu import gpu_status, list_gpus, resolve_gpu, system_memory

    if spec.lower() == "cpu":
        ram = system_memory()
        return (
            "cpu",
            None,
            ram["available_bytes"],
            f"CPU: {format_gb(ram['available_bytes'])} of {format_gb(ram['total_bytes'])}"
            " RAM available",
        )
    if spec.lower() == "auto":
        gpus = list_gpus()
        if not gpus:
            status = gpu_status()
            return (
                "cuda",
                None,
                0,
                (
                    f"GPU: {status.get('message', 'no NVIDIA GPU found')}; pass --gpu with a card "
                    "(e.g. 'RTX 4090') or a size (e.g. 24GB) to judge the fit"
                ),
            )
        gpu = gpus[0]
    else:
        gpu = resolve_gpu(spec)
    used = f", {format_gb(gpu.used_bytes)} in use" if gpu.source == "nvml" else ""
    label = f"GPU {gpu.index}" if gpu.source == "nvml" else "GPU"
    where = {"nvml": "NVML", "catalogue": "catalogue", "custom": "custom size"}.get(gpu.source, "")
    return (
        "cuda",
        gpu,
        gpu.free_bytes,
        (
            f"{label}: {gpu.name} ({where}) {format_gb(gpu.total_bytes)} total, "
            f"{format_gb(gpu.free_bytes)} free{used}"
        ),
    )


def run_estimate(args) -> int:
    from qlora_studio.config import METHODS, ConfigError
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.fit import judge, system_ram_needed
    from qlora_studio.core.memory import estimate_memory
    from qlora_studio.core.memory_settings import Settings
    from qlora_studio.core.memory_shards import gpus_needed, per_gpu_estimate, sharded_as
    from qlora_studio.core.models.inspect import inspect_model

    try:
        cfg = _load_config(args.config, args.source)
        info = inspect_model(
            args.source,
            allow_pickle=getattr(args, "allow_pickle", False),
            trust_remote_code=getattr(args, "trust_remote_code", False),
        )
        device, gpu, available, gpu_line = _target(args.gpu)
    except ConfigError as exc:
        return print_failure(f"config error: {exc.field}: {exc.message}", exc.hint)
    except StudioError as exc:
        return print_failure(exc.message, exc.hint)
    bf16 = gpu.bf16_supported if gpu is not None else True
    settings = Settings.from_config(cfg, device=device, bf16_supported=bf16)
    if args.batch_size:
        settings.batch_size = args.batch_size
    if args.seq_len:
        settings.seq_len = args.seq_len
    methods = list(METHODS) if args.method == "all" else [args.method]
    strategy = getattr(args, "strategy", None) or sharded_as(cfg.distributed)
    gpus = getattr(args, "gpus", None) or cfg.distributed.world_size
    report: dict[str, Any] = {
        "model": info.to_dict() | {"linear_layers": None},
        "settings": settings.__dict__,
        "target": {
            "device": device,
            "line": gpu_line,
            "available_bytes": available,
            "gpu": gpu.__dict__ if gpu else None,
        },
        "methods": {},
    }
    for method in methods:
        estimate = estimate_memory(info, settings, method)
        entry: dict[str, Any] = {
            "estimate": estimate.to_dict(),
            "system_ram": system_ram_needed(info, method, settings),
        }
        if available:
            entry["verdict"] = judge(estimate, info, settings, available).to_dict()
        if strategy != "none" and gpus > 1:
            share = per_gpu_estimate(info, settings, method, strategy, gpus)
            entry["per_gpu"] = {"strategy": strategy, "gpus": gpus, "estimate": share.to_dict()}
        if available and device == "cuda":
            entry["gpus_needed"] = gpus_needed(info, settings, method, available)
        if cfg.train.fit == "auto":
            entry["auto_fit"] = _auto_fit(info, cfg, method, settings, device, available, bf16)
        report["methods"][method] = entry
    if args.probe:
        probe_method = cfg.method if args.method == "all" else args.method
        report["probe"] = _probe_child(cfg, probe_method, settings)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(info, settings, report)
    return EXIT_OK


def _auto_fit(
    info, cfg, method: str, settings, device: str, available: int, bf16_supported: bool
) -> dict[str, Any]:
    """What ``train.fit: auto`` would choose for ``method`` (FitChoice as a dict), or why there
    is nothing to fit against."""
    from qlora_studio.config import RunConfig
    from qlora_studio.core.fit import auto_fit

    if device != "cuda" or not available:
        where = "the CPU has no GPU memory" if device != "cuda" else "no GPU was found"
        return {"fits": None, "reason": f"{where} to fit against: the settings are kept"}
    trial = RunConfig.from_dict(cfg.to_dict())
    trial.method = method
    trial.train.batch_size, trial.data.max_length = settings.batch_size, settings.seq_len
    return auto_fit(info, trial, available, bf16_supported=bf16_supported).to_dict()


def _print_report(info, settings, report: dict[str, Any]) -> None:
    ckpt = "on" if settings.gradient_checkpointing else "off"
    print(f"{info.architecture} ({info.model_type}), {info.params_total / 1e6:,.1f} M parameters")
    print(
        f"batch {settings.batch_size} x {settings.seq_len} tokens, compute "
        f"{settings.compute_dtype}, optimizer {settings.optimizer}, LoRA r={settings.lora_r}, "
        f"gradient checkpointing {ckpt}"
    )
    print(report["target"]["line"])
    for method, entry in report["methods"].items():
        estimate = entry["estimate"]
        print(f"\n{METHOD_LABELS[method]}  ({estimate['trainable_params']:,} trainable parameters)")
        for term in estimate["terms"]:
            print(f"  {term['name']:<28} {format_gb(term['bytes']):>10}  {term['detail']}")
        print(
            f"  {'total':<28} {format_gb(estimate['total_bytes']):>10}  "
            f"largest term: {estimate['dominant']}"
        )
        ram = entry["system_ram"]
        print(
            f"  system RAM: load {format_gb(ram['load'])}"
            + (f", merge {format_gb(ram['merge'])}" if ram.get("merge") else "")
        )
        verdict = entry.get("verdict")
        if verdict:
            print(
                f"  verdict: {verdict['status'].upper()} — "
                f"needs {format_gb(verdict['needed_bytes'])}"
                f" of {format_gb(verdict['available_bytes'])}; largest batch that fits "
                f"{verdict['max_batch_size']}, longest sequence {verdict['max_seq_len']:,}"
            )
            for advice in verdict["advice"]:
                print(f"    - {advice}")
        needed = entry.get("gpus_needed", 1)
        if needed is None:
            print("  several GPUs: does not fit even 8 of these GPUs with fsdp")
        elif needed > 1:
            print(f"  several GPUs: needs {needed} of these GPUs with fsdp (--strategy fsdp)")
        share = entry.get("per_gpu")
        if share:
            each = share["estimate"]
            print(f"  each of {share['gpus']} GPUs with {share['strategy']}:")
            for term in each["terms"]:
                print(f"    {term['name']:<30} {format_gb(term['bytes']):>10}")
            print(f"    {'total per GPU':<30} {format_gb(each['total_bytes']):>10}")
        for term in entry["estimate"]["cpu_terms"]:
            print(f"  in CPU RAM: {term['name']} {format_gb(term['bytes'])}, {term['detail']}")
        fit = entry.get("auto_fit")
        if fit:
            print(f"  auto-fit (train.fit: auto): {fit['reason']}")
            if fit.get("hint"):
                print(f"    to fit: {fit['hint']}")
    probe = report.get("probe")
    if probe:
        print()
        if "error" in probe:
            print(f"Probe failed: {probe['error']}")
        else:
            print(
                f"Probe ({METHOD_LABELS[probe['method']]}, "
                f"{probe['steps']} steps on {probe['device']}, "
                f"batch {probe['batch_size']} x {probe['seq_len']} tokens, "
                f"{probe['seconds']:.0f} s): measured {format_gb(probe['peak_bytes'])}, "
                f"estimated {format_gb(probe['estimate_bytes'])} at the same settings "
                f"({probe['error_pct']:+.1f}%)"
            )


def _probe_child(cfg, method: str, settings) -> dict[str, Any]:
    """Run the probe in a fresh process so only its own memory is measured: its result, or
    ``{"error": message}``."""
    from qlora_studio.core.child import ChildProcess

    cfg.method = method
    cfg.train.batch_size = settings.batch_size
    cfg.data.max_length = settings.seq_len
    with tempfile.TemporaryDirectory(prefix="qlora-probe-cfg-") as tmp:
        path = cfg.save(Path(tmp) / "probe.yaml")
        print(f"• probing {method}: two training steps on the longest batch...", file=sys.stderr)
        outcome = ChildProcess(["probe", str(path), "--json"]).run()
    if outcome["type"] != "done":
        return {"error": outcome.get("message") or "the probe was stopped"}
    return {k: v for k, v in outcome.items() if k not in _EVENT_KEYS}


def run_probe_command(args) -> int:
    """Two real training steps, measured. With ``--json`` the one JSON object printed is also a
    ``done`` event (or an ``error`` event), so a GUI job reads it as the command's outcome; a
    ``stop`` line on stdin or Ctrl-C ends the probe at once (exit 130)."""
    from qlora_studio.config import ConfigError, RunConfig
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.events import TextReporter, make_event
    from qlora_studio.core.memory import estimate_memory
    from qlora_studio.core.memory_settings import Settings
    from qlora_studio.core.models.inspect import inspect_model
    from qlora_studio.core.training.probe import run_probe

    _exit_when_stopped()
    try:
        cfg = RunConfig.load(args.config).with_overrides(args.overrides)
        result = run_probe(cfg, reporter=TextReporter(sys.stderr))
        info = inspect_model(
            cfg.model.source,
            allow_pickle=cfg.model.allow_pickle,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    except ConfigError as exc:
        message = f"config error: {exc.field}: {exc.message}"
        return _probe_failure(args.json, message, exc.hint)
    except StudioError as exc:
        return _probe_failure(args.json, exc.message, exc.hint)
    settings = Settings.from_config(cfg, device=result.device)
    settings.seq_len = result.seq_len
    estimate = estimate_memory(info, settings, cfg.method)
    data = result.to_dict() | {
        "estimate_bytes": estimate.total_bytes,
        "dominant": estimate.dominant,
        "error_pct": round(100 * (estimate.total_bytes - result.peak_bytes) / result.peak_bytes, 1),
        "terms": {t.name: t.bytes for t in estimate.terms},
    }
    if args.json:
        done = make_event("done", step=result.steps, run_dir="", adapter_dir="")
        print(json.dumps(done | data))
    else:
        print(
            f"{cfg.method} on {result.device}: batch {result.batch_size} x {result.seq_len} "
            f"tokens, measured peak {format_gb(result.peak_bytes)}, estimate "
            f"{format_gb(estimate.total_bytes)} ({data['error_pct']:+.1f}%)"
        )
    return EXIT_OK


def _probe_failure(as_json: bool, message: str, hint: str) -> int:
    if as_json:
        from qlora_studio.core.events import make_event

        print(json.dumps(make_event("error", message=message, hint=hint or "")), flush=True)
    return print_failure(message, hint)


def _exit_when_stopped() -> None:
    """The probe has no step to stop after and writes nothing worth keeping: a ``stop`` line
    on stdin (how the GUI cancels a job) or Ctrl-C ends the process at once."""
    import os
    import signal
    import threading

    from qlora_studio.cli.common import EXIT_CANCELLED

    def stop(*_args) -> None:
        print("■ probe stopped", file=sys.stderr, flush=True)
        os._exit(EXIT_CANCELLED)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    if sys.stdin is not None and not sys.stdin.isatty():

        def read_stdin() -> None:
            try:
                for line in sys.stdin:
                    if line.strip().lower() in {"stop", "cancel"}:
                        stop()
            except (OSError, ValueError):
                return

        threading.Thread(target=read_stdin, name="stop-listener", daemon=True).start()
