"""What a run costs: wall time (device synchronised before the clock is read), peak memory
(torch.cuda.max_memory_allocated on GPU, the process's peak resident set on CPU, both reset
when training starts so that loading the model does not count) and forward
passes (counted by a hook on the model, so every optimizer is counted the same way)."""

from __future__ import annotations

import resource
import sys
import time

import torch

from zoft.train.objective import CONTINUED


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> bool:
    """Start peak tracking afresh (so model loading does not count); False where impossible."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux >= 4.0: writing 5 resets the process's peak resident set (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """Peak since the last reset: CUDA allocator peak, or the process's peak RSS (VmHWM)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # lifetime peak (cannot reset)
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


class Meter:
    """Counts forward passes of ``model`` while ``counting`` is on; times with sync."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.forward_passes = 0
        self.counting = False
        self.elapsed = 0.0
        self._start: float | None = None
        model.register_forward_pre_hook(self._count)
        self.peak_reset = reset_peak_memory(device)

    def _count(self, module, args) -> None:
        # a length bucket after the first continues the same pass
        if self.counting and not getattr(module, CONTINUED, False):
            self.forward_passes += 1

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self) -> None:
        synchronize(self.device)
        if self._start is not None:
            self.elapsed += time.perf_counter() - self._start
            self._start = None

    def peak_memory(self) -> int:
        return peak_memory_bytes(self.device)
