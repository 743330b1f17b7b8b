"""Section 7 of the speed benchmark: searches side by side (``RainConfig.parallel_searches``).

For the official search and the fast preset, three evaluators that make the search work (one that
accepts nothing, the worst case; the default self-evaluation; one that rejects a few common words)
run at each width of ``PARALLEL_WIDTHS`` on the same prompts, beside plain decoding, in one run: per
token time over plain decoding and over width 1 (the median of the repetitions, with the range),
searches, model calls (a batch counting once) and forward passes per commit, and the forward passes
of a round against those of one search at width 1. Every timed decode starts from an emptied cache
and the widths alternate their order. Peak memory at the widest width is measured in a fresh
process (``python -m rain_bench.speed.parallel``), where nothing but plain decoding ran before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from ..harness import fresh_cache, median_range, ratio, timed
from .plan import PARALLEL_EVALUATORS, PARALLEL_WIDTHS, PRESETS, WARMUP_PROMPT, Plan, preset_config
from .records import Parallel, ParallelMemory, ParallelRow, Tally

Progress = Callable[[str], None]


def _warm_up(decoder: Any) -> None:
    decoder.generate(WARMUP_PROMPT, max_new_tokens=1, max_searches=1, extra_searches=0, parallel_searches=1)


def measure_parallel(
    lm: Any, plan: Plan, device: str = "cpu", progress: Progress = lambda label: None, memory: bool = True
) -> Parallel:
    """Every (preset, evaluator, width) on the plan's prompts, plain decoding beside them, measured
    fairly: every timed decode starts from an emptied cache, the widths run in the opposite order in
    every other repetition, and each figure is the median of ``plan.repeats`` repetitions with its
    range (a repetition runs every prompt once)."""
    from rain_core import RainDecoder

    overrides = {"max_new_tokens": plan.parallel_max_new_tokens, **plan.parallel_overrides}
    keys = [(preset, name, width) for preset in PRESETS for name in PARALLEL_EVALUATORS for width in PARALLEL_WIDTHS]
    decoders = {
        (preset, name, width): RainDecoder(
            lm, PARALLEL_EVALUATORS[name], config=preset_config(preset, **overrides, parallel_searches=width)
        )
        for preset, name, width in keys
    }
    for key, dec in decoders.items():
        if key[2] == PARALLEL_WIDTHS[0]:
            progress(f"7 warm-up {key[0]} {key[1]}")
            _warm_up(dec)
    plain = next(iter(decoders.values()))
    vanilla = [Tally() for _ in range(plan.repeats)]
    tallies = {key: [Tally() for _ in range(plan.repeats)] for key in keys}
    for rep in range(plan.repeats):
        widths = PARALLEL_WIDTHS if rep % 2 == 0 else tuple(reversed(PARALLEL_WIDTHS))
        for p in plan.parallel_prompts:
            progress("7 vanilla")
            fresh_cache(lm)
            vanilla[rep].add(p.text, timed(partial(plain.vanilla, p.text), device, plan.memory_interval))
            for preset in PRESETS:
                for name in PARALLEL_EVALUATORS:
                    for width in widths:
                        progress(f"7 {preset} {name} B={width} (repetition {rep + 1}/{plan.repeats})")
                        fresh_cache(lm)
                        measured = timed(partial(decoders[(preset, name, width)].generate, p.text), device)
                        tallies[(preset, name, width)][rep].add(p.text, measured)
    return Parallel(
        max_new_tokens=plan.parallel_max_new_tokens,
        config=dict(plan.parallel_overrides) or "official defaults",
        widths=tuple(PARALLEL_WIDTHS),
        repeats=plan.repeats,
        vanilla=merged(vanilla).summary(),
        rows=tuple(_row(key, tallies, vanilla) for key in keys),
        memory=measure_memory(plan, max(PARALLEL_WIDTHS)) if memory and not device.startswith("cuda") else None,
    )


def merged(tallies: list[Tally]) -> Tally:
    """The decodes of several tallies (the repetitions of one figure) as one."""
    out = Tally()
    for t in tallies:
        out.rows.extend(t.rows)
        out.peak_memory = max(out.peak_memory, t.peak_memory)
    return out


def _row(
    key: tuple[str, str, int], tallies: dict[tuple[str, str, int], list[Tally]], vanilla: list[Tally]
) -> ParallelRow:
    """One (preset, evaluator, width): per-repetition ratios summarised as median and range."""
    preset, name, width = key
    reps = [t.summary() for t in tallies[key]]
    ones = [t.summary() for t in tallies[(preset, name, PARALLEL_WIDTHS[0])]]
    plains = [t.summary() for t in vanilla]
    versus_one = median_range([ratio(r.seconds_per_token, o.seconds_per_token) for r, o in zip(reps, ones)])
    over_plain = median_range([ratio(r.seconds_per_token, v.seconds_per_token) for r, v in zip(reps, plains)])
    s = merged(tallies[key]).summary()
    one = merged(tallies[(preset, name, PARALLEL_WIDTHS[0])]).summary()
    per_round = ratio(s.forward_calls, s.rounds)
    return ParallelRow(
        preset=preset,
        evaluator=name,
        width=width,
        decodes=s,
        per_token_ratio=over_plain[0],
        per_token_ratio_range=(over_plain[1], over_plain[2]),
        versus_one=versus_one[0],
        versus_one_range=(versus_one[1], versus_one[2]),
        searches_per_commit=ratio(s.searches, s.commits),
        searches_per_round=ratio(s.searches, s.rounds),
        model_calls_per_commit=ratio(s.model_calls, s.commits),
        forward_calls_per_commit=ratio(s.forward_calls, s.commits),
        forward_calls_per_round=per_round,
        round_over_one_search=ratio(per_round, ratio(one.forward_calls, one.searches)),
    )


def measure_memory(plan: Plan, width: int) -> ParallelMemory:
    """Peak resident memory of plain decoding, then of RAIN at ``width`` (worst case and
    self-evaluation, the official search), in a fresh process."""
    cmd = [sys.executable, "-m", "rain_bench.speed.parallel", "--width", str(width), "--mode", plan.mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe failed ({' '.join(cmd)}): {out.stderr.strip()[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return ParallelMemory(
        width=width,
        measure="process resident set size (psutil), a fresh process",
        vanilla_peak_bytes=int(data["vanilla"]),
        rain_peak_bytes=int(data["rain"]),
        ratio=ratio(data["rain"], data["vanilla"]),
        evaluators=tuple(data["evaluators"]),
    )


def _probe(width: int, mode: str) -> dict[str, Any]:
    from rain_core import RainDecoder, load_default_model

    plan = Plan.quick() if mode == "quick" else Plan.full()
    lm = load_default_model()
    overrides = {"max_new_tokens": plan.parallel_max_new_tokens, **plan.parallel_overrides}
    names = ("nothing", "self")
    decoders = [
        RainDecoder(lm, PARALLEL_EVALUATORS[n], config=preset_config("official", **overrides, parallel_searches=width))
        for n in names
    ]
    vanilla = max(timed(partial(decoders[0].vanilla, p.text)).peak_memory for p in plan.parallel_prompts)
    rain = max(timed(partial(d.generate, p.text)).peak_memory for d in decoders for p in plan.parallel_prompts)
    return {"vanilla": vanilla, "rain": rain, "evaluators": list(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak memory of plain decoding, then RAIN at one width (JSON)")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--mode", choices=["full", "quick"], default="full")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(_probe(args.width, args.mode)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
