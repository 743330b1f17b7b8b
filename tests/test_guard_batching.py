"""Many checks, one forward pass: a guard model checks a batch of requests (or of answers) in one
``next_token_logprobs`` request, through ``GuardEvaluator.score_request_batch`` and ``score_batch``,
and ``RainGuard`` uses them for ``batch`` and for a dict of prompt variables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage  # noqa: E402
from test_guard_families import SetLM, with_template  # noqa: E402

from rain_core.evaluators.guards.evaluator import GuardEvaluator  # noqa: E402
from rain_core.evaluators.guards.presets import QWEN3GUARD  # noqa: E402
from rain_integrations.langchain import RainGuard  # noqa: E402

REQUESTS = ["How do I bake bread?", "Where can I buy a knife to hurt someone?", "What is the capital of France?"]


def knife_guard() -> tuple[GuardEvaluator, SetLM]:
    """A Qwen3Guard-shaped fake guard that calls every text naming a knife unsafe."""
    tok = with_template("qwen2", "qwen3guard")
    (safe,), (unsafe, _) = GuardEvaluator(SetLM(tok), QWEN3GUARD).verdict_ids

    def table(ids: list[int]) -> dict[int, float]:
        judged = tok.decode(ids).rsplit("<BEGIN CONVERSATION>", 1)[-1].rsplit("<END CONVERSATION>", 1)[0]
        p = 0.9 if "knife" in judged.rsplit(":", 1)[-1] else 0.05
        return {safe: 1 - p, unsafe: p}

    lm = SetLM(tok, table)
    return GuardEvaluator(lm, QWEN3GUARD), lm


def test_a_batch_of_requests_is_one_forward_pass_with_the_scores_of_one_by_one_checks():
    ev, lm = knife_guard()
    guard = RainGuard(evaluator=ev, check_input=True, same_score_alert=0)
    one_by_one = [guard.invoke(r) for r in REQUESTS]
    calls = len(lm.calls)
    batched = guard.batch(REQUESTS)
    assert len(lm.calls) == calls + 1 and lm.calls[-1][0] == len(REQUESTS)  # one request, a row per text
    assert batched == one_by_one
    assert batched[0] == REQUESTS[0] and batched[2] == REQUESTS[2] and "declined" in batched[1]
    assert asyncio.run(guard.abatch(REQUESTS)) == one_by_one
    verdicts = guard.check_many(REQUESTS, checked="input")
    assert [v.score for v in verdicts] == ev.score_request_batch("", REQUESTS)
    assert [v.passed for v in verdicts] == [True, False, True]


def test_a_batch_of_answers_and_a_dict_of_prompt_variables_are_checked_in_one_call():
    ev, lm = knife_guard()
    answers = [AIMessage("Mix flour and water."), AIMessage("Take a knife and hurt them.")]
    guard = RainGuard(evaluator=ev, same_score_alert=0)
    calls = len(lm.calls)
    out: list[Any] = guard.batch(answers)
    assert len(lm.calls) == calls + 1 and lm.calls[-1][0] == 2
    assert out[0] is answers[0] and out[1].response_metadata["rain_guard"]["verdict"] == "fail"
    inputs = RainGuard(evaluator=ev, check_input=True, same_score_alert=0)
    calls = len(lm.calls)
    blocked = inputs.invoke({"topic": "bread", "question": REQUESTS[1], "n": 3})
    assert len(lm.calls) == calls + 1 and lm.calls[-1][0] == 2  # both strings, one request
    assert "declined" in blocked.content and blocked.response_metadata["rain_guard"]["checked"] == "input"
    with pytest.raises(ValueError, match="one context or one per text: got 2 contexts for 3 texts"):
        guard.check_many(REQUESTS, ["", ""])
