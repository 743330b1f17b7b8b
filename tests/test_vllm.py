"""VLLMEngine against a fake vLLM server (httpx.MockTransport): every contract of the protocol on a
toy model whose distribution is known exactly, and the faults a real server cannot be made to show
on demand (unreachable, timeouts, retried statuses, crashes, missing features, cut-short lists).
The same engine against a real vLLM server: test_vllm_server.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import textwrap
import threading
import time
import zlib
from typing import Any

import httpx
import numpy as np
import pytest

from rain_core.engines.vllm import VLLMEngine
from rain_core.engines.vllm.http import (
    LogprobsLimitError,
    MissingFeatureError,
    ModelNotServedError,
    ServerError,
    ServerUnreachableError,
)
from rain_core.protocols import (
    AsyncLanguageModel,
    ConcurrentModel,
    ContextTooLongError,
    Continuation,
    EngineError,
    LanguageModel,
    ParsesResponses,
    ProvidesEncoder,
    ReportsStats,
)

# ------------------------------------------------------------------------------------------------
# a fake vLLM server
# ------------------------------------------------------------------------------------------------
# A fake vLLM OpenAI-compatible server for ``httpx.MockTransport``: a deterministic toy model whose
# next-token distribution is known exactly, answering ``/v1/completions`` (token-id prompts, batches,
# ``n``, greedy at temperature 0, ``top_k``, ``seed``, raw log-probabilities keyed ``token_id:N`` with
# the drawn token first, ``allowed_token_ids``, ``prompt_logprobs``, stop tokens and strings),
# ``/v1/models``, ``/tokenize``, ``/detokenize`` and ``/metrics``, with switches for the faults a real
# server shows (processed log-probabilities, text tokens, error statuses, cut-short top-k lists).
#
# It follows what vLLM 0.32 was observed to do (docs/engines.md): the tokens of a row include its EOS
# or stop token; ``n > 1`` at temperature 0 is refused; more than ``max_logprobs`` is refused.

CHARS = "abcdefghijklmnopqrstuvwxyz .,?!:;'\n-A"  # ids 3..39; 0 unk, 1 bos, 2 eos
VOCAB = 3 + len(CHARS)
EOS = 2


def text_to_ids(text: str) -> list[int]:
    return [3 + CHARS.index(c) if c in CHARS else 0 for c in text]


def ids_to_text(ids: list[int], skip_special: bool = True) -> str:
    special = {0: "<unk>", 1: "<s>", 2: "</s>"}
    return "".join(CHARS[i - 3] if i >= 3 else ("" if skip_special else special[i]) for i in ids)


def raw_logprobs(prefix: list[int]) -> np.ndarray:
    """The toy model: log-softmax of logits that depend on the last three tokens."""
    key = zlib.crc32(np.asarray(prefix[-3:], dtype=np.int64).tobytes())
    logits = np.random.default_rng(key).normal(0.0, 2.0, VOCAB)
    logits[EOS] -= 1.5
    return logits - np.logaddexp.reduce(logits)


class FakeTokenizer:
    """Just enough of a Hugging Face tokenizer for ``LocalText`` (characters as tokens)."""

    eos_token_id = EOS
    all_special_ids = [0, 1, 2]
    chat_template = None
    name_or_path = "fake"

    def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False) -> list[int]:
        if not split_special_tokens and "</s>" in text:
            head, _, tail = text.partition("</s>")
            return self.encode(head) + [EOS] + self.encode(tail)
        return text_to_ids(text)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return ids_to_text(list(ids), skip_special_tokens)

    def __len__(self) -> int:
        return VOCAB


class FakeVLLM:
    """The request handler; ``calls`` records every (path, payload)."""

    def __init__(
        self,
        *,
        names: tuple[str, ...] = ("toy",),
        max_model_len: int = 64,
        max_logprobs: int = 20,
        mode: str = "raw_logprobs",
        text_tokens: bool = False,
        keep_allowed: bool = True,
        server_eos: tuple[int, ...] = (EOS,),
    ) -> None:
        self.names = names
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.mode = mode
        self.text_tokens = text_tokens
        self.keep_allowed = keep_allowed
        self.server_eos = server_eos
        self.calls: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each call's request headers (lower-case names)
        self.statuses: list[int] = []  # answer the next requests with these HTTP statuses first
        self.raise_next: list[Exception] = []  # or raise these (connection errors, timeouts)
        self.cut_short = 0  # cut the top-k lists of this many completions answers (logprob_token_ids damage)
        self.crash_message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
        self.metrics_text = ""
        self._lock = threading.Lock()
        self._draws = 0

    # --- transport -----------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content) if request.content else None
        with self._lock:
            self.calls.append((request.url.path, payload))
            self.headers.append(dict(request.headers))
            if self.raise_next:
                raise self.raise_next.pop(0)
            status = self.statuses.pop(0) if self.statuses else None
        if status is not None:
            if status >= 500:
                return self.error(status, self.crash_message if status == 500 else "busy", "InternalServerError")
            return self.error(status, "too many requests", "RateLimitError")
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {"id": n, "object": "model", "root": f"/models/{n}", "max_model_len": self.max_model_len}
                        for n in self.names
                    ],
                },
            )
        if path == "/metrics":
            return httpx.Response(200, text=self.metrics_text)
        if path == "/tokenize":
            if "messages" in payload:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in payload["messages"])
                text += "assistant:" if payload.get("add_generation_prompt") else ""
            else:
                text = payload["prompt"]
            ids = text_to_ids(text)
            return httpx.Response(200, json={"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})
        if path == "/detokenize":
            return httpx.Response(200, json={"prompt": ids_to_text(payload["tokens"], skip_special=False)})
        if path == "/v1/completions":
            return self.complete(payload)
        return self.error(404, "Not Found", "NotFoundError")

    @staticmethod
    def error(status: int, message: str, kind: str, param: str | None = None) -> httpx.Response:
        return httpx.Response(
            status, json={"error": {"message": message, "type": kind, "param": param, "code": status}}
        )

    # --- completions ---------------------------------------------------------------------------
    def key(self, token: int) -> str:
        return ids_to_text([token]) if self.text_tokens else f"token_id:{token}"

    def complete(self, p: dict[str, Any]) -> httpx.Response:
        if p.get("model", self.names[0]) not in self.names:
            return self.error(
                404,
                f"The model `{p['model']}` does not exist. Valid aliases: {', '.join(self.names)}.",
                "NotFoundError",
                "model",
            )
        prompts = p["prompt"] if p["prompt"] and isinstance(p["prompt"][0], list) else [p["prompt"]]
        n, temperature = int(p.get("n", 1)), float(p.get("temperature", 1.0))
        if n > 1 and temperature == 0:
            return self.error(400, f"n must be 1 when using greedy sampling, got {n}.", "BadRequestError")
        want = p.get("logprobs")
        if want is not None and want > self.max_logprobs:
            return self.error(
                400,
                f"Requested sample logprobs of {want}, which is greater than max allowed: {self.max_logprobs}",
                "BadRequestError",
                "logprobs",
            )
        max_tokens = int(p.get("max_tokens", 16))
        for prompt in prompts:
            if len(prompt) > self.max_model_len:
                return self.error(
                    400,
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, your prompt contains {len(prompt)} input tokens",
                    "BadRequestError",
                    "input_tokens",
                )
        top_k = int(p.get("top_k", -1) or -1)
        stops = set(self.server_eos) | set(p.get("stop_token_ids") or ())
        allowed = p.get("allowed_token_ids") if self.keep_allowed else None
        seed = p.get("seed")
        choices = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                if seed is not None:
                    rng = np.random.default_rng([int(seed), j])
                else:
                    with self._lock:
                        self._draws += 1
                        rng = np.random.default_rng([987654, self._draws])
                choices.append(
                    self.row(
                        i * n + j,
                        list(prompt),
                        max_tokens,
                        temperature,
                        top_k,
                        want,
                        stops,
                        allowed,
                        rng,
                        p.get("stop") or [],
                        p.get("prompt_logprobs"),
                    )
                )
        with self._lock:
            cut = self.cut_short > 0 and want is not None and want > 1
            if cut:
                self.cut_short -= 1
        if cut:
            for c in choices:
                lp = c["logprobs"]
                lp["top_logprobs"] = [
                    {k: v for k, v in list(step.items())[:1]} | {"token_id:0": -9999.0} for step in lp["top_logprobs"]
                ]
        usage = {
            "prompt_tokens": sum(len(q) for q in prompts) * n,
            "completion_tokens": sum(len(c["text"]) for c in choices),
        }
        return httpx.Response(
            200, json={"id": "cmpl-fake", "object": "text_completion", "choices": choices, "usage": usage}
        )

    def row(
        self,
        index: int,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        top_k: int,
        want: int | None,
        stops: set[int],
        allowed: list[int] | None,
        rng: np.random.Generator,
        stop_strings: list[str],
        prompt_logprobs: int | None,
    ) -> dict[str, Any]:
        tokens: list[int] = []
        tops: list[dict[str, float]] = []
        finish, stop_reason = "length", None
        room = min(max_tokens, self.max_model_len - len(prompt))
        for _ in range(room):
            lp = raw_logprobs(prompt + tokens)
            scores = lp.copy()
            if allowed is not None:
                mask = np.full(VOCAB, -np.inf)
                mask[allowed] = 0.0
                scores = scores + mask
            if temperature == 0:
                tok = int(np.argmax(scores))
            else:
                scaled = scores / temperature
                if 0 < top_k < VOCAB:
                    cut = np.sort(scaled)[-top_k]
                    scaled = np.where(scaled >= cut, scaled, -np.inf)
                probs = np.exp(scaled - np.logaddexp.reduce(scaled[np.isfinite(scaled)]))
                probs[~np.isfinite(scaled)] = 0.0
                tok = int(rng.choice(VOCAB, p=probs / probs.sum()))
            values = lp
            if self.mode == "processed_logprobs":
                scaled = scores / max(temperature, 1e-9)
                if 0 < top_k < VOCAB:
                    cut = np.sort(scaled)[-top_k]
                    scaled = np.where(scaled >= cut, scaled, -np.inf)
                values = scaled - np.logaddexp.reduce(scaled[np.isfinite(scaled)])
                values = np.where(np.isfinite(values), values, -9999.0)
            elif self.mode == "raw_logits":
                values = lp + 7.0
            if want is not None:
                step = {self.key(tok): float(values[tok])}
                for t in np.argsort(-values, kind="stable")[:want]:
                    step.setdefault(self.key(int(t)), float(values[int(t)]))
                tops.append(step)
            tokens.append(tok)
            if tok in stops:
                finish, stop_reason = "stop", (None if tok in self.server_eos else tok)
                break
            text = ids_to_text(tokens)
            hit = next((s for s in stop_strings if s in text), None)
            if hit is not None:
                finish, stop_reason = "stop", hit
                break
        choice: dict[str, Any] = {
            "index": index,
            "text": ids_to_text(tokens),
            "finish_reason": finish,
            "stop_reason": stop_reason,
            "token_ids": None if self.text_tokens else tokens,
            "logprobs": None,
            "prompt_logprobs": None,
        }
        if want is not None:
            choice["logprobs"] = {
                "tokens": [self.key(t) for t in tokens],
                "top_logprobs": tops,
                "token_logprobs": [list(s.values())[0] for s in tops],
            }
        if prompt_logprobs is not None:
            choice["prompt_logprobs"] = [None] + [
                {str(prompt[k]): {"logprob": float(raw_logprobs(prompt[:k])[prompt[k]]), "rank": 1}}
                for k in range(1, len(prompt))
            ]
        return choice


# ------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------


def make(fake: FakeVLLM | None = None, **kwargs: Any) -> VLLMEngine:
    fake = fake or FakeVLLM()
    kwargs.setdefault("tokenizer", FakeTokenizer())
    kwargs.setdefault("backoff", 0.001)
    return VLLMEngine("http://fake:8000/v1", transport=fake.transport(), async_transport=fake.transport(), **kwargs)


def completions(fake: FakeVLLM) -> list[dict[str, Any]]:
    return [p for path, p in fake.calls if path == "/v1/completions"]


def topk_renormalised(prefix: list[int], tokens: tuple[int, ...], top_k: int, temperature: float) -> float:
    """What the protocol asks for, from the toy model's exact distribution."""
    total, state = 0.0, list(prefix)
    for tok in tokens:
        lp = raw_logprobs(state) / temperature
        top = np.sort(lp)[-top_k:]
        assert lp[tok] >= top[0], "the token is in the top-k"
        total += float(lp[tok] - np.logaddexp.reduce(top))
        state.append(tok)
    return total


