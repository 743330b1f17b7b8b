"""CPU threads that fit the machine the in-process engine runs on.

PyTorch's CPU thread pool (OpenMP) starts one thread per CPU the process may be scheduled on, and
between parallel regions its threads spin, waiting for the next one. On a machine where other work
keeps the cores busy, spinning threads take the CPU from the thread that has work to do, and every
small forward pass waits for a time slice: on a 2-core machine beside one other job, RAIN's small
forward passes ran 10-15 times slower than with one thread. So, before torch starts its pool, this
module:

- picks the thread count from the cores the process may really use: the physical cores of its CPU
  affinity mask (``os.sched_getaffinity``), capped by the cgroup's CPU quota (cgroup v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``), never ``os.cpu_count()``;
- sets OpenMP's passive wait policy (``OMP_WAIT_POLICY=PASSIVE``): a thread without work sleeps
  instead of spinning, so it leaves the core to whoever needs it.

What the user set always wins: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment keeps
the thread count, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` keeps the wait policy, and
``torch.set_num_threads`` called before the first model loads keeps its count. When torch was
imported before rain's engine, rain leaves threads alone (it cannot tell what was set).
``RAIN_THREADS=off`` switches all of this off (PyTorch's own defaults), ``RAIN_THREADS=N`` asks for N
threads. ``prepare`` runs when the engine package is imported, ``settle`` when ``load_model`` first
imports torch; ``plan`` and ``usable_cores`` are the pure parts.
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
    else:
        environment["OMP_WAIT_POLICY"] = "PASSIVE"
        reason += "; OpenMP threads sleep between parallel regions (OMP_WAIT_POLICY=PASSIVE)"
    return ThreadPlan(threads, environment, reason)


_state: dict[str, ThreadPlan | None] = {"plan": None, "settled": None}


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
    for name, value in chosen.environment.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    logger.info("CPU threads: %s", chosen.reason)
