"""Deterministic search tests: the one fake model of ``fakes.py``, scripted evaluators, expected trees
worked out by hand from the authors' code (docs/algorithm.md). Tests named ``test_official_*`` pin a
point of the authors' code that a simpler reading gets wrong; each fails on that reading."""

import zlib

import numpy as np
import pytest
from fakes import CharLM, ScriptedLM, TableLM, two_way, words_penalty

from rain_core import CallableEvaluator, RainConfig, RainDecoder
from rain_core.phases import back_up, leaf_value, select, simulate
from rain_core.search import RainSearch
from rain_core.tree import ROOT_INDEX, added_prior

A, B, C = ord("a"), ord("b"), ord("c")


def make_search(lm, evaluator, config, *, encoder=None, prompt="user: hi\nassistant:", seed=0, keep_trees=False):
    """A RainSearch over ``lm`` with a scoring function: the one way these tests build a search."""
    return RainSearch(
        lm,
        CallableEvaluator(evaluator),
        encoder,
        config,
        lm.encode(prompt),
        "User: " + prompt.split("user: ", 1)[-1].split("\n", 1)[0],
        seed=seed,
        keep_trees=keep_trees,
    )


def table():
    """a .4, b .3, c .2, d .1 after any prefix; every text ending in a letter "ends a clause", so no
    leaf is ever simulated and each evaluation sees exactly the leaf's text."""
    return TableLM({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})


class SameEncoder:
    def encode(self, texts):
        return np.ones((len(texts), 2))


def _search(lm, evaluator, encoder, **cfg):
    config = RainConfig(
        num_candidates=2,
        token_set_lengths=(1,),
        min_visits=100,
        extra_searches=0,
        clause_boundaries=("a", "b", "c", "d"),
        **cfg,
    )
    return make_search(lm, evaluator, config, encoder=encoder, prompt="qd", keep_trees=True)


def test_two_commits_match_the_hand_worked_trees():
    # "" scores 0, any text with "a" scores -1, anything else +1
    def script(prompt, text):
        return 0.0 if text == "" else (-1.0 if "a" in text else 1.0)

    s = _search(
        table(), script, None, max_searches=3, max_new_tokens=2, dynamic_node_addition=False, similarity_update=False
    )
    commits = list(s.run())
    assert [list(c.token_ids) for c in commits] == [[B], [B]]
    assert [c.text for c in commits] == ["b", "b"]  # each commit's final text, handed up with it
    assert [c.last for c in commits] == [False, True]
    assert commits[-1].result.text == "bb" and commits[-1].result.finish_reason == "length"
    assert [c.stats for c in commits] == s.stats.commit_log
    assert s.lm.decode(s.committed) == "bb"
    assert s.finished_by == "length"

    first = s.stats.commit_log[0]["tree"]
    # search 1 scores the root "" = 0, then expands it (priors .4/.7, .3/.7 mixed: .5536, .4464);
    # search 2 picks "a" (1.107 > 0.893), scores -1, expands it;
    # search 3 picks "b" (0 + 2*.4464*sqrt(2)/1 = 1.263 > 0 + 2*.5536*sqrt(2)/2 = .783), scores +1;
    # commit: visits tie 1/1, the higher value ("b") wins.
    assert first["parent"] == [-1, 0, 0, 1, 1, 2, 2]
    assert first["tokens"] == [[], [A], [B], [A], [B], [A], [B]]
    assert first["visits"] == [3, 1, 1, 0, 0, 0, 0]
    assert first["value"] == pytest.approx([0.0, -1.0, 1.0, 0, 0, 0, 0])
    assert first["prior"][1:3] == pytest.approx([0.75 * 0.4 / 0.7 + 0.125, 0.75 * 0.3 / 0.7 + 0.125])
    assert first["prior"][3:5] == pytest.approx([0.4 / 0.7, 0.3 / 0.7])  # below the root: no mixing
    # nodes at the token budget are terminal
    assert first["terminal"] == [False, False, False, True, True, True, True]

    second = s.stats.commit_log[1]
    # the reused subtree of "b" has 1 real visit: i0 = 1, so max(T_max=3, 1 + 0) - 1 = 2 more searches;
    # "ba" first (unvisited, higher mixed prior), scores -1; then "bb" scores +1; "bb" wins the tie.
    assert second["reused_visits"] == 1 and second["searches"] == 2
    assert second["tree"]["parent"] == [-1, 0, 0]
    assert second["tree"]["visits"] == [3, 1, 1]
    assert second["tree"]["value"] == pytest.approx([1 / 3, -1.0, 1.0])
    assert s.stats.searches == 5 and s.stats.evaluations == 5 and s.stats.commits == 2
    assert s.stats.simulated_tokens == 0
    # the search left "a" for "b" once in each commit
    assert s.stats.rewinds == 2