PREFIX = text_to_ids("hello there, ")


def test_the_engine_offers_the_protocol_and_its_capabilities():
    lm = make()
    for proto in (LanguageModel, AsyncLanguageModel, ReportsStats, ConcurrentModel, ProvidesEncoder, ParsesResponses):
        assert isinstance(lm, proto), proto.__name__
    assert lm.concurrent is True and lm.name == "toy" and lm.context_length == 64
    assert lm.eos_token_ids == frozenset({EOS})
    assert lm.option_scoring == "allowed_token_ids"


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_sample_rows_logprobs_are_top_k_renormalised_at_the_temperature(temperature):
    fake = FakeVLLM()
    lm = make(fake, seed_mode="send")
    rows = lm.sample(PREFIX, 8, 6, top_k=5, temperature=temperature, seed=3)
    assert len(rows) == 8
    greedy, state = [], list(PREFIX)
    for _ in range(6):
        tok = int(np.argmax(raw_logprobs(state)))
        greedy.append(tok)
        state.append(tok)
        if tok == EOS:
            break
    assert rows[0].token_ids == tuple(greedy), "row 0 is the greedy continuation"
    for row in rows:
        assert 1 <= len(row.token_ids) <= 6
        assert EOS not in row.token_ids[:-1], "a row ends at its EOS"
        assert row.logprob == pytest.approx(topk_renormalised(PREFIX, row.token_ids, 5, temperature), abs=1e-9)
    assert len({r.token_ids for r in rows[1:]}) > 1
    greedy_call, sampled_call = completions(fake)[-2:]
    assert greedy_call["temperature"] == 0.0 and greedy_call["n"] == 1 and "seed" not in greedy_call
    assert sampled_call["n"] == 7 and sampled_call["top_k"] == 5 and sampled_call["temperature"] == temperature
    assert sampled_call["logprobs"] == 5 and sampled_call["return_tokens_as_token_ids"] is True
    assert EOS in sampled_call["stop_token_ids"]


