"""Shared fixtures. The embedded model is loaded once per test session."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rain_core import RainConfig  # noqa: E402

# Small budgets that still exercise every part of the search on the real model.
SMALL = dict(max_searches=4, extra_searches=2, min_visits=2, num_candidates=4, max_new_tokens=12,
             max_simulation_tokens=8)


@pytest.fixture(scope="session")
def default_lm():
    from rain_core import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def small_config() -> RainConfig:
    return RainConfig(**SMALL)
