"""The plotting helpers draw a real search: PNGs from the library and from the CLI."""

import pytest
from conftest import SMALL

from rain_core import RainDecoder, cli
from rain_core.plotting import plot_commits, plot_tree

pytestmark = pytest.mark.model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 5_000


@pytest.fixture(scope="module")
def decoded(default_lm):
    dec = RainDecoder(default_lm, lambda p, r: -1.0 if "cat" in r.lower() else 1.0, encoder=None, **SMALL)
    return dec.generate("Tell me about cats.", keep_trees=True)


def test_plot_tree_writes_a_png_of_a_real_search(decoded, default_lm, tmp_path):
    commit = decoded.stats["commit_log"][0]
    assert commit["searches"] > 0 and len(commit["tree"]["visits"]) > 1  # a real tree, not just a root
    fig = plot_tree(commit, default_lm, path=tmp_path / "tree.png")
    assert _is_png(tmp_path / "tree.png")
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels[0].startswith("'root' N=") or any(t.startswith("'root' N=") for t in labels)
    assert 1 < len(labels) <= min(80, len(commit["tree"]["visits"]))
    assert [p.name for p in tmp_path.iterdir()] == ["tree.png"]  # no temporary file left


def test_plot_commits_writes_a_png(decoded, default_lm, tmp_path):
    fig = plot_commits(decoded.stats, default_lm, path=tmp_path / "commits.png")
    assert _is_png(tmp_path / "commits.png")
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == [c["searches"] for c in decoded.stats["commit_log"]]


def test_plot_errors_are_clear(decoded, tmp_path):
    commit = dict(decoded.stats["commit_log"][0])
    commit.pop("tree")
    with pytest.raises(ValueError, match="keep_trees=True"):
        plot_tree(commit)
    with pytest.raises(ValueError, match="commit_log"):
        plot_commits({"searches": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_commits(decoded.stats, path=tmp_path / "missing" / "x.png")


def test_cli_generate_plot_saves_the_first_commits_tree(tmp_path, capsys):
    out = tmp_path / "tree.png"
    code = cli.main(["generate", "--max-new-tokens", "4", "--max-searches", "2", "--plot", str(out), "Hi!"])
    assert code == 0 and _is_png(out)
    assert capsys.readouterr().out.strip()
