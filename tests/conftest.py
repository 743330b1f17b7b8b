"""Shared fixtures. The embedded model is loaded once per test session.

Two kinds of tests live here: fast ones on the fake model of ``fakes.py`` (``pytest -m "not model"``
runs only those, in seconds) and ones on the embedded SmolLM2-135M-Instruct, marked ``model`` (every
test that uses the ``default_lm`` fixture is marked automatically). ``make test`` runs all.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rain_core import RainConfig  # noqa: E402

# Small budgets that still exercise every part of the search on the real model.
SMALL = dict(
    max_searches=4, extra_searches=2, min_visits=2, num_candidates=4, max_new_tokens=12, max_simulation_tokens=8
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "default_lm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def default_lm():
    from rain_core import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def small_config() -> RainConfig:
    return RainConfig(**SMALL)
