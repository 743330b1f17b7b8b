"""The round policy, in one place: how many searches a round runs side by side, when their
selections defer model calls to the round's one batch, and which duplicate selections are worth a
search. ``search.py`` schedules rounds by these rules; with a width of one, a round is exactly the
authors' one-at-a-time search."""

from __future__ import annotations

from .config import RainConfig
from .phases import simulates
from .state import Decode
from .tree import ROOT_INDEX, Tree, searches_before_early_stop


def round_width(tree: Tree, cfg: RainConfig, left: int) -> int:
    """How many searches the next round runs: ``parallel_searches`` while the search has to work,
    never past the budget (``left``), never past the searches the early stop needs before it could
    hold (so it is checked where one search at a time would first be stopped), and one at a time once
    a root child looks good enough to stop (its value above ``value_threshold``), where searches side
    by side would only spread over branches the search no longer needs."""
    kids = tree.children[ROOT_INDEX]
    if not kids or cfg.parallel_searches == 1:
        return 1
    if any(tree.value[k] > cfg.value_threshold for k in kids):
        return 1
    room = searches_before_early_stop(tree, cfg.min_visits, cfg.value_threshold)
    return max(1, min(cfg.parallel_searches, left, room))


def defers(width: int) -> bool:
    """Whether the selections of a round of ``width`` searches note lazy completions and node
    additions for the round's batch instead of drawing them as they pass: only when searches run
    side by side. A round of one search draws them where it meets them, as the one-at-a-time search
    does (whatever ``parallel_searches`` is)."""
    return width > 1


def worth_another_search(d: Decode, leaf: int, taken: set[int]) -> bool:
    """Whether a search that selected ``leaf`` adds to the round: a leaf no search of the round has
    taken yet, or one whose value it samples anew (WU-UCT's duplicates), which needs a simulation
    that draws tokens. A terminal leaf, or one whose text already ends a clause, would only be
    judged again on the same text: the round ends its selections there instead."""
    return leaf not in taken or simulates(d, leaf)