def test_similarity_update_and_dynamic_node_addition_tree():
    lm = table()
    s = _search(lm, lambda p, t: -1.0, SameEncoder(), max_searches=4, max_new_tokens=5)
    s.next_commit()
    tree = s.stats.commit_log[0]["tree"]
    # Searches 1-3 as in the test above (every value -1). Search 3 embeds "b" identically to "a": a gets
    # a 0.2 visit (N 1.2). Search 4: the root's children are all bad and alike (unbiased variance 0 <
    # 0.03 * 1): ONE child is added, the next most probable token "c", its prior .2 normalised over the
    # top 3 (.9) and mixed at the root: .75 * .2/.9 + .25/3 = .25; the priors of a and b stay as they were.
    # PUCT (sqrt(3)): a 2*.5536*1.732/2.2 = .8716 > c 2*.25*1.732 = .8660 > b .7732 -> a; below a, "aa"
    # (1.252 > .939); its backup gives b a 0.2 visit through a's mean embedding.
    assert tree["parent"] == [-1, 0, 0, 1, 1, 2, 2, 0, 3, 3]
    assert tree["tokens"][7] == [C]
    assert tree["prior"][1:3] == pytest.approx([0.75 * 0.4 / 0.7 + 0.125, 0.75 * 0.3 / 0.7 + 0.125])
    assert tree["prior"][7] == pytest.approx(0.25)
    assert [tree["visits"][i] for i in (0, 1, 2, 3, 7)] == pytest.approx([4, 2.2, 1.2, 1, 0])
    assert [tree["real_visits"][i] for i in (0, 1, 2, 3, 7)] == [4, 2, 1, 1, 0]
    assert [tree["value"][i] for i in (0, 1, 2, 3, 7)] == pytest.approx([-1, -1, -1, -1, 0])
    assert s.stats.node_additions == 1
    assert s.committed == [A]  # the most visits (2.2) wins
    assert ("top_tokens", 2, (3, ())) in lm.requests  # the addition asks for the top n + 1 = 3


def test_similarity_switch_off_gives_integer_visits():
    s = _search(table(), lambda p, t: -1.0, SameEncoder(), max_searches=4, max_new_tokens=5, similarity_update=False)
    s.next_commit()
    visits = s.stats.commit_log[0]["tree"]["visits"]
    assert all(float(v).is_integer() for v in visits)


