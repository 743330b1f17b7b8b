"""Section 7 of the speed benchmark: searches side by side (``RainConfig.parallel_searches``).

For the official search and the fast preset, three evaluators that make the search work (one that
accepts nothing, the worst case; the default self-evaluation; one that rejects a few common words)
run at each width of ``PARALLEL_WIDTHS`` on the same prompts, beside plain decoding, in one run: per
token time over plain decoding and over width 1, searches, model calls (a batch counting once) and
forward passes per commit. Peak memory at the widest width is measured in a fresh process
(``python -m rain_bench.speed.parallel``), where nothing but plain decoding ran before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from ..harness import ratio, timed
from .plan import PARALLEL_EVALUATORS, PARALLEL_WIDTHS, PRESETS, WARMUP_PROMPT, Plan, preset_config
from .records import Parallel, ParallelMemory, ParallelRow, Tally

Progress = Callable[[str], None]


def _warm_up(decoder: Any) -> None:
    decoder.generate(WARMUP_PROMPT, max_new_tokens=1, max_searches=1, extra_searches=0, parallel_searches=1)


def measure_parallel(
    lm: Any, plan: Plan, device: str = "cpu", progress: Progress = lambda label: None, memory: bool = True
) -> Parallel:
    """Every (preset, evaluator, width) on the plan's prompts, plain decoding beside them."""
    from rain_core import RainDecoder

    overrides = {"max_new_tokens": plan.parallel_max_new_tokens, **plan.parallel_overrides}
    decoders = {
        (preset, name, width): RainDecoder(lm, fn, config=preset_config(preset, **overrides, parallel_searches=width))
        for preset in PRESETS
        for name, fn in PARALLEL_EVALUATORS.items()
        for width in PARALLEL_WIDTHS
    }
    for key, dec in decoders.items():
        if key[2] == PARALLEL_WIDTHS[0]:
            progress(f"7 warm-up {key[0]} {key[1]}")
            _warm_up(dec)
    vanilla, tallies = Tally(), {key: Tally() for key in decoders}
    plain = next(iter(decoders.values()))
    for p in plan.parallel_prompts:
        progress("7 vanilla")
        measured = timed(partial(plain.vanilla, p.text), device, plan.memory_interval)
        vanilla.add(p.text, measured)
        for key, dec in decoders.items():
            progress(f"7 {key[0]} {key[1]} B={key[2]}")
            tallies[key].add(p.text, timed(partial(dec.generate, p.text), device, plan.memory_interval))
    v = vanilla.summary()
    rows = []
    for (preset, name, width), tally in tallies.items():
        s = tally.summary()
        one = tallies[(preset, name, PARALLEL_WIDTHS[0])].summary()
        rows.append(
            ParallelRow(
                preset=preset,
                evaluator=name,
                width=width,
                decodes=s,
                per_token_ratio=ratio(s.seconds_per_token, v.seconds_per_token),
                versus_one=ratio(s.seconds_per_token, one.seconds_per_token),
                searches_per_commit=ratio(s.searches, s.commits),
                model_calls_per_commit=ratio(s.model_calls, s.commits),
                forward_calls_per_commit=ratio(s.forward_calls, s.commits),
            )
        )
    peak = measure_memory(plan, max(PARALLEL_WIDTHS)) if memory and not device.startswith("cuda") else None
    return Parallel(
        max_new_tokens=plan.parallel_max_new_tokens,
        config=dict(plan.parallel_overrides) or "official defaults",
        widths=tuple(PARALLEL_WIDTHS),
        vanilla=v,
        rows=tuple(rows),
        memory=peak,
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
