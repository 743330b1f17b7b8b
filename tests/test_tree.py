"""Pure tests of the tree arithmetic on hand-made numbers; each rule as the authors' code has it.

The tests named ``test_official_*`` pin a point of the authors' code that a simpler reading gets
wrong (docs/algorithm.md, "Fidelity"); each fails on that reading."""

import math

import numpy as np
import pytest

from rain_core import RainConfig
from rain_core.tree import (
    ROOT_INDEX,
    MinMax,
    Tree,
    added_prior,
    backup,
    best_child,
    clamp_greedy,
    early_stop,
    embedding_variance_norm,
    mix_uniform,
    normalize,
    puct_scores,
    reroot,
    searches_before_early_stop,
    select_child,
    set_child_priors,
    should_add_nodes,
    similarity_update,
)


def test_token_set_schedule_is_1_2_4_10_then_10():
    cfg = RainConfig()
    assert [cfg.token_set_length(d) for d in range(6)] == [1, 2, 4, 10, 10, 10]
    assert RainConfig(token_set_lengths=(3,)).token_set_length(5) == 3


def test_priors_normalise():
    assert normalize([0.2, 0.6, 0.2]) == pytest.approx([0.2, 0.6, 0.2])
    assert normalize([1.0, 3.0]) == pytest.approx([0.25, 0.75])
    assert normalize([0.0, 0.0]) == [0.5, 0.5]


def test_greedy_prior_is_clamped_up_to_max_plus_min_of_sampled():
    # sampled raw priors 0.1, 0.3, 0.2: max + min = 0.4, sum = 0.6; greedy 0.05 rises to 0.4
    assert clamp_greedy(0.05, [0.1, 0.3, 0.2]) == pytest.approx(0.4)


def test_greedy_prior_is_clamped_down_to_sum_of_sampled():
    assert clamp_greedy(0.9, [0.1, 0.3, 0.2]) == pytest.approx(0.6)


def test_greedy_between_bounds_is_kept_and_alone_is_untouched():
    assert clamp_greedy(0.5, [0.1, 0.3, 0.2]) == pytest.approx(0.5)  # 0.4 <= 0.5 <= 0.6
    assert clamp_greedy(0.7, []) == 0.7


def test_official_greedy_clamp_order_lower_bound_wins_where_bounds_cross():
    # One distinct sample s: the bounds are sum = s and max + min = 2s. The official code applies
    # min(g, sum) first and max(., max + min) last, so the greedy prior becomes 2s: priors 2/3, 1/3
    # (not the upper bound: 1/2, 1/2).
    g = clamp_greedy(0.9, [0.2])
    assert g == pytest.approx(0.4)
    assert normalize([g, 0.2]) == pytest.approx([2 / 3, 1 / 3])


def test_root_uniform_mix_is_normalised():
    assert mix_uniform([1.0, 0.0, 0.0, 0.0], 0.25) == pytest.approx([0.8125, 0.0625, 0.0625, 0.0625])
    # priors that no longer sum to 1 (after node additions) are normalised after mixing, as at a commit
    mixed = mix_uniform([0.5, 0.5, 0.25], 0.25)
    assert sum(mixed) == pytest.approx(1.0)
    assert mixed == pytest.approx([(0.375 + 0.25 / 3) / 1.1875] * 2 + [(0.1875 + 0.25 / 3) / 1.1875])


def test_expansion_priors_mix_only_at_the_root():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,))
    t.add_child(ROOT_INDEX, (2,))
    set_child_priors(t, ROOT_INDEX, [0.3, 0.1], 0.25)
    assert t.prior[1:3] == pytest.approx([0.75 * 0.75 + 0.125, 0.75 * 0.25 + 0.125])
    t.add_child(a, (3,))
    t.add_child(a, (4,))
    set_child_priors(t, a, [0.3, 0.1], 0.25)
    assert t.prior[3:5] == pytest.approx([0.75, 0.25])


def test_added_prior_normalises_over_the_window_and_mixes_at_the_root():
    assert added_prior(0.2, [0.4, 0.3, 0.2], is_root=False, uniform_mix=0.25) == pytest.approx(0.2 / 0.9)
    assert added_prior(0.2, [0.4, 0.3, 0.2], is_root=True, uniform_mix=0.25) == pytest.approx(
        0.75 * 0.2 / 0.9 + 0.25 / 3
    )


