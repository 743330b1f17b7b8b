"""``rain serve`` on fake models, served for real by uvicorn on a free port in a thread of this process
(fast: no weights). The same server runs on the embedded model in ``test_serve_clients.py``, driven
by the OpenAI, LangChain and LlamaIndex clients.

Covered here: the answers' shapes and that their text is ``RainDecoder.generate``'s for the same
seed (JSON, stream, ``n``, text completions, stop, deadline), every bad input with its status and
message (and the server still up), the API key, the queue (429 with Retry-After, FIFO, a client
that leaves its place), a client that disconnects (the decode stops before its next model call),
SIGTERM's drain, settings per request and the owner's limits, decodes side by side on an async
engine, tool calls, and the command's checks before anything loads."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
import tomllib
from fakes import PRINTABLE, CharLM, ScriptedLM
from serve_helpers import ThreadServer, events, metrics, wait_for
from test_async import AsyncFake

from rain_core import CallableEvaluator, RainConfig, RainDecoder, SelfEvaluator
from rain_core.serve import cli as serve_cli
from rain_core.serve.app import ServeOptions
from rain_core.serve.errors import APIError
from rain_core.serve.queue import Admission
from rain_core.serve.runtime import Parts
from rain_core.serve.settings import Limits, ModelChoice, parse_model, request_settings

ROOT = Path(__file__).resolve().parents[1]
SMALL = RainConfig(max_new_tokens=12, max_searches=3, extra_searches=1, num_candidates=3, max_simulation_tokens=4)
SMALL = SMALL.merged(seed=None)  # as rain serve: a request without a seed draws one
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Say hello."}]


def parts(lm=None, evaluator=None, config=SMALL) -> Parts:
    return Parts(lm or CharLM(vocab=PRINTABLE), config, "harmless", evaluator=evaluator, served_names=("fake",))


def in_process(lm, prompt, seed, config=SMALL, chat=True, evaluator=None, **overrides):
    """What ``RainDecoder.generate`` gives in this process for the same prompt, settings and seed."""
    dec = RainDecoder(lm, evaluator or SelfEvaluator(lm, "harmless"), encoder=None, config=config)
    return dec.generate(prompt, chat=chat, seed=seed, **overrides)


@pytest.fixture(scope="module")
def server():
    with ThreadServer(parts()) as s:
        yield s


def post(server, body, path=CHAT, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def joined(stream_events):
    text = []
    for ev in stream_events:
        if isinstance(ev, dict):
            for c in ev["choices"]:
                text.append(c["delta"].get("content") or "" if "delta" in c else c["text"])
    return "".join(text)


# --- answers ---------------------------------------------------------------------------------------
def test_a_chat_answer_is_openai_shaped_and_is_the_in_process_decode(server):
    r = post(server, {"model": "fake", "messages": HI, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    expected = in_process(CharLM(vocab=PRINTABLE), HI, 3)
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("stop" if expected.finish_reason == "eos" else "length")
    assert choice["rain_finish_reason"] == expected.finish_reason
    usage = body["usage"]
    assert usage["prompt_tokens"] == expected.prompt_tokens
    assert usage["completion_tokens"] == expected.completion_tokens == len(expected.token_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    rain = usage["rain"]
    assert rain["searches"] == expected.stats["searches"] and rain["commits"] == expected.stats["commits"]
    assert rain["model_calls"] == expected.stats["model_calls"] > 0
    assert rain["evaluator_calls"] == expected.stats["evaluations"] > 0
    assert rain["generated_tokens"] == expected.stats["simulated_tokens"] + expected.completion_tokens


def test_a_stream_sends_each_commit_and_ends_with_the_reason_the_usage_and_done(server):
    body = {"model": "fake", "messages": HI, "seed": 5, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + CHAT, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = list(events(r))
    expected = in_process(CharLM(vocab=PRINTABLE), HI, 5)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    usage_chunk, last = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == expected.completion_tokens
    assert all(c["usage"] is None for c in chunks[:-1])
    assert last["choices"][0]["rain_finish_reason"] == expected.finish_reason
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert joined(chunks) == expected.text
    # one chunk per commit that adds text: the commits' texts, in order
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    commit_texts = [e["text"] for e in expected.stats["commit_log"]]
    assert len(pieces) <= len(commit_texts) and "".join(pieces) == "".join(commit_texts)


def test_n_answers_are_independent_decodes_with_seed_plus_index(server):
    r = post(server, {"model": "fake", "messages": HI, "seed": 11, "n": 2})
    texts = [c["message"]["content"] for c in r.json()["choices"]]
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    assert texts == [in_process(CharLM(vocab=PRINTABLE), HI, s).text for s in (11, 12)]
    with httpx.stream("POST", server.url + CHAT, json={**{"model": "fake", "messages": HI, "seed": 11, "n": 2},
                      "stream": True}, timeout=60) as s:  # fmt: skip
        got = [e for e in events(s) if isinstance(e, dict)]
    for i in (0, 1):
        mine = [{"choices": [c]} for e in got for c in e["choices"] if c["index"] == i]
        assert joined(mine) == texts[i]


def test_text_completions_encode_the_prompt_as_it_is(server):
    r = post(server, {"model": "fake", "prompt": ["Once upon", "The end"], "seed": 2}, path="/v1/completions")
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == [
        in_process(CharLM(vocab=PRINTABLE), p, 2, chat=False).text for p in ("Once upon", "The end")
    ]
    assert body["usage"]["prompt_tokens"] == len("Once upon") + len("The end")


def test_stop_strings_end_the_answer_before_them():
    lm = ScriptedLM("hello world.", vocab=PRINTABLE)
    with ThreadServer(parts(lm, CallableEvaluator(lambda p, r: 1.0))) as s:
        body = post(s, {"model": "fake", "messages": HI, "stop": [" wor"], "seed": 1}).json()
    (choice,) = body["choices"]
    assert choice["message"]["content"] == "hello"
    assert (choice["finish_reason"], choice["rain_finish_reason"]) == ("stop", "stop")


def test_a_deadline_ends_the_answer_with_length_and_the_real_reason_beside_it():
    with ThreadServer(parts(CharLM(vocab=PRINTABLE, delay=0.02), config=SMALL.merged(max_new_tokens=200))) as s:
        r = post(s, {"model": "fake", "messages": HI, "rain": {"max_seconds": 0.3}})
    (choice,) = r.json()["choices"]
    assert (choice["finish_reason"], choice["rain_finish_reason"]) == ("length", "time")


# --- bad input -------------------------------------------------------------------------------------
GOOD = {"model": "fake", "messages": HI}
BAD = [
    ("malformed JSON", b'{"model": "fake", "messages": [', 400, None, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, None, "must be a JSON object"),
    ("not UTF-8", b'{"model": "\xff"}', 400, None, "not UTF-8"),
    ("no model", {"messages": HI}, 400, "model", "model is required"),
    ("no messages", {"model": "fake"}, 400, "messages", "messages is required"),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages", "at least 1 item"),
    ("messages of the wrong type", {**GOOD, "messages": "hi"}, 400, "messages", "valid list"),
    ("unknown role", {**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "'user'"),
    ("content of the wrong type", {**GOOD, "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "valid string"),
    ("NUL byte", {**GOOD, "messages": [{"role": "user", "content": "a\u0000b"}]}, 400, "messages[0].content",
     "NUL byte"),
    ("NUL byte in a stop string", {**GOOD, "stop": ["a\u0000"]}, 400, "stop[0]", "NUL byte"),
    ("negative max_tokens", {**GOOD, "max_tokens": -1}, 400, "max_tokens", "greater than or equal to 1"),
    ("max_tokens of the wrong type", {**GOOD, "max_tokens": "many"}, 400, "max_tokens", "valid integer"),
    ("max_tokens above the limit", {**GOOD, "max_tokens": 500}, 400, "max_tokens", "above this server's limit of 12"),
    ("temperature 0", {**GOOD, "temperature": 0}, 400, "temperature", "greedy decoding"),
    ("negative temperature", {**GOOD, "temperature": -1}, 400, "temperature", "greater than or equal to 0"),
    ("n of 0", {**GOOD, "n": 0}, 400, "n", "greater than or equal to 1"),
    ("n above the limit", {**GOOD, "n": 9}, 400, "n", "limit of 4"),
    ("empty stop string", {**GOOD, "stop": [""]}, 400, "stop", "non-empty"),
    ("logprobs", {**GOOD, "logprobs": True}, 400, "logprobs", "not returned"),
    ("top_p", {**GOOD, "top_p": 0.5}, 400, "top_p", "top_k"),
    ("JSON output", {**GOOD, "response_format": {"type": "json_object"}}, 400, "response_format", "cannot constrain"),
    ("forced tool call", {**GOOD, "tool_choice": "required"}, 400, "tool_choice", "cannot force"),
    ("unknown rain setting", {**GOOD, "rain": {"budget": 3}}, 400, "rain.budget", "not a per-request setting"),
    ("rain setting of the wrong type", {**GOOD, "rain": {"max_searches": "lots"}}, 400, "rain.max_searches",
     "valid integer"),
    ("rain budget above the limit", {**GOOD, "rain": {"max_searches": 50}}, 400, "rain.max_searches",
     "above this server's limit of 3"),
    ("rain setting against RainConfig's rules", {**GOOD, "rain": {"value_threshold": 2}}, 400,
     "rain.value_threshold", "less than or equal to 1"),
    ("unknown preset", {**GOOD, "rain": {"preset": "turbo"}}, 400, "rain.preset", "official, fast"),
    ("principle file", {**GOOD, "rain": {"principle": "/etc/passwd"}}, 400, "rain.principle", "cannot read"),
    ("unknown model", {**GOOD, "model": "gpt-4"}, 404, "model", "not served here"),
    ("unknown prefix word", {**GOOD, "model": "rain-turbo/fake"}, 400, "model", "neither a preset"),
    ("prompt longer than the context", {**GOOD, "messages": [{"role": "user", "content": "x" * 3000}]}, 413,
     "messages", "must be shorter than 2048"),
    ("a 10 MB prompt", {**GOOD, "messages": [{"role": "user", "content": "x" * 10_000_000}]}, 413, None,
     "larger than this server accepts"),
    ("completion with token ids", {"model": "fake", "prompt": [1, 2, 3]}, 400, "prompt", "send the prompt as text"),
    ("completion with echo", {"model": "fake", "prompt": "hi", "echo": True}, 400, "echo", "not supported"),
]  # fmt: skip


@pytest.mark.parametrize("body,status,param,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_input_gets_its_status_and_a_message_naming_the_field(server, body, status, param, message):
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else CHAT
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = post(server, body, path=path)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"] and error["param"] == param
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}[status]
    assert httpx.get(server.url + "/health").status_code == 200  # the server stays up


def test_unknown_paths_and_methods_get_openai_shaped_errors(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]
    r = httpx.get(server.url + CHAT)
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]["message"]


def test_the_api_key_guards_every_endpoint_but_health():
    with ThreadServer(parts(), ServeOptions(api_key="s3cret")) as s:
        for method, path in (("POST", CHAT), ("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                r = httpx.request(method, s.url + path, headers=headers, json={})
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["type"] == "authentication_error"
        assert "Authorization: Bearer" in httpx.get(s.url + "/v1/models").json()["error"]["message"]
        assert httpx.get(s.url + "/health").status_code == 200
        key = {"Authorization": "Bearer s3cret"}
        assert httpx.get(s.url + "/v1/models", headers=key).status_code == 200
        assert post(s, {**GOOD, "seed": 1}, headers=key).status_code == 200


def test_models_lists_the_served_name_and_its_preset_forms(server):
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["fake", "rain-official/fake", "rain-fast/fake"]


# --- load: the queue, disconnects, SIGTERM ---------------------------------------------------------
SLOW = SMALL.merged(max_new_tokens=400)  # with a model call of 20 ms, a decode of several seconds
LONG = {"model": "fake", "messages": HI, "max_tokens": 400, "stream": True}


def _first_chunk(url, body, opened, key=None):
    """Open a stream, read up to its first content chunk, and hand the open response to the test."""
    client = httpx.Client(timeout=60)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.send(client.build_request("POST", url + CHAT, json=body, headers=headers), stream=True)
    lines = response.iter_lines()
    for line in lines:
        if '"content": "' in line and '"content": ""' not in line:
            break
    opened.append((client, response, lines))


def test_a_full_queue_answers_429_with_retry_after_and_serves_in_order():
    lm = CharLM(vocab=PRINTABLE, delay=0.02)
    with ThreadServer(parts(lm, config=SLOW), ServeOptions(max_concurrent=1, max_queue=1)) as s:
        opened = []
        _first_chunk(s.url, LONG, opened)  # decoding
        queued = []
        waiter = threading.Thread(target=lambda: queued.append(post(s, {**GOOD, "max_tokens": 5, "seed": 1})))
        waiter.start()
        wait_for(lambda: metrics(s.url)["rain_queue_length"] == 1, 10)
        r = post(s, GOOD)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["Retry-After"]) >= 1 and "retry in about" in r.json()["error"]["message"]
        assert not queued  # still waiting its turn
        client, response, _ = opened[0]
        response.close()  # the client leaves: its decode stops, the queued request gets the model
        client.close()
        waiter.join(timeout=30)
        assert queued[0].status_code == 200
        assert metrics(s.url)['rain_requests_total{endpoint="chat",status="429"}'] == 1


def test_a_client_that_disconnects_mid_stream_stops_its_decode_before_the_next_model_call():
    delay = 0.05
    lm = CharLM(vocab=PRINTABLE, delay=delay)
    with ThreadServer(parts(lm, config=SLOW)) as s:
        opened = []
        _first_chunk(s.url, LONG, opened)
        assert metrics(s.url)["rain_decodes_in_flight"] == 1
        calls_before = len(lm.requests)
        client, response, _ = opened[0]
        response.close()
        client.close()
        seconds = wait_for(lambda: metrics(s.url)["rain_decodes_in_flight"] == 0, 5, every=0.01)
        # the call in progress finishes, and no other starts (one more may have begun as it closed)
        assert len(lm.requests) - calls_before <= 2
        assert seconds < 1.0, seconds
        m = metrics(s.url)
        assert m["rain_decodes_cancelled_total"] == 1 and m["rain_queue_length"] == 0
        assert post(s, {**GOOD, "max_tokens": 5}).status_code == 200  # the next request is served


def test_a_client_that_leaves_while_queued_leaves_the_queue():
    lm = CharLM(vocab=PRINTABLE, delay=0.02)
    with ThreadServer(parts(lm, config=SLOW), ServeOptions(max_concurrent=1, max_queue=4)) as s:
        opened = []
        _first_chunk(s.url, LONG, opened)

        async def leave_after_queueing():
            async with httpx.AsyncClient(timeout=60) as client:
                task = asyncio.ensure_future(client.post(s.url + CHAT, json=GOOD))
                await asyncio.to_thread(wait_for, lambda: metrics(s.url)["rain_queue_length"] == 1, 10)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(leave_after_queueing())
        wait_for(lambda: metrics(s.url)["rain_queue_length"] == 0, 5)
        assert metrics(s.url)["rain_decodes_in_flight"] == 1  # the first decode went on
        opened[0][1].close()
        opened[0][0].close()
        wait_for(lambda: metrics(s.url)["rain_decodes_in_flight"] == 0, 5)


def test_sigterm_drains_new_requests_get_503_and_those_in_flight_finish():
    lm = CharLM(vocab=PRINTABLE, delay=0.01)
    with ThreadServer(parts(lm, config=SMALL.merged(max_new_tokens=60))) as s:
        opened = []
        _first_chunk(s.url, {**LONG, "max_tokens": 60}, opened)
        s.server.handle_exit(signal.SIGTERM, None)
        r = post(s, GOOD)
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/health").status_code == 503
        _, response, lines = opened[0]
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason": "length"' in "".join(rest)
        response.close()
        s.thread.join(timeout=10)
        assert not s.thread.is_alive()  # exited once nothing ran


# --- settings per request and the owner's limits ----------------------------------------------------
def test_model_names_choose_a_preset_and_a_principle():
    served = ("fake", "org/model")
    assert parse_model("fake", served) == ModelChoice("fake")
    assert parse_model("org/model", served) == ModelChoice("org/model")
    assert parse_model("rain/fake", served) == ModelChoice("fake")
    assert parse_model("rain-fast/org/model", served) == ModelChoice("org/model", "fast")
    assert parse_model("rain-truthful-official/fake", served) == ModelChoice("fake", "official", "truthful")
    for bad, status in (("rain-fast-fast/fake", 400), ("rain-x/fake", 400), ("other", 404), ("rain/other", 404)):
        with pytest.raises(APIError) as err:
            parse_model(bad, served)
        assert err.value.status == status and err.value.param == "model"


def test_request_settings_merge_presets_and_fields_and_stay_within_the_limits():
    base = RainConfig(max_searches=8, extra_searches=4, seed=None)
    limits = Limits(max_searches=16, max_seconds=30).resolved(base)
    fast = request_settings(base, limits, ModelChoice("m", "fast"), None, {"max_new_tokens": 5})
    assert fast.config == base.merged(**RainConfig.FAST, max_new_tokens=5, max_seconds=30)
    back = request_settings(base.merged(**RainConfig.FAST), limits, ModelChoice("m"), {"preset": "official"}, {})
    assert back.config.deviations() == {"max_searches": (50, 8), "extra_searches": (15, 4), "seed": (0, None),
                                        "max_seconds": (None, 30)}  # fmt: skip
    mine = request_settings(base, limits, ModelChoice("m"), {"max_searches": 16, "principle": "truthful"}, {"seed": 4})
    assert (mine.config.max_searches, mine.config.seed, mine.principle, mine.scoring) == (16, 4, "truthful", None)
    assert limits.max_tokens == base.max_new_tokens and limits.parallel_searches == 1
    with pytest.raises(APIError, match=r"rain.max_seconds=60.0 is above this server's limit of 30"):
        request_settings(base, limits, ModelChoice("m"), {"max_seconds": 60}, {})
    with pytest.raises(APIError, match="rain.parallel_searches=2 is above"):
        request_settings(base, limits, ModelChoice("m"), {"parallel_searches": 2}, {})
    with pytest.raises(ValueError, match="max_searches=8 is above its limit max_searches=4"):
        Limits(max_searches=4).resolved(base)


def test_a_request_chooses_its_principle_and_a_fixed_evaluator_refuses_one(server):
    r = post(server, {"model": "rain-fast-truthful/fake", "messages": HI, "seed": 2})
    expected = in_process(CharLM(vocab=PRINTABLE), HI, 2, config=SMALL.merged(**RainConfig.FAST),
                          evaluator=SelfEvaluator(CharLM(vocab=PRINTABLE), "truthful"))  # fmt: skip
    assert r.json()["choices"][0]["message"]["content"] == expected.text
    with ThreadServer(parts(evaluator=CallableEvaluator(lambda p, r: 1.0))) as s:
        r = post(s, {**GOOD, "rain": {"principle": "truthful"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "rain.principle"


# --- engines that serve decodes side by side ---------------------------------------------------------
def test_on_an_async_engine_decodes_run_side_by_side_and_a_disconnect_cancels_the_task():
    lm = AsyncFake("a long answer " * 40, vocab=PRINTABLE, pause=0.02)
    with ThreadServer(parts(lm, CallableEvaluator(lambda p, r: 1.0), SLOW), ServeOptions(max_concurrent=4)) as s:
        opened = []
        for _ in range(2):
            _first_chunk(s.url, LONG, opened)
        assert metrics(s.url)["rain_decodes_in_flight"] == 2 and lm.most_in_flight >= 2
        for client, response, _ in opened:
            response.close()
            client.close()
        wait_for(lambda: metrics(s.url)["rain_decodes_in_flight"] == 0, 5, every=0.01)
        r = post(s, {**GOOD, "max_tokens": 8, "n": 2, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2


# --- tools ----------------------------------------------------------------------------------------
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_tool_calls_come_back_as_openai_tool_calls_and_never_stream_as_text():
    lm = ScriptedLM("Let me look. " + CALL, vocab=PRINTABLE)
    with ThreadServer(parts(lm, CallableEvaluator(lambda p, r: 1.0), SMALL.merged(max_new_tokens=120))) as s:
        body = {"model": "fake", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": WEATHER}
        (choice,) = post(s, body).json()["choices"]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
            "city": "Paris"
        }
        assert lm.prompts[-1].startswith('tools: ["get_weather"]')
        with httpx.stream("POST", s.url + CHAT, json={**body, "stream": True}, timeout=60) as r:
            got = [e for e in events(r) if isinstance(e, dict)]
        text = "".join(c["delta"].get("content") or "" for e in got for c in e["choices"])
        assert "<tool_call>" not in text and text.strip() == "Let me look."
        assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert got[-1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
        # a conversation that carries the call and its result renders with both
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        follow = [
            *body["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        assert post(s, {"model": "fake", "messages": follow, "max_tokens": 4}).status_code == 200
        bad = [*follow[:1], {**follow[1], "tool_calls": [{"function": {"name": "get_weather", "arguments": "{oops"}}]}]
        r = post(s, {"model": "fake", "messages": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    with ThreadServer(parts(CharLM(vocab=PRINTABLE, tools_in_template=False))) as s:
        r = post(s, {**GOOD, "tools": WEATHER})
        assert r.status_code == 400 and "does not render tools" in r.json()["error"]["message"]
        assert post(s, {**GOOD, "tools": WEATHER, "tool_choice": "none", "max_tokens": 3}).status_code == 200


# --- admission, on its own --------------------------------------------------------------------------
async def test_admission_grants_in_order_and_frees_a_slot_only_when_every_holder_let_go():
    admission = Admission(max_concurrent=1, max_queue=2)
    first = admission.enter()
    assert first.granted
    second, third = admission.enter(), admission.enter()
    with pytest.raises(APIError) as full:
        admission.enter()
    assert full.value.status == 429 and full.value.headers["Retry-After"].isdigit()
    waits = [asyncio.ensure_future(admission.wait(t)) for t in (second, third)]
    first.hold()  # a decode still running after its request ended
    first.drop()
    await asyncio.sleep(0)
    assert not second.granted and admission.running == 1
    first.drop()
    await asyncio.wait_for(waits[0], 1)
    assert second.granted and not third.granted and admission.waiting == 1
    waits[1].cancel()  # the third client leaves
    await asyncio.gather(waits[1], return_exceptions=True)
    third.drop()
    assert admission.waiting == 0
    second.drop()
    assert admission.running == 0 and admission.enter().granted


# --- the command ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-searches", "0"], "--max-searches: must be an integer >= 1, got 0"),
        (["--max-searches", "8", "--limit-max-searches", "4"], "max_searches=8 is above its limit"),
        (["--set", "budget=3"], "give FIELD=VALUE with a RainConfig field"),
        (["--set", "top_k=0"], "top_k: must be an integer >= 1, got 0"),
        (["--engine", "vllm"], "--engine vllm needs --base-url"),
        (["--principle", "nowhere.toml"], "unknown principle"),
        (["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
    ],
)
def test_every_option_is_checked_before_anything_loads(monkeypatch, capsys, argv, message):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(serve_cli, "load_parts", no_loading)
    assert serve_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rain: error: ") and message in err[0]


def test_rain_serve_is_a_subcommand_from_the_entry_points(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    from rain_core import cli as rain_cli

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"]["rain.commands"]["serve"]
    assert value == "rain_core.serve.cli:add_serve_command"
    assert "serve" in pyproject["project"]["optional-dependencies"]
    # as the rain command finds it once the package is installed from this pyproject.toml
    real = [e for e in rain_cli.entry_points(group=rain_cli.COMMANDS_GROUP) if e.name != "serve"]
    serve = EntryPoint(name="serve", value=value, group=rain_cli.COMMANDS_GROUP)
    monkeypatch.setattr(rain_cli, "entry_points", lambda group: [*real, serve])
    monkeypatch.setattr(serve_cli, "load_parts", lambda *a: pytest.fail("a model was loaded"))
    assert rain_cli.main(["serve", "--max-searches", "0"]) == 2
    assert capsys.readouterr().err.strip() == "rain: error: --max-searches: must be an integer >= 1, got 0"
    parser = argparse.ArgumentParser(prog="rain")
    serve_cli.add_serve_command(parser.add_subparsers(dest="command"), "serve")
    args = parser.parse_args(["serve", "--port", "9000", "--preset", "fast", "--api-key", "k"])
    assert args.run is serve_cli._run and (args.port, args.preset, args.server_key, args.host) == (
        9000, "fast", "k", "127.0.0.1")  # fmt: skip


def test_each_client_can_send_rain_settings_in_the_body(server):
    """The ``rain`` field through each client's own way to add to the body: the openai client's
    ``extra_body``, ``ChatOpenAI(extra_body=...)``, ``OpenAILike(additional_kwargs={"extra_body": ...})``."""
    import openai
    from langchain_openai import ChatOpenAI
    from llama_index.llms.openai_like import OpenAILike

    base, too_many = f"{server.url}/v1", {"rain": {"max_searches": 999}}
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=r"rain.max_searches=999 is above"):
        client.chat.completions.create(model="fake", messages=HI, extra_body=too_many)
    with pytest.raises(openai.BadRequestError, match=r"rain.max_searches=999 is above"):
        ChatOpenAI(model="fake", base_url=base, api_key="none", max_retries=0, extra_body=too_many).invoke("hi")
    llm = OpenAILike(model="fake", api_base=base, api_key="none", max_retries=0, is_chat_model=True,
                     additional_kwargs={"extra_body": too_many})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match=r"rain.max_searches=999 is above"):
        llm.complete("hi")
    ok = ChatOpenAI(model="fake", base_url=base, api_key="none", max_tokens=3, extra_body={"rain": {"max_searches": 1}})
    assert ok.invoke("hi").response_metadata["token_usage"]["rain"]["searches"] >= 1


def test_an_engine_that_cannot_answer_is_a_503_or_an_error_event_and_a_bug_a_500():
    from rain_core import EngineError

    def unreachable(prompt, reply):
        raise EngineError("cannot reach the judge's server at http://judge:8000")

    with ThreadServer(parts(evaluator=CallableEvaluator(unreachable))) as s:
        r = post(s, GOOD)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"
        assert "cannot reach the judge's server" in r.json()["error"]["message"]
        with httpx.stream("POST", s.url + CHAT, json={**GOOD, "stream": True}, timeout=60) as stream:
            got = list(events(stream))
        assert got[-1] == "[DONE]" and got[-2]["error"]["status"] == 503
        assert "cannot reach the judge's server" in got[-2]["error"]["message"]
        assert metrics(s.url)['rain_decodes_failed_total{error="EngineError"}'] == 2
        assert httpx.get(s.url + "/health").status_code == 200
    with ThreadServer(parts(evaluator=CallableEvaluator(lambda p, r: 1 / 0))) as s:
        r = post(s, GOOD)
        assert r.status_code == 500 and "ZeroDivisionError" in r.json()["error"]["message"]
