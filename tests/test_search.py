"""Deterministic search tests: a table language model, a scripted evaluator, expected trees
worked out by hand from the rules in shared/design/rain-algorithm.md."""

import math
import zlib

import numpy as np
import pytest

from rain_core import CallableEvaluator, RainConfig, RainDecoder
from rain_core.lm import Continuation
from rain_core.search import RainSearch
from fakes import VOCAB, CharLM, ScriptedLM, words_penalty

LETTERS = {1: "a", 2: "b", 3: "c", 4: "d"}


class TableLM:
    """Next-token distribution fixed at a: .4, b: .3, c: .2, d: .1 after any prefix; no simulation."""

    name = "table"
    context_length = 1000
    eos_token_ids = frozenset({0})
    probs = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}

    def __init__(self):
        self.requests = []

    def encode(self, text):
        return [9] * len(text)

    def decode(self, ids):
        return "".join(LETTERS.get(i, "") for i in ids)

    def chat_prompt(self, messages, add_generation_prompt=True, **kw):
        return messages[-1]["content"]

    def top_tokens(self, prefix, k, temperature=1.0, exclude=()):
        self.requests.append(("top", len(prefix), k, tuple(exclude)))
        items = [(t, p) for t, p in self.probs.items() if t not in set(exclude)]
        return [Continuation((t,), math.log(p)) for t, p in items[:k]]

    def sample(self, prefix, n, length, *, top_k, temperature, seed, greedy_first=True):
        raise AssertionError("token sets of length 1 never sample")

    def continue_until(self, prefix, stop, max_tokens, **kw):
        return []

    def next_token_logprobs(self, prompts, candidates):
        raise AssertionError("not a model evaluator")

    def cache_prefix(self, prefix):
        pass

    def release_prefix(self, prefix):
        pass


class SameEncoder:
    def encode(self, texts):
        return np.ones((len(texts), 2))


def _search(lm, evaluator, encoder, **cfg):
    config = RainConfig(num_candidates=2, token_set_lengths=(1,), min_visits=100, extra_searches=0, **cfg)
    return RainSearch(lm, CallableEvaluator(evaluator), encoder, config, [9, 9], "User: x", seed=0, keep_trees=True)


def test_two_commits_match_the_hand_worked_trees():
    # "" scores 0, any text with "a" scores -1, anything else +1
    def script(prompt, text):
        return 0.0 if text == "" else (-1.0 if "a" in text else 1.0)

    s = _search(TableLM(), script, None, max_searches=3, max_new_tokens=2, dynamic_node_addition=False,
                similarity_update=False)
    commits = list(s.run())
    assert commits == [[2], [2]]
    assert s.lm.decode(s.committed) == "bb"
    assert s.finished_by == "length"

    first = s.stats.commit_log[0]["tree"]
    # search 1 expands the root (priors .4/.7, .3/.7 mixed: .5536, .4464) and scores "" = 0;
    # search 2 picks "a" (1.107 > 0.893), expands it, scores -1;
    # search 3 picks "b" (0 + 2*.4464*sqrt(2)/1 = 1.263 > 0 + 2*.5536*sqrt(2)/2 = .783), scores +1;
    # commit: visits tie 1/1, the higher value ("b") wins.
    assert first["parent"] == [-1, 0, 0, 1, 1, 2, 2]
    assert first["tokens"] == [[], [1], [2], [1], [2], [1], [2]]
    assert first["visits"] == [3, 1, 1, 0, 0, 0, 0]
    assert first["value"] == pytest.approx([0.0, -1.0, 1.0, 0, 0, 0, 0])
    assert first["prior"][1:3] == pytest.approx([0.75 * 0.4 / 0.7 + 0.125, 0.75 * 0.3 / 0.7 + 0.125])
    assert first["prior"][3:5] == pytest.approx([0.4 / 0.7, 0.3 / 0.7])  # below the root: no mixing
    # nodes at the token budget are terminal
    assert first["terminal"] == [False, False, False, True, True, True, True]

    second = s.stats.commit_log[1]
    # the reused subtree of "b" has 1 visit: i0 = 1, so max(T_max=3, 1 + 0) - 1 = 2 more searches;
    # "ba" first (unvisited, higher mixed prior), scores -1; then "bb" scores +1; "bb" wins the tie.
    assert second["reused_visits"] == 1 and second["searches"] == 2
    assert second["tree"]["parent"] == [-1, 0, 0]
    assert second["tree"]["visits"] == [3, 1, 1]
    assert second["tree"]["value"] == pytest.approx([1 / 3, -1.0, 1.0])
    assert s.stats.searches == 5 and s.stats.evaluations == 5 and s.stats.commits == 2
    # the search left "a" for "b" once in each commit
    assert s.stats.rewinds == 2