def _root_with_children(values, visits, priors, real=None):
    t = Tree()
    for i, (q, n, p) in enumerate(zip(values, visits, priors)):
        k = t.add_child(ROOT_INDEX, (i,), p)
        t.value[k], t.visits[k] = q, n
        t.real_visits[k] = int(n) if real is None else real[i]
    t.visits[ROOT_INDEX] = sum(visits)
    t.real_visits[ROOT_INDEX] = int(sum(visits))
    return t


def test_puct_uses_minmax_normalised_values_and_zero_for_unvisited():
    t = _root_with_children([0.5, 0.0, -1.0], [3, 0, 1], [0.2, 0.5, 0.3])
    # range starts at [-1, 1]: Q_norm = (Q + 1) / (2 + 1e-5), as the official code; unvisited -> 0
    sqrt_n = math.sqrt(4)
    expected = [
        1.5 / (2 + 1e-5) + 2 * 0.2 * sqrt_n / 4,
        0.0 + 2 * 0.5 * sqrt_n / 1,
        0.0 + 2 * 0.3 * sqrt_n / 2,
    ]
    assert puct_scores(t, ROOT_INDEX, 2.0) == pytest.approx(expected, rel=1e-9)
    assert select_child(t, ROOT_INDEX, 2.0) == 2  # node ids start at 1: the unvisited child
    # without exploration the best value wins
    assert select_child(t, ROOT_INDEX, 0.0) == 1


def test_minmax_range_grows_but_starts_at_minus_one_one():
    m = MinMax()
    assert m.normalize(0.0) == pytest.approx(0.5, abs=1e-5)
    m.update(3.0)
    assert m.normalize(3.0) == pytest.approx(1.0, abs=1e-5) and m.normalize(-1.0) == 0.0


def test_backup_running_mean_along_path_counts_real_visits():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 1.0)
    b = t.add_child(a, (2, 3), 1.0)
    assert backup(t, b, 1.0) == [ROOT_INDEX, a, b]
    assert backup(t, b, 0.0) == [ROOT_INDEX, a, b]
    backup(t, a, -1.0)
    assert t.visits == [3.0, 3.0, 2.0] and t.real_visits == [3, 3, 2]
    assert t.value[b] == pytest.approx(0.5)
    assert t.value[a] == pytest.approx(0.0)
    assert t.value[ROOT_INDEX] == pytest.approx(0.0)


def test_backup_value_range_leaves_out_the_root():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 1.0)
    t.value[ROOT_INDEX] = 5.0  # a root value outside the range (only a non-root may widen it)
    t.visits[ROOT_INDEX] = 1.0
    backup(t, a, 1.0)
    assert (t.minmax.low, t.minmax.high) == (-1.0, 1.0)


def test_similarity_update_gives_fractional_visits_to_similar_siblings():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 0.5)
    b = t.add_child(ROOT_INDEX, (2,), 0.3)
    c = t.add_child(ROOT_INDEX, (3,), 0.2)
    # b was visited twice with value 0.5 and points the same way; c is orthogonal
    t.visits[b], t.value[b], t.real_visits[b] = 2.0, 0.5, 2
    t.emb_sum[b], t.emb_count[b] = np.array([2.0, 0.0]), 2  # mean (1, 0)
    t.visits[c], t.value[c] = 1.0, 0.0
    t.emb_sum[c], t.emb_count[c] = np.array([0.0, 1.0]), 1
    updated = similarity_update(t, a, np.array([1.0, 0.0]), -1.0, threshold=0.95, weight=0.2)
    assert updated == [(b, pytest.approx(0.2))]
    # Q_b = (0.5 * 2 + 0.2 * -1) / 2.2; real visits and the value range untouched
    assert t.value[b] == pytest.approx(0.8 / 2.2)
    assert t.visits[b] == pytest.approx(2.2) and t.real_visits[b] == 2
    assert t.visits[c] == 1.0 and t.value[c] == 0.0
    assert np.allclose(t.embedding(a), [1.0, 0.0])


def test_similarity_weight_scales_with_similarity():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 0.5)
    b = t.add_child(ROOT_INDEX, (2,), 0.5)
    t.visits[b], t.value[b] = 1.0, 1.0
    v = np.array([1.0, 0.3])
    t.emb_sum[b], t.emb_count[b] = np.array([1.0, 0.0]), 1
    sim = 1.0 / math.sqrt(1.09)
    similarity_update(t, a, v, 0.0, threshold=0.95, weight=0.2)
    s = 0.2 * sim
    assert t.visits[b] == pytest.approx(1.0 + s)
    assert t.value[b] == pytest.approx(1.0 / (1.0 + s))


