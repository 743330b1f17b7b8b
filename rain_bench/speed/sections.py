"""The speed benchmark's sections. Each measures on one loaded model and returns typed records.

Every figure is a ratio of two measurements taken in the same run on the same model (RAIN over plain
decoding, engine on over engine off, largest over smallest length), so the machine's noise cancels
as far as it can.

1. RAIN / vanilla wall time at the plan's budget, for three evaluators: the default
   self-evaluation, one satisfied with everything (early stop fires: the best case) and one
   satisfied with nothing (the full budget: the worst case).
2. Engine gain: seconds per search with prefix KV-cache reuse and batching off over on, at a fixed
   search budget, and whether both engines commit the same token ids.
3. Model forward tokens per committed token, engine on and off.
4. Peak memory of RAIN over vanilla (resident set size on CPU, CUDA allocator peak on the GPU).
5. Seconds per generated token as ``max_new_tokens`` grows, and the ratio of the largest to the
   smallest length (about 1 when the cost is linear in the answer length).
6. Fidelity of the fast preset and of searches side by side to the official search (``fidelity``).
7. Searches side by side (``parallel``): three evaluators at parallel_searches 1, 4 and 8.

The engine is read only through public methods: ``variant(...)`` (a twin over the same weights with
other engine options), ``memory_stats()`` and, through the decoder, ``engine_stats()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from ..harness import fresh_cache, machine_info, median_range, now_iso, ratio, timed
from .parallel import measure_parallel, merged
from .plan import (
    EVALUATOR_LABELS,
    EVALUATORS,
    PRESET_LABELS,
    PRESETS,
    TARGET_BEST_CASE_OVERHEAD,
    TARGET_ENGINE_GAIN,
    TARGET_FAST_BEST_CASE,
    TARGET_LINEAR_GROWTH,
    TARGET_PARALLEL_MEMORY,
    TARGET_PARALLEL_WORST_CASE,
    TARGET_PEAK_MEMORY,
    TARGET_ROUND_FORWARD,
    WARMUP_PROMPT,
    Plan,
    preset_config,
    variant_key,
)
from .records import (
    Device,
    DeviceError,
    DeviceResult,
    EngineComparison,
    ForwardWork,
    Memory,
    Overhead,
    Parallel,
    RainVariant,
    Scaling,
    ScalingRow,
    SpeedReport,
    Tally,
    Target,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]  # told the name of each decode as it starts


def _noop(label: str) -> None:
    pass


def _run(tally: Tally, prompt: str, fn: Callable[[], Any], device: str, interval: float, lm: Any = None) -> Any:
    """Time one decode, from an emptied cache when ``lm`` is given (every timed decode of a figure
    starts from the same cache state)."""
    if lm is not None:
        fresh_cache(lm)
    measured = timed(fn, device, interval)
    tally.add(prompt, measured)
    return measured.value


def _warm_up(decoder: Any, overrides: Mapping[str, Any]) -> None:
    """One tiny decode on an unrelated prompt: loads the sentence encoder and caches the
    evaluator's fixed prefix, so no timed run pays one-off set-up costs."""
    cfg = {**overrides, "max_new_tokens": 1, "max_searches": 1, "extra_searches": 0}
    decoder.generate(WARMUP_PROMPT, **cfg)


