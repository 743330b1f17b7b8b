"""``rain generate``'s options, in groups (output, models, evaluator, search), and every one of them
checked before anything loads (``check``): the RAIN options as ``RainConfig`` validates them, the
principle, the engine, judge, guard and evaluator flags and what they need, the scoring function,
the local model folders or cached hub ids, and the device and dtype."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any, NoReturn

from ..baselines.named import METHODS, SEARCHING
from ..baselines.named import method_options as named_method_options
from ..evaluators.guards import GUARD_PRESETS, infer_preset
from .errors import RAIN_OPTIONS, UsageError, one_line

DTYPES = ("float32", "bfloat16", "float16", "auto")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``rain: error: ...`` line (exit status 2) instead of the usage
    text followed by the message."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"rain: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def add_generate(sub: Any) -> argparse.ArgumentParser:
    """The ``generate`` subcommand's parser."""
    gen: argparse.ArgumentParser = sub.add_parser(
        "generate",
        help="answer prompts with RAIN",
        description="Answer each prompt with RAIN. Progress (tokens, commits, searches, seconds) shows on "
        "stderr when it is a terminal; every option is checked before any model loads.",
    )
    gen.add_argument(  # also after the command; SUPPRESS keeps a `rain -v generate` from being reset
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as rain -v"
    )
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    _output_options(gen.add_argument_group("output"))
    _model_options(gen.add_argument_group("models"))
    _evaluator_options(gen.add_argument_group("evaluator (default: the model judges itself, as in the paper)"))
    _search_options(gen.add_argument_group("search and decoding (RainConfig fields; docs/algorithm.md)"))
    return gen


def _output_options(g: Any) -> None:
    g.add_argument("--compare", action="store_true", help="also decode plainly and show both with search stats")
    g.add_argument(
        "--stream",
        action="store_true",
        help="print token sets as soon as they are committed (with --json: one JSON line per commit, then the result)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (errors and notes still show)")
    g.add_argument("--plot", default=None, help="save a picture of the first commit's search tree to this PNG")


