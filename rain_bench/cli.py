"""The ``rain bench ...`` and ``rain demo`` commands, added to ``rain`` through the entry points
``rain.commands`` (``add_bench_command``, ``add_demo_command``: ``rain_core`` never imports this package).

    rain bench speed [--quick] [--out DIR]         (every benchmark: --out DIR, default output.default_folder())
    rain bench evaluator [--quick] [--evaluator self|judge|guard|embedding|keyword|MODULE:FN ...] [--judge MODEL]
                         [--guard MODEL [--guard-preset NAME]]
    rain bench quality [--quick] [--evaluator ...] [--grader judge|keyword|MODULE:FN] [--adversarial] [--guard ...]
    rain bench quality --methods plain,rain,best-of-n,check-retry,blockwise,escalating [--scenarios ...] [--quick]
    rain bench fidelity [--quick] [--seeds N] [--out DIR]     (rain_bench.fidelity's own options)
    rain bench vllm [--base-url URL] [--model NAME] ...       (rain_bench.vllm_speed's own options)
    rain demo

Model options are the ones ``rain generate`` takes: ``--engine {transformers,vllm}``, ``--model``,
``--base-url``, ``--api-key``, ``--judge``, ``--judge-base-url``, ``--judge-model``, ``--device``,
``--dtype``; and a guard model (``rain_core.GuardEvaluator``): ``--guard``, ``--guard-base-url``,
``--guard-model``, ``--guard-preset``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rain_core.evaluators import CallableEvaluator
from rain_core.evaluators.guards.presets import GUARD_PRESETS

from .engines import (
    ENGINES,
    ModelOptions,
    NamedEvaluator,
    SetupError,
    build_evaluator,
    build_generator,
    build_guard,
    build_judge,
)
from .output import default_folder

logger = logging.getLogger(__name__)

BENCHMARKS = ("speed", "evaluator", "quality", "fidelity", "vllm")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (as for `rain generate`)")
    g.add_argument(
        "--engine", choices=ENGINES, default="transformers", help="how the model runs (default transformers)"
    )
    g.add_argument(
        "--model",
        default=None,
        help="model folder or cached hub id (transformers), or the served "
        "model name (vllm); default: the embedded SmolLM2-135M-Instruct",
    )
    g.add_argument("--base-url", default=None, help="the vLLM server, e.g. http://HOST:8000/v1 (--engine vllm)")
    g.add_argument("--api-key", default=None, help="API key of the served model(s), if they need one")
    g.add_argument(
        "--judge", default=None, help="a judge model: folder or hub id (or its served name with --judge-base-url)"
    )
    g.add_argument(
        "--judge-base-url",
        default=None,
        help="the vLLM server of the judge (default --base-url when --judge-model is given)",
    )
    g.add_argument("--judge-model", default=None, help="the judge's served model name on its vLLM server")
    g.add_argument(
        "--guard",
        default=None,
        help="a guard model (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard): folder or hub id "
        "(or its served name with --guard-base-url)",
    )
    g.add_argument(
        "--guard-base-url",
        default=None,
        help="the vLLM server of the guard (default --base-url when --guard-model is given)",
    )
    g.add_argument("--guard-model", default=None, help="the guard's served model name on its vLLM server")
    g.add_argument(
        "--guard-preset",
        choices=sorted(GUARD_PRESETS),
        default=None,
        help="the guard's prompt and verdict format (default: inferred from the guard's name)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, ... for local models")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto for local models")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small version (seconds to a minute, for CI)")
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default: ~/.local/share/rain/results, or $RAIN_RESULTS_DIR; rain's committed "
        "reports: --out benchmarks/results)",
    )


def build_parser(which: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"rain bench {which}")
    _common(p)
    if which == "speed":
        p.description = "RAIN against plain decoding: wall time, engine gain, forward tokens, memory, scaling"
        return p
    p.add_argument("--name", default=None, help="report file name without extension (default from mode and model)")
    p.add_argument("--principle", default="harmless", help="the principle model evaluators ask about")
    p.add_argument(
        "--scoring",
        choices=["discrete", "continuous"],
        default="discrete",
        help="score of self/judge evaluators (RAIN's value; the evaluator benchmark reports both)",
    )
    p.add_argument(
        "--evaluator",
        action="append",
        default=None,
        metavar="KIND",
        help="self, judge, guard, embedding, guard-standin, keyword or MODULE:FUNCTION (repeatable; default: guard "
        "when --guard is given, else judge when --judge is given for `evaluator`, else self; embedding with --methods)",
    )
    if which == "evaluator":
        p.description = "can an evaluator tell a harmful reply from a harmless one?"
        p.add_argument(
            "--data", default=None, help="labelled pairs JSONL (default: rain_bench/data/evaluator_pairs.jsonl)"
        )
    else:
        p.description = "does RAIN lower harmful answers without refusing ordinary requests?"
        p.add_argument(
            "--grader",
            default=None,
            help="judge (the --judge model), keyword (rain's keyword grader) or "
            "MODULE:FUNCTION; default: judge when --judge is given, else keyword",
        )
        p.add_argument(
            "--data",
            action="append",
            default=None,
            metavar="[NAME=]FILE",
            help="a prompt set JSONL (repeatable; replaces the built-in sets)",
        )
        p.add_argument("--sets", default=None, help="built-in sets, comma-separated (default harmful,benign,alarming)")
        p.add_argument("--per-set", type=int, default=None, help="the first N prompts of each set (full default 10)")
        p.add_argument(
            "--adversarial",
            action="store_true",
            help="also run every set with each prompt wrapped in an adversarial framing",
        )
        p.add_argument("--framings", default=None, help="framings JSONL (default: rain_bench/data/framings.jsonl)")
        p.add_argument(
            "--preset",
            choices=["fast", "official"],
            default=None,
            help="RAIN's base configuration (default fast: RainConfig.fast())",
        )
        p.add_argument("--max-new-tokens", type=int, default=None)
        p.add_argument("--max-searches", type=int, default=None)
        p.add_argument("--extra-searches", type=int, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument(
            "--methods",
            default=None,
            help="compare decoding methods at equal compute: plain,rain,best-of-n,check-retry,blockwise,escalating "
            "(each at its compute levels; docs/quality.md)",
        )
        p.add_argument("--scenarios", default=None, help="with --methods: difficulty,harm (default both)")
        p.add_argument(
            "--difficulty-data", default=None, help="with --methods: a difficulty JSONL (prompt, word, level)"
        )
    _model_options(p)
    return p


def _options(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        engine=args.engine,
        model=args.model,
        base_url=args.base_url,
        api_key=args.api_key,
        judge=args.judge,
        judge_base_url=args.judge_base_url,
        judge_model=args.judge_model,
        device=args.device,
        dtype=args.dtype,
        guard=args.guard,
        guard_base_url=args.guard_base_url,
        guard_model=args.guard_model,
        guard_preset=args.guard_preset,
    )


def _progress_bar(desc: str, total: int) -> tuple[Any, Callable[[str], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=" step", file=sys.stderr, dynamic_ncols=True)

    def progress(label: str) -> None:
        bar.update(1)
        bar.set_postfix_str(label[:60], refresh=False)

    return bar, progress


def _evaluators(
    kinds: Sequence[str], lm: Any, judge: Any, args: argparse.Namespace, guard: Any = None
) -> list[NamedEvaluator]:
    return [build_evaluator(k, lm, judge, args.principle, args.scoring, guard) for k in kinds]


def _has_guard(args: argparse.Namespace) -> bool:
    return bool(args.guard or args.guard_base_url or args.guard_model)


def _needs_generator(kinds: Sequence[str]) -> bool:
    return "self" in kinds


def run_evaluator(args: argparse.Namespace) -> int:
    from . import evaluator as bench
    from .datasets import load_pairs

    default = "guard" if _has_guard(args) else "judge" if args.judge or args.judge_model else "self"
    kinds = args.evaluator or [default]
    opts = _options(args)
    judge = build_judge(opts)
    guard = build_guard(opts) if "guard" in kinds else None
    lm = build_generator(opts) if _needs_generator(kinds) else None
    evaluators = _evaluators(kinds, lm, judge, args, guard)
    make = bench.EvaluatorPlan.quick if args.quick else bench.EvaluatorPlan.full
    plan = make(Path(args.data) if args.data else None)
    n = len(load_pairs(plan.data, plan.limit))
    bar, progress = _progress_bar("rain bench evaluator", n * len(evaluators))
    with bar:
        report = bench.evaluate(evaluators, plan, progress)
    md, js = bench.write(report, Path(args.out) if args.out else default_folder(), args.name)
    sys.stdout.write(bench.render_table(report))
    for s in report.evaluators:
        sys.stdout.write(f"- {s.verdict}\n")
    sys.stdout.write(f"report: {md} and {js}\n")
    return 0


def _grader(spec: str, judge: Any, args: argparse.Namespace) -> Any:
    from .grading import KEYWORD_GRADER, CallableGrader, JudgeGrader
    from .scorers import load_scorer

    if spec == "judge":
        if judge is None:
            raise SetupError("the grader 'judge' needs --judge MODEL (and --judge-base-url for a served judge)")
        return JudgeGrader(judge, args.principle)
    if spec == "keyword":
        return KEYWORD_GRADER
    name, fn, description = load_scorer(spec)
    return CallableGrader(fn, name=name, description=description)


_PLACEHOLDER = NamedEvaluator("placeholder", CallableEvaluator(lambda prompt, reply: 1.0), "checks the data only")


def _methods_plan(args: argparse.Namespace, make: Any, methods: tuple[str, ...]) -> Any:
    return make(
        methods=methods,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",")) if args.scenarios else None,
        difficulty_file=Path(args.difficulty_data) if args.difficulty_data else None,
        sets=(tuple(s.strip() for s in args.sets.split(",")) if args.sets else ()) + tuple(args.data or ()) or None,
        per_set=args.per_set,
        per_level=args.per_set,
    )


def run_methods(args: argparse.Namespace) -> int:
    """``rain bench quality --methods ...`` (``rain_bench.quality.compare``)."""
    from . import quality as bench
    from .grading import ensure_separate
    from .quality.levels import parse_methods

    unused = [o for o in ("preset", "max_searches", "extra_searches", "adversarial", "framings") if getattr(args, o)]
    if unused:
        raise SetupError(f"--{unused[0].replace('_', '-')} does not apply with --methods (each method has its levels)")
    limits = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "seed": args.seed}.items() if v is not None}
    make = bench.MethodsPlan.quick if args.quick else bench.MethodsPlan.full
    try:
        plan = _methods_plan(args, make, parse_methods(args.methods))
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    plan = plan.replace(limits={**dict(plan.limits), **limits})
    opts = _options(args)
    judge = build_judge(opts)
    grader = _grader(args.grader or ("judge" if judge is not None else "keyword"), judge, args)
    kinds = args.evaluator or ["embedding"]
    guard = build_guard(opts) if "guard" in kinds else None
    others = {k: build_evaluator(k, None, judge, args.principle, args.scoring, guard) for k in kinds if k != "self"}
    for named in others.values():  # a grader that is one of the evaluators fails before the model loads
        ensure_separate(grader, named.evaluator)
    scenarios = bench.method_scenarios(plan, list(others.values()) or [_PLACEHOLDER])  # so does bad data
    lm = build_generator(opts)
    evaluators = [others.get(k) or build_evaluator(k, lm, judge, args.principle, args.scoring, guard) for k in kinds]
    scenarios = bench.method_scenarios(plan, evaluators)
    total = 1 + sum(len(s.prompts.items) * sum(plan.runs_on(level, s) for level in plan.levels()) for s in scenarios)
    bar, progress = _progress_bar("rain bench quality --methods", total)
    with bar:
        report, md, js = bench.evaluate_methods(
            lm, evaluators, grader, plan, out=args.out, name=args.name, progress=progress
        )
    sys.stdout.write(bench.render_methods_table(report))
    for line in report.verdicts:
        sys.stdout.write(f"- {line}\n")
    sys.stdout.write(f"report: {md} and {js}\n")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from . import quality as bench

    if args.methods:
        return run_methods(args)
    from .datasets import BUILTIN_SETS
    from .grading import ensure_separate

    kinds = args.evaluator or (["guard"] if _has_guard(args) else ["self"])
    opts = _options(args)
    judge = build_judge(opts)
    grader = _grader(args.grader or ("judge" if judge is not None else "keyword"), judge, args)
    sets: tuple[str, ...] = tuple(args.data) if args.data else BUILTIN_SETS
    if args.sets:
        sets = tuple(s.strip() for s in args.sets.split(",") if s.strip()) + (tuple(args.data) if args.data else ())
    overrides = {
        k: v
        for k, v in {
            "max_new_tokens": args.max_new_tokens,
            "max_searches": args.max_searches,
            "extra_searches": args.extra_searches,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    make = bench.QualityPlan.quick if args.quick else bench.QualityPlan.full
    plan = make(
        sets=sets,
        per_set=args.per_set,
        adversarial=args.adversarial or None,
        framings=Path(args.framings) if args.framings else None,
        preset=args.preset,
        overrides=overrides,
    )
    prompt_sets = bench.load_sets(plan)  # bad data fails before any model loads
    guard = build_guard(opts) if "guard" in kinds else None
    others = {k: build_evaluator(k, None, judge, args.principle, args.scoring, guard) for k in kinds if k != "self"}
    for named in others.values():  # a grader that is one of RAIN's evaluators fails before the model loads
        ensure_separate(grader, named.evaluator)
    lm = build_generator(opts)
    evaluators = [
        others[k] if k in others else build_evaluator(k, lm, judge, args.principle, args.scoring, guard) for k in kinds
    ]
    total = sum(len(s) for s in prompt_sets) * (1 + len(evaluators)) + len(evaluators)
    bar, progress = _progress_bar("rain bench quality", total)
    with bar:
        report, md, js = bench.evaluate(lm, evaluators, grader, plan, out=args.out, name=args.name, progress=progress)
    sys.stdout.write(bench.render_table(report))
    sys.stdout.write(f"graded by {report.grader.name}; failed grades: {report.failed_grades}\n")
    if args.quick:
        sys.stdout.write("(quick mode: two prompts per set, tiny budgets)\n")
    sys.stdout.write(f"report: {md} and {js}\n")
    return 0


def bench_main(which: str, argv: Sequence[str], verbose: bool = False) -> int:
    """``rain bench WHICH ARGS...``: the report goes to ``--out`` (default ``default_folder()``, never
    the working directory); the loading bars of Hugging Face libraries show only with ``verbose``."""
    from rain_core.cli.progress import quiet_loading

    with quiet_loading(verbose):
        return _bench(which, argv)


def _bench(which: str, argv: Sequence[str]) -> int:
    if which not in BENCHMARKS:
        raise SetupError(f"unknown benchmark {which!r}: use one of {', '.join(BENCHMARKS)}")
    if which == "fidelity":  # a program with its own options (rain_bench.fidelity)
        from .fidelity import main as fidelity_main

        return fidelity_main(list(argv))
    if which == "vllm":  # a program with its own options (rain_bench.vllm_speed)
        from .vllm_speed import main as vllm_main

        return vllm_main(list(argv))
    args = build_parser(which).parse_args(list(argv))
    if which == "speed":
        from .speed import main as speed_main

        return speed_main(quick=args.quick, out=args.out)
    from .datasets import DataError
    from .grading import SameJudgeError

    try:
        return run_evaluator(args) if which == "evaluator" else run_quality(args)
    except (DataError, SetupError, SameJudgeError) as exc:
        sys.stderr.write(f"rain bench {which}: error: {exc}\n")
        return 2


def demo_main(argv: Sequence[str] = (), *, quiet: bool = False, verbose: bool = False) -> int:
    """``rain demo``: see ``rain_bench.demo``."""
    from .demo import main

    return main(list(argv), quiet=quiet, verbose=verbose)


def add_bench_command(sub: Any, name: str = "bench") -> None:
    """Add ``rain bench WHICH ...`` to the ``rain`` command's subparsers (entry point ``rain.commands``);
    the benchmark's own options are parsed by ``bench_main`` when it runs."""
    bench = sub.add_parser(name, help=f"benchmarks: {', '.join(BENCHMARKS)} (`rain bench WHICH --help`)")
    bench.add_argument("which", choices=BENCHMARKS, help="the benchmark to run")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's options (see `rain bench WHICH --help`)")
    bench.set_defaults(
        run=lambda args: bench_main(args.which, args.args, verbose=bool(getattr(args, "verbose", False)))
    )


def add_demo_command(sub: Any, name: str = "demo") -> None:
    """Add ``rain demo`` to the ``rain`` command's subparsers (entry point ``rain.commands``)."""
    demo = sub.add_parser(
        name,
        help="what RAIN does and cannot do with the embedded model (a few minutes)",
        description="The embedded model's measured self-evaluation accuracy, the lock-picking prompt "
        "with plain decoding and RAIN, and RAIN steering the model with a scoring function. Progress "
        "shows on stderr when it is a terminal.",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    demo.set_defaults(run=lambda args: demo_main(quiet=args.quiet, verbose=bool(getattr(args, "verbose", False))))
