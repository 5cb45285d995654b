""" "Verify fit": two real training steps on the longest batch the run will see, measured.

On CUDA the measured peak is torch's peak reserved memory plus what the CUDA context and other
non-torch allocations of this process hold (NVML used minus torch reserved, taken before the
steps). On the CPU it is the peak resident memory of the process, sampled every few
milliseconds from before the model loads to after the last step. Run it in a fresh process
(``qlora-studio estimate --probe`` does) so nothing else is counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlora_studio.config import RunConfig
from qlora_studio.core.events import NullReporter, Reporter, make_event


@dataclass
class ProbeResult:
    method: str
    device: str
    batch_size: int
    seq_len: int  # tokens in the longest batch, after truncation
    steps: int
    peak_bytes: int  # the figure the estimate is judged against
    detail: dict[str, int]  # the readings the peak is made of
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PeakRss:
    """Samples this process's RSS in a thread and keeps the maximum."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def mark(self) -> int:
        """Return the peak so far and start a new one from the current RSS."""
        peak = max(self.peak, self._process.memory_info().rss)
        self.peak = self._process.memory_info().rss
        return peak

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def run_probe(cfg: RunConfig, *, steps: int = 2, reporter: Reporter | None = None) -> ProbeResult:
    """Build the run's model exactly as training does and take ``steps`` optimizer steps on
    the longest batch; return the measured peak. Writes nothing but a temporary folder."""
    import tempfile

    from qlora_studio.core.training.recipe import FineTuneRecipe

    reporter = reporter or NullReporter()
    started = time.time()
    cfg = RunConfig.from_dict(cfg.to_dict())
    cfg.train.max_steps = steps
    cfg.train.save_steps = 10_000
    cfg.data.validation_split = 0.0
    cfg.data.eval_path = ""
    with tempfile.TemporaryDirectory(prefix="qlora-probe-") as tmp, _PeakRss() as rss:
        recipe = FineTuneRecipe(
            cfg, reporter=reporter, run_dir=Path(tmp) / "probe", record_history=False
        )
        recipe.setup()
        cfg = recipe.cfg  # after auto-fit
        recipe.worst_case_steps = steps  # exactly `steps` batches, each the heaviest
        lengths = [len(r["input_ids"]) for r in recipe.prepared.train]
        seq_len = max(lengths)
        budget = cfg.data.max_tokens_per_batch
        reporter.emit(
            make_event(
                "status",
                message=f"Probe: {steps} steps on the heaviest batch, up to "
                f"{cfg.train.batch_size} rows of up to {seq_len} tokens"
                + (f" and {budget:,} tokens in all" if budget else ""),
            )
        )
        cuda = _cuda_baseline() if recipe.device == "cuda" else None
        load_peak = rss.mark()
        try:
            recipe.train()
            detail = _cuda_peak(cuda) if cuda is not None else {}
        finally:
            recipe.cleanup()
    if cuda is None:
        # the whole run's peak (loading included), and the training steps' own
        peak = max(int(rss.peak), int(load_peak))
        detail = {
            "peak_rss_bytes": peak,
            "load_peak_rss_bytes": int(load_peak),
            "steps_peak_rss_bytes": int(rss.peak),
        }
    else:
        peak = detail["peak_reserved_bytes"] + detail["non_torch_bytes"]
    return ProbeResult(
        method=cfg.method,
        device=recipe.device,
        batch_size=cfg.train.batch_size,
        seq_len=seq_len,
        steps=steps,
        peak_bytes=int(peak),
        detail=detail,
        seconds=round(time.time() - started, 1),
    )


def _cuda_baseline() -> dict[str, int]:
    import torch

    from qlora_studio.core.gpu import nvml_device_memory

    torch.cuda.synchronize()
    index = torch.cuda.current_device()
    nv = nvml_device_memory(index) or {}
    reserved = int(torch.cuda.memory_reserved(index))
    torch.cuda.reset_peak_memory_stats(index)
    # what this process holds outside torch's allocator: the CUDA context, cuBLAS workspaces
    # (other processes on the GPU would inflate this: the probe is meant for an idle GPU)
    return {"nvml_used_before": int(nv.get("used", 0)), "reserved_before": reserved}


def _cuda_peak(baseline: dict[str, int]) -> dict[str, int]:
    import torch

    torch.cuda.synchronize()
    index = torch.cuda.current_device()
    peak_reserved = int(torch.cuda.max_memory_reserved(index))
    non_torch = max(baseline["nvml_used_before"] - baseline["reserved_before"], 0)
    return {
        "peak_reserved_bytes": peak_reserved,
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(index)),
        "non_torch_bytes": non_torch,
    }