def _model_options(g: Any) -> None:
    g.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: the model in this process; vllm: a vLLM server (--base-url)",
    )
    g.add_argument("--base-url", default=None, help="the vLLM server, http://HOST:PORT/v1 (with --engine vllm)")
    g.add_argument("--api-key", default=None, help="the vLLM servers' --api-key, if they have one")
    g.add_argument(
        "--model",
        default=None,
        help="a causal LM folder or cached hub id (default: embedded SmolLM2-135M); "
        "with --engine vllm the served model name (default: the only one served)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="weights' dtype (default: float32 on CPU)")
    g.add_argument("--gguf-file", default=None, help="the .gguf file in the --model folder, for GGUF weights")


def _evaluator_options(g: Any) -> None:
    g.add_argument(
        "--evaluator",
        default=None,
        metavar="MODULE:FUNCTION",
        help="a scoring function fn(prompt, reply) -> float in [-1, 1] judges the replies, as in `rain bench "
        "evaluator`: MODULE:FUNCTION (modules in the working directory included) or FILE.py:FUNCTION",
    )
    g.add_argument("--principle", default="harmless", help="harmless, truthful, positive, or a .toml file")
    g.add_argument(
        "--scoring",
        choices=["discrete", "continuous"],
        default=None,
        help="the evaluator's score (default: discrete for self-evaluation and a judge, continuous for a guard)",
    )
    g.add_argument("--judge", default=None, help="a separate judge model folder or cached hub id")
    g.add_argument(
        "--judge-base-url",
        default=None,
        help="a vLLM server whose model judges (default: --base-url when --judge-model is given)",
    )
    g.add_argument("--judge-model", default=None, help="the judge's served model name on the judge's vLLM server")
    g.add_argument(
        "--guard",
        default=None,
        help="a guard model (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard) folder or cached hub id "
        "that judges the replies instead of self-evaluation (docs/guards.md)",
    )
    g.add_argument(
        "--guard-base-url",
        default=None,
        help="a vLLM server whose guard model judges (default: --base-url when --guard-model is given)",
    )
    g.add_argument("--guard-model", default=None, help="the guard's served model name on the guard's vLLM server")
    g.add_argument(
        "--guard-preset",
        choices=sorted(GUARD_PRESETS),
        default=None,
        help="the guard's prompt and verdict format (default: inferred from its name)",
    )


def _search_options(g: Any) -> None:
    g.add_argument(
        "--preset",
        choices=["official", "fast"],
        default="official",
        help="official: the authors' search (default); fast: RainConfig.fast() (docs/algorithm.md)",
    )
    g.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per answer at most (default 128)")
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="prompt plus answer tokens at most (official 2048; never past the model's context window)",
    )
    g.add_argument(
        "--max-searches",
        type=int,
        default=None,
        help="T_max, searches per commit (official 50); below --extra-searches it lowers both, so a commit "
        "runs this many new searches (docs/budgets.md)",
    )
    g.add_argument(
        "--extra-searches",
        type=int,
        default=None,
        help="T_extra, at least this many new searches per commit (official 15; never more than --max-searches)",
    )
    g.add_argument(
        "--parallel-searches",
        type=int,
        default=None,
        help="searches run side by side per round, their model calls batched (default 1: the authors' "
        "one-at-a-time search; docs/algorithm.md)",
    )
    g.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="deadline per answer: the best branch so far is committed and the answer ends",
    )
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    g.add_argument("--method", choices=METHODS, default="rain", help="rain, or a baseline (docs/quality.md)")
    g.add_argument("--n", type=int, default=None, help="--method best-of-n: samples; blockwise: blocks per step")
    g.add_argument("--max-tries", type=int, default=None, help="--method check-retry: answers before refusing")
    g.add_argument("--block-tokens", type=int, default=None, help="--method blockwise: tokens per block")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RainConfig`` fields the command line sets."""
    return {field: getattr(args, field) for field in RAIN_OPTIONS if getattr(args, field) is not None}


def served_guard(args: argparse.Namespace) -> bool:
    return bool(args.guard_base_url or args.guard_model)


def served_judge(args: argparse.Namespace) -> bool:
    return bool(args.judge_base_url or args.judge_model)


def check(args: argparse.Namespace) -> Any:
    """Every option checked before anything loads, cheapest first; returns the ``RainConfig``. The
    scoring function is imported (``args.scoring_function`` holds it) and the local model folders or
    cached hub ids and the device are looked up, with the loaders' own checks (no weights)."""
    from .. import RainConfig, load_principle
    from .steering import load_scoring_function

    _check_engine(args)
    _check_evaluator(args)
    _check_guard(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'rain-align[plot]'")
    load_principle(args.principle)
    searching = [o for o in ("--max-searches", "--extra-searches", "--parallel-searches", "--plot") if _given(args, o)]
    if args.method not in SEARCHING and (searching or args.preset == "fast"):
        raise UsageError(
            f"{', '.join(searching) or '--preset fast'}: options of RAIN's search; --method {args.method} has none"
        )
    method_options(args)
    if args.method not in SEARCHING:  # a baseline takes only the settings given (none of the search's)
        config = RainConfig(**overrides(args))
    else:
        base = RainConfig.fast() if args.preset == "fast" else RainConfig()
        config = base.merged(**overrides(args))
    args.scoring_function = load_scoring_function(args.evaluator) if args.evaluator else None
    _check_local_models(args)
    return config


def _given(args: argparse.Namespace, option: str) -> bool:
    return getattr(args, option[2:].replace("-", "_"), None) is not None


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--n``, ``--max-tries``, ``--block-tokens`` as the method's own options (checked)."""
    n = {"blockwise": "k"}.get(args.method, "n")
    return named_method_options(
        args.method, **{n: args.n, "max_tries": args.max_tries, "block_tokens": args.block_tokens}
    )


def _check_engine(args: argparse.Namespace) -> None:
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


def _check_evaluator(args: argparse.Namespace) -> None:
    if args.judge and served_judge(args):
        raise UsageError("give either --judge (a local model) or --judge-base-url/--judge-model (a served one)")
    if served_judge(args) and not (args.judge_base_url or args.engine == "vllm"):
        raise UsageError("--judge-model names a served model: give --judge-base-url http://HOST:PORT/v1 too")
    if args.evaluator is None:
        return
    if args.judge or served_judge(args) or args.guard or served_guard(args):
        raise UsageError(
            "give one evaluator: --evaluator (a scoring function), a judge (--judge, --judge-base-url/--judge-model) "
            "or a guard (--guard, --guard-base-url/--guard-model)"
        )
    if args.principle != "harmless" or args.scoring is not None:
        raise UsageError(
            "--principle and --scoring are what self-evaluation, a judge or a guard use; a scoring function "
            "(--evaluator) gives its own score"
        )


def _check_guard(args: argparse.Namespace) -> None:
    """The guard flags, the format inferred from the guard's name."""
    guard = bool(args.guard) or served_guard(args)
    if not guard:
        if args.guard_preset:
            raise UsageError("--guard-preset names a guard's format: give --guard or --guard-base-url/--guard-model")
        return
    if args.judge or served_judge(args):
        raise UsageError(
            "give either a guard (--guard, --guard-base-url/--guard-model) or a judge (--judge, "
            "--judge-base-url/--judge-model): each is the evaluator"
        )
    if args.guard and served_guard(args):
        raise UsageError("give either --guard (a local guard model) or --guard-base-url/--guard-model (a served one)")
    if served_guard(args) and not (args.guard_base_url or args.engine == "vllm"):
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


def _check_local_models(args: argparse.Namespace) -> None:
    """The models this process would load (generator, judge, guard): their folders or cached hub ids,
    that each is a causal LM, and the device and dtype, as the loader checks them before loading; each
    failure names its option."""
    from ..loaders import checks

    local = []
    if args.engine == "transformers" and args.model:
        local.append(("--model", args.model, args.gguf_file))
    if args.judge:
        local.append(("--judge", args.judge, None))
    if args.guard:
        local.append(("--guard", args.guard, None))
    if args.engine == "transformers":
        try:
            checks.check_device(args.device, args.dtype)
        except ValueError as exc:
            raise UsageError(one_line(exc)) from exc
    for option, name, gguf_file in local:
        try:
            checks.check_model_source(name, gguf_file=gguf_file)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{option}: {one_line(exc)}") from exc
