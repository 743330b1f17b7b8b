"""CPU threads that fit the machine the in-process engine runs on.

PyTorch's CPU thread pool (OpenMP) starts one thread per CPU the process may be scheduled on, and
every parallel region waits for all of them. On a machine where other work keeps a core busy, a
thread of the pool is often descheduled, and every small forward pass waits at the region's barrier
for its time slice, while its partner spins: on a 2-core machine beside one CPU-bound job, RAIN's
small forward passes ran 3-15 times slower than alone. So:

- before torch starts its pool, the thread count is chosen from the cores the process may really
  use: the physical cores of its CPU affinity mask (``os.sched_getaffinity``), capped by the cgroup's
  CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), never ``os.cpu_count()``;
- while the engine runs, ``ThreadGovernor`` keeps the pool at the cores that other work leaves free:
  at most twice a second, between forward passes, it reads how busy those CPUs were (``/proc/stat``)
  apart from this process (``time.process_time``) and sets ``torch.set_num_threads`` to the usable
  cores minus the ones others kept busy (at least 1). An idle machine keeps every usable core and
  OpenMP's default (spinning) waits, which are the fastest there; a passive wait policy was measured
  slower idle (the README's quick start: 7.8 s against 5.2 s).

What the user set always wins: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment keeps
the thread count, and ``torch.set_num_threads`` called before the first model loads (or later, by
anyone) keeps its count; in either case nothing adapts it. When torch was imported before rain's
engine, rain leaves threads alone (it cannot tell what was set). ``RAIN_THREADS=off`` switches all of
this off (PyTorch's own defaults), ``RAIN_THREADS=N`` asks for N threads (fixed). ``prepare`` runs
when the engine package is imported, ``settle`` when ``load_model`` first imports torch, ``check``
before forward passes; ``plan``, ``usable_cores`` and ``ThreadGovernor`` (given its readers) are the
pure parts.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SWITCH = "RAIN_THREADS"
"""The environment variable that steers this: unset or ``auto`` (the default), ``off``, or a number."""
_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = _CGROUP, self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs the cgroup's quota allows (quota / period, the lowest along the process's cgroup
    path and at the mount's root), or None without a quota. cgroup v2 (``cpu.max``) and v1
    (``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``)."""
    v2_paths: list[str] = []
    v1_paths: list[str] = []
    try:
        for line in self_cgroup.read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" and controllers == "":
                v2_paths.append(path)
            elif "cpu" in controllers.split(","):
                v1_paths.append(path)
    except OSError:
        pass
    limits: list[float] = []
    for folder in _along(root, v2_paths or ["/"]):
        try:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota != "max":
                limits.append(int(quota) / int(period or "100000"))
        except (OSError, ValueError, ZeroDivisionError):
            pass
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _along(root / mount, v1_paths or ["/"]):
            try:
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
                if quota_us > 0 and period_us > 0:
                    limits.append(quota_us / period_us)
            except (OSError, ValueError):
                pass
    return min(limits) if limits else None


def _along(base: Path, paths: list[str]) -> list[Path]:
    """``base`` and every folder from it down each cgroup path (a quota anywhere above applies)."""
    folders = [base]
    for path in paths:
        here = base
        for part in [p for p in path.split("/") if p]:
            here = here / part
            folders.append(here)
    return folders


