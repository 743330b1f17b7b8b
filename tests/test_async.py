"""The async decode: on a thread per commit step for blocking engines, and on the event loop itself
for engines with async requests (``AsyncLanguageModel``); cancellation stops either within a search."""

import asyncio
import time

import pytest
from fakes import CharLM, ScriptedLM, words_penalty

from rain_core import RainDecoder

OPTS = dict(encoder=None, max_new_tokens=24, max_searches=6)


class AsyncFake(ScriptedLM):
    """The scripted fake with async twins of its requests that yield to the event loop (as an HTTP
    client would) and record how many run at the same time."""

    def __init__(self, *args, pause: float = 0.0, **kwargs):
        super().__init__(*args, concurrent=True, **kwargs)
        self.pause = pause
        self.in_flight = 0
        self.most_in_flight = 0
        self.async_calls = 0

    async def _call(self, method, *args, **kwargs):
        self.async_calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.pause)
            return getattr(self, method)(*args, **kwargs)
        finally:
            self.in_flight -= 1

    async def atop_tokens(self, *a, **k):
        return await self._call("top_tokens", *a, **k)

    async def asample(self, *a, **k):
        return await self._call("sample", *a, **k)

    async def agenerate(self, *a, **k):
        return await self._call("generate", *a, **k)

    async def anext_token_logprobs(self, *a, **k):
        return await self._call("next_token_logprobs", *a, **k)


def answer_for(head):
    return "number " + head.rsplit("ask ", 1)[-1].split("\n")[0] + "."


async def test_agenerate_and_astream_equal_the_blocking_forms():
    dec = RainDecoder(CharLM(), words_penalty("e"), **OPTS)
    expected = dec.generate("hello", seed=2)
    got = await dec.agenerate("hello", seed=2)
    assert got.text == expected.text and got.token_ids == expected.token_ids
    stream = dec.astream("hello", seed=2)
    pieces = []
    async for piece in stream:
        pieces.append((piece, stream.done))
    assert "".join(p for p, _ in pieces) == expected.text == stream.result.text
    # the result is there before the last piece is handed out, and only then
    assert [done for _, done in pieces] == [False] * (len(pieces) - 1) + [True]
    commits = []
    await dec.agenerate("hello", seed=2, on_commit=commits.append)
    assert [c["tokens"] for c in commits] == [c["tokens"] for c in expected.stats["commit_log"]]


async def test_an_async_engine_runs_the_search_on_the_event_loop():
    lm = AsyncFake(answer_for, pause=0.001)
    dec = RainDecoder(lm, words_penalty("zzz"), **OPTS)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    alone = [dec.generate(f"ask {w}").text for w in words]
    sync_calls = lm.async_calls
    texts = await asyncio.gather(*(dec.agenerate(f"ask {w}") for w in words))
    assert list(texts[i].text for i in range(8)) == alone == [f"number {w}." for w in words]
    assert lm.async_calls > sync_calls == 0  # every model request went through the async twins
    assert lm.most_in_flight > 1  # the decodes overlapped on one event loop


async def test_cancelling_an_async_decode_on_a_blocking_engine_frees_the_model():
    lm = ScriptedLM(answer_for, delay=0.002)
    dec = RainDecoder(lm, lambda p, r: -1.0, encoder=None, max_new_tokens=60, max_searches=50)  # a long decode
    task = asyncio.create_task(dec.agenerate("ask long"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the worker thread ends its current search
    calls = lm.stats.forward_calls
    await asyncio.sleep(0.3)
    assert lm.stats.forward_calls == calls  # nothing runs on after the cancellation
    quick = RainDecoder(lm, lambda p, r: 1.0, encoder=None, max_new_tokens=12)
    t0 = time.monotonic()
    assert (await quick.agenerate("ask one")).text == "number one."
    assert time.monotonic() - t0 < 5.0


async def test_abandoning_an_async_stream_stops_the_decode():
    for lm in (ScriptedLM(answer_for, delay=0.002), AsyncFake(answer_for, pause=0.002)):
        dec = RainDecoder(lm, lambda p, r: -1.0, encoder=None, max_new_tokens=60, max_searches=20)
        stream = dec.astream("ask long story")
        await stream.__anext__()
        await stream.aclose()
        await asyncio.sleep(0.3)
        calls = lm.stats.forward_calls
        await asyncio.sleep(0.3)
        assert lm.stats.forward_calls == calls


async def test_cancelling_an_async_decode_on_an_async_engine_stops_at_once():
    lm = AsyncFake(answer_for, pause=0.05)  # long enough that the decode (about a dozen calls) is still running
    dec = RainDecoder(lm, lambda p, r: -1.0, encoder=None, max_new_tokens=60, max_searches=50)
    task = asyncio.create_task(dec.agenerate("ask long"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lm.in_flight == 0
    calls = lm.async_calls
    await asyncio.sleep(0.1)
    assert lm.async_calls == calls


async def test_self_evaluation_on_an_async_engine_is_awaited():
    lm = AsyncFake(answer_for, vocab="abcdefghijklmnopqrstuvwxyz ABC().:\n>", pause=0.001)
    dec = RainDecoder(lm, **OPTS)  # the default evaluator: SelfEvaluator(lm)
    before = lm.async_calls
    res = await dec.agenerate("ask one")
    assert res.text
    scored = [r for r in lm.requests if r[0] == "next_token_logprobs"]
    assert scored and lm.async_calls - before >= len(scored)  # every judgement went through anext_token_logprobs