def measure_overhead(lm: Any, plan: Plan, device: str = "cpu", progress: Progress = _noop) -> tuple[Overhead, Memory]:
    """Sections 1 and 4: RAIN over vanilla wall time for each evaluator and search preset (official
    and fast), and peak memory.

    Vanilla runs first over all prompts, before anything RAIN needs is loaded, to measure its peak
    memory; then, prompt by prompt, vanilla and every RAIN variant are timed back to back.
    """
    from rain_core import RainDecoder

    overrides = {"max_new_tokens": plan.max_new_tokens, **plan.search_overrides}
    decoders = {
        variant_key(name, preset): RainDecoder(lm, fn, config=preset_config(preset, **overrides))
        for preset in PRESETS
        for name, fn in EVALUATORS.items()
    }
    vanilla_dec = decoders["self"]  # vanilla never touches the evaluator or the encoder

    memory_pass = Tally()
    for p in plan.prompts:
        progress("1/4 vanilla memory pass")
        _run(memory_pass, p.text, partial(vanilla_dec.vanilla, p.text), device, plan.memory_interval)

    for name, dec in decoders.items():
        progress(f"1 warm-up {name}")
        _warm_up(dec, {})

    vanillas = [Tally() for _ in range(plan.repeats)]
    rains = {name: [Tally() for _ in range(plan.repeats)] for name in decoders}
    for rep in range(plan.repeats):
        names = list(decoders) if rep % 2 == 0 else list(reversed(decoders))  # the order alternates
        for p in plan.prompts:
            progress(f"1 vanilla (repetition {rep + 1}/{plan.repeats})")
            _run(vanillas[rep], p.text, partial(vanilla_dec.vanilla, p.text), device, plan.memory_interval, lm)
            for name in names:
                progress(f"1 RAIN {name} (repetition {rep + 1}/{plan.repeats})")
                dec = decoders[name]
                _run(rains[name][rep], p.text, partial(dec.generate, p.text), device, plan.memory_interval, lm)

    vanilla, rain = merged(vanillas), {name: merged(reps) for name, reps in rains.items()}
    v = vanilla.summary()
    variants = {}
    for name, tally in rain.items():
        s = tally.summary()
        preset, _, evaluator = name.rpartition(":")
        label = EVALUATOR_LABELS[evaluator] + ("" if not preset else f", {PRESET_LABELS[preset]}")
        pairs = [(r.summary(), w.summary()) for r, w in zip(rains[name], vanillas)]
        wall = median_range([ratio(r.seconds, w.seconds) for r, w in pairs])
        per_token = median_range([ratio(r.seconds_per_token, w.seconds_per_token) for r, w in pairs])
        variants[name] = RainVariant(
            label=label,
            decodes=s,
            wall_ratio=wall[0],
            wall_ratio_range=(wall[1], wall[2]),
            per_token_ratio=per_token[0],
            per_token_ratio_range=(per_token[1], per_token[2]),
            searches_per_commit=ratio(s.searches, s.commits),
        )
    overhead = Overhead(
        max_new_tokens=plan.max_new_tokens,
        config=dict(plan.search_overrides) or "official defaults",
        vanilla=v,
        rain=variants,
    )

    rain_peak = max(t.peak_memory for t in rain.values())
    memory = Memory(
        measure="cuda max_memory_allocated" if device.startswith("cuda") else "process resident set size (psutil)",
        vanilla_peak_bytes=memory_pass.peak_memory,
        rain_peak_bytes=rain_peak,
        ratio=ratio(rain_peak, memory_pass.peak_memory),
        rain_peak_by_evaluator={name: t.peak_memory for name, t in rain.items()},
        kv_cache_bytes_after=int(lm.memory_stats().get("cache_bytes", 0)),
    )
    return overhead, memory


def measure_engine(
    lm: Any, plan: Plan, device: str = "cpu", progress: Progress = _noop
) -> tuple[EngineComparison, ForwardWork]:
    """Sections 2 and 3: the same fixed-budget RAIN decodes (self-evaluation) with prefix KV-cache
    reuse and batching on, then off, on two fresh engines sharing the model's weights."""
    from rain_core import RainDecoder

    overrides = {"max_new_tokens": plan.engine_max_new_tokens, **plan.fixed_config()}
    engines = {
        "on": lm.variant(reuse_cache=True, batch=True),
        "off": lm.variant(reuse_cache=False, batch=False),
    }
    decoders = {name: RainDecoder(engine, **overrides) for name, engine in engines.items()}
    for name, dec in decoders.items():
        progress(f"2 warm-up engine {name}")
        _warm_up(dec, overrides)

    tallies = {name: Tally() for name in decoders}
    token_ids: dict[str, list[list[int]]] = {name: [] for name in decoders}
    for p in plan.engine_prompts:
        for name, dec in decoders.items():
            progress(f"2 engine {name}")
            res = _run(
                tallies[name], p.text, partial(dec.generate, p.text), device, plan.memory_interval, engines[name]
            )
            token_ids[name].append(list(res.token_ids))
    on, off = tallies["on"].summary(), tallies["off"].summary()
    same = [a == b for a, b in zip(token_ids["on"], token_ids["off"])]
    engine = EngineComparison(
        searches_per_commit=plan.fixed_searches,
        max_new_tokens=plan.engine_max_new_tokens,
        config=plan.fixed_config(),
        on=on,
        off=off,
        gain=ratio(off.seconds_per_search or 0.0, on.seconds_per_search or 0.0),
        same_decisions=all(same),
        identical_prompts=sum(same),
        prompts=len(same),
        token_ids=token_ids,
    )
    work = ForwardWork(
        on_forward_tokens_per_token=on.forward_tokens_per_token,
        on_forward_calls_per_token=on.forward_calls_per_token,
        off_forward_tokens_per_token=off.forward_tokens_per_token,
        off_forward_calls_per_token=off.forward_calls_per_token,
        reduction=ratio(off.forward_tokens_per_token, on.forward_tokens_per_token),
    )
    return engine, work