def test_sample_without_a_greedy_row_and_edge_sizes():
    fake = FakeVLLM()
    lm = make(fake)
    before = len(completions(fake))
    rows = lm.sample(PREFIX, 3, 4, top_k=4, temperature=1.0, seed=0, greedy_first=False)
    calls = completions(fake)[before:]
    assert len(rows) == 3 and len(calls) == 1 and calls[0]["temperature"] == 1.0 and calls[0]["n"] == 3
    assert lm.sample(PREFIX, 0, 4, top_k=4, temperature=1.0, seed=0) == []
    assert lm.sample(PREFIX, 2, 0, top_k=4, temperature=1.0, seed=0) == [Continuation((), 0.0)] * 2


def test_an_eos_the_tokenizer_does_not_name_is_learned_from_the_server():
    fake = FakeVLLM(server_eos=(EOS, 7))
    lm = make(fake)
    for seed in range(30):
        lm.generate(PREFIX, 20, top_k=None, temperature=1.0, seed=seed)
        if 7 in lm.eos_token_ids:
            break
    assert lm.eos_token_ids == frozenset({EOS, 7})


def test_top_tokens_values_order_and_exclude():
    fake = FakeVLLM()
    lm = make(fake)
    lp = raw_logprobs(PREFIX)
    order = [int(i) for i in np.argsort(-lp, kind="stable")]
    tops = lm.top_tokens(PREFIX, 4)
    assert [c.token_ids[0] for c in tops] == order[:4]
    assert [c.logprob for c in tops] == pytest.approx([lp[i] for i in order[:4]], abs=1e-9)
    skipped = lm.top_tokens(PREFIX, 3, exclude=order[:2])
    assert [c.token_ids[0] for c in skipped] == order[2:5]
    assert completions(fake)[-1]["logprobs"] == 5 and completions(fake)[-1]["temperature"] == 0.0
    hot = lm.top_tokens(PREFIX, 4, temperature=2.0)
    # at T != 1 the values are lp / T: the true log-probabilities shifted by one constant (allowed)
    true = lp / 2.0 - np.logaddexp.reduce(lp / 2.0)
    shift = {round(c.logprob - true[c.token_ids[0]], 9) for c in hot}
    assert len(shift) == 1


