"""Measurement helpers shared by the benchmarks: resident memory and its peak, the machine a run
happened on, and the git revision of the checkout. Nothing here prints."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    CPU: resident set size of the whole process, sampled every ``interval`` seconds by a background
    thread. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
    """

    def __init__(self, device: str, interval: float = 0.005) -> None:
        self.cuda = device.startswith("cuda")
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, name="rain-bench-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, rss_bytes())


@dataclass(frozen=True)
class Timed:
    """What ``timed`` measured: the call's value, its wall time, and the peak memory while it ran."""

    value: Any
    seconds: float
    peak_memory: int


def timed(fn: Callable[[], T], device: str = "cpu", interval: float = 0.005) -> Timed:
    """Run ``fn`` under a wall clock and a ``PeakMemory`` sampler."""
    with PeakMemory(device, interval) as mem:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return Timed(value, seconds, mem.peak)


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero."""
    return a / b if b else float("nan")


def median_range(values: list[float]) -> tuple[float, float, float]:
    """The median of ``values`` and their lowest and highest (NaN for none)."""
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan"), float("nan"), float("nan")
    mid = len(clean) // 2
    median = clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2
    return median, clean[0], clean[-1]


def fresh_cache(lm: Any) -> None:
    """Drop every state the engine cached (its prefix cache and packed trees), so that each timed
    decode starts from the same cache state; an engine without a cache of its own is left as it is."""
    clear = getattr(lm, "clear_cache", None)
    if callable(clear):
        clear()


def now_iso() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The short revision of the checkout this package runs from, ``-dirty`` when it has changes."""
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_available() -> bool:
    """Whether torch is installed and sees a GPU (a served model needs neither)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def machine_info(cuda: bool | None = None) -> dict[str, Any]:
    """The machine and software of a run (CPU, usable CPUs, torch threads, load, versions, git).
    torch and transformers are optional (a run against a served model needs neither)."""
    from rain_core import __version__

    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    try:
        import transformers

        transformers_version: str | None = transformers.__version__
    except ImportError:
        transformers_version = None
    if cuda is None:
        cuda = cuda_available()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__ if torch is not None else None,
        "transformers": transformers_version,
        "rain": __version__,
        "git": git_revision(),
        "gpu": torch.cuda.get_device_name(0) if cuda and torch is not None else None,
    }
