"""Decoding the prompt sets plainly and with RAIN, grading every answer, and the figures per set.

The grader is checked against every evaluator RAIN uses before anything runs
(``grading.ensure_separate``): a report can never grade RAIN with the evaluator that steered it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from rain_core.chat import transcript
from rain_core.decoder import RainDecoder
from rain_core.protocols import LanguageModel

from ..datasets import LabelledPair, PromptItem, PromptSet
from ..engines import NamedEvaluator
from ..grading import REFUSAL_PHRASES, REFUSAL_WINDOW, Grader, ensure_separate, grade, refusal_phrase
from ..harness import machine_info, now_iso
from ..metrics import mean, share
from .plan import QualityPlan
from .records import PLAIN, Answer, EvaluatorInfo, GraderInfo, MethodResult, QualityReport, SetResult

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
WARMUP_PROMPT = "Hello!"


def _noop(label: str) -> None:
    pass


def conversation(prompt: str) -> str:
    """The request as evaluators and graders read it (``User: ...``)."""
    return transcript([{"role": "user", "content": prompt}])


def rain_method(named: NamedEvaluator) -> str:
    return f"RAIN + {named.name}"


def check_grader(grader: Grader, pairs: Sequence[LabelledPair]) -> GraderInfo:
    """The grader's own agreement with the labelled pairs (a grader that fails on a pair: counted)."""
    correct = failed = 0
    for pair in pairs:
        g = grade(grader, conversation(pair.prompt), pair.reply)
        if g.harmful is None:
            failed += 1
        elif g.harmful == pair.harmful:
            correct += 1
    judged = len(pairs) - failed
    return GraderInfo(
        name=grader.name,
        description=grader.describe(),
        pairs=len(pairs),
        pairs_correct=correct,
        pairs_accuracy=correct / judged if judged else None,
        pairs_failed=failed,
    )


def _decode(method: str, fn: Callable[[], Any], item: PromptItem, set_name: str, grader: Grader) -> Answer:
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a failing decode (e.g. an evaluator error) is recorded, the run goes on
        logger.warning("%s failed on %s: %s: %s", method, item.id, type(exc).__name__, exc)
        return Answer(
            set_name,
            item.id,
            method,
            item.prompt,
            item.harmful,
            item.framing,
            "",
            0,
            time.perf_counter() - t0,
            None,
            "error",
            None,
            None,
            decode_error=f"{type(exc).__name__}: {exc}",
        )
    seconds = time.perf_counter() - t0
    g = grade(grader, conversation(item.prompt), result.text)
    searches = result.stats.get("searches")
    forward = result.stats.get("forward_tokens")
    return Answer(
        set_name,
        item.id,
        method,
        item.prompt,
        item.harmful,
        item.framing,
        result.text,
        len(result.token_ids),
        seconds,
        int(searches) if searches is not None else None,
        result.finish_reason,
        refusal_phrase(result.text),
        g.harmful,
        grade_error=g.error,
        forward_tokens=int(forward) if forward is not None else None,
    )


def summarise(
    method: str, answers: Sequence[Answer], plain_seconds: float | None, plain_forward: float | None = None
) -> MethodResult:
    decoded = [a for a in answers if a.decode_error is None]
    graded = [a for a in decoded if a.harmful is not None]
    harmful = sum(1 for a in graded if a.harmful)
    refusals = sum(1 for a in decoded if a.refusal is not None)
    tokens = sum(a.tokens for a in decoded)
    seconds = sum(a.seconds for a in decoded)
    searches = None if method == PLAIN else sum(a.searches or 0 for a in decoded)
    counted = all(a.forward_tokens is not None for a in decoded) and bool(decoded)
    forward = sum(a.forward_tokens or 0 for a in decoded) if counted else None
    return MethodResult(
        method=method,
        items=len(answers),
        decoded=len(decoded),
        graded=len(graded),
        failed_grades=sum(1 for a in decoded if a.grade_error is not None),
        failed_decodes=len(answers) - len(decoded),
        harmful=harmful,
        harmful_share=share(harmful, len(graded)),
        refusals=refusals,
        refusal_rate=share(refusals, len(decoded)),
        mean_tokens=mean([float(a.tokens) for a in decoded]),
        seconds=seconds,
        seconds_per_token=seconds / tokens if tokens else None,
        searches=searches,
        searches_per_token=(searches / tokens if tokens and searches is not None else None),
        cost_vs_plain=(seconds / plain_seconds if plain_seconds else None),
        forward_tokens_per_token=(forward / tokens if forward is not None and tokens else None),
        work_vs_plain=(forward / plain_forward if forward is not None and plain_forward else None),
    )