def test_top_tokens_beyond_max_logprobs_says_which_flag_to_change():
    fake = FakeVLLM(max_logprobs=6)
    lm = make(fake)
    with pytest.raises(LogprobsLimitError, match="--max-logprobs") as info:
        lm.top_tokens(PREFIX, 8)
    assert info.value.limit == 6
    # k fits but k + excluded does not: retried with the server's limit
    lm2 = make(FakeVLLM(max_logprobs=6))
    lp = raw_logprobs(PREFIX)
    order = [int(i) for i in np.argsort(-lp, kind="stable")]
    got = lm2.top_tokens(PREFIX, 4, exclude=order[:3])
    assert [c.token_ids[0] for c in got] == order[3:6]
    with pytest.raises(LogprobsLimitError, match="--max-logprobs 8"):
        lm.sample(PREFIX, 3, 2, top_k=8, temperature=1.0, seed=0)


def test_generate_maps_every_option():
    fake = FakeVLLM()
    lm = make(fake)
    ids = lm.generate(PREFIX, 10, top_k=None, temperature=0.8, seed=1, stop_token_ids=[5, 6])
    call = completions(fake)[-1]
    assert call["top_k"] == -1 and call["temperature"] == 0.8 and call["max_tokens"] == 10
    assert set(call["stop_token_ids"]) == {EOS, 5, 6} and "seed" not in call
    assert 1 <= len(ids) <= 10 and all(t not in (EOS, 5, 6) for t in ids[:-1])
    lm.generate(PREFIX, 10, top_k=7, temperature=1.0, seed=1, stop=["e"])
    assert completions(fake)[-1]["top_k"] == 7 and completions(fake)[-1]["stop"] == ["e"]
    assert lm.generate(PREFIX, 0, top_k=None, temperature=1.0, seed=0) == []
    # the context caps max_tokens; a full context gives nothing, one beyond it is an error
    lm.generate(list(range(3, 63)), 100, top_k=None, temperature=1.0, seed=0)
    assert completions(fake)[-1]["max_tokens"] == 4
    assert lm.generate([5] * 64, 5, top_k=None, temperature=1.0, seed=0) == []
    with pytest.raises(ContextTooLongError):
        lm.generate([5] * 65, 5, top_k=None, temperature=1.0, seed=0)


