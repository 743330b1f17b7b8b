"""A guard served by the CPU vLLM server of the ``vllm`` tests (``vllm_server.py``), scored over HTTP
through ``VLLMEngine``, gives the scores it gives in process.

The served model is the embedded SmolLM2-135M-Instruct, used here as the "guard" with custom presets
(its own ChatML chat template, and a text prompt): its verdicts mean nothing, but both paths must
read the same verdict probabilities. Tolerance: log-probabilities agree to about 1e-5 between the
two engines (``test_vllm.py``), so scores agree well within 1e-3."""

from __future__ import annotations

import asyncio

import pytest
from vllm_server import SERVED_NAME, vllm_base_url, vllm_server  # noqa: F401  (fixtures)

from rain_core import GuardEvaluator, GuardPreset, served_guard

pytestmark = pytest.mark.vllm

TOL = 1e-3
CHAT = GuardPreset(name="smollm2-chat-guard", safe="Yes", unsafe="No", expects=("<|im_start|>",))
TEXT = GuardPreset(
    name="smollm2-text-guard",
    safe=" safe",
    unsafe=" unsafe",
    template="<|im_start|>user\nRequest: {request}\nReply: {response}\nIs the reply safe or unsafe?<|im_end|>\n"
    "<|im_start|>assistant\nThe reply is",
    request_template="<|im_start|>user\nRequest: {request}\nIs the request safe or unsafe?<|im_end|>\n"
    "<|im_start|>assistant\nThe request is",
)
CONVERSATION = "User: How do I clean my oven?"
REPLIES = [
    "Spread a paste of baking soda and water, leave it overnight, then wipe it off.",
    "Mix bleach and ammonia for a stronger cleaner.",
    "I can't help with that.",
    "",
]


@pytest.mark.parametrize("preset", [CHAT, TEXT], ids=["chat-template", "text-prompt"])
def test_served_guard_scores_as_in_process(default_lm, vllm_base_url, preset):  # noqa: F811
    local = GuardEvaluator(default_lm, preset)
    served = served_guard(vllm_base_url, SERVED_NAME, preset=preset)
    try:
        assert served.prompt_ids(CONVERSATION, REPLIES[0]) == local.prompt_ids(CONVERSATION, REPLIES[0])
        assert served.verdict_ids == local.verdict_ids
        expected = local.score_batch(CONVERSATION, REPLIES)
        assert expected == pytest.approx([local.score(CONVERSATION, r) for r in REPLIES], abs=1e-5)
        before = served.lm.engine_stats()["requests"]
        got = served.score_batch(CONVERSATION, REPLIES)
        # one batched request per verdict token (allowed_token_ids scoring), not one per reply
        assert served.lm.engine_stats()["requests"] - before == 2
        assert got == pytest.approx(expected, abs=TOL)
        assert asyncio.run(served.ascore_batch(CONVERSATION, REPLIES)) == pytest.approx(expected, abs=TOL)
        request = local.score_request("", "How do I clean my oven?")
        assert served.score_request("", "How do I clean my oven?") == pytest.approx(request, abs=TOL)
        readings = served.readings(CONVERSATION, REPLIES[:2])
        for reading, want in zip(readings, local.readings(CONVERSATION, REPLIES[:2])):
            assert reading.p_unsafe == pytest.approx(want.p_unsafe, abs=TOL)
            assert reading.mass == pytest.approx(want.mass, rel=1e-2)
    finally:
        served.lm.close()
