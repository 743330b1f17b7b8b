"""``rain serve`` on the embedded model, started as its own process (``python -m rain_core.serve``) on
a free port, driven by the clients people use, unchanged except for ``base_url``: the official
``openai`` client (chat, text completion, streaming with usage, ``n=2``, ``stop``, ``seed``, async),
LangChain's ``ChatOpenAI`` in an LCEL chain (invoke, stream, batch) and LlamaIndex's ``OpenAILike``
(complete, chat, stream). The answer to a seeded question is the same streamed or not, from any
client, and equals ``RainDecoder.generate`` in this process with the server's settings. A client
that disconnects mid-stream stops its decode within one model call's time; bad input gets its 4xx;
the key is required; SIGTERM drains and the process exits 0.

Small budgets (6 new tokens, 2 searches per commit): every answer here is one decode of a few
seconds on two CPU cores."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from serve_helpers import metrics, wait_for

from rain_core import RainConfig, RainDecoder, SelfEvaluator
from rain_core.serve.launch import LocalRainServer

pytestmark = pytest.mark.model

KEY = "test-key"
MODEL = "SmolLM2-135M-Instruct"
SETTINGS = dict(max_new_tokens=6, max_searches=2, extra_searches=1, min_visits=1, num_candidates=3,
                max_simulation_tokens=4)  # fmt: skip
QUESTION = [{"role": "user", "content": "Name a colour."}]
SEED = 7


@pytest.fixture(scope="module")
def server():
    options = ["--api-key", KEY, "--limit-max-tokens", "24", "--max-queue", "8"]
    for field, value in SETTINGS.items():
        options += ["--set", f"{field}={value}"]
    # one torch thread: on a busy two-core machine two threads spin against other work
    proc = LocalRainServer(options, env={"OMP_NUM_THREADS": "1"}).start(timeout=300)
    yield proc
    t0 = time.monotonic()
    code = proc.stop(timeout=60)
    assert code == 0 and time.monotonic() - t0 < 30, f"SIGTERM: exit code {code}; log:\n{proc.log_tail()}"


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(client):
    """The seeded answer to QUESTION, as a plain JSON chat completion."""
    return client.chat.completions.create(model=MODEL, messages=QUESTION, seed=SEED)


def test_the_answer_is_the_in_process_decode_streamed_or_not(client, reference, default_lm):
    import torch

    answer = reference.choices[0].message.content
    assert answer and reference.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, seed=SEED, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reference.usage.completion_tokens
    assert chunks[-1].usage.model_extra["rain"]["searches"] == reference.usage.model_extra["rain"]["searches"] > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs
    try:
        config = RainConfig(**SETTINGS, seed=SEED)
        expected = RainDecoder(default_lm, SelfEvaluator(default_lm, "harmless"), config=config).generate(QUESTION)
    finally:
        torch.set_num_threads(threads)
    assert answer == expected.text
    assert reference.usage.prompt_tokens == expected.prompt_tokens
    assert reference.usage.model_extra["rain"]["model_calls"] == expected.stats["model_calls"]


def test_text_completion_n_and_stop(client, reference):
    done = client.completions.create(model=MODEL, prompt="The capital of France is", seed=1, max_tokens=4)
    assert done.object == "text_completion" and done.choices[0].text and done.usage.completion_tokens <= 4
    two = client.chat.completions.create(model=MODEL, messages=QUESTION, seed=SEED, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == reference.choices[0].message.content  # the same seed: the same text
    # one prompt, counted once; both answers' tokens and costs summed
    assert two.usage.prompt_tokens == reference.usage.prompt_tokens
    assert two.usage.completion_tokens > reference.usage.completion_tokens
    assert two.usage.model_extra["rain"]["commits"] > reference.usage.model_extra["rain"]["commits"]
    # a stop string taken from the seeded answer ends it right before that string
    answer = reference.choices[0].message.content
    word = answer.split()[1]
    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, seed=SEED, stop=[" " + word])
    assert stopped.choices[0].message.content == answer[: answer.index(" " + word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_the_async_client_side_by_side(server, reference):
    from openai import AsyncOpenAI

    async def both():
        aclient = AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=300)
        plain = aclient.chat.completions.create(model=MODEL, messages=QUESTION, seed=SEED)

        async def streamed():
            stream = await aclient.chat.completions.create(model=MODEL, messages=QUESTION, seed=SEED, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        return await asyncio.gather(plain, streamed())

    plain, streamed = asyncio.run(both())
    assert plain.choices[0].message.content == streamed == reference.choices[0].message.content


def test_langchain_chat_openai_in_an_lcel_chain(server, reference):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=KEY, seed=SEED, max_retries=0)
    chain = ChatPromptTemplate.from_messages([("human", "Name a {thing}.")]) | llm | StrOutputParser()
    answer = reference.choices[0].message.content
    assert chain.invoke({"thing": "colour"}) == answer
    assert "".join(chain.stream({"thing": "colour"})) == answer
    batch = chain.batch([{"thing": "colour"}, {"thing": "fruit"}])
    assert batch[0] == answer and isinstance(batch[1], str) and batch[1]


def test_llamaindex_openai_like(server):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    common = dict(model=MODEL, api_base=server.base_url, api_key=KEY, max_retries=0, additional_kwargs={"seed": 3})
    completion = OpenAILike(**common).complete("The sky is")
    assert completion.text
    chat = OpenAILike(**common, is_chat_model=True)
    messages = [ChatMessage(role="user", content="Say hello.")]
    reply = chat.chat(messages).message.content
    assert reply and "".join(r.delta for r in chat.stream_chat(messages)) == reply


def test_a_client_that_disconnects_mid_stream_stops_its_decode_within_a_model_call(server, reference):
    """The server checks for a client gone before every model call (an expansion, a simulation step,
    an evaluation or an embedding), so the decode ends once the call in progress returns: within a
    few mean call times (measured from the reference answer's own cost) plus the polling."""
    rain = reference.usage.model_extra["rain"]
    per_call = rain["seconds"] / (rain["model_calls"] + rain["evaluator_calls"])
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "stream": True, "seed": 1}
    with httpx.Client(timeout=300) as http:
        with http.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=headers) as response:
            lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            assert response.status_code == 200 and metrics(server.url, KEY)["rain_decodes_in_flight"] == 1
    # leaving the blocks closes the connection: the client is gone
    seconds = wait_for(lambda: metrics(server.url, KEY)["rain_decodes_in_flight"] == 0, 60, every=0.05)
    assert seconds <= 1.0 + 3 * per_call, (seconds, per_call)
    assert metrics(server.url, KEY)["rain_decodes_cancelled_total"] == 1
    after = httpx.post(f"{server.base_url}/chat/completions", json={**body, "stream": False, "max_tokens": 2},
                       headers=headers, timeout=300)  # fmt: skip
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": -5}, 400, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "a\u0000"}]}, 400, "NUL byte"),
        ({"model": MODEL, "messages": "Name a colour."}, 400, "messages: Input should be a valid list"),
        ({"model": "gpt-4o", "messages": QUESTION}, 404, "not served here"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]}, 413, "must be shorter than"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000_000}]}, 413, "larger than"),
        ({"model": MODEL, "messages": QUESTION, "rain": {"max_searches": 500}}, 400, "above this server's limit"),
    ],
    ids=["malformed JSON", "unknown role", "negative max_tokens", "NUL byte", "wrong type", "unknown model",
         "prompt longer than the context", "10 MB prompt", "budget above the limit"],
)  # fmt: skip
def test_bad_input_gets_its_4xx_and_the_server_stays_up(server, body, status, fragment):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.base_url}/chat/completions", headers=headers, timeout=60, **kw)
    assert r.status_code == status and fragment in r.json()["error"]["message"], r.text
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_the_key_is_required_everywhere_but_health(server):
    r = httpx.post(f"{server.base_url}/chat/completions", json={"model": MODEL, "messages": QUESTION})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_sigterm_lets_the_answer_in_flight_finish_refuses_new_ones_and_exits_0():
    options = [f"--set={field}={value}" for field, value in SETTINGS.items()]
    proc = LocalRainServer(options, env={"OMP_NUM_THREADS": "1"}).start(timeout=300)
    try:
        body = {"model": MODEL, "messages": QUESTION, "stream": True, "seed": SEED}
        with httpx.Client(timeout=300) as http:
            with http.stream("POST", f"{proc.base_url}/chat/completions", json=body) as response:
                lines = response.iter_lines()
                for line in lines:
                    if '"content": "' in line and '"content": ""' not in line:
                        break
                proc.signal(signal.SIGTERM)
                wait_for(lambda: httpx.get(f"{proc.url}/health").status_code == 503, 10)
                refused = httpx.post(f"{proc.base_url}/chat/completions", json={**body, "stream": False})
                assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason": "' in rest[-2] + rest[-3]
        assert proc.process.wait(timeout=60) == 0
    finally:
        proc.stop()