def test_official_similarity_compares_mean_embeddings():
    # The node's earlier embedding e1 = (1, 0); this visit's path embedding e2 = (.85, .527) is only
    # 0.85-similar to the sibling's mean (1, 0), but the node's new MEAN (.925, .2635) is 0.962-similar:
    # the official code compares means, so the sibling is updated (comparing e2 alone would not).
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,))
    b = t.add_child(ROOT_INDEX, (2,))
    t.emb_sum[a], t.emb_count[a] = np.array([1.0, 0.0]), 1
    t.visits[b], t.value[b] = 1.0, 1.0
    t.emb_sum[b], t.emb_count[b] = np.array([1.0, 0.0]), 1
    e2 = np.array([0.85, 0.527])
    mean = (np.array([1.0, 0.0]) + e2) / 2
    sim = float(mean[0] / np.linalg.norm(mean))
    assert sim > 0.95 > float(e2[0] / np.linalg.norm(e2))
    updated = similarity_update(t, a, e2, -1.0, threshold=0.95, weight=0.2)
    assert updated == [(b, pytest.approx(0.2 * sim))]


def _bad_children(embeddings, length=1, values=None):
    t = Tree()
    for i, e in enumerate(embeddings):
        k = t.add_child(ROOT_INDEX, (i,) * length, 0.5)
        t.visits[k], t.real_visits[k] = 1.0, 1
        t.value[k] = -0.5 if values is None else values[i]
        t.emb_sum[k], t.emb_count[k] = np.asarray(e, dtype=float), 1
    return t


def test_dynamic_addition_trigger():
    t = _bad_children([[1.0, 0.0], [1.0, 0.0]], length=2)
    # all bad and identical: fires
    assert should_add_nodes(t, ROOT_INDEX, max_children=20, variance_factor=0.03)
    # a child with value >= 0 stops it
    t.value[2] = 0.0
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.03)
    t.value[2] = -0.5
    # different embeddings: unbiased variance of [(1,0),(0,1)] per dimension = 0.5, norm = 0.707 > 0.03 * 2
    t.emb_sum[2] = np.array([0.0, 1.0])
    assert embedding_variance_norm([np.array([1.0, 0.0]), np.array([0.0, 1.0])]) == pytest.approx(math.sqrt(0.5))
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.03)
    # the threshold scales with the first child's token-set length (2 here): factor 0.4 -> 0.8 > 0.707
    assert should_add_nodes(t, ROOT_INDEX, 20, 0.4)
    # at the children cap it never fires
    assert not should_add_nodes(t, ROOT_INDEX, 2, 0.4)
    # a child never embedded keeps it from firing
    t.add_child(ROOT_INDEX, (9, 9), 0.1)
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.4)


def test_official_variance_is_unbiased():
    # Two children 0.2 apart in one dimension: population variance 0.01, unbiased 0.02. With the
    # threshold 0.03 * 1 = 0.03 both are below; with factor 0.015 (threshold 0.015) only the biased one
    # is, so the official (unbiased, as torch.var) rule does not fire where the biased np.var would.
    t = _bad_children([[0.0, 0.0], [0.2, 0.0]])
    assert embedding_variance_norm([np.zeros(2), np.array([0.2, 0.0])]) == pytest.approx(0.02)
    assert should_add_nodes(t, ROOT_INDEX, 20, 0.03)
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.015)


def test_official_single_child_never_triggers_addition():
    # One child has no variance (torch.var of one sample is NaN): never "all alike".
    t = _bad_children([[1.0, 0.0]])
    assert embedding_variance_norm([np.array([1.0, 0.0])]) is None
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.03)


def test_commit_choice_most_visits_then_higher_value():
    t = _root_with_children([0.1, 0.9, 0.5], [4, 2, 4], [0.3, 0.3, 0.4])
    assert best_child(t) == 3  # visits tie 4/4, higher Q wins
    t = _root_with_children([0.1, 0.9], [5, 4], [0.5, 0.5])
    assert best_child(t) == 1


def _stops(tree, cfg):
    return early_stop(tree, cfg.min_visits, cfg.value_threshold)