def test_similarity_update_and_dynamic_node_addition_tree():
    s = _search(TableLM(), lambda p, t: -1.0, SameEncoder(), max_searches=4, max_new_tokens=5)
    s.step()
    tree = s.stats.commit_log[0]["tree"]
    # searches 1-3 as above; the third embeds "b" identically to "a": "a" gets a 0.2 visit.
    # Search 4: the root's two children are all bad and alike (variance 0 < 0.03 * 1): the next two
    # tokens c, d are added; priors renormalise over .4 .3 .2 .1 and mix with 1/4; PUCT picks "c"
    # (2*.2125*sqrt(3) = .736 beats a: .571, b: .498, d: .476); embedding "c" gives a and b 0.2 each.
    assert tree["parent"] == [-1, 0, 0, 1, 1, 2, 2, 0, 0, 7, 7]
    assert tree["tokens"][7:9] == [[3], [4]]
    assert tree["prior"][1:3] + tree["prior"][7:9] == pytest.approx([0.3625, 0.2875, 0.2125, 0.1375])
    assert tree["visits"][:3] + tree["visits"][7:9] == pytest.approx([4, 1.4, 1.2, 1, 0])
    assert tree["value"][:3] + tree["value"][7:9] == pytest.approx([-1, -1, -1, -1, 0])
    assert s.stats.node_additions == 2
    assert s.committed == [1]  # the most visits (1.4) wins
    assert ("top", 2, 2, (1, 2)) in s.lm.requests  # added candidates exclude existing children


def test_similarity_switch_off_gives_integer_visits():
    s = _search(TableLM(), lambda p, t: -1.0, SameEncoder(), max_searches=4, max_new_tokens=5,
                similarity_update=False)
    s.step()
    visits = s.stats.commit_log[0]["tree"]["visits"]
    assert all(float(v).is_integer() for v in visits)


def test_early_stop_when_everything_is_good():
    lm = CharLM()
    s = RainSearch(lm, CallableEvaluator(lambda p, r: 1.0), None, RainConfig(max_new_tokens=12),
                   lm.encode("user: hi\nassistant:"), "User: hi", seed=0)
    tokens = s.step()
    # value 1 > V=0.8 everywhere: stop as soon as the best child has more than T_min = 6 visits
    assert s.stats.early_stops == 1
    assert s.stats.searches < 50
    assert s.stats.commit_log[0]["visits"] == 7
    assert tokens


def test_full_budget_when_nothing_is_good():
    lm = CharLM()
    s = RainSearch(lm, CallableEvaluator(lambda p, r: -1.0), None, RainConfig(max_new_tokens=12),
                   lm.encode("user: hi\nassistant:"), "User: hi", seed=0)
    s.step()
    assert s.stats.searches == 50 and s.stats.early_stops == 0


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 16, 40])
def test_max_new_tokens_is_never_exceeded(max_new_tokens):
    dec = RainDecoder(CharLM(), lambda p, r: 0.5, encoder=None, max_new_tokens=max_new_tokens, max_searches=8)
    res = dec.generate("hello")
    assert len(res.token_ids) <= max_new_tokens
    if res.finish_reason == "length":
        assert len(res.token_ids) == max_new_tokens
    assert len(dec.vanilla("hello").token_ids) <= max_new_tokens


def test_stream_equals_generate_and_seed_is_reproducible():
    def pseudo_random(prompt, response):  # a deterministic but text-sensitive scorer
        return (zlib.crc32(response.encode()) % 2001) / 1000.0 - 1.0

    dec = RainDecoder(CharLM(), pseudo_random, encoder=None, max_new_tokens=30, max_searches=6)
    text = dec.generate("hello", seed=3).text
    pieces = list(dec.stream("hello", seed=3))
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert dec.generate("hello", seed=3).text == text
    assert dec.generate("hello", seed=4).text != text