def measure_scaling(lm: Any, plan: Plan, device: str = "cpu", progress: Progress = _noop) -> Scaling:
    """Section 5: seconds per generated token at each ``max_new_tokens`` (fixed search budget per
    commit, self-evaluation), with vanilla at the same lengths for reference."""
    from rain_core import RainDecoder

    dec = RainDecoder(lm, **plan.fixed_config())
    tallies = {(n, kind): [Tally() for _ in range(plan.repeats)] for n in plan.lengths for kind in ("plain", "rain")}
    for rep in range(plan.repeats):
        lengths = plan.lengths if rep % 2 == 0 else tuple(reversed(plan.lengths))  # the order alternates
        for n in lengths:
            for p in plan.scaling_prompts:
                progress(f"5 vanilla {n} (repetition {rep + 1}/{plan.repeats})")
                fn = partial(dec.vanilla, p.text, max_new_tokens=n)
                _run(tallies[(n, "plain")][rep], p.text, fn, device, plan.memory_interval, lm)
                progress(f"5 RAIN {n} (repetition {rep + 1}/{plan.repeats})")
                fn = partial(dec.generate, p.text, max_new_tokens=n)
                _run(tallies[(n, "rain")][rep], p.text, fn, device, plan.memory_interval, lm)
    rows = []
    for n in plan.lengths:
        v, r = merged(tallies[(n, "plain")]).summary(), merged(tallies[(n, "rain")]).summary()
        rows.append(
            ScalingRow(
                max_new_tokens=n,
                rain_seconds_per_token=r.seconds_per_token,
                vanilla_seconds_per_token=v.seconds_per_token,
                rain_new_tokens=r.new_tokens,
                vanilla_new_tokens=v.new_tokens,
                rain_seconds=r.seconds,
                vanilla_seconds=v.seconds,
                rain_seconds_per_search=r.seconds_per_search,
                rain_forward_tokens_per_token=r.forward_tokens_per_token,
            )
        )
    low, high = plan.lengths[0], plan.lengths[-1]
    growths = median_range(
        [
            ratio(hi.summary().seconds_per_token, lo.summary().seconds_per_token)
            for hi, lo in zip(tallies[(high, "rain")], tallies[(low, "rain")])
        ]
    )
    first, last = rows[0], rows[-1]
    growth = growths[0]
    return Scaling(
        searches_per_commit=plan.fixed_searches,
        config=plan.fixed_config(),
        rows=tuple(rows),
        growth=growth,
        growth_range=(growths[1], growths[2]),
        repeats=plan.repeats,
        vanilla_growth=ratio(last.vanilla_seconds_per_token, first.vanilla_seconds_per_token),
        reached_cap=all(r.rain_new_tokens >= r.max_new_tokens * len(plan.scaling_prompts) for r in rows),
        linear=bool(growth <= TARGET_LINEAR_GROWTH),
    )


def verdicts(
    overhead: Overhead,
    engine: EngineComparison,
    memory: Memory,
    scaling: Scaling,
    plan: Plan,
    parallel: Parallel | None = None,
) -> dict[str, Target]:
    """Each target: the measured figure and whether it is met."""
    best = overhead.rain["everything"].wall_ratio
    fast = overhead.rain[variant_key("everything", "fast")].per_token_ratio
    targets = _parallel_targets(parallel) if parallel is not None else {}
    return targets | {
        "fast_best_case": Target(
            target=f"best case RAIN <= {TARGET_FAST_BEST_CASE:g}x plain decoding per token with the fast preset",
            value=fast,
            met=bool(fast <= TARGET_FAST_BEST_CASE),
        ),
        "best_case_overhead": Target(
            target=f"best case RAIN <= {TARGET_BEST_CASE_OVERHEAD:g}x vanilla wall time (official defaults)",
            value=best,
            met=bool(best <= TARGET_BEST_CASE_OVERHEAD),
        ),
        "engine_gain": Target(
            target=f"engine gain >= {TARGET_ENGINE_GAIN:g}x per search with the same decisions",
            value=engine.gain,
            met=bool(engine.gain >= TARGET_ENGINE_GAIN and engine.same_decisions),
        ),
        "peak_memory": Target(
            target=f"peak memory RAIN <= {TARGET_PEAK_MEMORY:g}x vanilla",
            value=memory.ratio,
            met=bool(memory.ratio <= TARGET_PEAK_MEMORY),
        ),
        "linear_cost": Target(
            target=f"cost linear in max_new_tokens (per-token cost at {plan.lengths[-1]} <= "
            f"{TARGET_LINEAR_GROWTH:g}x at {plan.lengths[0]})",
            value=scaling.growth,
            met=bool(scaling.linear),
        ),
    }