def test_official_one_candidate_per_addition_and_sibling_priors_untouched():
    # Two-token sets: each addition draws greedy + one sample and adds only a new sample, with its raw
    # prior normalised over the newest n + 1 proposals; existing priors never change.
    lm = TableLM({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})
    cfg = RainConfig(
        num_candidates=3,
        token_set_lengths=(2,),
        min_visits=100,
        extra_searches=0,
        max_searches=40,
        max_new_tokens=4,
        clause_boundaries=("a", "b", "c", "d"),
    )
    s = make_search(lm, lambda p, t: -1.0, cfg, encoder=SameEncoder(), prompt="qd", seed=1)
    additions = 0
    for _ in range(40):
        before = {k: s.tree.prior[k] for k in range(len(s.tree))}
        kids_before = list(s.tree.children[ROOT_INDEX])
        proposals_before = list(s.tree.proposals[ROOT_INDEX])
        s.search_once()
        new = [k for k in s.tree.children[ROOT_INDEX] if k not in kids_before]
        assert all(s.tree.prior[k] == before[k] for k in before)  # no existing prior moved
        if kids_before and new:
            additions += 1
            assert len(new) == 1
            head = s.tree.proposals[ROOT_INDEX][: len(kids_before) + 1]
            assert (
                s.tree.proposals[ROOT_INDEX][len(s.tree.proposals[ROOT_INDEX]) - len(proposals_before) :]
                == proposals_before
            )  # the new draws were put in front
            raw = dict(head)[s.tree.tokens[new[0]]]
            assert s.tree.prior[new[0]] == pytest.approx(added_prior(raw, [r for _, r in head], True, 0.25))
    assert additions >= 2
    assert s.stats.node_additions >= additions  # additions below the root count too


def test_official_token_set_length_counts_from_the_original_prompt():
    # The official token-set length reads a node's step from the original prompt, never reset at a
    # commit: after the 1-, 2- and 4-token commits every new set is 10 tokens (not 1 again).
    lm = CharLM()
    s = make_search(lm, lambda p, r: 1.0, RainConfig(max_new_tokens=60, min_visits=1))
    lengths = [len(s.next_commit()) for _ in range(3)]
    assert lengths == [1, 2, 4]
    assert s.tree.depth_from_prompt[ROOT_INDEX] == 3
    s.search_once()
    kids = s.tree.children[ROOT_INDEX]
    assert kids and {len(s.tree.tokens[k]) for k in kids if 0 not in s.tree.tokens[k]} == {10}


def test_official_simulation_samples_the_full_distribution():
    lm = CharLM()
    RainDecoder(lm, lambda p, r: 0.5, encoder=None, max_new_tokens=6, max_searches=4).generate("hi")
    assert {r[2][1] for r in lm.requests if r[0] == "generate"} == {None}  # top_k=None: the full distribution
    lm = CharLM()
    RainDecoder(lm, lambda p, r: 0.5, encoder=None, max_new_tokens=6, max_searches=4, simulation_top_k=15).generate(
        "hi"
    )
    assert {r[2][1] for r in lm.requests if r[0] == "generate"} == {15}  # the switch: top-k


def _sim_search(script, **cfg):
    lm = ScriptedLM(script)
    config = RainConfig(max_new_tokens=80, **cfg)
    return make_search(lm, lambda p, r: 1.0, config, prompt="user: go\nassistant:")


def _simulate(search, node):
    return search.run_phase(simulate(search.decode, node, search.rng))


def test_official_leaf_ending_a_clause_is_judged_without_simulation():
    s = _sim_search("one, two, three.")
    # the prompt ends with ":" so the root is judged as it is, without a simulated token
    assert _simulate(s, ROOT_INDEX) == []
    ends = s.tree.add_child(ROOT_INDEX, s.lm.encode("one,"))
    assert _simulate(s, ends) == []
    open_ = s.tree.add_child(ROOT_INDEX, s.lm.encode("one"))
    assert s.lm.decode(_simulate(s, open_)) == ","  # stops once the text ends a clause


def test_official_simulation_has_no_length_cap_by_default():
    s = _sim_search("a" * 40 + " b.")
    leaf = s.tree.add_child(ROOT_INDEX, s.lm.encode("a"))
    sim = _simulate(s, leaf)
    assert s.lm.decode(sim) == "a" * 39 + " b."  # 42 tokens: no cap but max_length
    capped = _sim_search("a" * 40 + " b.", max_simulation_tokens=32)
    assert len(_simulate(capped, capped.tree.add_child(ROOT_INDEX, capped.lm.encode("a")))) == 32