def test_stop_strings_end_the_text_and_streams_hold_them_back():
    lm = ScriptedLM("one, two. three, four.")
    dec = RainDecoder(lm, lambda p, r: 1.0, encoder=None, max_new_tokens=40)
    assert dec.generate("count").text == "one, two. three, four."
    res = dec.generate("count", stop=[". th"])
    assert res.text == "one, two" and res.finish_reason == "stop"
    assert "".join(dec.stream("count", stop=[". th"])) == "one, two"
    assert dec.vanilla("count", stop=[". th"]).text == "one, two"


class TwoWayLM(CharLM):
    """Prefers to answer "i like cats." but keeps "i like dogs." one token away."""

    targets = (("i like cats.", 12.0), ("i like dogs.", 10.0))

    def __init__(self):
        super().__init__(self._two_way)

    def _two_way(self, text):
        reply = text.rpartition("\nassistant:")[2]
        logits = np.zeros(len(VOCAB))
        for target, strength in self.targets:
            if reply == target:
                logits[0] = max(logits[0], 12.0)
            elif target.startswith(reply):
                i = VOCAB.index(ord(target[len(reply)]))
                logits[i] = max(logits[i], strength)
        return logits


def test_penalised_word_is_avoided_when_an_alternative_exists():
    dec = RainDecoder(TwoWayLM(), words_penalty("cat"), encoder=None, max_new_tokens=20)
    assert dec.vanilla("pets?", seed=0).text == "i like cats."
    assert dec.generate("pets?").text == "i like dogs."
    # with an evaluator that likes everything, RAIN keeps the model's preference
    assert RainDecoder(TwoWayLM(), lambda p, r: 1.0, encoder=None, max_new_tokens=20).generate("pets?").text == "i like cats."


class _Recorder(CharLM):
    """CharLM that records what it sampled and where each simulation continued from."""

    def __init__(self):
        super().__init__()
        self.sampled, self.continued = [], []

    def sample(self, prefix, n, length, **kw):
        out = super().sample(prefix, n, length, **kw)
        self.sampled.append(out)
        return out

    def continue_until(self, prefix, stop, max_tokens, **kw):
        self.continued.append(list(prefix))
        return super().continue_until(prefix, stop, max_tokens, **kw)


@pytest.mark.parametrize("from_candidate", [True, False])
def test_simulation_starts_with_the_first_sampled_candidate(from_candidate):
    lm = _Recorder()
    prompt = lm.encode("user: hi\nassistant:")
    cfg = RainConfig(token_set_lengths=(6,), max_new_tokens=40, simulate_from_candidate=from_candidate)
    s = RainSearch(lm, CallableEvaluator(lambda p, r: 1.0), None, cfg, prompt, "User: hi", seed=5)
    pairs = []  # (the expansion's sampled rows, the simulation of the same search, model continuations)
    real_back_up = s.back_up
    for _ in range(12):
        before, calls = len(lm.sampled), len(lm.continued)
        sims = []
        s.back_up = lambda leaf, value, sim: (sims.append(list(sim)), real_back_up(leaf, value, sim))
        s.search_once()
        if len(lm.sampled) > before and sims[0]:  # this search expanded its (non-terminal) leaf
            pairs.append((lm.sampled[-1], sims[0], lm.continued[calls:]))
    assert len(pairs) >= 8
    reused = 0
    for rows, sim, continued in pairs:
        first = list(rows[1].token_ids)  # row 0 is the greedy candidate, row 1 the first sample
        cut = next((j for j in range(1, len(first) + 1)
                    if first[j - 1] == 0 or any(b in lm.decode(first[:j]) for b in cfg.clause_boundaries)), None)
        if not from_candidate:
            assert len(continued) == 1  # sampled on its own from the leaf
        elif cut is not None:
            # the sample reached a clause boundary: the simulation is the sample up to it, no model call
            assert sim == first[:cut] and continued == []
            reused += 1
        else:
            # the simulation is all of the sample and more, asked for from the end of the sample
            assert sim[: len(first)] == first and len(sim) > len(first)
            assert len(continued) == 1 and continued[0][-len(first):] == first
    if from_candidate:
        assert 0 < reused < len(pairs)  # both branches were exercised
