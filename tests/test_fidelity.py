"""The fidelity measure of search presets (rain_bench.fidelity) on the fake model: fast, many seeds."""

import json

import pytest
from fakes import two_way

from rain_bench import fidelity
from rain_core import RainConfig

SCENARIO = fidelity.Scenario("pets", "pets?", ("cat",), 20)


def test_wilson_interval():
    assert fidelity.wilson(0, 0) == (0.0, 1.0)
    low, high = fidelity.wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert fidelity.wilson(10, 10)[1] == 1.0


def test_fidelity_report_on_a_penalised_word():
    report = fidelity.run(two_way(), scenarios=[SCENARIO], seeds=6, encoder=None)
    (result,) = report.results
    assert result.plain_wrote_word >= 4  # the scenario is meaningful: plain decoding writes "cat"
    official, fast = result.outcomes["official"], result.outcomes["fast"]
    assert official.avoided >= 3 and fast.avoided >= 3  # both usually find "dogs"
    assert result.acceptable("fast") == (official.ci_low <= fast.rate <= official.ci_high)
    assert 0.0 <= fast.same_first_set <= 1.0 and official.same_first_set is None
    assert official.searches_per_commit > 0 and fast.searches_per_commit > 0
    text = fidelity.render_markdown(report)
    assert '| pets ("cat") | ' in text and "acceptable" in text
    data = json.loads(fidelity.to_json(report))
    assert data["results"][0]["outcomes"]["fast"]["acceptable"] is result.acceptable("fast")
    assert report.presets["fast"] == dict(RainConfig.FAST)


def test_a_preset_that_ignores_the_evaluator_is_not_acceptable():
    # A "preset" that searches once per commit cannot see the penalty coming: it falls outside the interval.
    blind = RainConfig(max_searches=1, extra_searches=0, min_visits=0, value_threshold=-1.0)
    report = fidelity.run(
        two_way(), scenarios=[SCENARIO], seeds=6, encoder=None, presets={"official": RainConfig(), "blind": blind}
    )
    assert not report.acceptable("blind")
    assert "**no**" in fidelity.render_table(report)
