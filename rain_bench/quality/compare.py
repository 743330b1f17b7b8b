"""``rain bench quality --methods ...``: RAIN beside plain decoding, best-of-N, check-retry, blockwise
best-of-K and the escalating decoder, each at several compute levels, on scenarios of known
difficulty and on the harm sets, with what every answer cost.

Every level of every method decodes every prompt of a scenario with the model wrapped in a
``TokenCounter`` (generated tokens counted the same way for all), the same token limit, temperature,
top-k and seed, and the scenario's evaluator (the same one for every method). Each final answer is
then scored once more by that evaluator (approval: a score above 0; this check is not counted in the
method's cost), checked for a refusal, and, on the harm sets, graded by the separate grader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rain_core.config import RainConfig
from rain_core.decoder import RainDecoder
from rain_core.protocols import LanguageModel

from ..grading import grade, refusal_phrase
from ..harness import machine_info, now_iso
from .compare_records import CompareReport, Decoded, LevelInfo, ScenarioInfo
from .counting import TokenCounter, counted
from .levels import Level, decoder
from .matching import TOLERANCE, figure_of, pair, summarise, verdicts
from .scenarios import Scenario
from .sections import WARMUP_PROMPT, Progress, _noop, check_grader, conversation

logger = logging.getLogger(__name__)

__all__ = ["run_methods"]


def _int(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) if value is not None else None


def decode_one(
    scenario: Scenario, index: int, level: Level, lm: TokenCounter, limits: Mapping[str, Any], grader: Any, encoder: Any
) -> Decoded:
    """One level's answer to one prompt of ``scenario``, its cost, its approval, refusal and grade."""
    item = scenario.prompts.items[index]
    named = scenario.evaluator_for(index)
    before = lm.generated
    t0 = time.perf_counter()
    base: dict[str, Any] = dict(scenario=scenario.name, item=item.id, level=level.label, method=level.method)
    try:
        result = decoder(level, lm, named.evaluator, limits, encoder).generate(item.prompt)
    except Exception as exc:  # a failing decode is recorded, the run goes on
        logger.warning("%s failed on %s: %s: %s", level.label, item.id, type(exc).__name__, exc)
        return Decoded(
            **base,
            text="",
            tokens=0,
            finish_reason="error",
            model_calls=None,
            generated_tokens=None,
            forward_tokens=None,
            evaluations=None,
            seconds=time.perf_counter() - t0,
            score=None,
            approved=None,
            refusal=None,
            decode_error=f"{type(exc).__name__}: {exc}",
        )
    seconds = time.perf_counter() - t0
    generated = lm.generated - before
    try:
        score: float | None = float(named.evaluator.score(conversation(item.prompt), result.text))
    except Exception as exc:
        logger.warning("the evaluator failed on the answer of %s to %s: %s", level.label, item.id, exc)
        score = None
    refusal = "refused" if result.finish_reason == "refused" else refusal_phrase(result.text)
    graded = grade(grader, conversation(item.prompt), result.text) if scenario.kind == "harm" else None
    escalated = result.stats.get("escalated")
    return Decoded(
        **base,
        text=result.text,
        tokens=len(result.token_ids),
        finish_reason=result.finish_reason,
        model_calls=_int(result.stats, "model_calls"),
        generated_tokens=generated,
        forward_tokens=_int(result.stats, "forward_tokens"),
        evaluations=_int(result.stats, "evaluations"),
        seconds=seconds,
        score=score,
        approved=None if score is None else score > 0.0,
        refusal=refusal,
        harmful=graded.harmful if graded is not None else None,
        escalated=bool(escalated) if escalated is not None else None,
        grade_error=graded.error if graded is not None else None,
    )


def _warm_up(lm: LanguageModel, scenarios: Sequence[Scenario], encoder: Any) -> None:
    """Load what the first timed decode would otherwise load (each evaluator's parts, the sentence
    encoder, the model's first pass): not timed, not counted."""
    for s in scenarios:
        s.evaluator_for(0).evaluator.score(conversation(WARMUP_PROMPT), "Hello.")
    tiny = RainConfig(max_new_tokens=1, max_searches=1, extra_searches=0)
    RainDecoder(lm, lambda prompt, reply: 1.0, encoder=encoder, config=tiny).generate(WARMUP_PROMPT)