def run_set(
    prompt_set: PromptSet, plain: RainDecoder, rain: dict[str, RainDecoder], grader: Grader, progress: Progress = _noop
) -> tuple[list[Answer], list[MethodResult]]:
    """Every prompt of the set: plain decoding, then RAIN with each evaluator, back to back."""
    answers: dict[str, list[Answer]] = {PLAIN: [], **{m: [] for m in rain}}
    for item in prompt_set.items:
        progress(f"{prompt_set.name} {item.id} plain")
        answers[PLAIN].append(_decode(PLAIN, partial(plain.vanilla, item.prompt), item, prompt_set.name, grader))
        for method, dec in rain.items():
            progress(f"{prompt_set.name} {item.id} {method}")
            answers[method].append(_decode(method, partial(dec.generate, item.prompt), item, prompt_set.name, grader))
    plain_result = summarise(PLAIN, answers[PLAIN], None)
    # cost against plain decoding of the same prompts (those both decoded)
    results = [plain_result]
    for method in rain:
        ok = {a.item for a in answers[method] if a.decode_error is None}
        same = [a for a in answers[PLAIN] if a.item in ok and a.decode_error is None]
        forward = [a.forward_tokens for a in same]
        base_forward = float(sum(f for f in forward if f is not None)) if None not in forward else None
        results.append(summarise(method, answers[method], sum(a.seconds for a in same), base_forward))
    return [a for rows in answers.values() for a in rows], results


def run(
    lm: LanguageModel,
    evaluators: Sequence[NamedEvaluator],
    grader: Grader,
    sets: Sequence[PromptSet],
    plan: QualityPlan,
    pairs: Sequence[LabelledPair] = (),
    progress: Progress = _noop,
    chart: Callable[[SetResult], str | None] | None = None,
    encoder: Any = "default",
) -> QualityReport:
    """Decode, grade and summarise every set. Raises ``SameJudgeError`` before decoding anything when
    the grader is one of RAIN's evaluators, ``ValueError`` when a set is empty. ``encoder``: RAIN's
    sentence encoder, as ``RainDecoder`` takes it ("default", an ``Encoder``, or None)."""
    if not evaluators:
        raise ValueError("name at least one evaluator for RAIN")
    for named in evaluators:
        ensure_separate(grader, named.evaluator)
    for s in sets:
        if not s.items:
            raise ValueError(f"the prompt set {s.name!r} ({s.source}) is empty; it needs at least one prompt")
    t0 = time.perf_counter()
    date, machine = now_iso(), machine_info()
    cfg = plan.rain_config()
    plain = RainDecoder(lm, encoder=encoder, config=cfg)
    rain = {rain_method(ev): RainDecoder(lm, ev.evaluator, encoder=encoder, config=cfg) for ev in evaluators}
    for method, dec in rain.items():  # load the encoder, cache the evaluator's fixed prefix: not timed
        progress(f"warm-up {method}")
        dec.generate(WARMUP_PROMPT, max_new_tokens=1, max_searches=1, extra_searches=0)
    plain.vanilla(WARMUP_PROMPT, max_new_tokens=1)
    grader_info = check_grader(grader, pairs)

    all_answers: list[Answer] = []
    results = []
    for s in sets:
        answers, methods = run_set(s, plain, rain, grader, progress)
        all_answers += answers
        result = SetResult(
            name=s.name,
            source=s.source,
            items=len(s.items),
            harmful_requests=sum(1 for i in s.items if i.harmful),
            framed=any(i.framing for i in s.items),
            methods=tuple(methods),
            chart=None,
        )
        if chart is not None:
            from dataclasses import replace

            result = replace(result, chart=chart(result))
        results.append(result)
    return QualityReport(
        date=date,
        mode=plan.mode,
        machine=machine,
        model=str(lm.name),
        rain_config=cfg.model_dump(mode="json"),
        config_deviations={k: {"official": o, "this run": v} for k, (o, v) in cfg.deviations().items()},
        evaluators=tuple(EvaluatorInfo(rain_method(ev), ev.description) for ev in evaluators),
        grader=grader_info,
        refusal_phrases=REFUSAL_PHRASES,
        refusal_window=REFUSAL_WINDOW,
        sets=tuple(results),
        answers=tuple(all_answers),
        failed_grades=sum(1 for a in all_answers if a.grade_error is not None),
        failed_decodes=sum(1 for a in all_answers if a.decode_error is not None),
        seconds=time.perf_counter() - t0,
    )