def _parallel_targets(parallel: Parallel) -> dict[str, Target]:
    """The targets of searches side by side: the worst case at the widest width against width 1 (the
    median of the repetitions), a round's forward passes against one search's, and the memory."""
    widest = max(parallel.widths)
    out = {}
    row = parallel.row("official", "nothing", widest)
    out["round_forward"] = Target(
        target=f"a round at parallel_searches={widest} <= {TARGET_ROUND_FORWARD:g}x the forward passes of one "
        "search at 1 (worst case, official search)",
        value=row.round_over_one_search,
        met=bool(row.round_over_one_search <= TARGET_ROUND_FORWARD),
    )
    for preset in PRESETS:
        value = parallel.row(preset, "nothing", widest).versus_one
        out[f"parallel_worst_case_{preset}"] = Target(
            target=f"worst case at parallel_searches={widest} <= {TARGET_PARALLEL_WORST_CASE:g}x of 1 per token "
            f"({PRESET_LABELS[preset]})",
            value=value,
            met=bool(value <= TARGET_PARALLEL_WORST_CASE),
        )
    if parallel.memory is not None:
        out["parallel_memory"] = Target(
            target=f"peak memory at parallel_searches={parallel.memory.width} <= "
            f"{TARGET_PARALLEL_MEMORY:g}x plain decoding",
            value=parallel.memory.ratio,
            met=bool(parallel.memory.ratio <= TARGET_PARALLEL_MEMORY),
        )
    return out


def measure_fidelity(lm: Any, plan: Plan, progress: Progress = _noop) -> Any:
    """Section 6: the fast preset against the official search on penalised-word scenarios
    (``rain_bench.fidelity``)."""
    from .. import fidelity

    scenarios = fidelity.SCENARIOS[: plan.fidelity_scenarios]
    overrides = plan.fidelity_overrides()
    if "max_new_tokens" in overrides:
        scenarios = tuple(fidelity.Scenario(s.name, s.prompt, s.words, overrides["max_new_tokens"]) for s in scenarios)
        overrides = {k: v for k, v in overrides.items() if k != "max_new_tokens"}
    return fidelity.run(
        lm,
        scenarios=scenarios,
        seeds=plan.fidelity_seeds,
        presets=fidelity.default_presets(plan.fidelity_widths),
        overrides=overrides,
        mode=plan.mode,
        progress=lambda label: progress(f"6 fidelity {label}"),
    )


def measure_device(lm: Any, plan: Plan, device: str, dtype: str, progress: Progress = _noop) -> DeviceResult:
    """All six sections on one loaded model (``dtype``: how it was loaded, for the report)."""
    from pathlib import Path

    t0 = time.perf_counter()
    overhead, memory = measure_overhead(lm, plan, device, progress)
    engine, work = measure_engine(lm, plan, device, progress)
    scaling = measure_scaling(lm, plan, device, progress)
    fidelity = measure_fidelity(lm, plan, progress)
    parallel = measure_parallel(lm, plan, device, progress)
    return DeviceResult(
        model=Path(str(lm.name)).name,
        dtype=dtype,
        seconds=time.perf_counter() - t0,
        overhead=overhead,
        engine=engine,
        forward_work=work,
        memory=memory,
        scaling=scaling,
        targets=verdicts(overhead, engine, memory, scaling, plan, parallel),
        fidelity=fidelity,
        parallel=parallel,
    )


def run(plan: Plan, progress: Progress = _noop, cuda: bool | None = None) -> SpeedReport:
    """Measure every section on CPU (and CUDA when present)."""
    import torch

    from rain_core import load_default_model, load_model
    from rain_core.loaders import materialize_default_model

    if cuda is None:
        cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    date, machine = now_iso(), machine_info(cuda)
    devices: dict[str, Device] = {}
    devices["cpu"] = measure_device(load_default_model(device="cpu", dtype="float32"), plan, "cpu", "float32", progress)
    if cuda:
        try:
            lm = load_model(str(materialize_default_model()), device="cuda", dtype="bfloat16")
            devices["cuda"] = measure_device(lm, plan, "cuda", "bfloat16", progress)
        except Exception as exc:  # keep the CPU figures of a long run
            logger.exception("the CUDA section failed")
            devices["cuda"] = DeviceError(error=f"{type(exc).__name__}: {exc}")
    return SpeedReport(
        date=date, machine=machine, config=plan.describe(), devices=devices, seconds=time.perf_counter() - t0
    )
