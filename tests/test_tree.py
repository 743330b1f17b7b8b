"""Pure tests of the tree arithmetic on hand-made numbers."""

import math

import numpy as np
import pytest

from rain_core import RainConfig
from rain_core.tree import (
    ROOT_INDEX,
    MinMax,
    Tree,
    backup,
    best_child,
    embedding_variance_norm,
    mix_uniform,
    normalize_priors,
    puct_scores,
    reroot,
    select_child,
    should_add_nodes,
    similarity_update,
)


def test_token_set_schedule_is_1_2_4_10_then_10():
    cfg = RainConfig()
    assert [cfg.token_set_length(d) for d in range(6)] == [1, 2, 4, 10, 10, 10]
    assert RainConfig(token_set_lengths=(3,)).token_set_length(5) == 3


def test_priors_normalise_without_greedy():
    assert normalize_priors([0.2, 0.6, 0.2]) == pytest.approx([0.2, 0.6, 0.2])
    assert normalize_priors([1.0, 3.0]) == pytest.approx([0.25, 0.75])


def test_greedy_prior_is_clamped_up_to_max_plus_min_of_sampled():
    # sampled raw priors 0.1, 0.3, 0.2: max + min = 0.4, sum = 0.6; greedy 0.05 rises to 0.4
    p = normalize_priors([0.05, 0.1, 0.3, 0.2], greedy_index=0)
    assert p == pytest.approx([0.4 / 1.0, 0.1, 0.3, 0.2])


def test_greedy_prior_is_clamped_down_to_sum_of_sampled():
    # sampled 0.1, 0.3, 0.2 -> sum 0.6; greedy 0.9 falls to 0.6; total 1.2
    p = normalize_priors([0.9, 0.1, 0.3, 0.2], greedy_index=0)
    assert p == pytest.approx([0.5, 0.1 / 1.2, 0.25, 0.2 / 1.2])


def test_greedy_between_bounds_is_kept():
    p = normalize_priors([0.5, 0.1, 0.3, 0.2], greedy_index=0)  # 0.4 <= 0.5 <= 0.6
    assert p == pytest.approx([0.5 / 1.1, 0.1 / 1.1, 0.3 / 1.1, 0.2 / 1.1])


def test_root_uniform_mix():
    assert mix_uniform([1.0, 0.0, 0.0, 0.0], 0.25) == pytest.approx([0.8125, 0.0625, 0.0625, 0.0625])


def _root_with_children(values, visits, priors):
    t = Tree()
    for i, (q, n, p) in enumerate(zip(values, visits, priors)):
        k = t.add_child(ROOT_INDEX, (i,), p)
        t.value[k], t.visits[k], t.prior[k] = q, n, p
    t.visits[ROOT_INDEX] = sum(visits)
    return t


def test_puct_uses_minmax_normalised_values_and_zero_for_unvisited():
    t = _root_with_children([0.5, 0.0, -1.0], [3, 0, 1], [0.2, 0.5, 0.3])
    # range starts at [-1, 1]: Q_norm = (Q + 1) / 2; unvisited child -> 0
    sqrt_n = math.sqrt(4)
    expected = [
        0.75 + 2 * 0.2 * sqrt_n / 4,
        0.0 + 2 * 0.5 * sqrt_n / 1,
        0.0 + 2 * 0.3 * sqrt_n / 2,
    ]
    assert puct_scores(t, ROOT_INDEX, 2.0) == pytest.approx(expected)
    assert select_child(t, ROOT_INDEX, 2.0) == 2  # node ids start at 1: the unvisited child
    # without exploration the best value wins
    assert select_child(t, ROOT_INDEX, 0.0) == 1


def test_minmax_range_grows_but_starts_at_minus_one_one():
    m = MinMax()
    assert m.normalize(0.0) == 0.5
    m.update(3.0)
    assert m.normalize(3.0) == 1.0 and m.normalize(-1.0) == 0.0


def test_backup_running_mean_along_path():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 1.0)
    b = t.add_child(a, (2, 3), 1.0)
    assert backup(t, b, 1.0) == [ROOT_INDEX, a, b]
    assert backup(t, b, 0.0) == [ROOT_INDEX, a, b]
    backup(t, a, -1.0)
    assert t.visits == [3.0, 3.0, 2.0]
    assert t.value[b] == pytest.approx(0.5)
    assert t.value[a] == pytest.approx(0.0)
    assert t.value[ROOT_INDEX] == pytest.approx(0.0)


