"""The ``rain`` command.

rain generate "How do I pick a lock?"            # the aligned answer
rain generate --compare "..." "..."              # plain decoding and RAIN side by side, with stats
rain generate --stream "..."                     # print token sets as they are committed
rain generate --json "..."                       # machine-readable result
rain generate --engine vllm --base-url http://HOST:PORT/v1 --model NAME "..."   # a model served by vLLM
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger("rain")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="RAIN: decoding-time self-alignment for local LLMs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what rain does")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer prompts with RAIN")
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    gen.add_argument("--compare", action="store_true", help="also decode plainly and show both with search stats")
    gen.add_argument("--stream", action="store_true", help="print token sets as soon as they are committed")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    gen.add_argument("--principle", default="harmless", help="harmless, truthful, positive, or a .toml file")
    gen.add_argument("--scoring", choices=["discrete", "continuous"], default=None, help="self-evaluation score")
    gen.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: the model in this process; vllm: a vLLM server (--base-url)",
    )
    gen.add_argument("--base-url", default=None, help="the vLLM server, http://HOST:PORT/v1 (with --engine vllm)")
    gen.add_argument("--api-key", default=None, help="the vLLM servers' --api-key, if they have one")
    gen.add_argument(
        "--model",
        default=None,
        help="a causal LM folder or cached hub id (default: embedded SmolLM2-135M); "
        "with --engine vllm the served model name (default: the only one served)",
    )
    gen.add_argument("--judge", default=None, help="a separate judge model folder or cached hub id")
    gen.add_argument(
        "--judge-base-url",
        default=None,
        help="a vLLM server whose model judges (default: --base-url when --judge-model is given)",
    )
    gen.add_argument("--judge-model", default=None, help="the judge's served model name on the judge's vLLM server")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    gen.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    gen.add_argument(
        "--preset",
        choices=["official", "fast"],
        default="official",
        help="official: the authors' search (default); fast: RainConfig.fast() (docs/algorithm.md)",
    )
    gen.add_argument("--max-searches", type=int, default=None, help="T_max, searches per commit (official 50)")
    gen.add_argument(
        "--extra-searches",
        type=int,
        default=None,
        help="T_extra, at least this many new searches per commit (official 15)",
    )
    gen.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="deadline per answer: the best branch so far is committed and the answer ends",
    )
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    gen.add_argument("--plot", default=None, help="save a picture of the first commit's search tree to this PNG")

    setup = sub.add_parser("setup", help="install the embedded default models (pip --no-deps) and prepare them")
    setup.add_argument("--force", action="store_true", help="reinstall them and rebuild the model folder")

    _add_bench_and_demo(sub)
    return parser


def _add_bench_and_demo(sub: Any) -> None:
    """``rain bench WHICH ...`` and ``rain demo``: their options are parsed by ``rain_bench.cli``
    (imported only when they run: the core never imports the benchmarks)."""
    bench = sub.add_parser(
        "bench", help="benchmarks: speed, evaluator, quality, fidelity, vllm (`rain bench WHICH --help`)"
    )
    bench.add_argument(
        "which", choices=["speed", "evaluator", "quality", "fidelity", "vllm"], help="the benchmark to run"
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's options (see `rain bench WHICH --help`)")
    sub.add_parser(
        "demo",
        help="what RAIN does and cannot do with the embedded model (a few minutes)",
        description="The embedded model's measured self-evaluation accuracy, the lock-picking prompt "
        "with plain decoding and RAIN, and RAIN steering the model with a scoring function.",
    )


def _bench_or_demo(args: argparse.Namespace) -> int:
    from rain_bench.cli import bench_main, demo_main

    return bench_main(args.which, args.args) if args.command == "bench" else demo_main()


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "max_new_tokens": "max_new_tokens",
        "max_searches": "max_searches",
        "seed": "seed",
        "temperature": "temperature",
        "stop": "stop",
        "scoring": "scoring",
        "extra_searches": "extra_searches",
        "max_seconds": "max_seconds",
    }
    return {field: getattr(args, attr) for attr, field in names.items() if getattr(args, attr) is not None}


def _served(base_url: str, model: str | None, args: argparse.Namespace) -> Any:
    from .engines.vllm import VLLMEngine

    return VLLMEngine(base_url, model, api_key=args.api_key)


def _load(args: argparse.Namespace) -> Any:
    from . import JudgeEvaluator, RainDecoder, SelfEvaluator, load_default_model, load_model

    kw = {k: v for k, v in {"device": args.device, "dtype": args.dtype}.items() if v}
    if args.engine == "vllm":
        if not args.base_url:
            raise ValueError("--engine vllm needs --base-url http://HOST:PORT/v1 (the vLLM server)")
        if kw:
            raise ValueError("--device and --dtype apply to --engine transformers; a vLLM server chooses its own")
        lm = _served(args.base_url, args.model, args)
    elif args.base_url:
        raise ValueError("--base-url needs --engine vllm")
    else:
        lm = load_model(args.model, **kw) if args.model else load_default_model(**kw)
    scoring = args.scoring or "discrete"
    if args.judge and (args.judge_base_url or args.judge_model):
        raise ValueError("give either --judge (a local model) or --judge-base-url/--judge-model (a served one)")
    if args.judge_base_url or args.judge_model:
        judge_url = args.judge_base_url or (args.base_url if args.engine == "vllm" else None)
        if not judge_url:
            raise ValueError("--judge-model names a served model: give --judge-base-url http://HOST:PORT/v1 too")
        evaluator = JudgeEvaluator(_served(judge_url, args.judge_model, args), args.principle, scoring=scoring)
    elif args.judge:
        evaluator = JudgeEvaluator(load_model(args.judge, **kw), args.principle, scoring=scoring)
    else:
        evaluator = SelfEvaluator(lm, args.principle, scoring=scoring)
    from . import RainConfig

    config = RainConfig.fast() if args.preset == "fast" else RainConfig()
    return RainDecoder(lm, evaluator, config=config, **_overrides(args))


def _stats_line(stats: dict[str, Any]) -> str:
    keys = ("searches", "evaluations", "evaluation_cache_hits", "commits", "rewinds", "node_additions", "seconds")
    return ", ".join(
        f"{k}={stats[k]:.1f}" if isinstance(stats.get(k), float) else f"{k}={stats.get(k)}" for k in keys if k in stats
    )


def _generate(args: argparse.Namespace) -> int:
    from .protocols import EngineError

    try:
        return _generate_all(args)
    except EngineError as exc:  # a server unreachable, refusing the model, lacking a feature, ...
        sys.stderr.write(f"rain: error: {exc}\n")
        return 1


def _generate_all(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    dec = _load(args)
    for prompt in args.prompts:
        vanilla = dec.vanilla(prompt) if args.compare else None
        done: list[Any] = []
        if args.stream and not args.json:
            if vanilla is not None:
                sys.stdout.write(f"--- plain decoding ---\n{vanilla.text}\n--- RAIN ---\n")
            for piece in dec.stream(prompt, result=done, keep_trees=bool(args.plot)):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            with tqdm(desc="RAIN", unit=" token sets", leave=False, disable=args.json or None) as bar:
                for _ in dec.stream(prompt, result=done, keep_trees=bool(args.plot)):
                    bar.update(1)
        result = done[0]
        if args.plot:
            from .plotting import plot_tree

            plot_tree(result.stats["commit_log"][0], dec.lm, path=args.plot)
            logger.info("saved the first commit's search tree to %s", args.plot)
        if args.json:
            out = {
                "prompt": prompt,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "stats": {k: v for k, v in result.stats.items() if k != "commit_log"},
            }
            if vanilla is not None:
                out["vanilla"] = {"text": vanilla.text, "finish_reason": vanilla.finish_reason, "stats": vanilla.stats}
            sys.stdout.write(json.dumps(out) + "\n")
        elif args.compare:
            sys.stdout.write(f"=== {prompt}\n")
            if not args.stream and vanilla is not None:
                sys.stdout.write(f"--- plain decoding ({vanilla.stats['seconds']:.1f}s) ---\n{vanilla.text}\n")
                sys.stdout.write(f"--- RAIN ---\n{result.text}\n")
            sys.stdout.write(f"[{_stats_line(result.stats)}]\n\n")
        elif not args.stream:
            sys.stdout.write(result.text + "\n")
        sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command in ("bench", "demo"):
            return _bench_or_demo(args)
        if args.command == "setup":
            from .setup_embedded import main as setup_main

            return setup_main(["--force"] if args.force else [])
    except (ValueError, TypeError, ValidationError) as exc:
        sys.stderr.write(f"rain: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
