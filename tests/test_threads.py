"""The in-process engine's CPU threads: the count comes from the cores the process may use (CPU
affinity, the cgroup quota, physical cores), follows the cores other work leaves free, and what the user set wins
(``OMP_NUM_THREADS``, ``torch.set_num_threads``, ``RAIN_THREADS``). The pure parts on made-up
machines; the whole path in fresh interpreters, where torch starts after rain's engine is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rain_core.engines.transformers.threads import (
    ThreadGovernor,
    cgroup_cpu_limit,
    cpu_busy_seconds,
    physical_cores,
    plan,
    usable_cores,
)

ROOT = Path(__file__).resolve().parents[1]
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cpus = pytest.mark.skipif(
    len(CPUS) < 2, reason="a restricted affinity mask and a thread count that differs from it need 2 CPUs"
)


# --- the pure parts ---------------------------------------------------------------------------------
def cgroup_tree(tmp_path: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    return root, tmp_path / "self"


def test_cgroup_v2_quota_along_the_process_path(tmp_path):
    root, me = cgroup_tree(
        tmp_path,
        {"cpu.max": "max 100000\n", "box/cpu.max": "250000 100000\n", "box/job/cpu.max": "max 100000\n"},
        "0::/box/job\n",
    )
    assert cgroup_cpu_limit(root, me) == 2.5
    root, me = cgroup_tree(tmp_path / "none", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, me) is None


def test_cgroup_v1_quota(tmp_path):
    files = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}
    root, me = cgroup_tree(tmp_path, files, "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n")
    assert cgroup_cpu_limit(root, me) == 1.5
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, me = cgroup_tree(tmp_path / "unlimited", files, "3:cpu,cpuacct:/\n")
    assert cgroup_cpu_limit(root, me) is None


def test_physical_cores_count_hyperthreads_once(tmp_path):
    for cpu, core in {0: 0, 1: 1, 2: 0, 3: 1}.items():  # two cores, two threads each
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text("0\n")
        (folder / "core_id").write_text(f"{core}\n")
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2}, tmp_path) == 1
    assert physical_cores({7}, tmp_path) == 1  # no topology to read: each CPU counts


def test_usable_cores_is_affinity_capped_by_the_quota():
    one_each = len  # every CPU its own core
    assert usable_cores(lambda: {0, 1, 2, 3}, lambda: None, one_each) == 4
    assert usable_cores(lambda: {0, 1, 2, 3}, lambda: 2.5, one_each) == 2  # rounded down
    assert usable_cores(lambda: {2}, lambda: 8.0, one_each) == 1
    assert usable_cores(lambda: {0, 1}, lambda: 0.5, one_each) == 1  # never 0
    assert usable_cores(lambda: {0, 1, 2, 3}, lambda: None, lambda cpus: 2) == 2  # physical cores


def test_the_plan_and_what_the_user_set():
    four = lambda: 4  # noqa: E731
    chosen = plan({}, torch_imported=False, cores=four)
    assert chosen.threads == 4 and chosen.adapts
    assert chosen.environment == {"OMP_NUM_THREADS": "4"}  # OpenMP's own (spinning) waits: fastest when idle
    kept = plan({"OMP_NUM_THREADS": "3"}, torch_imported=False, cores=four)
    assert kept.threads is None and kept.environment == {} and not kept.adapts
    assert "OMP_NUM_THREADS=3 set by the user" in kept.reason
    assert plan({"MKL_NUM_THREADS": "2"}, torch_imported=False, cores=four).threads is None
    passive = plan({"OMP_WAIT_POLICY": "PASSIVE"}, torch_imported=False, cores=four)
    assert (
        passive.environment == {"OMP_NUM_THREADS": "4"} and "OMP_WAIT_POLICY=PASSIVE set by the user" in passive.reason
    )
    assert not plan({"RAIN_THREADS": "3"}, torch_imported=False, cores=four).adapts  # a count asked for is fixed
    assert not plan({}, torch_imported=False, cores=lambda: 1).adapts  # nothing to give back
    assert plan({}, torch_imported=True, cores=four).environment == {}  # too late to set anything
    assert plan({"RAIN_THREADS": "off"}, torch_imported=False, cores=four).environment == {}
    assert plan({"RAIN_THREADS": "2"}, torch_imported=False, cores=four).environment["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="RAIN_THREADS must be auto, off or a number of threads >= 1, got 'many'"):
        plan({"RAIN_THREADS": "many"}, torch_imported=False, cores=four)


class Machine:
    """A made-up machine for the governor: CPU seconds of the other work and of this process, a clock."""

    def __init__(self, cores: int = 2) -> None:
        self.now, self.others, self.own, self.count = 0.0, 0.0, 0.0, cores

    def run(self, seconds: float, others_cores: float, own_cores: float) -> None:
        self.now += seconds
        self.others += seconds * others_cores
        self.own += seconds * own_cores

    def governor(self, cores: int = 2) -> ThreadGovernor:
        def set_threads(n: int) -> None:
            self.count = n

        return ThreadGovernor(
            cores, lambda: self.others + self.own, lambda: self.own, set_threads, lambda: self.count, lambda: self.now
        )


def test_the_governor_gives_back_the_cores_other_work_takes_and_takes_them_again():
    m = Machine()
    g = m.governor()
    g.check()  # the first look starts the measurement
    m.run(1.0, others_cores=0.0, own_cores=2.0)
    g.check()
    assert m.count == 2  # idle machine: every usable core
    m.run(1.0, others_cores=1.0, own_cores=1.0)  # one CPU-bound job beside rain
    g.check()
    assert m.count == 1
    m.run(0.2, others_cores=0.0, own_cores=1.0)
    g.check()
    assert m.count == 1  # looked at most every interval
    m.run(1.0, others_cores=0.1, own_cores=1.0)  # the job ended: a little noise is not work
    g.check()
    assert m.count == 2


def test_the_governor_stops_when_someone_else_sets_the_count_or_the_cpus_cannot_be_read():
    m = Machine()
    g = m.governor()
    g.check()
    m.count = 1  # torch.set_num_threads by the user
    m.run(1.0, others_cores=0.0, own_cores=1.0)
    g.check()
    m.run(1.0, others_cores=0.0, own_cores=1.0)
    g.check()
    assert not g.active and m.count == 1
    blind = ThreadGovernor(2, lambda: None, lambda: 0.0, lambda n: None, lambda: 2, lambda: 0.0)
    blind.check()
    assert not blind.active


def test_cpu_busy_seconds_reads_the_cpus_of_the_mask(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  30 0 10 500 5 0 0 0\ncpu0 20 0 5 200 5 0 0 0\ncpu1 10 0 5 300 0 0 0 0\nintr 1\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert cpu_busy_seconds({0, 1}, stat) == 40 / tick
    assert cpu_busy_seconds({1}, stat) == 15 / tick
    assert cpu_busy_seconds(None, tmp_path / "missing") is None


# --- in a fresh interpreter ---------------------------------------------------------------------------
PROBE = """
import json, os, sys
{before}
from rain_core.engines.transformers import threads  # rain's engine first, as load_model imports it
import torch
{between}
threads.settle()  # what load_model does once torch is imported
x = torch.randn(64, 64); x @ x
print(json.dumps({{"torch": torch.get_num_threads(), "planned": threads._state["plan"].threads,
                  "omp": os.environ.get("OMP_NUM_THREADS"), "wait": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def fresh(env: dict[str, str], before: str = "", between: str = "") -> dict[str, object]:
    user = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RAIN_THREADS")
    clean = {k: v for k, v in os.environ.items() if k not in user}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    code = PROBE.format(before=textwrap.dedent(before), between=textwrap.dedent(between))
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@needs_two_cpus
def test_a_restricted_affinity_mask_gives_one_thread():
    seen = fresh({}, before=f"os.sched_setaffinity(0, {{{CPUS[0]}}})")
    assert seen["planned"] == 1 and seen["torch"] == 1
    assert seen["omp"] is None and seen["wait"] is None  # taken out of the environment once torch started


@needs_two_cpus
def test_the_chosen_count_reaches_torch():
    seen = fresh({"RAIN_THREADS": "1"})  # a count torch would not choose by itself here
    assert seen == {"torch": 1, "planned": 1, "omp": None, "wait": None}
    auto = fresh({})
    assert auto["planned"] == usable_cores() and auto["torch"] == usable_cores()


@needs_two_cpus
def test_omp_num_threads_from_the_user_wins():
    seen = fresh({"OMP_NUM_THREADS": "1"})
    assert seen["torch"] == 1 and seen["planned"] is None and seen["omp"] == "1"  # the user's, left in place


@needs_two_cpus
def test_torch_set_num_threads_from_the_user_wins():
    seen = fresh({}, between="torch.set_num_threads(1)")  # after torch started, before the first model loads
    assert seen["torch"] == 1 and seen["planned"] == usable_cores()


def test_torch_imported_first_is_left_alone():
    seen = fresh({"RAIN_THREADS": "1"}, before="import torch")
    assert seen["planned"] is None and seen["omp"] is None and seen["wait"] is None
    assert seen["torch"] == fresh({"RAIN_THREADS": "off"})["torch"]  # PyTorch's own choice
