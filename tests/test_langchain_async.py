"""``ChatRain`` under a server's load, on a slow scripted fake: a cancelled ``ainvoke`` or an abandoned
stream stops its decode within one search and frees the model for the next request; 8 threads and 8
asyncio tasks on one ``ChatRain`` get their own answers, also when some of them are cancelled; a
per-call ``timeout`` ends a reply with what is committed (``finish_reason == "time"``)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import SMALL
from fakes import PRINTABLE, ScriptedLM

from rain_core import RainDecoder
from rain_integrations.langchain import ChatRain

LONG = "this answer is long on purpose, " * 16  # about 70 commits, 6 s on the slow fake
SHORT = "ok."
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]


def last_user(head: str) -> str:
    return head.rsplit("user: ", 1)[-1].split("\n", 1)[0].strip()


def script(head: str) -> str:
    word = last_user(head)
    if word == "long":
        return LONG
    if word in WORDS:
        return f"answer to {word}."
    return SHORT


def slow_chat(delay: float = 0.002, **fields: Any) -> ChatRain:
    lm = ScriptedLM(script, vocab=PRINTABLE, delay=delay)
    return ChatRain(
        decoder=RainDecoder(lm, lambda p, r: 1.0, encoder=None, **dict(SMALL, max_new_tokens=1000)), **fields
    )


async def timed(coro: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = await coro
    return out, time.perf_counter() - t0


def work(lm: ScriptedLM) -> int:
    """Forward passes ``lm`` has made so far."""
    return lm.stats.forward_calls


async def work_settles(lm: ScriptedLM) -> int:
    """Wait until no decode is using ``lm``; its forward passes then."""
    count = -1
    while count != work(lm):
        count = work(lm)
        await asyncio.sleep(0.3)
    return count


async def wait_for_work(lm: ScriptedLM, n: int, limit: float = 30.0) -> None:
    start, t0 = work(lm), time.perf_counter()
    while work(lm) < start + n:
        assert time.perf_counter() - t0 < limit, "the decode did not start"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def full_long_work() -> int:
    """Forward passes of a whole long answer (the same search with no delay)."""
    chat = slow_chat(delay=0.0)
    assert chat.invoke("long").content == LONG
    return work(chat.decoder.lm)


async def test_cancelled_ainvoke_frees_the_model_at_once(full_long_work):
    chat = slow_chat()
    lm = chat.decoder.lm
    alone, short_alone = await timed(chat.ainvoke(SHORT))
    assert alone.content == SHORT
    # how long the long decode takes, from the work of its first commits
    task = asyncio.create_task(chat.ainvoke("long"))
    await wait_for_work(lm, 150)  # a few commits in
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply, short_after = await timed(chat.ainvoke(SHORT))
    assert reply.content == SHORT
    # the next call waits for at most the search in progress, not for the rest of the long answer
    assert short_after < short_alone + 1.0, (short_alone, short_after)
    before = await work_settles(lm)
    await asyncio.sleep(0.5)
    assert work(lm) == before  # nothing decodes in the background
    assert before < full_long_work / 2  # the long answer was cut short


HEAVY = dict(max_searches=40, extra_searches=40, value_threshold=1.0)  # no early stop: 40 searches per commit
QUICK = dict(max_searches=1, extra_searches=0)


@pytest.mark.parametrize("how", ["cancel the task", "cancel the stream's consumer"])
async def test_the_decode_stops_within_one_search_not_one_commit(how):
    """With 40 searches per commit (about 4 s here), the next request starts after at most the search
    in progress (about 0.1 s), not after the commit the search belongs to."""
    chat = slow_chat()
    lm = chat.decoder.lm
    _, quick_alone = await timed(chat.ainvoke(SHORT, **QUICK))

    async def consume_stream() -> str:  # e.g. a web server streaming to a client that disconnects
        return "".join([c.content async for c in chat.astream("long", **HEAVY)])

    task = asyncio.create_task(chat.ainvoke("long", **HEAVY) if how == "cancel the task" else consume_stream())
    await wait_for_work(lm, 60)  # a few searches into the first commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply, quick_after = await timed(chat.ainvoke(SHORT, **QUICK))
    assert reply.content == SHORT
    assert quick_after < quick_alone + 0.8, (quick_alone, quick_after)
    before = await work_settles(lm)
    await asyncio.sleep(0.3)
    assert work(lm) == before  # nothing decodes in the background


@pytest.mark.parametrize("abandon", ["aclose", "garbage"])
async def test_abandoned_astream_stops_its_decode(abandon, full_long_work):
    chat = slow_chat()
    lm = chat.decoder.lm
    stream = chat.astream("long")
    pieces = [(await stream.__anext__()).content for _ in range(3)]
    assert LONG.startswith("".join(pieces))
    if abandon == "aclose":
        await stream.aclose()
    else:
        del stream
        gc.collect()
        await asyncio.sleep(0.05)  # the loop runs the finalizer's aclose
    reply, elapsed = await timed(chat.ainvoke(SHORT))
    assert reply.content == SHORT and elapsed < 1.0
    assert await work_settles(lm) < full_long_work / 2  # the long answer stopped with its stream


def test_abandoned_sync_stream_stops_its_decode(full_long_work):
    chat = slow_chat()
    lm = chat.decoder.lm
    stream = chat.stream("long")
    first = next(stream).content
    stream.close()
    count = work(lm)
    time.sleep(0.3)
    assert first and work(lm) == count < full_long_work / 2
    assert chat.invoke(SHORT).content == SHORT


@pytest.mark.parametrize("where", ["call", "field"])
def test_timeout_ends_the_reply_with_what_is_committed(where):
    chat = slow_chat(timeout=0.6) if where == "field" else slow_chat()
    t0 = time.perf_counter()
    msg = chat.invoke("long") if where == "field" else chat.invoke("long", timeout=0.6)
    elapsed = time.perf_counter() - t0
    assert msg.response_metadata["finish_reason"] == "time"
    assert msg.content and LONG.startswith(msg.content) and len(msg.content) < len(LONG)
    assert elapsed < 0.6 + 1.0  # the deadline plus at most the search in progress


async def test_timeout_on_the_async_and_streaming_paths():
    chat = slow_chat()
    msg = await chat.ainvoke("long", timeout=0.5)
    assert msg.response_metadata["finish_reason"] == "time" and LONG.startswith(msg.content)
    chunks = [c async for c in chat.astream("long", timeout=0.5)]
    assert chunks[-1].response_metadata["finish_reason"] == "time"
    assert LONG.startswith("".join(c.content for c in chunks))


def test_eight_threads_get_independent_answers():
    chat = slow_chat(delay=0.0005)
    seen_threads: set[int] = set()
    original = chat.decoder.lm.logprobs

    def spy(ids: Any, temperature: float = 1.0) -> Any:
        seen_threads.add(threading.get_ident())
        return original(ids, temperature)

    chat.decoder.lm.logprobs = spy  # type: ignore[method-assign]
    out = chat.batch(WORDS, config={"max_concurrency": 8})
    assert [m.content for m in out] == [f"answer to {w}." for w in WORDS]
    assert len(seen_threads) > 1  # the decodes really ran in several threads


def test_abandoning_some_streams_in_threads_leaves_the_others_intact():
    chat = slow_chat(delay=0.0005)
    quitters = {0, 3, 5}

    def run(i: int) -> str | None:
        stream = chat.stream(WORDS[i])
        text = next(stream).content
        if i in quitters:
            stream.close()
            return None
        return text + "".join(c.content for c in stream)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    assert results == [None if i in quitters else f"answer to {w}." for i, w in enumerate(WORDS)]


async def test_eight_tasks_get_independent_answers():
    chat = slow_chat(delay=0.0005)
    out = await chat.abatch(WORDS, config={"max_concurrency": 8})
    assert [m.content for m in out] == [f"answer to {w}." for w in WORDS]


async def test_cancelling_some_tasks_leaves_the_others_intact():
    chat = slow_chat(delay=0.0005)
    tasks = [asyncio.create_task(chat.ainvoke(w)) for w in WORDS]
    await wait_for_work(chat.decoder.lm, 40)
    cancelled = {1, 4, 6}
    for i in cancelled:
        tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (word, result) in enumerate(zip(WORDS, results)):
        if i in cancelled:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result.content == f"answer to {word}.", (word, result)
    before = await work_settles(chat.decoder.lm)
    await asyncio.sleep(0.3)
    assert work(chat.decoder.lm) == before  # the cancelled decodes stopped
