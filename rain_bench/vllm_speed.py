"""RAIN on a vLLM server: what the search costs over plain decoding on the same server, and what the
server's batching gives many decodes at once.

    python -m rain_bench.vllm_speed                         # starts a local CPU server from .venv-vllm
    python -m rain_bench.vllm_speed --base-url http://HOST:PORT/v1 --model NAME --seed-mode send
    python -m rain_bench.vllm_speed --quick                 # a small version (about two minutes)
    python -m rain_bench.vllm_speed --serve-encoder         # the similarity update's encoder served by vLLM too
    rain bench vllm --replicas 2                            # many replicas behind vllm-router (vllm_replicas)

Measurements (``measure`` returns a ``VLLMSpeedReport``; ``main`` prints it as Markdown and writes
``benchmarks/results/vllm-<device>.md`` and ``.json`` atomically):

1. Per-token cost of RAIN over plain decoding on the same server (plain: ``RainDecoder.vanilla``,
   top-k sampling; RAIN: the official defaults, ``RainConfig()``, and the fast preset,
   ``RainConfig.fast()``), each with the best-case evaluator that approves everything (so the
   searches stop as early as the algorithm allows, and the judge costs nothing).
2. Aggregate tokens/s of 8 decodes run one at a time against 8 at once, in threads and as asyncio
   tasks on one event loop (the fast preset; the best-case evaluator, then self-evaluation on the
   server). The decodes are seeded (``seed_mode="send"``), so the 8 at once do the same work as the 8
   one at a time; the report says whether their answers were identical.
3. Self-evaluation latency per decode with ``parallel_searches`` B=1 and B=8 (the official search and
   the fast preset, the same budget, prompts and seeds): at B=8 a round's expansions, simulations and
   evaluations go to the server as concurrent requests, which it batches. Target: at least
   ``TARGET_PARALLEL``x lower latency at B=8.
4. The server's prefix-cache hit rate (``/metrics``) over each run and over the whole benchmark.

The similarity update's sentence encoder runs on the client's CPU by default; ``--encoder-url URL``
uses one served on ``/v1/embeddings`` (``ServedEncoder``), and ``--serve-encoder`` starts a CPU vLLM
serving all-MiniLM-L6-v2 as a pooling model on this machine for the run (its own process beside
the model's server). ``--replicas N`` runs ``rain_bench.vllm_replicas`` instead (its own options).

Everything runs on one server; the ratios are what count. On a shared machine other processes take
CPU too: the report records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rain_core import CallableEvaluator, RainConfig, RainDecoder, RainResult, SelfEvaluator
from rain_core.engines.vllm import VLLMEngine

from .vllm_report import (
    SCHEMA,
    TARGET_PARALLEL,
    TARGET_SPEEDUP,
    VERSION,
    Concurrency,
    DecodeRun,
    ParallelRun,
    ParallelSearches,
    VLLMSpeedReport,
)

__all__ = [
    "SCHEMA",
    "TARGET_PARALLEL",
    "TARGET_SPEEDUP",
    "VERSION",
    "Concurrency",
    "DecodeRun",
    "ParallelRun",
    "ParallelSearches",
    "VLLMSpeedReport",
    "main",
    "measure",
]

logger = logging.getLogger(__name__)

WIDTHS = (1, 8)
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


# --- measuring ----------------------------------------------------------------------------------
def approve_all() -> CallableEvaluator:
    """The best case: every text is judged good, so searches stop as early as the algorithm allows."""
    return CallableEvaluator(lambda prompt, response: 1.0, name="approve-all")


def _timed_run(
    engine: VLLMEngine,
    label: str,
    config: str,
    evaluator: str,
    mode: str,
    concurrency: int,
    work: Callable[[], list[RainResult]],
) -> tuple[DecodeRun, list[RainResult]]:
    metrics = engine.server_metrics()
    stats = engine.engine_stats()
    t0 = time.perf_counter()
    results = work()
    seconds = time.perf_counter() - t0
    after = engine.engine_stats()
    run = DecodeRun(
        label=label,
        config=config,
        evaluator=evaluator,
        decodes=len(results),
        concurrency=concurrency,
        mode=mode,
        tokens=sum(len(r.token_ids) for r in results),
        seconds=seconds,
        requests=int(after["requests"] - stats["requests"]),
        prompt_tokens=int(after["prompt_tokens"] - stats["prompt_tokens"]),
        searches=int(sum(r.stats.get("searches", 0) for r in results)),
        cache_hit_rate=engine.prefix_cache_hit_rate(metrics),
    )
    logger.info("%s: %d tokens in %.1fs (%.2f tokens/s)", label, run.tokens, run.seconds, run.tokens_per_s)
    return run, results


def _concurrency(
    engine: VLLMEngine,
    make: Callable[[int], RainDecoder],
    prompts: Sequence[str],
    evaluator: str,
    config: str,
    repeats: int = 1,
) -> Concurrency:
    n = len(prompts)
    decoders = [make(i) for i in range(n)]

    def sequential() -> list[RainResult]:
        return [d.generate(p) for d, p in zip(decoders, prompts)]

    def threads() -> list[RainResult]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda i: decoders[i].generate(prompts[i]), range(n)))

    def on_one_loop() -> list[RainResult]:
        async def main() -> list[RainResult]:
            try:
                return list(await asyncio.gather(*(d.agenerate(p) for d, p in zip(decoders, prompts))))
            finally:
                await engine.aclose()

        return asyncio.run(main())

    has_async = hasattr(RainDecoder, "agenerate")
    modes = [("one at a time", "sequential", 1, sequential), (f"{n} in threads", "threads", n, threads)]
    if has_async:
        modes.append((f"{n} asyncio tasks", "asyncio", n, on_one_loop))
    rounds: list[DecodeRun] = []
    answers: dict[str, list[list[int]]] = {}
    for _ in range(max(1, repeats)):
        for label, mode, at_once, work in modes:
            run, results = _timed_run(engine, label, config, evaluator, mode, at_once, work)
            rounds.append(run)
            ids = [r.token_ids for r in results]
            if answers.setdefault(mode, ids) != ids:
                logger.warning("%s: the answers changed between rounds", label)

    def best(mode: str) -> DecodeRun:
        return max((r for r in rounds if r.mode == mode), key=lambda r: r.tokens_per_s)

    return Concurrency(
        evaluator=evaluator,
        config=config,
        n=n,
        one_at_a_time=best("sequential"),
        threads=best("threads"),
        asyncio=best("asyncio") if has_async else None,
        same_answers_threads=answers["threads"] == answers["sequential"],
        same_answers_asyncio=(answers["asyncio"] == answers["sequential"]) if has_async else None,
        repeats=max(1, repeats),
        rounds=rounds,
    )


class TimedEncoder:
    """The engine's sentence encoder (the similarity update's, on this client's CPU), timed: the
    seconds it takes are part of a decode's latency, but not the server's."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.seconds = 0.0

    def encode(self, texts: Sequence[str]) -> Any:
        t0 = time.perf_counter()
        try:
            return self.encoder.encode(texts)
        finally:
            self.seconds += time.perf_counter() - t0