def test_early_stop_rule():
    cfg = RainConfig(min_visits=6, value_threshold=0.8)
    assert _stops(_root_with_children([0.9, 0.0], [7, 1], [0.5, 0.5]), cfg)
    assert not _stops(_root_with_children([0.9, 0.0], [6, 1], [0.5, 0.5]), cfg)  # N must exceed T_min
    assert not _stops(_root_with_children([0.8, 0.0], [9, 1], [0.5, 0.5]), cfg)  # Q must exceed V
    # the most-visited child decides, not the best-valued one
    assert not _stops(_root_with_children([0.95, 0.5], [7, 8], [0.5, 0.5]), cfg)


def test_official_early_stop_counts_real_visits():
    # 7.2 visits, of which 6 real and 1.2 from the similarity update: the official rule reads the real
    # visits (fn), 6 is not more than T_min = 6 (7.2 visits with the fractional ones would stop).
    cfg = RainConfig(min_visits=6, value_threshold=0.8)
    t = _root_with_children([0.9, 0.0], [7.2, 1], [0.5, 0.5], real=[6, 1])
    assert not _stops(t, cfg)
    t.real_visits[1] = 7
    assert _stops(t, cfg)


def test_reroot_keeps_subtree_frees_rest_and_remixes_priors():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 0.6)
    b = t.add_child(ROOT_INDEX, (2,), 0.4)
    a1 = t.add_child(a, (3, 4), 0.9)
    a2 = t.add_child(a, (5, 6), 0.1)
    t.add_child(b, (7, 8), 1.0)
    for n, (v, q) in {a: (3.2, 0.5), a1: (2, 0.7), a2: (1, 0.1)}.items():
        t.visits[n], t.value[n], t.real_visits[n] = v, q, int(v)
    t.add_child(a1, (9,) * 4, 1.0)
    t.proposals[a1] = [((9, 9, 9, 9), 0.3)]
    new = reroot(t, a, uniform_mix=0.25)
    assert len(new) == 4
    assert new.tokens[1:] == [(3, 4), (5, 6), (9, 9, 9, 9)]
    assert new.parent == [-1, 0, 0, 1]
    assert new.depth_from_prompt == [1, 2, 2, 3]  # steps count from the original prompt: kept across the commit
    assert new.to_dict()["depth"] == [0, 1, 1, 2]
    assert new.visits[:3] == [3.2, 2, 1] and new.value[:3] == [0.5, 0.7, 0.1]
    assert new.real_visits[0] == 3
    assert new.proposals[1] == [((9, 9, 9, 9), 0.3)]
    assert new.prior[1] == pytest.approx(0.75 * 0.9 + 0.125)
    assert new.prior[2] == pytest.approx(0.75 * 0.1 + 0.125)
    assert new.to_dict()["children"] == [[1, 2], [3], [], []]


def test_no_search_sooner_than_the_bound_can_make_the_early_stop_hold():
    # random root children, then the most favourable searches for stopping (value 1 through one child,
    # or through its siblings while it gets similarity updates): none stops before the bound says
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 5))
        t = _root_with_children(list(rng.uniform(-1, 1, n)), [int(v) for v in rng.integers(0, 9, n)], [1.0 / n] * n)
        for k in t.children[ROOT_INDEX]:
            t.real_visits[k] = int(t.visits[k])
        min_visits, threshold = int(rng.integers(0, 8)), float(rng.choice([0.5, 0.8, 0.95]))
        if early_stop(t, min_visits, threshold):
            continue
        bound = searches_before_early_stop(t, min_visits, threshold)
        target = int(rng.choice(t.children[ROOT_INDEX]))
        for done in range(1, bound + 1):
            backup(t, target, 1.0)
            if done < bound:
                assert not early_stop(t, min_visits, threshold), (done, bound)


def test_the_bound_is_wide_where_every_branch_is_bad_and_narrow_near_a_good_stop():
    bad = _root_with_children([-1.0, -1.0], [7, 7], [0.5, 0.5])
    for k in bad.children[ROOT_INDEX]:
        bad.real_visits[k] = 7
    assert searches_before_early_stop(bad, 6, 0.8) > 50  # value -1 needs many searches to pass 0.8
    good = _root_with_children([0.9, 0.0], [5, 1], [0.5, 0.5])
    good.real_visits[1], good.real_visits[2] = 5, 1
    assert searches_before_early_stop(good, 6, 0.8) == 2  # two more real visits to the good child
