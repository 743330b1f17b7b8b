"""A decode's session on VLLMEngine, and what a replica's death does to a decode, on the fake vLLM
server of test_vllm.py (the real replicas behind vllm-router: test_vllm_replicas.py).

- every request of one decode (search, self-evaluation, a judge on another engine object) carries
  one random session id in ``X-Session-ID``, retries included; concurrent decodes get different ids;
  the header name can be changed or turned off;
- an attempt whose answer is lost after the server computed it is sent again and applied once: a
  seeded decode under such faults commits exactly what the fault-free decode commits, tree for tree;
- with no server left, a decode ends within the request timeout with an ``EngineError`` that carries
  the partial answer, and leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from test_vllm import FakeTokenizer, FakeVLLM, completions, make

from rain_core import CallableEvaluator, EngineError, JudgeEvaluator, RainDecoder, SelfEvaluator
from rain_core.engines.vllm import VLLMEngine
from rain_core.sessions import current_session, decode_session

SMALL = dict(max_new_tokens=8, max_searches=4, extra_searches=2, min_visits=1, num_candidates=3, top_k=5)
HEX32 = re.compile(r"[0-9a-f]{32}")


def sessions(fake: FakeVLLM, path: str = "/v1/completions", header: str = "x-session-id") -> list[str | None]:
    """The session header of each call to ``path``, in order (None: no header)."""
    return [h.get(header) for (p, _), h in zip(fake.calls, fake.headers) if p == path]


def decoder(lm: VLLMEngine, evaluator: Any = None, **overrides: Any) -> RainDecoder:
    judge = evaluator or CallableEvaluator(lambda p, r: -1.0 if "e" in r else 0.5)
    return RainDecoder(lm, judge, encoder=None, **{**SMALL, **overrides})


def test_every_request_of_a_decode_carries_one_random_session_id_and_only_those_do():
    fake = FakeVLLM(max_model_len=4000)
    lm = make(fake, seed_mode="send")
    assert lm.session_header == "X-Session-ID"
    assert set(sessions(fake)) == {None}, "the start-up probe belongs to no decode"
    # the search and the model's self-evaluation on the same engine ...
    decoder(lm, SelfEvaluator(lm, "harmless")).generate("say something", chat=False)
    ids = sessions(fake)
    seen = {s for s in ids if s is not None}
    assert len(seen) == 1 and HEX32.fullmatch(seen.pop())
    lm.top_tokens([5, 6, 7], 2)
    assert sessions(fake)[-1] is None, "a request outside a decode carries no session"
    # ... and a judge on another engine object (its own server here) send the same id
    judge_fake = FakeVLLM(max_model_len=4000)
    judge = make(judge_fake)
    probed = len(sessions(judge_fake))
    before = len(sessions(fake))
    decoder(lm, JudgeEvaluator(judge, "harmless"), parallel_searches=2).generate("tell me", chat=False)
    mine = set(sessions(fake)[before:])
    assert len(mine) == 1 and None not in mine and mine != seen
    assert set(sessions(judge_fake)[probed:]) == mine, "the judge's requests are the decode's"


def test_concurrent_decodes_get_different_sessions_threads_and_asyncio():
    fake = FakeVLLM(max_model_len=4000)
    lm = make(fake, seed_mode="send")
    dec = decoder(lm, parallel_searches=2)
    prompts = [f"prompt number {w}" for w in ("one", "two", "three", "four")]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: dec.generate(p, chat=False), prompts))
    by_session: dict[str, set[str]] = {}
    for (path, payload), h in zip(fake.calls, fake.headers):
        if path == "/v1/completions" and h.get("x-session-id"):
            prompt = payload["prompt"] if isinstance(payload["prompt"][0], int) else payload["prompt"][0]
            by_session.setdefault(h["x-session-id"], set()).add(lm.decode(prompt[:16]))
    assert len(by_session) == 4
    assert all(len(heads) == 1 for heads in by_session.values()), "each session is one decode's prompt"

    async def together() -> list[Any]:
        try:
            return list(await asyncio.gather(*(dec.agenerate(p, chat=False) for p in prompts)))
        finally:
            await lm.aclose()

    n = len(fake.calls)
    awaited = asyncio.run(together())
    late = {h.get("x-session-id") for (p, _), h in zip(fake.calls[n:], fake.headers[n:]) if p == "/v1/completions"}
    assert len(late) == 4 and None not in late and not late & set(by_session)
    assert [r.text for r in awaited] == [r.text for r in threaded], "seeded: the same answers either way"


def test_the_header_name_is_configurable_and_an_outer_session_is_kept():
    fake = FakeVLLM(max_model_len=4000)
    lm = make(fake, seed_mode="send", session_header="X-Rain-Session")
    probed = len(sessions(fake))
    with decode_session("conversation-7"):
        assert current_session() == "conversation-7"
        decoder(lm).generate("hello", chat=False)
        decoder(lm).vanilla("hello again", chat=False)
    assert current_session() is None
    assert set(sessions(fake, header="x-rain-session")[probed:]) == {"conversation-7"}
    assert set(sessions(fake)) == {None}
    quiet = FakeVLLM(max_model_len=4000)
    decoder(make(quiet, session_header=None)).generate("hello", chat=False)
    assert not any("session" in k for h in quiet.headers for k in h)
    with pytest.raises(ValueError, match="header name"):
        make(session_header="X Session")
    with pytest.raises(ValueError, match="printable"):
        with decode_session("line\nbreak"):
            pass


class LosesAnswers:
    """The fake server, with the answers of chosen completion calls lost after the server computed
    them (the connection resets on the way back), as a replica killed mid-answer does."""

    def __init__(self, fake: FakeVLLM, lose: set[int]) -> None:
        self.fake = fake
        self.lose = lose
        self.n = 0
        self.lost = 0
        self._lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        response = self.fake.handle(request)
        if request.url.path == "/v1/completions":
            with self._lock:
                self.n += 1
                drop = self.n in self.lose
                self.lost += drop
            if drop:
                raise httpx.ReadError("connection reset by peer")
        return response


def _engine(handler: Any, **kwargs: Any) -> VLLMEngine:
    kwargs.setdefault("tokenizer", FakeTokenizer())
    kwargs.setdefault("backoff", 0.001)
    return VLLMEngine(
        "http://router:8000/v1",
        transport=httpx.MockTransport(handler),
        async_transport=httpx.MockTransport(handler),
        seed_mode="send",
        **kwargs,
    )


@pytest.mark.parametrize("width", [1, 3])
def test_lost_answers_are_sent_again_with_the_same_session_and_applied_once(width):
    clean = FakeVLLM(max_model_len=4000)
    expected = decoder(make(clean, seed_mode="send"), parallel_searches=width).generate(
        "a story", chat=False, keep_trees=True
    )
    faulty = LosesAnswers(FakeVLLM(max_model_len=4000), lose=set(range(3, 400, 3)))
    lm = _engine(faulty.handle)
    got = decoder(lm, parallel_searches=width).generate("a story", chat=False, keep_trees=True)
    assert faulty.lost >= 3
    assert got.token_ids == expected.token_ids and got.text == expected.text
    # every commit's search tree is the fault-free one: no answer was applied twice or lost
    assert [c["tree"] for c in got.stats["commit_log"]] == [c["tree"] for c in expected.stats["commit_log"]]
    assert got.stats["retries"] == faulty.lost
    sent = [h.get("x-session-id") for (p, _), h in zip(faulty.fake.calls, faulty.fake.headers) if p != "/v1/models"]
    assert len(set(sent[2:])) == 1, "the retries carry the decode's session"


def test_with_no_server_left_a_decode_ends_with_the_partial_answer_within_the_timeout():
    fake = FakeVLLM(max_model_len=4000)
    dead = {"now": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if dead["now"]:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return fake.handle(request)

    threads_before = threading.active_count()
    lm = _engine(handler, timeout=1.5, max_retries=1000, backoff=0.01)
    commits = 0

    def on_commit(entry: dict[str, Any]) -> None:
        nonlocal commits
        commits += 1
        if commits == 2:
            dead["now"] = True  # every replica gone after the second commit

    t0 = time.monotonic()
    with pytest.raises(EngineError, match="cannot reach") as info:
        decoder(lm, max_new_tokens=30).generate("a story", chat=False, on_commit=on_commit)
    assert time.monotonic() - t0 < 10
    partial = info.value.partial
    assert partial is not None and partial.stats["commits"] == 2 and partial.token_ids
    assert partial.text == lm.decode(partial.token_ids)
    assert isinstance(info.value.__cause__, EngineError)
    # the one request that failed gave up within its timeout, however many retries were allowed
    t1 = time.monotonic()
    with pytest.raises(EngineError):
        lm.top_tokens([5, 6], 2)
    assert 1.0 < time.monotonic() - t1 < 3.0
    lm.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before, [t.name for t in threading.enumerate()]


def test_a_judge_server_that_goes_away_is_an_engine_error_not_the_judges_fault():
    fake = FakeVLLM(max_model_len=4000)
    judge_fake = FakeVLLM(max_model_len=4000)
    lm = make(fake, seed_mode="send")
    judge = make(judge_fake, max_retries=1)
    judge_fake.raise_next = [httpx.ConnectError("refused")] * 50
    with pytest.raises(EngineError, match="cannot reach") as info:
        decoder(lm, JudgeEvaluator(judge, "harmless")).generate("hi", chat=False)
    assert info.value.partial is not None


def test_a_retried_status_keeps_the_session():
    fake = FakeVLLM(max_model_len=4000)
    lm = make(fake, seed_mode="send")
    fake.statuses = [500, 503]
    with decode_session() as sid:
        lm.top_tokens([5, 6, 7], 2)
    tail = sessions(fake)[-3:]
    assert tail == [sid, sid, sid] and len(completions(fake)) >= 3
