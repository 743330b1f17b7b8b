"""A round at the cost of one search: the round policy (``rain_core.rounds``) and the one driver of
phases (``drivers.run_phases``).

- rounds of width one make the decisions of the one-at-a-time search, whatever ``parallel_searches``;
- a round's model requests of every kind go out in one call; the engine's mixed answer equals, row for
  row, the answers of the kinds one after another, with the same draws (a tiny float64 model);
- a round asks one score and one embedding per distinct text;
- the driver closes its phases on an error, on a cancellation and on an early exit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import CharLM, TableLM
from test_engine import tiny_model
from test_parallel import HashEncoder

from rain_core import CallableEvaluator, RainConfig
from rain_core.drivers import Answerer, drive, run_phases
from rain_core.phases import EncodeRequest, ScoreRequest, Together
from rain_core.protocols import GenerateRequest, SampleRequest, TopTokensRequest
from rain_core.search import RainSearch
from rain_core.tree import ROOT_INDEX

PROMPT = "user: hi\nassistant:"


def _search(lm, evaluator, **overrides) -> RainSearch:
    cfg = RainConfig.fast(max_new_tokens=30, seed=5, **overrides)
    return RainSearch(lm, CallableEvaluator(evaluator), HashEncoder(), cfg, lm.encode(PROMPT), "User: hi", seed=5)


def _visits_after_three_rounds_of_one(width: int) -> list[int]:
    # The fast preset expands lazily: the root gets its greedy child "a" only. Replies starting with
    # "a" are bad, the rest good. Search 2 judges the greedy child; search 3 must complete the root's
    # candidates before it steps down, and then takes "b" (its prior beats a visited bad child's).
    lm = TableLM({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})
    cfg = RainConfig.fast(max_new_tokens=30, parallel_searches=width, num_candidates=3, clause_boundaries=tuple("abcd"))
    s = RainSearch(
        lm, CallableEvaluator(lambda p, r: -1.0 if r.startswith("a") else 1.0), None, cfg, lm.encode("x"), "", seed=5
    )
    for _ in range(3):
        s.search_once(width=1)
    return [s.tree.real_visits[k] for k in s.tree.children[ROOT_INDEX]]


def test_rounds_of_one_search_decide_as_the_one_at_a_time_search():
    assert _visits_after_three_rounds_of_one(1) == [1, 1, 0]
    assert _visits_after_three_rounds_of_one(8) == [1, 1, 0]


def test_deferring_in_rounds_of_one_would_descend_into_the_bad_greedy_child(monkeypatch):
    # the rule the test above pins: were selections to defer by parallel_searches rather than by the
    # round's width, a round of one would step into the only child it sees, the bad greedy one
    import rain_core.search

    monkeypatch.setattr(rain_core.search, "defers", lambda width: True)
    assert _visits_after_three_rounds_of_one(8) == [2, 0, 0]


class MixedLM(CharLM):
    """CharLM that records how the requests of each call reach it: one list of kinds per call."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def answer_batch(self, requests):
        self.calls.append([type(r).__name__ for r in requests])
        out = []
        for r in requests:
            if isinstance(r, TopTokensRequest):
                out.append(self.top_tokens(r.prefix, r.k, r.temperature, r.exclude))
            elif isinstance(r, SampleRequest):
                out.append(
                    self.sample(
                        r.prefix,
                        r.n,
                        r.length,
                        top_k=r.top_k,
                        temperature=r.temperature,
                        seed=r.seed,
                        greedy_first=r.greedy_first,
                    )
                )
            else:
                out.append(
                    self.generate(
                        r.prefix,
                        r.max_tokens,
                        top_k=r.top_k,
                        temperature=r.temperature,
                        seed=r.seed,
                        stop=r.stop,
                        stop_token_ids=r.stop_token_ids,
                    )
                )
        return out


def test_a_leaf_simulation_and_expansion_go_out_in_one_call_with_the_same_draws():
    # The official search: a leaf's simulation and its expansion continue the same state. They go out
    # together (one model call per search instead of two), and draw what they drew one after another.
    cfg = RainConfig(max_new_tokens=30, max_searches=6, extra_searches=3)
    mixed, apart = MixedLM(), CharLM()
    trees = []
    for lm in (mixed, apart):
        s = RainSearch(lm, CallableEvaluator(lambda p, r: -1.0), HashEncoder(), cfg, lm.encode(PROMPT), "", seed=9)
        s.next_commit()
        trees.append(s.tree.to_dict())
    assert trees[0] == trees[1]
    assert ["GenerateRequest", "SampleRequest"] in mixed.calls or ["GenerateRequest", "TopTokensRequest"] in mixed.calls


@pytest.fixture(scope="module")
def tiny64():
    from transformers import AutoTokenizer

    from rain_core.engines.transformers import TransformersLM
    from rain_core.loaders.embedded import materialize_default_model

    tokenizer = AutoTokenizer.from_pretrained(str(materialize_default_model()))
    model = tiny_model(len(tokenizer), seed=3).to(torch.float64)
    return TransformersLM(model, tokenizer, name="tiny64")


