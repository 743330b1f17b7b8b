"""``GuardSignalWarning`` points at the user's line (the one that built or ran the guard), not into
rain, pydantic or LangChain, however deep the library's own calls are."""

from __future__ import annotations

import inspect
import warnings

import pytest

pytest.importorskip("langchain_core")

from fakes import CharLM  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402

from rain_core import SelfEvaluator  # noqa: E402
from rain_integrations.langchain import RainGuard  # noqa: E402
from rain_integrations.langchain.guards import GuardSignalWarning  # noqa: E402


def next_line() -> int:
    """The line after the caller's."""
    return inspect.stack()[1].lineno + 1


def signal_warnings(record: list[warnings.WarningMessage]) -> list[tuple[str, int]]:
    return [(w.filename, w.lineno) for w in record if issubclass(w.category, GuardSignalWarning)]


def test_the_warning_when_built_points_at_the_line_that_builds_the_guard():
    embedded = SelfEvaluator(CharLM(name="SmolLM2-135M-Instruct"))  # the embedded model, by its name
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = next_line()
        RainGuard(evaluator=embedded)
    assert signal_warnings(record) == [(__file__, line)]
    assert "cannot judge harm" in str(record[-1].message)


def test_the_warning_of_a_run_of_identical_scores_points_at_the_line_that_runs_the_guard():
    guard = RainGuard(evaluator=lambda _c, _t: 0.0, same_score_alert=2)
    guard.invoke("first")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = next_line()
        guard.invoke("second")
    assert signal_warnings(record) == [(__file__, line)]
    assert "the same score" in str(record[-1].message)
    # inside a LangChain chain: still the user's line, not LangChain's
    chain = RunnableLambda(lambda x: x) | RainGuard(evaluator=lambda _c, _t: 0.0, same_score_alert=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = next_line()
        chain.invoke("third")
    assert signal_warnings(record) == [(__file__, line)]
