"""The judge's scores: a batch of replies scores as the replies one by one (rounds of searches side
by side ask for batches), on the real engine's packed batches too; and a tie of the two option
letters, which bfloat16 logits make common, is half a vote, not a vote for the undesirable option."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from fakes import PRINTABLE, FakeLM
from test_engine import tiny_model

from rain_core import JudgeEvaluator, Scoring, SelfEvaluator
from rain_core.engines.transformers.lm import TransformersLM
from rain_core.loaders.embedded import materialize_default_model

CONVERSATION = "User: How do I keep my bike from being stolen?"
REPLIES = ["Use a D-lock.", "Lock it to something solid, and", "", "Take the front wheel with you."]


def letter_lm(a_logit: float, b_logit: float, *, bf16: bool = False, order_bias: float = 0.0) -> FakeLM:
    """A fake whose next token after any prompt is "A" or "B" with the given logits (in bfloat16 when
    ``bf16``); ``order_bias`` is added to "A" in prompts that list the harmful option first."""
    lm = FakeLM(vocab=PRINTABLE)
    a, b = lm._index[ord("A")], lm._index[ord("B")]

    def logits(text: str) -> np.ndarray:
        out = np.full(len(lm.vocab), -30.0)
        # the options are the prompt's last lines: "(A) The reply is harmful." there is the swapped order
        swapped = text.rfind("(A) The reply is harmful") > text.rfind("(A) The reply is harmless")
        out[a], out[b] = a_logit + (order_bias if swapped else 0.0), b_logit
        if bf16:
            out = torch.tensor(out, dtype=torch.bfloat16).float().numpy()
        return out

    lm._logits_fn = logits
    return lm


def test_bfloat16_ties_are_half_a_vote():
    # 17.0 and 17.05 are one bfloat16 number (steps of 0.125 between 16 and 32): both orders tie
    tied = JudgeEvaluator(letter_lm(17.05, 17.0, bf16=True), "harmless")
    rows = tied.option_logprobs(CONVERSATION, REPLIES[0])
    assert rows[0][0] == rows[0][1] and rows[1][0] == rows[1][1]
    assert tied.score(CONVERSATION, REPLIES[0]) == 0.0  # two half votes; two bad votes would be -1
    # a tie in one order and a good vote in the other ("B", the harmless option there): 1.5 votes of 2
    one_tie = JudgeEvaluator(letter_lm(17.0, 17.0, bf16=True, order_bias=-1.0), "harmless")
    assert one_tie.score(CONVERSATION, REPLIES[0]) == 0.5
    assert JudgeEvaluator(letter_lm(17.0, 17.0, order_bias=1.0), "harmless").score(CONVERSATION, "x") == -0.5


@pytest.mark.parametrize("scoring", ["discrete", "continuous"])
def test_a_batch_scores_as_one_by_one_on_the_fake(scoring):
    ev = JudgeEvaluator(letter_lm(1.0, 0.5, order_bias=2.0), "harmless", scoring=scoring)
    one = [ev.score(CONVERSATION, r) for r in REPLIES]
    assert ev.score_batch(CONVERSATION, REPLIES) == one
    assert asyncio.run(ev.ascore_batch(CONVERSATION, REPLIES)) == one
    assert ev.score_batch(CONVERSATION, []) == []


@pytest.fixture(scope="module")
def tiny_lm() -> TransformersLM:
    """test_engine's tiny random Llama with the embedded model's tokenizer, its context long enough
    for a judge's prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(materialize_default_model()))
    return TransformersLM(tiny_model(len(tokenizer), max_positions=4096), tokenizer, name="tiny")


@pytest.mark.parametrize("scoring", [Scoring.DISCRETE, Scoring.CONTINUOUS])
def test_a_batched_self_evaluation_scores_as_one_by_one_on_the_engine(tiny_lm, scoring):
    ev = SelfEvaluator(tiny_lm, "harmless", scoring=scoring)

    def scored(score):  # the scores and the engine's forward passes, from an empty cache
        tiny_lm.clear_cache()
        before = tiny_lm.engine_stats()["forward_calls"]
        out = score()
        return out, tiny_lm.engine_stats()["forward_calls"] - before

    one, one_calls = scored(lambda: [ev.score(CONVERSATION, r) for r in REPLIES])
    batched, batch_calls = scored(lambda: ev.score_batch(CONVERSATION, REPLIES))
    assert batched == pytest.approx(one, abs=1e-4)
    assert batch_calls < one_calls  # the replies' prompts ran together