def _parallel_run(
    engine: VLLMEngine, make_config: Callable[[int], RainConfig], label: str, width: int, prompts: Sequence[str]
) -> ParallelRun:
    judge = SelfEvaluator(engine, "harmless")
    encoder = TimedEncoder(engine.default_encoder())
    decoder = RainDecoder(engine, judge, config=make_config(width), encoder=encoder)
    stats = engine.engine_stats()
    t0 = time.perf_counter()
    results = [decoder.generate(p) for p in prompts]
    seconds = time.perf_counter() - t0

    def total(key: str) -> int:
        return int(sum(r.stats.get(key, 0) for r in results))

    run = ParallelRun(
        config=label,
        parallel_searches=width,
        decodes=len(results),
        tokens=sum(len(r.token_ids) for r in results),
        seconds=seconds,
        searches=total("searches"),
        rounds=total("rounds"),
        evaluations=total("evaluations"),
        model_calls=total("model_calls"),
        requests=int(engine.engine_stats()["requests"] - stats["requests"]),
        encoder_seconds=encoder.seconds,
        texts=[r.text for r in results],
    )
    logger.info("%s, B=%d: %.1f s per decode", label, width, run.seconds_per_decode)
    return run


def _parallel(engine: VLLMEngine, quick: bool) -> list[ParallelSearches]:
    """Self-evaluation at B=1 and B=8, official search and fast preset, the same budget and seeds.
    The budget (``max_searches = extra_searches``) is spent on every commit unless the search stops
    early, so B=8 has whole rounds to batch; the widths alternate prompt by prompt so that a change
    in the machine's load falls on both."""
    new, budget = (4, 8) if quick else (6, 16)
    prompts = PROMPTS[6:7] if quick else (PROMPTS[6], PROMPTS[1])
    common = dict(max_new_tokens=new, max_searches=budget, extra_searches=budget, seed=0)
    configs: list[tuple[str, Callable[[int], RainConfig]]] = [
        (
            f"RainConfig(max_searches={budget}, extra_searches={budget})",
            lambda b: RainConfig(parallel_searches=b, **common),
        ),
        (
            f"RainConfig.fast(max_searches={budget}, extra_searches={budget})",
            lambda b: RainConfig.fast(parallel_searches=b, **common),
        ),
    ]
    out = []
    for label, make_config in configs:
        runs: dict[int, list[ParallelRun]] = {b: [] for b in WIDTHS}
        for prompt in prompts:
            for width in WIDTHS:
                runs[width].append(_parallel_run(engine, make_config, label, width, [prompt]))
        one, many = (_merge(runs[b]) for b in WIDTHS)
        out.append(ParallelSearches(config=label, one=one, many=many))
    return out