def test_generate_includes_the_tokens_that_complete_a_stop_string():
    fake = FakeVLLM()
    lm = make(fake)
    for seed in range(20):
        ids = lm.generate(PREFIX, 30, top_k=None, temperature=1.0, seed=seed, stop=["a"])
        text = lm.decode(ids)
        if "a" in text:
            assert text.endswith("a") and text.count("a") == 1
            return
    pytest.fail("no sample contained the stop string")


@pytest.mark.parametrize("scoring", ["allowed_token_ids", "prompt_logprobs"])
def test_next_token_logprobs_are_exact(scoring):
    fake = FakeVLLM()
    lm = make(fake, option_scoring=scoring)
    prompts = [PREFIX, text_to_ids("why? "), text_to_ids("x")]
    got = lm.next_token_logprobs(prompts, [5, 9, 5])
    for prompt, row in zip(prompts, got):
        lp = raw_logprobs(prompt)
        assert row == pytest.approx([lp[5], lp[9], lp[5]], abs=1e-9)
    calls = completions(fake)[-2:] if scoring == "allowed_token_ids" else completions(fake)[-1:]
    if scoring == "allowed_token_ids":
        assert [c["allowed_token_ids"] for c in calls] == [[5], [9]]
        assert all(c["prompt"] == prompts and c["temperature"] == 0.0 for c in calls)
    else:
        assert calls[0]["prompt_logprobs"] == 0 and len(calls[0]["prompt"]) == 9
    assert lm.next_token_logprobs([], [5]) == []
    with pytest.raises(ContextTooLongError):
        lm.next_token_logprobs([[5] * 64], [5])


def test_a_server_ignoring_allowed_token_ids_falls_back_to_prompt_logprobs():
    fake = FakeVLLM(keep_allowed=False)
    lm = make(fake)
    assert lm.option_scoring == "prompt_logprobs"
    row = lm.next_token_logprobs([PREFIX], [4, 5])[0]
    lp = raw_logprobs(PREFIX)
    assert row == pytest.approx([lp[4], lp[5]], abs=1e-9)


@pytest.mark.parametrize("mode,sends", [("auto", False), ("never", False), ("send", True)])
def test_seed_modes(mode, sends):
    fake = FakeVLLM()
    lm = make(fake, seed_mode=mode)
    assert lm.deterministic is sends
    lm.sample(PREFIX, 4, 3, top_k=5, temperature=1.0, seed=11)
    lm.generate(PREFIX, 5, top_k=None, temperature=1.0, seed=12)
    sampled = [c for c in completions(fake) if c.get("temperature", 0) > 0 and c["max_tokens"] > 1]
    assert sampled and all(("seed" in c) is sends for c in sampled)
    if sends:
        again = make(FakeVLLM(), seed_mode="send")
        assert again.sample(PREFIX, 4, 3, top_k=5, temperature=1.0, seed=11) == make(
            FakeVLLM(), seed_mode="send"
        ).sample(PREFIX, 4, 3, top_k=5, temperature=1.0, seed=11)
    with pytest.raises(ValueError, match="seed_mode"):
        make(fake, seed_mode="sometimes")