def test_the_engines_mixed_answer_equals_the_kinds_one_after_another(tiny64):
    lm = tiny64
    base = lm.encode(lm.chat_prompt([{"role": "user", "content": "Tell me about cats."}]))
    requests = [
        TopTokensRequest(tuple(base), 5, 1.0),
        SampleRequest(tuple(base + [300]), 4, 6, 15, 1.0, 11, True),
        GenerateRequest(tuple(base), 9, None, 1.0, 12, (), frozenset()),
        SampleRequest(tuple(base), 3, 2, 15, 0.7, 13, False),
        GenerateRequest(tuple(base + [300, 301]), 5, 15, 1.0, 14, (".",), frozenset({13})),
    ]
    lm.clear_cache()
    before = lm.engine_stats()["forward_calls"]
    mixed = lm.answer_batch(requests)
    calls = lm.engine_stats()["forward_calls"] - before
    lm.clear_cache()
    apart = [
        lm.top_tokens(r.prefix, r.k, r.temperature, r.exclude)
        if isinstance(r, TopTokensRequest)
        else lm.sample(
            r.prefix, r.n, r.length, top_k=r.top_k, temperature=r.temperature, seed=r.seed, greedy_first=r.greedy_first
        )
        if isinstance(r, SampleRequest)
        else lm.generate(
            r.prefix,
            r.max_tokens,
            top_k=r.top_k,
            temperature=r.temperature,
            seed=r.seed,
            stop=r.stop,
            stop_token_ids=r.stop_token_ids,
        )
        for r in requests
    ]
    for got, want in zip(mixed, apart):
        if want and hasattr(want[0], "token_ids"):
            assert [c.token_ids for c in got] == [c.token_ids for c in want]
            assert [c.logprob for c in got] == pytest.approx([c.logprob for c in want], abs=1e-9)
        else:
            assert got == want
    # rows step together: no more forward passes than the longest row needs, plus the prefill
    assert calls <= 1 + max(9, 6, 5)


def test_a_round_asks_one_score_and_one_embedding_per_distinct_text():
    seen = {"scores": [], "encoded": []}

    class CountingEncoder:
        def encode(self, texts):
            seen["encoded"].extend(texts)
            return np.ones((len(texts), 4)) / 2.0

    def scorer(prompt, reply):
        seen["scores"].append(reply)
        return 0.5

    def phase(text):
        value = yield ScoreRequest(text)
        embedding = yield EncodeRequest((text, "shared"))
        return value, len(embedding)

    answerer = Answerer(CharLM(), CallableEvaluator(scorer), CountingEncoder(), "")
    results = drive(run_phases([phase("a"), phase("b"), phase("a")], lambda batch: batch), answerer)
    assert results == [(0.5, 2), (0.5, 2), (0.5, 2)]
    assert sorted(seen["scores"]) == ["a", "b"]
    assert sorted(seen["encoded"]) == ["a", "b", "shared"]
    # the next round embeds only texts this decode has not embedded yet
    drive(run_phases([phase("a"), phase("c")], lambda batch: batch), answerer)
    assert sorted(seen["encoded"]) == ["a", "b", "c", "shared"]


class Tracked:
    """Phases that note whether they were closed."""

    def __init__(self):
        self.closed: list[str] = []

    def phase(self, name, requests):
        try:
            yield from requests
            return name
        finally:
            self.closed.append(name)


def _requests():
    return [GenerateRequest((1, 2), 3, None, 1.0, 1, (), frozenset()), ScoreRequest("x")]


def test_the_driver_closes_its_phases_on_an_error():
    tracked = Tracked()

    class Broken(Answerer):
        def answer(self, batch):
            raise RuntimeError("the engine broke")

    answerer = Broken(CharLM(), CallableEvaluator(lambda p, r: 0.0), None, "")
    with pytest.raises(RuntimeError, match="engine broke"):
        drive(run_phases([tracked.phase("a", _requests()), tracked.phase("b", _requests())], lambda b: b), answerer)
    assert sorted(tracked.closed) == ["a", "b"]


def test_the_driver_closes_its_phases_on_a_cancellation():
    tracked = Tracked()

    class Cancelled(Exception):
        pass

    def before_call(batch):
        raise Cancelled

    answerer = Answerer(CharLM(), CallableEvaluator(lambda p, r: 0.0), None, "")
    with pytest.raises(Cancelled):
        drive(run_phases([tracked.phase("a", _requests()), tracked.phase("b", _requests())], before_call), answerer)
    assert sorted(tracked.closed) == ["a", "b"]


def test_the_driver_closes_its_phases_on_an_early_exit():
    tracked = Tracked()
    steps = run_phases(
        [tracked.phase("a", _requests()), tracked.phase("b", [Together(tuple(_requests()[:1]))])], lambda b: b
    )
    first = next(steps)
    assert len(first) == 2  # both phases' model requests in one batch, the bundle flattened
    steps.close()  # the caller leaves after the first batch
    assert sorted(tracked.closed) == ["a", "b"]