def physical_cores(cpus: set[int], topology: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many physical cores the logical CPUs ``cpus`` sit on (hyper-threads of one core count
    once); ``len(cpus)`` where the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        folder = topology / f"cpu{cpu}" / "topology"
        try:
            cores.add(
                (folder / "physical_package_id").read_text().strip() + ":" + (folder / "core_id").read_text().strip()
            )
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def _affinity() -> set[int] | None:
    get = getattr(os, "sched_getaffinity", None)  # not on macOS or Windows
    return set(get(0)) if get is not None else None


def usable_cores(
    affinity: Callable[[], set[int] | None] = _affinity,
    quota: Callable[[], float | None] = cgroup_cpu_limit,
    cores_of: Callable[[set[int]], int] = physical_cores,
) -> int:
    """The threads that fit: the physical cores of the CPU affinity mask, no more than the cgroup's
    CPU quota allows (rounded down), at least 1."""
    cpus = affinity()
    count = cores_of(cpus) if cpus else (os.cpu_count() or 1)
    limit = quota()
    if limit is not None:
        count = min(count, math.floor(limit + 1e-9))
    return max(1, count)


@dataclass(frozen=True)
class ThreadPlan:
    """What ``prepare`` does: ``threads`` (None: leave the count), the environment variables it sets
    before torch starts, and why, in words (logged)."""

    threads: int | None
    environment: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    adapts: bool = False  # the count follows the cores other work leaves free (ThreadGovernor)


def plan(env: Mapping[str, str], torch_imported: bool, cores: Callable[[], int] = usable_cores) -> ThreadPlan:
    """The thread count and wait policy for a process with environment ``env``, not yet acted on."""
    switch = env.get(SWITCH, "auto").strip().lower() or "auto"
    if switch in ("off", "0", "no", "false"):
        return ThreadPlan(None, {}, f"{SWITCH}={env[SWITCH]}: PyTorch's own thread defaults")
    if torch_imported:
        return ThreadPlan(None, {}, "torch was imported before rain's engine: its threads are left as they are")
    if switch == "auto":
        wanted = None
    else:
        try:
            wanted = int(switch)
        except ValueError:
            wanted = 0
        if wanted < 1:
            raise ValueError(f"{SWITCH} must be auto, off or a number of threads >= 1, got {env[SWITCH]!r}")
    environment: dict[str, str] = {}
    user_count = [name for name in _COUNT_VARIABLES if env.get(name, "").strip()]
    threads: int | None = None
    if user_count:
        reason = f"{user_count[0]}={env[user_count[0]]} set by the user: kept"
    else:
        threads = wanted if wanted is not None else cores()
        environment["OMP_NUM_THREADS"] = str(threads)
        reason = f"{threads} thread(s)" + (
            f" ({SWITCH})" if wanted is not None else " (the cores this process may use)"
        )
    user_wait = [name for name in _WAIT_VARIABLES if env.get(name, "").strip()]
    if user_wait:
        reason += f"; {user_wait[0]}={env[user_wait[0]]} set by the user: kept"
    adapts = threads is not None and wanted is None and threads > 1
    if adapts:
        reason += "; fewer while other work keeps some of those cores busy"
    return ThreadPlan(threads, environment, reason, adapts)


class ThreadGovernor:
    """Keeps torch's thread count at the usable cores other work leaves free (see the module).

    ``read_busy()``: the busy seconds of the CPUs the process may run on, so far (all processes);
    ``own_seconds()``: this process's CPU seconds so far; ``set_threads(n)``/``get_threads()``: the
    pool's count; ``clock()``: monotonic seconds. ``check()`` looks at most every ``interval``
    seconds; the first look only starts the measurement. Someone else changing the count ends it."""

    def __init__(
        self,
        cores: int,
        read_busy: Callable[[], float | None],
        own_seconds: Callable[[], float],
        set_threads: Callable[[int], None],
        get_threads: Callable[[], int],
        clock: Callable[[], float],
        interval: float = 0.5,
    ) -> None:
        self.cores = cores
        self.read_busy, self.own_seconds = read_busy, own_seconds
        self.set_threads, self.get_threads, self.clock = set_threads, get_threads, clock
        self.interval = interval
        self.threads = cores
        self.active = True
        self._last: tuple[float, float, float] | None = None

    def check(self) -> None:
        if not self.active:
            return
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.interval:
            return
        busy, own = self.read_busy(), self.own_seconds()
        if busy is None or self.get_threads() != self.threads:
            self.active = False  # no way to see the CPUs, or the count was set by someone else
            return
        if self._last is not None:
            wall = now - self._last[0]
            others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / wall
            wanted = max(1, min(self.cores, math.floor(self.cores - others + 0.5)))
            if wanted != self.threads:
                logger.debug("CPU threads: %d -> %d (other work kept %.1f cores busy)", self.threads, wanted, others)
                self.set_threads(wanted)
                self.threads = wanted
        self._last = (now, busy, own)


def cpu_busy_seconds(cpus: set[int] | None, stat: Path = Path("/proc/stat")) -> float | None:
    """Busy seconds so far of the logical CPUs ``cpus`` (all: None), from ``/proc/stat``: every state
    but idle and iowait; None where that file cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in rest.split()]
        total += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
    return total / tick


_state: dict[str, ThreadPlan | None] = {"plan": None, "settled": None}
_governor: list[ThreadGovernor] = []


def check() -> None:
    """Between forward passes: let the governor follow the machine's load (a clock read when it has
    nothing to do)."""
    if _governor:
        _governor[0].check()


def prepare() -> ThreadPlan:
    """Before torch is imported: choose the threads and put them, and the wait policy, in the
    environment that torch's OpenMP runtime reads as it starts. Done once per process."""
    chosen = _state["plan"]
    if chosen is None:
        try:
            chosen = plan(os.environ, "torch" in sys.modules)
        except ValueError as exc:
            logger.warning("%s; using PyTorch's own thread defaults", exc)
            chosen = ThreadPlan(None, {}, str(exc))
        for name, value in chosen.environment.items():
            os.environ[name] = value
        _state["plan"] = chosen
    return chosen


def settle() -> None:
    """After torch is imported (``load_model``): pin the chosen count for every thread of the process
    (unless ``torch.set_num_threads`` changed it since), then take the variables ``prepare`` set out of
    the environment again, so that processes started from this one choose their own."""
    chosen = _state["plan"]
    if chosen is None or _state["settled"] is not None:
        return
    _state["settled"] = chosen
    import torch

    if chosen.threads is not None:
        now = torch.get_num_threads()
        if now == chosen.threads:
            torch.set_num_threads(chosen.threads)
        else:
            chosen = ThreadPlan(None, chosen.environment, f"torch.set_num_threads({now}) by the user: kept")
    if chosen.adapts and chosen.threads is not None:
        import time

        cpus = _affinity()
        # only where the process has these CPUs to itself to share: a quota below the affinity mask
        # means the mask's CPUs are shared with work the quota already keeps out
        if cpus is None or len(cpus) == chosen.threads:
            _governor.append(
                ThreadGovernor(
                    chosen.threads,
                    lambda: cpu_busy_seconds(cpus),
                    time.process_time,
                    torch.set_num_threads,
                    torch.get_num_threads,
                    time.monotonic,
                )
            )
    for name, value in chosen.environment.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    logger.info("CPU threads: %s", chosen.reason)