def test_similarity_update_gives_fractional_visits_to_similar_siblings():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 0.5)
    b = t.add_child(ROOT_INDEX, (2,), 0.3)
    c = t.add_child(ROOT_INDEX, (3,), 0.2)
    # b was visited twice with value 0.5 and points the same way; c is orthogonal
    t.visits[b], t.value[b] = 2.0, 0.5
    t.emb_sum[b], t.emb_count[b] = np.array([2.0, 0.0]), 2  # mean (1, 0)
    t.visits[c], t.value[c] = 1.0, 0.0
    t.emb_sum[c], t.emb_count[c] = np.array([0.0, 1.0]), 1
    updated = similarity_update(t, a, np.array([1.0, 0.0]), -1.0, threshold=0.95, weight=0.2)
    assert updated == [(b, pytest.approx(0.2))]
    # Q_b = (0.5 * 2 + 0.2 * -1) / 2.2
    assert t.value[b] == pytest.approx(0.8 / 2.2)
    assert t.visits[b] == pytest.approx(2.2)
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


def test_dynamic_addition_trigger():
    t = Tree()
    kids = [t.add_child(ROOT_INDEX, (i, i), 0.5) for i in range(2)]
    for k in kids:
        t.visits[k], t.value[k] = 1.0, -0.5
        t.emb_sum[k], t.emb_count[k] = np.array([1.0, 0.0]), 1
    # all bad and identical: fires
    assert should_add_nodes(t, ROOT_INDEX, max_children=20, variance_factor=0.03)
    # a child with value >= 0 stops it
    t.value[kids[1]] = 0.0
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.03)
    t.value[kids[1]] = -0.5
    # different embeddings: variance norm of [(1,0),(0,1)] = ||(0.25, 0.25)|| = 0.354 > 0.03 * 2
    t.emb_sum[kids[1]] = np.array([0.0, 1.0])
    assert embedding_variance_norm([np.array([1.0, 0.0]), np.array([0.0, 1.0])]) == pytest.approx(math.sqrt(0.125))
    assert not should_add_nodes(t, ROOT_INDEX, 20, 0.03)
    # the threshold scales with the token-set length (2 here): factor 0.2 -> 0.4 > 0.354
    assert should_add_nodes(t, ROOT_INDEX, 20, 0.2)
    # at the children cap it never fires
    assert not should_add_nodes(t, ROOT_INDEX, 2, 0.2)


def test_commit_choice_most_visits_then_higher_value():
    t = _root_with_children([0.1, 0.9, 0.5], [4, 2, 4], [0.3, 0.3, 0.4])
    assert best_child(t) == 3  # visits tie 4/4, higher Q wins
    t = _root_with_children([0.1, 0.9], [5, 4], [0.5, 0.5])
    assert best_child(t) == 1


def test_early_stop_rule():
    from rain_core.search import RainSearch

    class _S(RainSearch):
        def __init__(self, tree, cfg):
            self.tree, self.cfg = tree, cfg

    cfg = RainConfig(min_visits=6, value_threshold=0.8)
    assert _S(_root_with_children([0.9, 0.0], [7, 1], [0.5, 0.5]), cfg).early_stop()
    assert not _S(_root_with_children([0.9, 0.0], [6, 1], [0.5, 0.5]), cfg).early_stop()  # N must exceed T_min
    assert not _S(_root_with_children([0.8, 0.0], [9, 1], [0.5, 0.5]), cfg).early_stop()  # Q must exceed V
    # the most-visited child decides, not the best-valued one
    assert not _S(_root_with_children([0.95, 0.5], [7, 8], [0.5, 0.5]), cfg).early_stop()


def test_reroot_keeps_subtree_frees_rest_and_remixes_priors():
    t = Tree()
    a = t.add_child(ROOT_INDEX, (1,), 0.6)
    b = t.add_child(ROOT_INDEX, (2,), 0.4)
    a1 = t.add_child(a, (3, 4), 0.9)
    a2 = t.add_child(a, (5, 6), 0.1)
    t.set_child_priors(a, 0.0)
    t.add_child(b, (7, 8), 1.0)
    for n, (v, q) in {a: (3, 0.5), a1: (2, 0.7), a2: (1, 0.1)}.items():
        t.visits[n], t.value[n] = v, q
    t.add_child(a1, (9,) * 4, 1.0)
    new = reroot(t, a, uniform_mix=0.25)
    assert len(new) == 4
    assert new.tokens[1:] == [(3, 4), (5, 6), (9, 9, 9, 9)]
    assert new.parent == [-1, 0, 0, 1]
    assert new.depth == [0, 1, 1, 2]
    assert new.visits[:3] == [3, 2, 1] and new.value[:3] == [0.5, 0.7, 0.1]
    assert new.prior[1] == pytest.approx(0.75 * 0.9 + 0.125)
    assert new.prior[2] == pytest.approx(0.75 * 0.1 + 0.125)
    assert new.to_dict()["children"] == [[1, 2], [3], [], []]
