"""Many local vLLM replicas behind vLLM's own router (``vllm-router``), for tests and benchmarks.

``LocalCluster(python, model, replicas=2).start()`` starts the replicas (``LocalVLLMServer``, the CPU
flags of ``launch``) and then ``vllm-router`` from the same virtualenv in front of them; its
``base_url`` is what ``VLLMEngine`` talks to. ``kill(i)`` ends replica ``i`` with SIGKILL (a replica
dying mid-decode), ``restart_router(policy)`` puts a router with another policy in front of the same
replicas, ``stop()`` ends exactly the processes it started, by their ids.

The router's flags (``ROUTER_FLAGS``) follow what was measured with vllm-router 0.1.17 (docs/scale.md):
``--policy consistent_hash`` keeps each ``X-Session-ID`` on one replica; the circuit breaker opens
after 2 failures (a dead replica's sessions move within the first request's own retries, where the
default of 10 lets requests fail first) and tries the replica again after 5 s; replicas are probed
every second at start-up (the default waits 30 s) and every 5 s afterwards; ``RUST_LOG=warn`` keeps
it from logging every request's session id (0.1.17 does at INFO whatever ``--log-level`` says). Its
readiness is read on
``/readiness`` (``/health`` answers 503 while any replica is down). The router starts after every
replica answers ``/health``: a replica registered while down counts as healthy until its breaker opens.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .launch import CPU_FLAGS, LocalVLLMServer, ServerStartError, free_port

logger = logging.getLogger(__name__)

__all__ = ["POLICIES", "ROUTER_FLAGS", "LocalCluster", "LocalRouter"]

POLICIES = ("consistent_hash", "round_robin", "cache_aware", "power_of_two", "random")
ROUTER_FLAGS: tuple[str, ...] = (
    "--cb-failure-threshold",
    "2",
    "--cb-timeout-duration-secs",
    "5",
    "--health-check-interval-secs",
    "5",
    "--worker-startup-check-interval",
    "1",
    "--log-level",
    "warning",
)


def _status(url: str, timeout: float = 3.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def _end_group(process: subprocess.Popen[bytes] | None, sig: int, wait: float) -> None:
    """Send ``sig`` to ``process``'s group (it leads its own session) and reap it; SIGKILL what is left."""
    if process is None:
        return
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(process.pid, s)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait if s == sig else 5)
        except subprocess.TimeoutExpired:
            continue


class LocalRouter:
    """One ``vllm-router`` process on 127.0.0.1 in front of ``worker_urls`` (root URLs, no ``/v1``)."""

    def __init__(
        self,
        executable: str | os.PathLike[str],
        worker_urls: Sequence[str],
        *,
        policy: str = "consistent_hash",
        port: int | None = None,
        flags: Sequence[str] = ROUTER_FLAGS,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not worker_urls:
            raise ValueError("a router needs at least one worker URL")
        self.executable = str(executable)
        self.worker_urls = [u.rstrip("/") for u in worker_urls]
        self.policy = policy
        self.port = port
        self.flags = list(flags)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-router-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            self.executable,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            "--policy",
            self.policy,
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(free_port()),
            *self.flags,
        ]

    def start(self, timeout: float = 60.0) -> LocalRouter:
        """Start the router and wait until ``/readiness`` answers 200 (``ServerStartError`` otherwise)."""
        if not Path(self.executable).exists():
            raise FileNotFoundError(
                f"{self.executable} does not exist: install vllm-router into the vLLM venv (make vllm)"
            )
        self.port = self.port or free_port()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"RUST_LOG": "warn", **os.environ},
            )
        deadline = time.monotonic() + timeout
        while _status(f"http://127.0.0.1:{self.port}/readiness") != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise ServerStartError(
                    f"vllm-router did not become ready; the end of its log ({self.log_path}):\n{tail}"
                )
            time.sleep(0.2)
        logger.info("vllm-router (%s, pid %d) ready at %s", self.policy, self.process.pid, self.base_url)
        return self

    def stop(self) -> None:
        """SIGTERM (the router drains and exits in 1-3 s), SIGKILL after 10 s."""
        _end_group(self.process, signal.SIGTERM, 10.0)
        self.process = None