def test_official_reused_visits_are_real_visits():
    # With the similarity update the committed child carries fractional visits; the next commit counts
    # its searches from the REAL visits of the new root (official fn), not from the fractional total.
    lm = table()
    s = _search(lm, lambda p, t: -1.0, SameEncoder(), max_searches=6, max_new_tokens=3, dynamic_node_addition=False)
    s.next_commit()
    first = s.stats.commit_log[0]
    assert not float(first["visits"]).is_integer()
    s.next_commit()
    assert s.stats.commit_log[1]["reused_visits"] == first["real_visits"]


def test_early_stop_when_everything_is_good():
    lm = CharLM()
    s = make_search(lm, lambda p, r: 1.0, RainConfig(max_new_tokens=12))
    tokens = s.next_commit()
    # value 1 > V=0.8 everywhere: stop as soon as the best child has more than T_min = 6 real visits
    assert s.stats.early_stops == 1
    assert s.stats.searches < 50
    assert s.stats.commit_log[0]["real_visits"] == 7
    assert tokens


def test_full_budget_when_nothing_is_good():
    lm = CharLM()
    s = make_search(lm, lambda p, r: -1.0, RainConfig(max_new_tokens=12))
    s.next_commit()
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


def test_penalised_word_is_avoided_when_an_alternative_exists():
    dec = RainDecoder(two_way(), words_penalty("cat"), encoder=None, max_new_tokens=20)
    assert dec.vanilla("pets?", seed=0).text == "i like cats."
    assert dec.generate("pets?").text == "i like dogs."
    # with an evaluator that likes everything, RAIN keeps the model's preference
    assert (
        RainDecoder(two_way(), lambda p, r: 1.0, encoder=None, max_new_tokens=20).generate("pets?").text
        == "i like cats."
    )


@pytest.mark.parametrize("from_candidate", [True, False])
def test_simulation_starts_with_the_first_sampled_candidate(from_candidate):
    # The fast preset's simulate_from_candidate: a freshly expanded leaf's simulation is the shortest
    # prefix of the expansion's first sampled row that ends a clause, or all of it and more (asked for
    # from its end). Official (False): the simulation is sampled on its own from the leaf.
    lm = CharLM()
    cfg = RainConfig(token_set_lengths=(6,), max_new_tokens=40, simulate_from_candidate=from_candidate)
    # the prompt does not end a clause: the root is simulated too
    s = make_search(lm, lambda p, r: 1.0, cfg, prompt="user: hi\nassistant", seed=5)
    sampled, generated = [], []
    real_sample, real_generate = lm.sample, lm.generate
    lm.sample = lambda *a, **k: sampled.append(real_sample(*a, **k)) or sampled[-1]
    lm.generate = lambda prefix, *a, **k: generated.append(list(prefix)) or real_generate(prefix, *a, **k)
    cases = []
    d = s.decode
    for _ in range(12):
        n_sampled, n_generated = len(sampled), len(generated)
        # one search, phase by phase (what search_once runs with parallel_searches=1)
        leaf = s.run_phase(select(d, s.rng))
        value, sim = s.run_phase(leaf_value(d, leaf, s.rng))
        back_up(d, leaf, value, [])
        if len(sampled) > n_sampled:  # this search expanded its leaf
            ended = d.ends_clause(d.tree.path_tokens(leaf))
            cases.append((sampled[-1], sim, generated[n_generated:], ended))
    assert len(cases) >= 8
    reused = 0
    for rows, sim, calls, ended in cases:
        first = list(rows[1].token_ids)  # row 0 is the greedy candidate, row 1 the first sample
        cut = next(
            (
                j
                for j in range(1, len(first) + 1)
                if first[j - 1] == 0 or lm.decode(first[:j]).endswith(cfg.clause_boundaries)
            ),
            None,
        )
        if ended:
            assert sim == [] and calls == []  # a leaf that ends a clause is judged as it is
        elif not from_candidate:
            assert len(calls) == (1 if sim else 0)  # sampled on its own from the leaf, one request
        elif cut is not None:
            assert sim == first[:cut] and calls == []  # no model call: the sample already ends a clause
            reused += 1
        else:
            assert sim[: len(first)] == first and len(calls) == 1 and calls[0][-len(first) :] == first
    if from_candidate:
        assert 0 < reused < len(cases)  # both branches were exercised