def _merge(runs: Sequence[ParallelRun]) -> ParallelRun:
    first = runs[0]
    return ParallelRun(
        config=first.config,
        parallel_searches=first.parallel_searches,
        decodes=sum(r.decodes for r in runs),
        tokens=sum(r.tokens for r in runs),
        seconds=sum(r.seconds for r in runs),
        searches=sum(r.searches for r in runs),
        rounds=sum(r.rounds for r in runs),
        evaluations=sum(r.evaluations for r in runs),
        model_calls=sum(r.model_calls for r in runs),
        requests=sum(r.requests for r in runs),
        encoder_seconds=sum(r.encoder_seconds for r in runs),
        texts=[t for r in runs for t in r.texts],
    )


def measure(
    engine: VLLMEngine,
    *,
    quick: bool = False,
    server: dict[str, Any] | None = None,
    self_evaluation: bool = True,
    parallel: bool = True,
) -> VLLMSpeedReport:
    """Run every measurement on ``engine``'s server (see the module's docstring)."""
    from rain_bench.harness import machine_info, now_iso

    t_start = time.perf_counter()
    machine = machine_info(cuda=False)
    before = engine.server_metrics()
    max_new = 8 if quick else 32
    ratio_prompts = PROMPTS[:1] if quick else PROMPTS[:2]
    n = 2 if quick else 8
    concurrency_prompts = PROMPTS[:n]
    seed_mode = "send" if engine.deterministic else engine.seed_mode
    # warm-up: the sentence encoder (similarity update) loads on first use; not part of any timing
    RainDecoder(engine, approve_all(), config=RainConfig.fast(max_new_tokens=2)).generate("Hello")

    official = RainConfig(max_new_tokens=max_new)
    fast = RainConfig.fast(max_new_tokens=max_new)
    plain, _ = _timed_run(
        engine,
        "plain decoding",
        "top-k sampling",
        "none",
        "sequential",
        1,
        lambda: [RainDecoder(engine, approve_all(), config=official).vanilla(p) for p in ratio_prompts],
    )
    rain_official, _ = _timed_run(
        engine,
        "RAIN official",
        "RainConfig()",
        "approve-all",
        "sequential",
        1,
        lambda: [RainDecoder(engine, approve_all(), config=official).generate(p) for p in ratio_prompts],
    )
    rain_fast, _ = _timed_run(
        engine,
        "RAIN fast",
        "RainConfig.fast()",
        "approve-all",
        "sequential",
        1,
        lambda: [RainDecoder(engine, approve_all(), config=fast).generate(p) for p in ratio_prompts],
    )
    parallel_runs = _parallel(engine, quick) if parallel else []
    conc_new = 8 if quick else 16
    repeats = 1 if quick else 2
    runs = [
        _concurrency(
            engine,
            lambda i: RainDecoder(engine, approve_all(), config=RainConfig.fast(max_new_tokens=conc_new, seed=i)),
            concurrency_prompts,
            "approve-all",
            f"RainConfig.fast(), {conc_new} tokens",
            repeats,
        )
    ]
    if self_evaluation:
        # the model judges itself on the server (two option-letter requests per evaluation); the
        # searches per commit are capped so that eight decodes one at a time fit in minutes
        judge = SelfEvaluator(engine, "harmless")
        self_new = 2 if quick else 3
        budget = dict(max_searches=6, extra_searches=3)
        runs.append(
            _concurrency(
                engine,
                lambda i: RainDecoder(engine, judge, config=RainConfig.fast(max_new_tokens=self_new, seed=i, **budget)),
                concurrency_prompts,
                "self-evaluation",
                f"RainConfig.fast(max_searches=6, extra_searches=3), {self_new} tokens",
                1,
            )
        )
    notes = [
        "Plain decoding and RAIN use the same server, prompts, temperature (1.0) and top-k (15). The per-token "
        "ratio divides RAIN's seconds per committed token by plain decoding's.",
        "The concurrency runs decode the same prompts with the same seeds one at a time and then all at once, so "
        "both do the same work; tokens/s is committed tokens over wall-clock seconds. Each mode ran in alternating "
        "rounds; the table shows each mode's fastest round (the JSON has every round).",
    ]
    if not engine.deterministic:
        notes.append(
            "The engine sent no per-request seeds, so the decodes at once may differ from those one at a "
            "time (and do different work)."
        )
    return VLLMSpeedReport(
        created=now_iso(),
        quick=quick,
        server=dict(server or {"base_url": engine.base_url, "model": engine.name}),
        machine=machine,
        seed_mode=seed_mode,
        max_new_tokens=max_new,
        plain=plain,
        rain_official=rain_official,
        rain_fast=rain_fast,
        concurrency=runs,
        parallel=parallel_runs,
        cache_hit_rate_overall=engine.prefix_cache_hit_rate(before),
        load_average_after=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        seconds=time.perf_counter() - t_start,
        notes=notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rain_bench.vllm_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-url",
        default=None,
        help="a running vLLM server (default: start a local CPU one from .venv-vllm, the way the tests do)",
    )
    parser.add_argument("--model", default=None, help="the served model name (default: the only one served)")
    parser.add_argument(
        "--seed-mode",
        choices=["auto", "send", "never"],
        default=None,
        help="per-request seeds (default: send to the server this benchmark starts, auto otherwise)",
    )
    parser.add_argument("--venv", default=".venv-vllm", help="the vLLM virtualenv for the local server")
    parser.add_argument("--quick", action="store_true", help="a small version (about two minutes)")
    parser.add_argument("--no-self-evaluation", action="store_true", help="skip the self-evaluation concurrency run")
    parser.add_argument(
        "--no-parallel", action="store_true", help="skip the parallel-searches run (self-evaluation at B=1 and B=8)"
    )
    parser.add_argument(
        "--encoder-url", default=None, help="a sentence encoder served on /v1/embeddings for the similarity update"
    )
    parser.add_argument(
        "--serve-encoder",
        action="store_true",
        help="start a CPU vLLM serving all-MiniLM-L6-v2 (--runner pooling) for the similarity update",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="N replicas behind vllm-router instead (rain_bench.vllm_replicas: --quick, --venv, --encoder-url, --out)",
    )
    parser.add_argument(
        "--out", default=None, help="report folder (default: ~/.local/share/rain/results or $RAIN_RESULTS_DIR)"
    )
    parser.add_argument("--name", default="vllm-cpu", help="report file name without extension")
    args = parser.parse_args(argv)
    if args.replicas is not None:
        from .vllm_replicas import main as replicas_main

        return replicas_main(list(argv if argv is not None else sys.argv[1:]))
    if args.encoder_url and args.serve_encoder:
        parser.error("--encoder-url and --serve-encoder: pick one")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from rain_bench.output import default_folder, write_report

    local = encoder_server = None
    encoder_url, encoder_how = args.encoder_url, "served at " + str(args.encoder_url)
    if args.serve_encoder:
        from rain_core.engines.encoder import default_encoder_path
        from rain_core.engines.vllm.launch import ENCODER_FLAGS, LocalVLLMServer

        python = Path(args.venv) / "bin" / "python"
        if not python.exists():
            sys.stderr.write(f"{python} is missing: run `make vllm`\n")
            return 2
        encoder_server = LocalVLLMServer(
            python, default_encoder_path(), name="minilm", flags=ENCODER_FLAGS, warm_up=False
        )
        encoder_url = encoder_server.start().base_url
        encoder_how = "all-MiniLM-L6-v2 served by a CPU vLLM on this machine (--runner pooling)"
    if args.base_url is None:
        from rain_core.engines.vllm.launch import CPU_FLAGS, LocalVLLMServer
        from rain_core.loaders.embedded import materialize_default_model

        python = Path(args.venv) / "bin" / "python"
        if not python.exists():
            sys.stderr.write(f"{python} is missing: run `make vllm`, or pass --base-url of a running server\n")
            return 2
        try:
            local = LocalVLLMServer(python, materialize_default_model(), name="smollm2").start()
        except BaseException:
            if encoder_server is not None:
                encoder_server.stop()
            raise
        base_url, seed_mode = local.base_url, args.seed_mode or "send"
        how = "started by the benchmark: " + " ".join(CPU_FLAGS)
    else:
        base_url, seed_mode, how = args.base_url, args.seed_mode or "auto", "a running server"
    try:
        with VLLMEngine(base_url, args.model, seed_mode=seed_mode, encoder_url=encoder_url) as engine:
            server = {
                "base_url": engine.base_url,
                "model": engine.name,
                "version": engine.server_version(),
                "how": how,
                "startup_seconds": local.startup_seconds if local else None,
                "encoder": encoder_how if encoder_url else "all-MiniLM-L6-v2 on the client CPU",
            }
            report = measure(
                engine,
                quick=args.quick,
                server=server,
                self_evaluation=not args.no_self_evaluation,
                parallel=not args.no_parallel,
            )
    finally:
        if local is not None:
            local.stop()
        if encoder_server is not None:
            encoder_server.stop()
    command = "python -m rain_bench.vllm_speed" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    markdown = report.to_markdown(command.strip())
    md_path, json_path = write_report(
        Path(args.out) if args.out else default_folder(), args.name, markdown, report.to_json()
    )
    sys.stdout.write(markdown)
    sys.stdout.write(f"\nwrote {md_path} and {json_path}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