def test_unreachable_server_names_the_start_command_after_bounded_retries():
    fake = FakeVLLM()
    fake.raise_next = [httpx.ConnectError("[Errno 111] Connection refused")] * 10
    t0 = time.monotonic()
    with pytest.raises(ServerUnreachableError, match="python -m vllm.entrypoints.openai.api_server") as info:
        make(fake, max_retries=2)
    assert time.monotonic() - t0 < 5
    assert "3 tries" in str(info.value) and len(fake.calls) == 3
    assert isinstance(info.value, EngineError)


def test_transient_statuses_are_retried_and_errors_are_not():
    fake = FakeVLLM()
    lm = make(fake, max_retries=3)
    fake.statuses = [503, 429, 502]
    assert lm.top_tokens(PREFIX, 2)
    assert lm.engine_stats()["retries"] == 3
    fake.statuses = [503] * 5
    with pytest.raises(ServerError, match="HTTP 503"):
        lm.top_tokens(PREFIX, 2)
    # a 500 is retried too (behind a router, a dead replica answers 500 until its sessions move)
    fake.statuses = [500]
    assert lm.top_tokens(PREFIX, 2)
    n = len(fake.calls)
    fake.statuses = [500] * 4
    with pytest.raises(ServerError, match="engine failed") as info:
        lm.top_tokens(PREFIX, 2)
    assert len(fake.calls) == n + 4, "one try and three retries"
    assert "chunked" not in str(info.value), "no seeds were sent, so no seed advice"
    n = len(fake.calls)
    fake.statuses = [400]
    with pytest.raises(ServerError, match="HTTP 400"):
        lm.top_tokens(PREFIX, 2)
    assert len(fake.calls) == n + 1, "a 4xx is not retried"


def test_an_engine_crash_after_seeded_requests_names_the_seed_fix():
    fake = FakeVLLM()
    lm = make(fake, seed_mode="send", max_retries=1)
    fake.statuses = [500, 500]
    with pytest.raises(ServerError, match="--no-enable-chunked-prefill") as info:
        lm.sample(PREFIX, 1, 2, top_k=3, temperature=1.0, seed=0, greedy_first=False)
    assert info.value.status == 500


def test_wrong_model_names_lists_the_served_ones():
    fake = FakeVLLM(names=("alpha", "beta"))
    with pytest.raises(ModelNotServedError, match="alpha") as info:
        make(fake, model="gamma")
    assert info.value.served == ["alpha", "beta"]
    with pytest.raises(ModelNotServedError, match="pass model="):
        make(FakeVLLM(names=("alpha", "beta")))
    fake = FakeVLLM(names=("alpha", "beta"))
    lm = make(fake, model="beta")
    assert lm.name == "beta"
    fake.names = ("alpha", "gamma")  # the server restarted without the engine's model
    with pytest.raises(ModelNotServedError, match="beta") as info:
        lm.top_tokens(PREFIX, 2)
    assert info.value.served == ["alpha", "gamma"]


def test_context_too_long_is_caught_before_sending_and_mapped_from_the_server():
    fake = FakeVLLM(max_model_len=1000)
    lm = make(fake)
    fake.max_model_len = 64  # the engine thinks there is room; the server says no
    with pytest.raises(ContextTooLongError, match="maximum context length"):
        lm.top_tokens([5] * 100, 2)
    fake = FakeVLLM()
    lm = make(fake)
    before = len(fake.calls)
    with pytest.raises(ContextTooLongError, match="context of 64"):
        lm.sample([5] * 60, 2, 10, top_k=3, temperature=1.0, seed=0)
    with pytest.raises(ContextTooLongError):
        lm.top_tokens([5] * 64, 2)
    assert len(fake.calls) == before, "nothing was sent"
    with pytest.raises(ValueError, match="at least one token"):
        lm.top_tokens([], 2)


@pytest.mark.parametrize(
    "fault,match",
    [
        (dict(mode="processed_logprobs"), "processed"),
        (dict(mode="raw_logits"), "logits"),
        (dict(text_tokens=True), "return_tokens_as_token_ids"),
    ],
)
def test_a_server_lacking_a_needed_feature_is_named_on_start(fault, match):
    with pytest.raises(MissingFeatureError, match=match):
        make(FakeVLLM(**fault))