class LocalCluster:
    """``replicas`` vLLM servers of one model and a router in front of them. ``python``: the vLLM
    virtualenv's interpreter (``vllm-router`` is looked for beside it); ``flags``/``extra_flags``/
    ``name``: as ``LocalVLLMServer``'s; ``env``: each replica's environment (a mapping, or one per
    replica); ``log_dir``: where the logs go (default: a temporary folder)."""

    def __init__(
        self,
        python: str | os.PathLike[str],
        model: str | os.PathLike[str],
        replicas: int = 2,
        *,
        policy: str = "consistent_hash",
        name: str = "rain-model",
        flags: Sequence[str] = CPU_FLAGS,
        extra_flags: Sequence[str] = (),
        env: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        router_flags: Sequence[str] = ROUTER_FLAGS,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.python = Path(python)
        self.router_executable = self.python.parent / "vllm-router"
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="rain-cluster-"))
        envs = [env] * replicas if env is None or isinstance(env, Mapping) else list(env)
        if len(envs) != replicas:
            raise ValueError(f"env: {len(envs)} environments for {replicas} replicas")
        self.replicas = [
            LocalVLLMServer(
                python,
                model,
                name=name,
                flags=flags,
                extra_flags=extra_flags,
                log_path=self.log_dir / f"replica-{i}.log",
                env=None if e is None else {**os.environ, **e},
            )
            for i, e in enumerate(envs)
        ]
        self.policy = policy
        self.router_flags = list(router_flags)
        self.router: LocalRouter | None = None

    @property
    def base_url(self) -> str:
        """The router's ``/v1`` URL."""
        if self.router is None:
            raise RuntimeError("the cluster's router is not running: start() first")
        return self.router.base_url

    def replica_urls(self) -> list[str]:
        """Each replica's root URL (without ``/v1``), in order."""
        return [f"http://127.0.0.1:{r.port}" for r in self.replicas]

    def start(self, timeout: float = 420.0) -> LocalCluster:
        """Start every replica (side by side), then the router; on any failure stop what started."""
        errors: list[BaseException] = []

        def start(replica: LocalVLLMServer) -> None:
            try:
                replica.start(timeout=timeout)
            except BaseException as exc:  # reported below, after every start has ended
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(r,), daemon=True) for r in self.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            if errors:
                raise errors[0]
            self.restart_router(self.policy)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_router(self, policy: str, replicas: Sequence[int] | None = None) -> LocalRouter:
        """A router with ``policy`` in front of ``replicas`` (indices; default all), in place of the
        running one."""
        if self.router is not None:
            self.router.stop()
        urls = self.replica_urls()
        chosen = [urls[i] for i in (range(len(urls)) if replicas is None else replicas)]
        self.policy = policy
        self.router = LocalRouter(
            self.router_executable,
            chosen,
            policy=policy,
            flags=self.router_flags,
            log_path=self.log_dir / f"router-{policy}.log",
        ).start()
        return self.router

    def kill(self, index: int) -> None:
        """End replica ``index`` at once (SIGKILL to its process group: API server, engine, worker)."""
        replica = self.replicas[index]
        _end_group(replica.process, signal.SIGKILL, 5.0)
        replica.process = None
        logger.info("replica %d (port %s) killed", index, replica.port)

    def alive(self) -> list[int]:
        """Indices of the replicas whose process is still running."""
        return [i for i, r in enumerate(self.replicas) if r.process is not None and r.process.poll() is None]

    def stop(self) -> None:
        """End the router and every replica this cluster started."""
        if self.router is not None:
            self.router.stop()
            self.router = None
        for replica in self.replicas:
            replica.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
