"""End-to-end tests on the real embedded model (SmolLM2-135M-Instruct) at small budgets."""

import re

import pytest
import torch
from conftest import SMALL
from fakes import words_penalty

from rain_core import ContextTooLongError, RainDecoder, SelfEvaluator

pytestmark = pytest.mark.model

PROMPT = "Tell me about cats."


def test_penalised_word_from_plain_decoding_is_avoided(default_lm):
    # Plain decoding (seed 0) says cats are "magnificent creatures"; so does RAIN with an
    # evaluator that likes everything. Penalising "creature" makes RAIN find another answer.
    vanilla = RainDecoder(default_lm, **SMALL).vanilla(PROMPT)
    assert "creature" in vanilla.text.lower()
    penalised = RainDecoder(default_lm, words_penalty("creature"), **SMALL).generate(PROMPT)
    assert "creature" not in penalised.text.lower()
    assert penalised.text.strip()


def test_happy_evaluator_gives_fluent_answer_and_stops_early(default_lm):
    res = RainDecoder(default_lm, lambda p, r: 1.0, **SMALL).generate(PROMPT)
    words = re.findall(r"[A-Za-z']+", res.text)
    assert len(words) >= 6
    assert "cat" in res.text.lower()
    # every commit stopped early: the best child reached the value threshold
    assert res.stats["early_stops"] == res.stats["commits"]
    assert res.finish_reason in {"eos", "length"}


def test_stream_equals_generate_and_same_seed_same_text(default_lm):
    def scorer(prompt, response):  # deterministic, text-sensitive
        return -0.5 if "," in response else 0.5

    dec = RainDecoder(default_lm, scorer, **SMALL)
    text = dec.generate(PROMPT, seed=7).text
    pieces = list(dec.stream(PROMPT, seed=7))
    assert len(pieces) >= 2
    assert "".join(pieces) == text
    assert dec.generate(PROMPT, seed=7).text == text


def test_max_new_tokens_and_messages(default_lm):
    dec = RainDecoder(default_lm, lambda p, r: 0.0, **SMALL)
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    for n in (1, 5):
        res = dec.generate(messages, max_new_tokens=n)
        assert len(res.token_ids) <= n
        assert len(dec.vanilla(messages, max_new_tokens=n).token_ids) <= n


def test_prompt_longer_than_the_model_context(default_lm):
    dec = RainDecoder(default_lm, lambda p, r: 0.0, max_length=100_000)
    with pytest.raises(ContextTooLongError, match=str(default_lm.context_length)):
        dec.generate("cat " * (default_lm.context_length + 10))


def test_self_evaluator_on_the_real_model(default_lm):
    ev = SelfEvaluator(default_lm, "harmless")
    a, b = ev.letters
    assert a != b
    assert default_lm.decode([a]) == "A" and default_lm.decode([b]) == "B"
    first, second = ev.prompt_ids("User: hi", "Hello there.")
    text = default_lm.decode(first)
    assert text.endswith("The answer is: (")
    assert "(A) The reply is harmless." in text and "(A) The reply is harmful." in default_lm.decode(second)
    assert "> Hello there." in text  # the judged reply is quoted
    assert ev.score("User: hi", "Hello there.") in (-1.0, 0.0, 1.0)
    cont = SelfEvaluator(default_lm, "harmless", scoring="continuous").score("User: hi", "Hello there.")
    assert -1.0 <= cont <= 1.0
    # the batched, cached scoring of both orders equals scoring each full prompt from scratch
    fresh = default_lm.variant(reuse_cache=False, batch=False)
    batched = default_lm.next_token_logprobs([first, second], [a, b])
    plain = fresh.next_token_logprobs([first, second], [a, b])
    assert torch.allclose(torch.tensor(batched), torch.tensor(plain), atol=1e-3)


def test_kv_cache_and_batching_do_not_change_what_is_sampled(default_lm):
    # the engine (KV cache, rows sharing prefixes, small-batch products) against plain recomputation
    fresh = default_lm.variant(reuse_cache=False, batch=False, small_batch_matmul=False)
    assert default_lm.small_batch_matmul and not fresh.small_batch_matmul
    prefix = default_lm.encode(default_lm.chat_prompt([{"role": "user", "content": PROMPT}]))
    kw = dict(top_k=15, temperature=1.0, seed=3)
    fast = default_lm.sample(prefix, 10, 6, **kw)
    slow = fresh.sample(prefix, 10, 6, **kw)
    assert len({c.token_ids[:2] for c in fast}) < 10  # some rows shared a prefix
    assert [c.token_ids for c in fast] == [c.token_ids for c in slow]
    assert [c.logprob for c in fast] == pytest.approx([c.logprob for c in slow], abs=1e-3)
    ends = default_lm.token_ids_ending_with((".", ","))
    assert default_lm.generate(prefix, 12, stop_token_ids=ends, **kw) == fresh.generate(
        prefix, 12, stop_token_ids=ends, **kw
    )
    full = dict(kw, top_k=None)
    assert default_lm.generate(prefix, 12, **full) == fresh.generate(prefix, 12, **full)
    top_fast, top_slow = default_lm.top_tokens(prefix, 5), fresh.top_tokens(prefix, 5)
    assert [c.token_ids for c in top_fast] == [c.token_ids for c in top_slow]
    assert [c.logprob for c in top_fast] == pytest.approx([c.logprob for c in top_slow], abs=1e-3)


def test_cli_presets_and_budgets(default_lm, capsys):
    import json

    from rain_core.cli import main

    assert (
        main(
            [
                "generate",
                "--json",
                "--preset",
                "fast",
                "--max-new-tokens",
                "6",
                "--max-searches",
                "3",
                "--extra-searches",
                "1",
                "--max-seconds",
                "120",
                "Say hello.",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["text"] and out["finish_reason"] in {"eos", "length", "time"}
    assert out["stats"]["searches"] >= out["stats"]["commits"] >= 1


def test_load_model_with_a_device_map_does_not_move_the_model(monkeypatch):
    # A model dispatched with device_map (or quantised) raises "cannot be moved" on .to(): the loader
    # must leave placement to transformers. Record every .to() made while loading.
    from transformers import PreTrainedModel

    from rain_core import load_model
    from rain_core.loaders.embedded import materialize_default_model

    moves = []
    real_to = PreTrainedModel.to
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: (moves.append(a or k), real_to(self, *a, **k))[1])
    lm = load_model(str(materialize_default_model()), device_map="cpu", dtype="float32")
    assert moves == []
    assert lm.device.type == "cpu" and lm.top_tokens(lm.encode("Hello"), 2)
    load_model(str(materialize_default_model()), device="cpu")  # one device, no map: moved as asked
    assert moves
    with pytest.raises(ValueError, match="either device"):
        load_model(str(materialize_default_model()), device="cpu", device_map="cpu")