# --- the fast preset -------------------------------------------------------------------------------
def test_lazy_expansion_follows_the_greedy_path_when_everything_is_good():
    lm = CharLM()
    prompt = lm.encode("user: hi\nassistant:")
    s = make_search(lm, lambda p, r: 1.0, RainConfig.fast(max_new_tokens=30))
    list(s.run())
    # every expansion drew one row (the greedy continuation); no node was completed
    assert all(r[2][0] == 1 for r in lm.requests if r[0] == "sample")
    assert all(r[2][0] == 1 for r in lm.requests if r[0] == "top_tokens")
    assert s.stats.completions == 0
    greedy = []
    state = list(prompt)
    while len(greedy) < 30:
        tok = lm.top_tokens(state, 1)[0].token_ids[0]
        greedy.append(tok)
        state.append(tok)
        if tok == 0:
            break
    assert s.committed == greedy  # RAIN with an evaluator that likes everything: greedy decoding
    assert s.stats.searches < 20  # the official search spends about 7 searches per commit here


def test_lazy_node_is_completed_with_official_priors_once_its_greedy_child_is_judged_not_good_enough():
    lm = TableLM({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})
    cfg = RainConfig.fast(
        num_candidates=3,
        token_set_lengths=(2,),
        min_visits=100,
        max_searches=3,
        max_new_tokens=4,
        clause_boundaries=("a", "b", "c", "d"),
    )
    s = make_search(lm, lambda p, t: 0.5, cfg, prompt="qd", seed=2)
    s.search_once()  # expands the root lazily: the greedy "aa" only
    assert [s.tree.tokens[k] for k in s.tree.children[ROOT_INDEX]] == [(A, A)]
    assert s.tree.pending[ROOT_INDEX] and s.tree.prior[1] == 1.0
    s.search_once()  # visits "aa" (0.5 is not above V = 0.8): the root is pending a completion
    assert len(s.tree.children[ROOT_INDEX]) == 1
    s.search_once()  # passes the root again: completes it, then selects among all children
    kids = s.tree.children[ROOT_INDEX]
    assert not s.tree.pending[ROOT_INDEX] and s.stats.completions == 1
    assert 2 <= len(kids) <= 3 and s.tree.tokens[kids[0]] == (A, A)
    greedy_raw = 0.4 / 1.0 * 0.4 / 1.0  # top-15 of four tokens: the table itself
    proposals = s.tree.proposals[ROOT_INDEX]
    samples = [r for _, r in proposals[1:]]
    assert proposals[0][1] == pytest.approx(max(min(greedy_raw, sum(samples)), max(samples) + min(samples)))
    raws = [r for _, r in proposals]
    expected = [0.75 * r / sum(raws) + 0.25 / len(raws) for r in raws]
    assert [s.tree.prior[k] for k in kids] == pytest.approx(expected)


def test_fast_preset_still_avoids_a_penalised_word():
    dec = RainDecoder(two_way(), words_penalty("cat"), encoder=None, config=RainConfig.fast(max_new_tokens=20))
    assert dec.generate("pets?").text == "i like dogs."
    assert RainConfig.fast().deviations() == {k: (getattr(RainConfig(), k), v) for k, v in RainConfig.FAST.items()}
    assert RainConfig.fast(lazy_expansion=False).lazy_expansion is False