def run_methods(
    lm: LanguageModel,
    scenarios: Sequence[Scenario],
    levels: Sequence[Level],
    grader: Any,
    *,
    mode: str,
    limits: Mapping[str, Any],
    pairs: Sequence[Any] = (),
    progress: Progress = _noop,
    chart: Callable[[CompareReport], tuple[str, ...]] | None = None,
    encoder: Any = "default",
    runs_on: Callable[[Level, Scenario], bool] | None = None,
) -> CompareReport:
    """Decode every scenario's prompts with every level (``runs_on(level, scenario)``: which levels
    decode which scenarios; default all), then summarise, pair and judge."""
    for s in scenarios:
        if not s.prompts.items:
            raise ValueError(f"the scenario {s.name!r} ({s.prompts.source}) has no prompts")
    t0 = time.perf_counter()
    date, machine = now_iso(), machine_info()
    counter = counted(lm)
    progress("warm-up")
    _warm_up(counter, scenarios, encoder)
    grader_info = check_grader(grader, pairs)
    answers: list[Decoded] = []
    results = []
    figures = {s.name: _figure(s) for s in scenarios}
    # every decode starts from an emptied prefix cache: the levels share seeds and prompts, and a
    # level's decode must not be answered from the cache an earlier level filled (its seconds and
    # forward tokens would be another level's savings)
    clear = getattr(lm, "clear_cache", None)
    for s in scenarios:
        mine = [level for level in levels if runs_on is None or runs_on(level, s)]
        rows: dict[str, list[Decoded]] = {level.label: [] for level in mine}
        for index, item in enumerate(s.prompts.items):
            for level in mine:  # the levels of one prompt back to back, so they share the machine's load
                progress(f"{s.name} {item.id} {level.label}")
                if callable(clear):
                    clear()
                rows[level.label].append(decode_one(s, index, level, counter, limits, grader, encoder))
        for level in mine:
            answers += rows[level.label]
            results.append(summarise(s.name, s.kind, level.label, level.method, rows[level.label]))
    matches = [m for s in scenarios for m in pair([r for r in results if r.scenario == s.name], figures[s.name])]
    report = CompareReport(
        date=date,
        mode=mode,
        machine=machine,
        model=str(lm.name),
        limits=dict(limits),
        levels=tuple(LevelInfo(lv.label, lv.method, _settings(lv, limits)) for lv in levels),
        scenarios=tuple(_info(s) for s in scenarios),
        grader=grader_info,
        results=tuple(results),
        matches=tuple(matches),
        verdicts=tuple(verdicts(matches, figures)),
        answers=tuple(answers),
        charts=(),
        tolerance=TOLERANCE,
        seconds=time.perf_counter() - t0,
    )
    if chart is not None:
        from dataclasses import replace

        report = replace(report, charts=chart(report))
    return report


def _settings(level: Level, limits: Mapping[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = dict(level.options)
    if level.searches:
        cfg = level.rain_config(limits)
        settings.update(preset=level.preset, deviations={k: v for k, (_, v) in cfg.deviations().items()})
    return settings


def _figure(s: Scenario) -> str:
    return figure_of(s.kind, sum(1 for item in s.prompts.items if item.harmful), len(s.prompts.items))


def _source(path: str) -> str:
    """A data file as the report names it: rain's own files relative to the checkout (``rain_bench/data/...``),
    so that a committed report carries no path of the machine that wrote it; a user's file as given."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def _info(s: Scenario) -> ScenarioInfo:
    described = dict.fromkeys(f"{e.name}: {e.description}" for e in s.evaluators)
    source = _source(s.prompts.source)
    return ScenarioInfo(s.name, s.kind, len(s.prompts.items), source, tuple(described), s.note, _figure(s))
