"""The baselines of ``rain_core.baselines`` on the fake model: what each method chooses, that its
statistics count exactly the calls it made, and that each honours seeds, stop strings, deadlines,
cancellation, evaluator failures and the ``Decoder`` interface the way ``RainDecoder`` does.

The adapters (``ChatRain``, ``RainLlamaIndexLLM``) over the baselines: ``test_baselines_adapters.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from fakes import PRINTABLE, CharLM, ScriptedLM, two_way, words_penalty

from rain_core import (
    BestOfNDecoder,
    BlockwiseBestOfKDecoder,
    CheckRetryDecoder,
    ContextTooLongError,
    DecodeCancelled,
    Decoder,
    EscalatingDecoder,
    EvaluatorError,
    PlainDecoder,
    RainDecoder,
)
from rain_core.baselines import DEFAULT_REFUSAL
from rain_core.protocols import GenerateRequest


class BatchedLM(CharLM):
    """``CharLM`` that also answers a batch of generation requests in one call (as an engine that
    batches rows does): each call, single or batched, is one recorded model call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int]] = []

    def generate(self, prefix: Sequence[int], max_tokens: int, **kwargs: Any) -> list[int]:
        self.calls.append(("generate", 1))
        return super().generate(prefix, max_tokens, **kwargs)

    def _rows(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        return [
            super(BatchedLM, self).generate(
                r.prefix, r.max_tokens, top_k=r.top_k, temperature=r.temperature, seed=r.seed, stop=r.stop
            )
            for r in requests
        ]

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        self.calls.append(("generate_batch", len(requests)))
        return self._rows(requests)

    def sample_batch(self, requests: Sequence[Any]) -> list[Any]:
        raise AssertionError("the baselines only generate")

    def top_tokens_batch(self, requests: Sequence[Any]) -> list[Any]:
        raise AssertionError("the baselines only generate")


class Judge:
    """An evaluator that records every call: ``score_fn(text, index in its batch) -> score``."""

    name = "judge"

    def __init__(self, score_fn: Any = None) -> None:
        self.score_fn = score_fn or (lambda text, i: 1.0)
        self.batches: list[list[str]] = []

    def score(self, prompt: str, response: str) -> float:
        return self.score_batch(prompt, [response])[0]

    def score_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        self.batches.append(list(responses))
        return [float(self.score_fn(r, i)) for i, r in enumerate(responses)]

    @property
    def texts(self) -> list[str]:
        return [t for b in self.batches for t in b]


HOT = dict(temperature=2.5, top_k=30)  # a sampled fake answer differs from seed to seed


def all_decoders(lm: Any, judge: Any, **overrides: Any) -> list[Decoder]:
    return [
        PlainDecoder(lm, judge, **overrides),
        BestOfNDecoder(lm, judge, n=4, **overrides),
        CheckRetryDecoder(lm, judge, max_tries=3, **overrides),
        BlockwiseBestOfKDecoder(lm, judge, k=3, block_tokens=4, **overrides),
        EscalatingDecoder(lm, judge, encoder=None, max_searches=3, extra_searches=1, **overrides),
    ]


def names(decoders: Sequence[Decoder]) -> list[str]:
    return [d.method for d in decoders]


# --- the shared interface ----------------------------------------------------------------------------
def test_every_decoder_is_a_decoder_and_names_its_method():
    decs = [*all_decoders(CharLM(), Judge()), RainDecoder(CharLM(), Judge(), encoder=None)]
    assert all(isinstance(d, Decoder) for d in decs)
    assert names(decs) == ["plain", "best-of-n", "check-retry", "blockwise", "escalating", "rain"]


def test_search_settings_are_refused_with_a_clear_error():
    lm = CharLM()
    with pytest.raises(TypeError, match=r"\['max_searches'\] is a setting of RAIN's search; BestOfNDecoder"):
        BestOfNDecoder(lm, Judge(), max_searches=3)
    dec = CheckRetryDecoder(lm, Judge(), max_new_tokens=5)
    with pytest.raises(TypeError, match="num_candidates"):
        dec.generate("hi", num_candidates=3)
    with pytest.raises(TypeError, match="lazy_expansion"):
        dec.resolve_config(__import__("rain_core").RainConfig.fast())
    assert dec.resolve_config(seed=4, stop=["x"]).seed == 4  # the shared limits are fine
    assert EscalatingDecoder(lm, Judge(), encoder=None, max_searches=3).config.max_searches == 3
    for bad in (dict(n=0), dict(n=True), dict(n=2.5)):
        with pytest.raises((TypeError, ValueError), match="n must"):
            BestOfNDecoder(lm, Judge(), **bad)
    with pytest.raises(ValueError, match="threshold"):
        CheckRetryDecoder(lm, Judge(), threshold=1.0)
    with pytest.raises(ValueError, match="refusal"):
        CheckRetryDecoder(lm, Judge(), refusal=" ")
    with pytest.raises(TypeError, match="LanguageModel"):
        BestOfNDecoder("model", Judge())


# --- statistics count exactly the calls made --------------------------------------------------------------
@pytest.mark.parametrize("which", range(4))
def test_statistics_count_exactly_the_calls_made(which):
    lm = BatchedLM()
    judge = Judge(lambda text, i: -1.0 if "e" in text else 1.0)
    dec = all_decoders(lm, judge, max_new_tokens=12, seed=3, **HOT)[which]
    before = lm.stats.forward_tokens
    res = dec.generate("hi")
    s = res.stats
    assert s["method"] == dec.method and s["seconds"] > 0
    assert s["model_calls"] == len(lm.calls)
    assert s["evaluator_calls"] == len(judge.batches) and s["evaluations"] == len(judge.texts)
    assert s["forward_tokens"] == lm.stats.forward_tokens - before  # the engine's counters are this decode's
    assert s["generated_tokens"] == lm.stats.forward_tokens - before  # the fake computes one token per step
    assert s["new_tokens"] == len(res.token_ids) <= 12 or res.finish_reason == "refused"
    assert len(s["commit_log"]) == s["commits"] == 1 + (s.get("blocks", 1) - 1)


def test_best_of_n_is_one_model_call_and_one_evaluator_call():
    lm, judge = BatchedLM(), Judge()
    res = BestOfNDecoder(lm, judge, n=6, max_new_tokens=10, **HOT).generate("hi")
    assert lm.calls == [("generate_batch", 6)] and len(judge.batches) == 1
    assert res.stats["model_calls"] == 1 and res.stats["evaluator_calls"] == 1 and len(res.stats["scores"]) == 6


# --- what each method chooses ------------------------------------------------------------------------------
def test_best_of_n_returns_the_sample_the_evaluator_prefers():
    judge = Judge(lambda text, i: 1.0 if i == 2 else -0.5)  # prefers the third sample it is shown
    res = BestOfNDecoder(CharLM(), judge, n=5, max_new_tokens=10, **HOT).generate("hi")
    (shown,) = judge.batches
    assert len(set(shown)) == 5 and res.text == shown[2] and res.stats["chosen"] == 2
    # a tie goes to the first row, which is plain decoding's answer (same seed)
    tie = BestOfNDecoder(CharLM(), Judge(), n=5, max_new_tokens=10, seed=7, **HOT)
    assert (
        tie.generate("hi").text == tie.vanilla("hi").text == PlainDecoder(CharLM(), seed=7, **HOT).generate("hi").text
    )


def test_check_retry_stops_at_the_first_approved_answer():
    calls = []

    def approve_second(text: str, i: int) -> float:
        calls.append(text)
        return 1.0 if len(calls) == 2 else -1.0

    lm = BatchedLM()
    res = CheckRetryDecoder(lm, Judge(approve_second), max_tries=4, max_new_tokens=10, **HOT).generate("hi")
    assert res.text == calls[1] and res.finish_reason in ("eos", "length")
    assert res.stats["tries"] == 2 and res.stats["approved"] and res.stats["model_calls"] == 2 == len(lm.calls)


def test_check_retry_refuses_after_max_tries():
    lm, judge = BatchedLM(), Judge(lambda text, i: -1.0)
    res = CheckRetryDecoder(lm, judge, max_tries=3, max_new_tokens=10, **HOT).generate("hi")
    assert res.text == DEFAULT_REFUSAL and res.finish_reason == "refused"
    assert res.stats["tries"] == 3 and not res.stats["approved"] and len(lm.calls) == 3 == len(judge.batches)
    mine = CheckRetryDecoder(CharLM(), Judge(lambda t, i: 0.0), max_tries=1, refusal="no.", max_new_tokens=4)
    assert mine.generate("hi").text == "no."  # a score of 0 is not above the threshold 0


def test_blockwise_keeps_the_best_block_each_time():
    judge = Judge(lambda text, i: min(1.0, (text.count("a") + text.count("e")) / 10 - len(text) / 1000))
    res = BlockwiseBestOfKDecoder(CharLM(), judge, k=4, block_tokens=3, max_new_tokens=15, **HOT).generate("hi")
    best = [max(batch, key=lambda t: judge.score_fn(t, 0)) for batch in judge.batches]
    assert best[-1] == res.text
    for kept, following in zip(best, judge.batches[1:]):
        assert all(t.startswith(kept) for t in following)  # every next block continues the kept one
    pieces = [e["text"] for e in res.stats["commit_log"]]
    assert "".join(pieces) == res.text and len(pieces) == len(judge.batches) == res.stats["model_calls"]


def test_escalating_answers_plainly_when_approved_and_searches_when_rejected():
    lm = two_way()  # writes "i like cats." and can write "i like dogs."
    plain = EscalatingDecoder(lm, words_penalty("dogs"), encoder=None, max_new_tokens=20, max_searches=6)
    res = plain.generate("hi")
    assert res.text == "i like cats." == plain.vanilla("hi").text
    assert not res.stats["escalated"] and res.stats["model_calls"] == 1 and res.stats["evaluations"] == 1
    searched = EscalatingDecoder(lm, words_penalty("cats"), encoder=None, max_new_tokens=20, max_searches=6)
    rain = RainDecoder(lm, words_penalty("cats"), encoder=None, max_new_tokens=20, max_searches=6).generate("hi")
    res = searched.generate("hi")
    assert res.stats["escalated"] and res.text == rain.text == "i like dogs."
    assert res.stats["model_calls"] == rain.stats["model_calls"] + 1
    assert res.stats["evaluations"] == rain.stats["evaluations"] + 1 and res.stats["searches"] == rain.stats["searches"]
    retried = EscalatingDecoder(lm, words_penalty("cats"), retries=2, encoder=None, max_new_tokens=20, max_searches=6)
    assert retried.generate("hi").stats["check"]["tries"] == 3


# --- seeds, stop strings, deadlines, cancellation --------------------------------------------------------
@pytest.mark.parametrize("which", range(5))
def test_seeds_make_answers_repeatable(which):
    judge = Judge(lambda text, i: 1.0 if "a" in text else -1.0)
    one = [all_decoders(CharLM(), judge, max_new_tokens=16, seed=s, **HOT)[which].generate("hi").text for s in (1, 1)]
    other = {
        all_decoders(CharLM(), judge, max_new_tokens=16, seed=s, **HOT)[which].generate("hi").text for s in range(2, 6)
    }
    assert one[0] == one[1] and len(other | {one[0]}) > 1


@pytest.mark.parametrize("which", range(5))
def test_stop_strings_cut_the_answer_and_what_the_evaluator_reads(which):
    lm = ScriptedLM("hello there. bye", vocab=PRINTABLE)
    judge = Judge()
    res = all_decoders(lm, judge, max_new_tokens=30, stop=["there"])[which].generate("hi")
    assert res.text == "hello " and res.finish_reason == "stop"
    if which:  # the evaluator reads answers cut at the stop string (plain decoding asks it nothing)
        assert judge.texts and all("there" not in t for t in judge.texts)


@pytest.mark.parametrize("which", [1, 2, 3, 4])
def test_a_deadline_ends_with_what_was_chosen_and_reason_time(which):
    lm = CharLM(delay=0.005)
    dec = all_decoders(lm, Judge(), max_new_tokens=60, **HOT)[which]
    t0 = time.perf_counter()
    res = dec.generate("hi", max_seconds=0.15)
    assert res.finish_reason == "time" and time.perf_counter() - t0 < 2.5  # at most one call past it
    if dec.method == "blockwise":  # the blocks kept before the deadline stay
        assert res.text and res.stats["commits"] >= 1
    else:  # nothing was chosen before the deadline: no unchecked text is handed out
        assert res.text == "" and res.token_ids == []


@pytest.mark.parametrize("which", range(5))
def test_cancel_stops_before_the_next_model_call(which):
    lm = BatchedLM()
    dec = all_decoders(lm, Judge(), max_new_tokens=10)[which]
    with pytest.raises(DecodeCancelled):
        dec.generate("hi", cancel=lambda: True)
    assert lm.calls == []
    with pytest.raises(TypeError, match="cancel"):
        dec.generate("hi", cancel="stop")


def test_cancel_and_closing_stop_a_blockwise_decode_between_blocks():
    lm = BatchedLM()
    dec = BlockwiseBestOfKDecoder(lm, Judge(), k=2, block_tokens=2, max_new_tokens=30, **HOT)
    stop = threading.Event()
    with pytest.raises(DecodeCancelled):
        dec.generate("hi", cancel=stop, on_commit=lambda entry: stop.set())
    assert len(lm.calls) == 1  # the first block, then nothing
    stream = dec.stream("hi")
    next(iter(stream))
    stream.close()
    assert len(lm.calls) == 2


def test_an_evaluator_failure_is_an_evaluator_error_with_the_answer_so_far():
    def failing(text: str, i: int) -> float:
        if len(text) > 4:
            raise ConnectionError("judge unreachable")
        return 1.0

    dec = BlockwiseBestOfKDecoder(CharLM(), Judge(failing), k=2, block_tokens=3, max_new_tokens=20, **HOT)
    with pytest.raises(EvaluatorError, match="judge unreachable") as err:
        dec.generate("hi")
    assert err.value.partial is not None and len(err.value.partial.text) == 3
    with pytest.raises(EvaluatorError, match=r"must return a finite number in \[-1, 1\]"):
        BestOfNDecoder(CharLM(), Judge(lambda t, i: 3.0), n=2, max_new_tokens=4).generate("hi")


def test_a_prompt_that_leaves_no_room_fails_before_any_call():
    lm = BatchedLM()
    with pytest.raises(ContextTooLongError, match="shorter than 8"):
        BestOfNDecoder(lm, Judge(), n=2, max_length=8).generate("hi")
    assert lm.calls == []


# --- streams and async ----------------------------------------------------------------------------------
def test_streams_hand_out_chosen_text_only():
    lm = CharLM()
    best = BestOfNDecoder(lm, Judge(), n=3, max_new_tokens=12, **HOT).stream("hi")
    assert len(list(best)) == 1 and best.done  # chosen once, handed out once
    blocks = BlockwiseBestOfKDecoder(lm, Judge(), k=2, block_tokens=4, max_new_tokens=12, **HOT)
    stream = blocks.stream("hi")
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text and len(stream.result.stats["commit_log"]) >= len(pieces) >= 2


@pytest.mark.parametrize("which", range(5))
async def test_agenerate_and_astream_equal_the_blocking_forms(which):
    dec = all_decoders(CharLM(), Judge(lambda t, i: -1.0 if "e" in t else 1.0), max_new_tokens=12, seed=2, **HOT)[which]
    blocking = dec.generate("hi")
    assert (await dec.agenerate("hi")).text == blocking.text
    stream = dec.astream("hi")
    pieces = [p async for p in stream]
    assert "".join(pieces) == stream.result.text == blocking.text


async def test_cancelling_an_async_decode_stops_it():
    lm = BatchedLM(delay=0.002)
    dec = BlockwiseBestOfKDecoder(lm, Judge(), k=2, block_tokens=4, max_new_tokens=200, **HOT)
    task = asyncio.ensure_future(dec.agenerate("hi"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # a block in flight in its worker thread ends at its next call
    calls = len(lm.calls)
    await asyncio.sleep(0.1)
    assert len(lm.calls) == calls and calls < 200 // 4
