"""The ``rain`` command.

rain generate "How do I pick a lock?"            # the aligned answer
rain generate --compare "..." "..."              # plain decoding and RAIN side by side, with stats
rain generate --stream "..."                     # print token sets as they are committed
rain generate --json "..."                       # machine-readable result
rain generate --engine vllm --base-url http://HOST:PORT/v1 --model NAME "..."   # a model served by vLLM
rain generate --guard meta-llama/Llama-Guard-3-1B "..."                         # a guard model judges
rain generate --guard-base-url http://HOST:PORT/v1 --guard-model NAME "..."    # a served guard judges
rain generate --method best-of-n --n 8 "..."     # a baseline with the same evaluator (docs/quality.md)

Other installed packages add subcommands through the entry-point group ``rain.commands``
(``rain bench`` and ``rain demo`` come from ``rain_bench`` that way; the core never imports it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from pydantic import ValidationError

from .baselines.named import METHODS, SEARCHING, make_decoder, method_options
from .evaluators.guards import GUARD_PRESETS, infer_preset

logger = logging.getLogger("rain")

COMMANDS_GROUP = "rain.commands"
"""The entry-point group of ``rain``'s plug-in subcommands. Each entry point's name is the command and
its object a function ``add(subparsers, name)`` that adds the parser ``name`` and sets
``run(args) -> int`` on it with ``set_defaults``; ``rain`` calls that ``run``."""

_DTYPES = ("float32", "bfloat16", "float16", "auto")

# Failures a user causes and can fix (options, paths, models, servers, memory): one line, no
# traceback. Anything else is reported the same way, with its type and a pointer to -v.
_EXPECTED: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError, MemoryError)


class UsageError(ValueError):
    """A command line that cannot run (options that contradict each other, a missing value)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``rain: error: ...`` line (exit status 2) instead of the usage
    text followed by the message."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"rain: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rain", description="RAIN: decoding-time self-alignment for local LLMs")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what rain does, and show the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer prompts with RAIN")
    gen.add_argument(  # also after the command; SUPPRESS keeps a `rain -v generate` from being reset
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as rain -v"
    )
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    gen.add_argument("--compare", action="store_true", help="also decode plainly and show both with search stats")
    gen.add_argument("--stream", action="store_true", help="print token sets as soon as they are committed")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    gen.add_argument("--principle", default="harmless", help="harmless, truthful, positive, or a .toml file")
    gen.add_argument(
        "--scoring",
        choices=["discrete", "continuous"],
        default=None,
        help="the evaluator's score (default: discrete for self-evaluation and a judge, continuous for a guard)",
    )
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
    gen.add_argument(
        "--guard",
        default=None,
        help="a guard model (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard) folder or cached hub id "
        "that judges the replies instead of self-evaluation (docs/guards.md)",
    )
    gen.add_argument(
        "--guard-base-url",
        default=None,
        help="a vLLM server whose guard model judges (default: --base-url when --guard-model is given)",
    )
    gen.add_argument("--guard-model", default=None, help="the guard's served model name on the guard's vLLM server")
    gen.add_argument(
        "--guard-preset",
        choices=sorted(GUARD_PRESETS),
        default=None,
        help="the guard's prompt and verdict format (default: inferred from its name)",
    )
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    gen.add_argument("--dtype", default=None, choices=_DTYPES, help="weights' dtype (default: float32 on CPU)")
    gen.add_argument("--gguf-file", default=None, help="the .gguf file in the --model folder, for GGUF weights")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    gen.add_argument(
        "--preset",
        choices=["official", "fast"],
        default="official",
        help="official: the authors' search (default); fast: RainConfig.fast() (docs/algorithm.md)",
    )
    gen.add_argument(
        "--max-searches",
        type=int,
        default=None,
        help="T_max, searches per commit (official 50); below --extra-searches it lowers both, so a commit "
        "runs this many new searches (docs/budgets.md)",
    )
    gen.add_argument(
        "--extra-searches",
        type=int,
        default=None,
        help="T_extra, at least this many new searches per commit (official 15; never more than --max-searches)",
    )
    gen.add_argument(
        "--parallel-searches",
        type=int,
        default=None,
        help="searches run side by side per round, their model calls batched (default 1: the authors' "
        "one-at-a-time search; docs/algorithm.md)",
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
    gen.add_argument("--method", choices=METHODS, default="rain", help="rain, or a baseline (docs/quality.md)")
    gen.add_argument("--n", type=int, default=None, help="--method best-of-n: samples; blockwise: blocks per step")
    gen.add_argument("--max-tries", type=int, default=None, help="--method check-retry: answers before refusing")
    gen.add_argument("--block-tokens", type=int, default=None, help="--method blockwise: tokens per block")

    setup = sub.add_parser("setup", help="install the embedded default models (pip --no-deps) and prepare them")
    setup.add_argument("--force", action="store_true", help="reinstall them and rebuild the model folder")

    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """The subcommands installed packages add (``COMMANDS_GROUP``); one that cannot be added is
    reported and left out, so that the others still work."""
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            entry.load()(sub, entry.name)
        except Exception as exc:  # a broken plug-in must not take `rain generate` down
            logger.warning("the command `rain %s` (%s) could not be added: %s", entry.name, entry.value, exc)


# RainConfig fields that `rain generate` options set: field -> option
_RAIN_OPTIONS = {
    "max_new_tokens": "--max-new-tokens",
    "max_searches": "--max-searches",
    "extra_searches": "--extra-searches",
    "parallel_searches": "--parallel-searches",
    "max_seconds": "--max-seconds",
    "seed": "--seed",
    "temperature": "--temperature",
    "stop": "--stop",
    "scoring": "--scoring",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {field: getattr(args, field) for field in _RAIN_OPTIONS if getattr(args, field) is not None}


def _served(base_url: str, model: str | None, args: argparse.Namespace) -> Any:
    from .loaders import models

    return models.served_model(base_url, model, api_key=args.api_key)


def _config(args: argparse.Namespace) -> Any:
    """Every option checked before anything loads: the RAIN options (as ``RainConfig`` validates
    them), the principle, the engine and judge flags and what they need. Returns the config."""
    from . import RainConfig, load_principle

    if args.engine == "vllm":
        if not args.base_url:
            raise UsageError("--engine vllm needs --base-url http://HOST:PORT/v1 (the vLLM server)")
        if args.device or args.dtype or args.gguf_file:
            raise UsageError(
                "--device, --dtype and --gguf-file apply to --engine transformers; a vLLM server chooses its own"
            )
    elif args.base_url:
        raise UsageError("--base-url needs --engine vllm")
    if args.gguf_file and not args.model:
        raise UsageError("--gguf-file names a file in the --model folder: give --model too")
    if args.judge and (args.judge_base_url or args.judge_model):
        raise UsageError("give either --judge (a local model) or --judge-base-url/--judge-model (a served one)")
    if (args.judge_base_url or args.judge_model) and not (args.judge_base_url or args.engine == "vllm"):
        raise UsageError("--judge-model names a served model: give --judge-base-url http://HOST:PORT/v1 too")
    _check_guard(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'rain-align[plot]'")
    load_principle(args.principle)
    searching = [o for o in ("--max-searches", "--extra-searches", "--parallel-searches", "--plot") if _given(args, o)]
    if args.method not in SEARCHING and (searching or args.preset == "fast"):
        raise UsageError(f"{searching or '--preset fast'}: options of RAIN's search; --method {args.method} has none")
    _method_options(args)
    if args.method not in SEARCHING:
        return RainConfig(**_overrides(args))
    base = RainConfig.fast() if args.preset == "fast" else RainConfig()
    return base.merged(**_overrides(args))


def _given(args: argparse.Namespace, option: str) -> bool:
    return getattr(args, option[2:].replace("-", "_")) is not None


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--n``, ``--max-tries``, ``--block-tokens`` as the method's own options (checked)."""
    n = {"blockwise": "k"}.get(args.method, "n")
    return method_options(args.method, **{n: args.n, "max_tries": args.max_tries, "block_tokens": args.block_tokens})


def _served_guard(args: argparse.Namespace) -> bool:
    return bool(args.guard_base_url or args.guard_model)


def _check_guard(args: argparse.Namespace) -> None:
    """The guard flags checked before anything loads, the format inferred from the guard's name."""
    guard = bool(args.guard) or _served_guard(args)
    if not guard:
        if args.guard_preset:
            raise UsageError("--guard-preset names a guard's format: give --guard or --guard-base-url/--guard-model")
        return
    if args.judge or args.judge_base_url or args.judge_model:
        raise UsageError(
            "give either a guard (--guard, --guard-base-url/--guard-model) or a judge (--judge, "
            "--judge-base-url/--judge-model): each is the evaluator"
        )
    if args.guard and _served_guard(args):
        raise UsageError("give either --guard (a local guard model) or --guard-base-url/--guard-model (a served one)")
    if _served_guard(args) and not (args.guard_base_url or args.engine == "vllm"):
        raise UsageError("--guard-model names a served guard: give --guard-base-url http://HOST:PORT/v1 too")
    if args.principle != "harmless":
        raise UsageError("--principle is what self-evaluation or a judge asks; a guard judges by its own policy")
    name = args.guard or args.guard_model
    if args.guard_preset is None and name:
        try:
            infer_preset(name)
        except ValueError:
            raise UsageError(
                f"cannot tell which guard family {name!r} is from its name: give --guard-preset "
                f"({', '.join(sorted(GUARD_PRESETS))})"
            ) from None


def _guard(args: argparse.Namespace, load_options: dict[str, Any]) -> Any:
    """The guard as the evaluator; its score is continuous (its verdict probability) unless
    ``--scoring`` says otherwise."""
    from . import Scoring
    from .loaders import guards

    scoring = args.scoring or Scoring.CONTINUOUS
    if args.guard:
        return guards.load_guard(args.guard, args.guard_preset, scoring=scoring, **load_options)
    url = args.guard_base_url or args.base_url
    return guards.served_guard(url, args.guard_model, args.guard_preset, scoring=scoring, api_key=args.api_key)


def _load(args: argparse.Namespace, config: Any) -> Any:
    from . import JudgeEvaluator, SelfEvaluator
    from .loaders import models as loading  # looked up now, so that tests can stand in for the loaders

    kw = {k: v for k, v in {"device": args.device, "dtype": args.dtype}.items() if v}
    if args.engine == "vllm":
        lm = _served(args.base_url, args.model, args)
    elif args.model:
        lm = loading.load_model(args.model, **kw, **({"gguf_file": args.gguf_file} if args.gguf_file else {}))
    else:
        lm = loading.load_default_model(**kw)
    if args.guard or _served_guard(args):
        return make_decoder(args.method, lm, _guard(args, kw), config, **_method_options(args))
    if args.judge_base_url or args.judge_model:
        judge_url = args.judge_base_url or args.base_url
        judge: Any = _served(judge_url, args.judge_model, args)
    elif args.judge:
        judge = loading.load_model(args.judge, **kw)
    else:
        judge = None
    if judge is None:
        evaluator: Any = SelfEvaluator(lm, args.principle, scoring=config.scoring)
    else:
        evaluator = JudgeEvaluator(judge, args.principle, scoring=config.scoring)
    return make_decoder(args.method, lm, evaluator, config, **_method_options(args))


def _stats_line(stats: dict[str, Any]) -> str:
    keys = (
        "method",
        "model_calls",
        "searches",
        "evaluations",
        "evaluation_cache_hits",
        "commits",
        "rewinds",
        "node_additions",
        "seconds",
    )
    return ", ".join(
        f"{k}={stats[k]:.1f}" if isinstance(stats.get(k), float) else f"{k}={stats.get(k)}" for k in keys if k in stats
    )


def _generate_all(args: argparse.Namespace, config: Any) -> int:
    from tqdm.auto import tqdm

    dec = _load(args, config)
    for prompt in args.prompts:
        vanilla = dec.vanilla(prompt) if args.compare else None
        stream = dec.stream(prompt, keep_trees=bool(args.plot))
        if args.stream and not args.json:
            if vanilla is not None:
                sys.stdout.write(f"--- plain decoding ---\n{vanilla.text}\n--- {dec.method} ---\n")
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            with tqdm(desc=dec.method, unit=" token sets", leave=False, disable=args.json or None) as bar:
                for _ in stream:
                    bar.update(1)
        result = stream.result
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
                sys.stdout.write(f"--- {dec.method} ---\n{result.text}\n")
            sys.stdout.write(f"[{_stats_line(result.stats)}]\n\n")
        elif not args.stream:
            sys.stdout.write(result.text + "\n")
        sys.stdout.flush()
    return 0


def _one_line(exc: BaseException) -> str:
    """The error as one line: a pydantic error as ``option: problem (got value)`` per field, anything
    else as its message with line breaks folded (and its type when it is not an expected one)."""
    if isinstance(exc, ValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            got = f" (got {err['input']!r})" if where and not isinstance(err.get("input"), dict) else ""
            problems.append(f"{_RAIN_OPTIONS.get(where, where) + ': ' if where else ''}{err['msg']}{got}")
        return "; ".join(problems)
    text = " ".join(str(exc).split()) or type(exc).__name__
    expected = isinstance(exc, _EXPECTED) or "OutOfMemory" in type(exc).__name__
    if expected or type(exc).__module__.startswith("rain_core"):
        return text
    return f"{type(exc).__name__}: {text} (rain -v ... shows the traceback)"


def _fail(exc: BaseException, verbose: bool, status: int) -> int:
    """Report ``exc`` on stderr as one ``rain: error:`` line (after its traceback with ``-v``) and
    return ``status``."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"rain: error: {_one_line(exc)}\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``rain``: a failure ends as one ``rain: error: ...`` line on stderr and a non-zero exit status
    (2: the command line, checked before anything loads; 1: the rest); ``-v`` adds the traceback."""
    args = _build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.command == "generate":
            try:
                config = _config(args)  # before anything loads
            except Exception as exc:
                return _fail(exc, verbose, 2)
            return _generate_all(args, config)
        run = getattr(args, "run", None)
        if run is not None:  # a plug-in command
            return int(run(args))
        if args.command == "setup":
            from .setup_embedded import main as setup_main

            return setup_main(["--force"] if args.force else [])
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _fail(exc, verbose, 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
