"""Searches side by side (``parallel_searches``): a round of B searches is B searches whose
requests are batched. Rules pinned here, on the fake model of ``fakes.py``:

- a round builds the tree that its searches build one after another from the same leaves;
- selections within a round see the searches in flight, and no in-flight count outlives a round;
- budgets count completed searches exactly; a round never runs past them;
- an evaluator failure, a cancel or a deadline inside a round ends the decode cleanly.
"""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np
import pytest
from fakes import CharLM, two_way, words_penalty

from rain_core import CallableEvaluator, DecodeCancelled, EvaluatorError, RainConfig, RainDecoder
from rain_core.search import RainSearch
from rain_core.tree import ROOT_INDEX


def hash_score(prompt: str, response: str) -> float:
    """A deterministic evaluator with values spread over [-1, 1]."""
    return (zlib.crc32(response.encode()) % 1001) / 500.0 - 1.0


class HashEncoder:
    """Deterministic unit vectors; similar enough for the similarity update to fire now and then."""

    def encode(self, texts):
        rows = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t[-4:].encode())).normal(size=8) + 3.0
            rows.append(v / np.linalg.norm(v))
        return np.array(rows)


class BatchingLM(CharLM):
    """CharLM with the batched requests of ``BatchedLanguageModel``; records each batch's size."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches: list[tuple[str, int]] = []

    def top_tokens_batch(self, requests):
        self.batches.append(("top_tokens", len(requests)))
        return [self.top_tokens(r.prefix, r.k, r.temperature, r.exclude) for r in requests]

    def sample_batch(self, requests):
        self.batches.append(("sample", len(requests)))
        return [
            self.sample(r.prefix, r.n, r.length, top_k=r.top_k, temperature=r.temperature, seed=r.seed)
            for r in requests
        ]

    def generate_batch(self, requests):
        self.batches.append(("generate", len(requests)))
        return [
            self.generate(
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


def _search(lm, evaluator=hash_score, encoder=None, **overrides) -> RainSearch:
    cfg = RainConfig(max_new_tokens=30, **overrides)
    return RainSearch(
        lm, CallableEvaluator(evaluator), encoder, cfg, lm.encode("user: hi\nassistant:"), "User: hi", seed=3
    )


@pytest.mark.parametrize("from_candidate", [False, True])
@pytest.mark.parametrize("width", [2, 4, 8])
def test_a_round_builds_the_same_tree_as_its_searches_one_after_another(width, from_candidate):
    # (lazy expansion's completions happen during selection, which a round runs one search at a time)
    preset = dict(simulate_from_candidate=True, max_simulation_tokens=8) if from_candidate else {}
    together = _search(CharLM(), encoder=HashEncoder(), parallel_searches=width, **preset)
    apart = _search(CharLM(), encoder=HashEncoder(), parallel_searches=width, **preset)
    for s in (together, apart):
        s.search_from([ROOT_INDEX])  # one search expands the root
    assert together.tree.to_dict() == apart.tree.to_dict()
    searched = 1
    for round_ in range(3):
        # the same leaves for both: the first childless nodes, deepest first; in the second round one
        # leaf twice (two searches on one leaf: the first expands it, the second samples it again)
        leaves = sorted((n for n in range(len(together.tree)) if not together.tree.children[n]), reverse=True)
        leaves = leaves[: width - 1] + leaves[:1] if round_ == 1 else leaves[:width]
        searched += len(leaves)
        together.search_from(leaves)
        for leaf in leaves:
            apart.search_from([leaf])
        assert together.tree.to_dict() == apart.tree.to_dict()
    assert together.stats.searches == apart.stats.searches == searched
    assert searched == 1 + 3 * width
    assert together.stats.rounds == 4 and apart.stats.rounds == searched
    assert together.stats.model_calls < apart.stats.model_calls


@pytest.mark.parametrize("width", [2, 4, 8])
def test_requests_of_a_round_reach_the_engine_as_batches(width):
    lm = BatchingLM()
    s = _search(lm, parallel_searches=width)
    for _ in range(4):
        s.search_once()
    sizes = [n for kind, n in lm.batches if kind in ("sample", "top_tokens")]
    # the expansions of a round in one call (as many as the round's distinct leaves)
    assert max(sizes) >= width // 2 and len(sizes) < sum(sizes)
    # the first round is one search: the root is the only leaf, and its text ends a clause, so a
    # second search of it would judge the same text again (a duplicate that samples nothing new); a
    # later round ends early only where it selects such a leaf again
    assert s.stats.searches == s.tree.real_visits[ROOT_INDEX]
    assert s.stats.rounds == 4 and 1 + 3 * (width // 2) <= s.stats.searches <= 1 + 3 * width


def test_selections_of_a_round_see_the_searches_in_flight_and_none_outlives_it():
    s = _search(CharLM(), parallel_searches=8, dynamic_node_addition=False)
    s.search_from([ROOT_INDEX])
    before = [n for n in range(len(s.tree)) if not s.tree.children[n]]
    visits = {n: s.tree.real_visits[n] for n in before}
    s.search_once()
    # the in-flight counts spread the round over several leaves (without them, all eight searches
    # would select the same leaf, the one with the best score), and none is left after the round
    searched = [n for n in before if s.tree.real_visits[n] > visits[n]]
    assert len(searched) >= 4
    assert s.stats.searches == 9
    assert set(s.tree.in_flight) == {0}


@pytest.mark.parametrize("width", [2, 4, 8])
def test_budgets_count_completed_searches_exactly(width):
    dec = RainDecoder(
        CharLM(),
        hash_score,
        encoder=HashEncoder(),
        max_searches=7,
        extra_searches=3,
        min_visits=10**9,  # no early stop: every commit runs its whole budget
        max_new_tokens=12,
        parallel_searches=width,
    )
    result = dec.generate("hi")
    log = result.stats["commit_log"]
    for entry in log:
        assert entry["searches"] == max(7, entry["reused_visits"] + 3) - entry["reused_visits"]
    assert result.stats["searches"] == sum(e["searches"] for e in log)


def test_a_max_searches_below_extra_searches_lowers_both():
    dec = RainDecoder(CharLM(), hash_score, encoder=None, max_searches=4, min_visits=10**9, max_new_tokens=8)
    assert dec.config.extra_searches == 15  # the field keeps its value; the rule caps it
    log = dec.generate("hi").stats["commit_log"]
    assert all(e["searches"] == max(4, e["reused_visits"] + 4) - e["reused_visits"] for e in log)
    assert all(e["searches"] <= 4 for e in log)


def test_an_evaluator_that_fails_inside_a_round_raises_with_the_partial_answer_and_the_model_stays_usable():
    calls = {"n": 0}

    def flaky(prompt, response):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("judge fell over")
        return 1.0 if "e" in response else -1.0

    lm = CharLM()
    dec = RainDecoder(lm, flaky, encoder=None, parallel_searches=4, max_new_tokens=20, max_searches=8)
    with pytest.raises(EvaluatorError, match="judge fell over") as caught:
        dec.generate("hi")
    partial = caught.value.partial
    assert partial is not None and partial.stats["commits"] >= 1
    assert partial.text == lm.decode(partial.token_ids)
    # the same model and decoder decode again
    assert RainDecoder(lm, words_penalty("zz"), encoder=None, parallel_searches=4, max_new_tokens=6).generate("hi").text


class SlowLM(CharLM):
    """Every model request takes ``delay`` seconds."""

    def __init__(self, delay: float):
        super().__init__()
        self.request_delay = delay

    def top_tokens(self, *a, **k):
        time.sleep(self.request_delay)
        return super().top_tokens(*a, **k)

    def sample(self, *a, **k):
        time.sleep(self.request_delay)
        return super().sample(*a, **k)

    def generate(self, *a, **k):
        time.sleep(self.request_delay)
        return super().generate(*a, **k)


@pytest.mark.parametrize("width", [1, 4])
def test_a_deadline_is_kept_to_within_one_model_call(width):
    delay = 0.15
    dec = RainDecoder(SlowLM(delay), lambda p, r: -1.0, encoder=None, parallel_searches=width, max_new_tokens=50)
    t0 = time.monotonic()
    result = dec.generate("hi", max_seconds=1.0)
    took = time.monotonic() - t0
    assert result.finish_reason == "time"
    # a round of `width` searches makes many calls; the deadline is checked before each one
    assert took < 1.0 + width * delay + 0.5


@pytest.mark.parametrize("width", [1, 4])
def test_cancel_stops_a_round_before_its_next_model_call(width):
    delay = 0.15
    dec = RainDecoder(SlowLM(delay), lambda p, r: -1.0, encoder=None, parallel_searches=width, max_new_tokens=50)
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(DecodeCancelled):
        dec.generate("hi", cancel=stop)
    assert time.monotonic() - t0 < 0.8 + width * delay + 0.5


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_parallel_searches_still_avoid_a_penalised_word(width):
    # "i like cats." is the model's preference ("i like dogs." one token away); the evaluator
    # penalises "cats". Over 20 seeds plain decoding writes it in 19; RAIN, whatever the width, in at
    # most 60% (whether an expansion samples "dogs" at all is chance: one at a time writes it in 7)
    seeds = range(20)
    dec = RainDecoder(two_way(), words_penalty("cats"), encoder=None, max_new_tokens=20, parallel_searches=width)
    plain = sum("cats" in dec.vanilla("pets?", seed=s).text for s in seeds)
    rain = [dec.generate("pets?", seed=s).text for s in seeds]
    assert plain >= 18
    assert sum("cats" in t for t in rain) <= 12 and all(t in ("i like cats.", "i like dogs.") for t in rain)


def test_parallel_searches_on_the_async_driver():
    import asyncio

    dec = RainDecoder(BatchingLM(), hash_score, encoder=HashEncoder(), parallel_searches=4, max_new_tokens=10)
    sync = dec.generate("hi")
    result = asyncio.run(dec.agenerate("hi"))
    assert result.text == sync.text and result.stats["searches"] == sync.stats["searches"]


def test_rounds_are_full_while_the_search_has_to_work_and_single_once_a_child_is_good_enough():
    def decode(evaluator):
        cfg = dict(parallel_searches=8, max_new_tokens=16, max_searches=12, extra_searches=6)
        return RainDecoder(CharLM(), evaluator, encoder=None, **cfg).generate("hi").stats

    rejected = decode(lambda p, r: -1.0)  # no child will ever look good enough to stop
    content = decode(lambda p, r: 1.0)  # every child looks good: one search at a time, as officially
    # side by side while the search has to work: a round ends early only where its next selection is a
    # leaf already taken with nothing new to sample (a terminal leaf, or one whose text ends a clause)
    assert rejected["rounds"] * 3 <= rejected["searches"]
    assert content["rounds"] >= content["searches"] - 8  # at most the first round side by side