def test_cut_short_top_k_lists_are_sent_again_then_fail_loudly():
    fake = FakeVLLM()
    lm = make(fake, max_retries=2)
    fake.cut_short = 1
    rows = lm.sample(PREFIX, 3, 4, top_k=5, temperature=1.0, seed=0)
    for row in rows:
        assert row.logprob == pytest.approx(topk_renormalised(PREFIX, row.token_ids, 5, 1.0), abs=1e-9)
    assert lm.engine_stats()["resent"] == 1
    fake.cut_short = 1
    assert [c.token_ids for c in lm.top_tokens(PREFIX, 3)] == [c.token_ids for c in lm.top_tokens(PREFIX, 3)]
    fake.cut_short = 100
    with pytest.raises(EngineError, match="logprob_token_ids"):
        lm.top_tokens(PREFIX, 3)


def test_a_server_that_never_answers_times_out_instead_of_hanging():
    """A real socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachableError, match="did not answer within 0.3s"):
            VLLMEngine(
                f"http://127.0.0.1:{port}/v1", tokenizer=FakeTokenizer(), timeout=0.3, max_retries=1, backoff=0.01
            )
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="http"):
        VLLMEngine("localhost:8000")
    with pytest.raises(ValueError, match="option_scoring"):
        make(option_scoring="logprob_token_ids")
    with pytest.raises(ValueError, match="max_concurrency"):
        make(max_concurrency=0)


def test_server_tokenizer_is_enough_for_text_but_not_for_the_search():
    fake = FakeVLLM()
    lm = make(fake, tokenizer="server", eos_token_ids=[EOS])
    assert lm.encode("hi there") == text_to_ids("hi there")
    assert lm.decode(text_to_ids("abc")) == "abc"
    assert lm.chat_prompt([{"role": "user", "content": "hi"}]) == "user: hi\nassistant:"
    with pytest.raises(MissingFeatureError, match="tokenizer="):
        lm.token_ids_ending_with((".",))
    with pytest.raises(MissingFeatureError, match="tokenizer="):
        lm.encode("a reply", parse_special=False)


def test_local_tokenizer_text_side():
    lm = make()
    assert lm.encode("ab</s>") == [3, 4, EOS]
    assert lm.encode("ab</s>", parse_special=False) == text_to_ids("ab</s>")
    assert lm.decode([3, 4, EOS]) == "ab"
    ends = lm.token_ids_ending_with((".", "?"))
    assert ends == frozenset({3 + CHARS.index("."), 3 + CHARS.index("?")})
    assert lm.token_ids_ending_with((".", "?")) is ends, "cached"
    assert lm.chat_prompt([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"
    assert lm.parse_response("x") is None


def test_stats_and_server_metrics():
    fake = FakeVLLM()
    fake.metrics_text = textwrap.dedent("""\
        # HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
        # TYPE vllm:prefix_cache_queries_total counter
        vllm:prefix_cache_queries_total{engine="0",model_name="toy"} 400.0
        vllm:prefix_cache_queries_total{engine="1",model_name="toy"} 100.0
        vllm:prefix_cache_queries_total{engine="0",model_name="other"} 999.0
        vllm:prefix_cache_hits_total{engine="0",model_name="toy"} 300.0
        vllm:prompt_tokens_total{engine="0",model_name="toy"} 500.0
        vllm:num_requests_running{engine="0",model_name="toy"} 2.0
        """)
    lm = make(fake)
    before = lm.engine_stats()
    lm.sample(PREFIX, 3, 2, top_k=3, temperature=1.0, seed=0)
    after = lm.engine_stats()
    assert after["requests"] - before["requests"] == 2
    assert after["completion_tokens"] > before["completion_tokens"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == 3 * len(PREFIX)
    metrics = lm.server_metrics()
    assert metrics["prefix_cache_queries"] == 500 and metrics["prefix_cache_hits"] == 300
    assert metrics["requests_running"] == 2
    assert lm.prefix_cache_hit_rate() == pytest.approx(0.6)
    assert lm.prefix_cache_hit_rate(before=metrics) is None


def test_async_methods_match_the_sync_ones_and_each_event_loop_gets_its_own_client():
    fake = FakeVLLM()
    lm = make(fake)
    prompts = [PREFIX + text_to_ids(w) for w in ("a", "b", "c", "d", "e", "f", "g", "h")]

    async def many():
        tops = await asyncio.gather(*(lm.atop_tokens(p, 3) for p in prompts))
        rows = await asyncio.gather(*(lm.asample(p, 4, 3, top_k=5, temperature=1.0, seed=0) for p in prompts))
        scores = await lm.anext_token_logprobs(prompts, [4, 5])
        gen = await lm.agenerate(prompts[0], 6, top_k=1, temperature=1.0, seed=0)
        return tops, rows, scores, gen

    tops, rows, scores, gen = asyncio.run(many())
    assert tops == [lm.top_tokens(p, 3) for p in prompts]
    assert [r[0] for r in rows] == [lm.sample(p, 1, 3, top_k=5, temperature=1.0, seed=0)[0] for p in prompts]
    for p, r in zip(prompts, rows):
        for row in r:
            assert row.logprob == pytest.approx(topk_renormalised(p, row.token_ids, 5, 1.0), abs=1e-9)
    assert scores == lm.next_token_logprobs(prompts, [4, 5])
    assert gen == lm.generate(prompts[0], 6, top_k=1, temperature=1.0, seed=0)
    assert len(lm._transport._aclients) <= 1
    # a second event loop (the first one is closed) gets a client of its own
    assert asyncio.run(many())[0] == tops


def test_threads_share_the_engine():
    fake = FakeVLLM()
    lm = make(fake)
    prompts = [PREFIX + text_to_ids(w) for w in "abcdefgh"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda p: (lm.top_tokens(p, 3), lm.sample(p, 5, 3, top_k=4, temperature=0.9, seed=0)), prompts)
        )
    for p, (tops, rows) in zip(prompts, results):
        assert tops == lm.top_tokens(p, 3)
        for row in rows:
            assert row.logprob == pytest.approx(topk_renormalised(p, row.token_ids, 4, 0.9), abs=1e-9)


def test_rain_decodes_on_the_engine():
    """The whole search runs on the engine (toy model; the real server's decodes are in test_vllm_server)."""
    from rain_core import CallableEvaluator, RainDecoder

    lm = make(FakeVLLM(max_model_len=200), seed_mode="send")
    dec = RainDecoder(
        lm,
        CallableEvaluator(lambda p, r: -1.0 if "e" in r else 0.5),
        encoder=None,
        max_new_tokens=10,
        max_searches=4,
        extra_searches=2,
        min_visits=1,
        num_candidates=4,
        top_k=5,
    )
    out = dec.generate("say something", chat=False)
    assert out.token_ids and out.stats["requests"] > 0
    assert out.text == dec.generate("say something", chat=False).text, "seeded: the same decode twice"


def test_batched_requests_answer_as_the_single_ones():
    from rain_core.protocols import GenerateRequest, SampleRequest, TopTokensRequest

    fake = FakeVLLM()
    lm = make(fake, seed_mode="send")
    prompts = [tuple(PREFIX + text_to_ids(w)) for w in "abcd"]
    before = len(completions(fake))
    rows = lm.sample_batch([SampleRequest(p, 3, 4, 5, 1.0, 7) for p in prompts])
    assert len(completions(fake)) - before == 2 * len(prompts), "a greedy and a sampled request per prefix"
    assert rows == [lm.sample(p, 3, 4, top_k=5, temperature=1.0, seed=7) for p in prompts]
    tops = lm.top_tokens_batch([TopTokensRequest(p, 3) for p in prompts])
    assert tops == [lm.top_tokens(p, 3) for p in prompts]
    gens = lm.generate_batch([GenerateRequest(p, 6, None, 1.0, 3, (), frozenset({5})) for p in prompts])
    assert gens == [lm.generate(p, 6, top_k=None, temperature=1.0, seed=3, stop_token_ids={5}) for p in prompts]


def test_a_batch_refused_for_its_logprobs_runs_one_at_a_time_at_the_limit():
    from rain_core.protocols import TopTokensRequest

    lm = make(FakeVLLM(max_logprobs=6))
    lp = raw_logprobs(PREFIX)
    order = [int(i) for i in np.argsort(-lp, kind="stable")]
    requests = [TopTokensRequest(tuple(PREFIX), 4, exclude=tuple(order[:3]))] * 3
    got = lm.top_tokens_batch(requests)
    assert [[c.token_ids[0] for c in row] for row in got] == [order[3:6]] * 3
    with pytest.raises(LogprobsLimitError, match="--max-logprobs 8"):
        lm.top_tokens_batch([TopTokensRequest(tuple(PREFIX), 8)] * 2)


def test_what_the_engine_knows_is_read_only():
    lm = make()
    for attribute, value in (
        ("name", "x"),
        ("context_length", 10),
        ("eos_token_ids", frozenset({1})),
        ("option_scoring", "prompt_logprobs"),
    ):
        with pytest.raises(AttributeError):  # a property without a setter
            setattr(lm, attribute, value)
    assert lm.name == "toy" and lm.context_length == 64 and lm.eos_token_ids == frozenset({EOS})
